"""The output folder: who may write it (an exclusive lock), what gandid owns in it, and how a
stale or replaced run is cleaned up without touching anyone else's files.

gandid owns exactly: ``run.json`` (marked with :data:`MARKER`), the lock file, the files its
record lists, each stage's ``NAME.json``, ``state/NAME.pt`` and (a shard's) ``state/exchange/NAME.pt``,
the private folders ``state/rank-K/`` of a run's other processes, and the temporary files of its
atomic writes (``*.tmp``). ``--force`` removes those and nothing else.
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from . import faults
from .errors import ConfigError, DiskFullError, OutputExistsError
from .locks import ProcessLock, describe_holder

MARKER = "gandid.run/1"  # run.json's "format": what tells gandid's run.json from anyone else's
LOCK_NAME = ".gandid.lock"
STATE_DIR = "state"


# Why a file could not be written, in words (OSError.errno -> phrase), and which of those mean "full".
WHY_NOT_WRITTEN = {
    errno.EROFS: "the filesystem is read-only", errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted", errno.ENOENT: "no such folder",
    errno.ENOTDIR: "part of the path is a file, not a folder", errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file would pass the file-size limit (ulimit -f) or the filesystem's largest file"}
FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
RESUME_HINT = ("free some space (or raise the limit), then continue: the same `gandid run` with --resume "
               "(a `gandid merge`: the same merge with --force)")


def disk_full_error(exc: BaseException, path: Path | str | None, then: str = RESUME_HINT) -> DiskFullError | None:
    """gandid's message for a write that failed for want of space, naming ``path``; None for other errors.
    torch.save reports a short write as a RuntimeError from its zip writer, without errno."""
    if isinstance(exc, OSError) and exc.errno in FULL:
        why = WHY_NOT_WRITTEN[exc.errno]
    elif isinstance(exc, RuntimeError) and "inline_container" in str(exc):
        why = "torch's writer stopped short: the disk, a quota or a file-size limit (ulimit -f) is full"
    else:
        return None
    where = path if path is not None else getattr(exc, "filename", None)
    return DiskFullError(f"could not write {str(where) if where else 'a file'}: {why}. What was written before "
                         f"is kept; {then}")


def write_atomic(path: Path, tmp: Path, write, point: str = "write", then: str = RESUME_HINT) -> None:
    """``write(tmp)``, then rename ``tmp`` to ``path``: ``path`` holds the old or the new content, never
    half of one. A failed write removes ``tmp`` (so nothing half-written is left for a later run to
    find) and a full disk becomes a :class:`DiskFullError` naming ``path``."""
    try:
        write(tmp)
        _sync(tmp)  # the content on disk before the name: a power cut must not leave an empty run.json
        faults.point(point)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        error = disk_full_error(exc, path, then) if isinstance(exc, Exception) else None
        if error is not None:
            raise error from None
        raise


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data, then: str = RESUME_HINT) -> None:
    """``path`` as indented JSON, atomically (through ``NAME.json.tmp``)."""
    text = json.dumps(data, indent=2, default=str)
    write_atomic(path, path.with_suffix(".json.tmp"), lambda tmp: tmp.write_text(text), "json", then)


class OutputLockedError(OutputExistsError):
    """Another gandid process is writing the same output folder."""


def check_writable(out: Path) -> None:
    """Create ``out`` if needed and prove a file can be written there, before any model loads."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".gandid-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        why = WHY_NOT_WRITTEN.get(exc.errno, exc.strerror)
        raise ConfigError(f"--out {str(out)!r} is not writable ({why}): choose a folder you can write to") from None


class OutputLock(ProcessLock):
    """An exclusive lock on ``out/.gandid.lock`` held for the whole run (see :mod:`gandid.locks`): a lock
    file left behind by a dead run is simply taken over; a living holder is named in the refusal."""

    def __init__(self, out: Path):
        super().__init__(Path(out) / LOCK_NAME)

    def acquire(self, command: str = "") -> "OutputLock":
        holder = self.try_acquire(command)
        if holder is not None:
            raise OutputLockedError(f"another gandid run is using {str(self.path.parent)!r} "
                                    f"({describe_holder(holder)}): wait for it to finish, stop it, or choose "
                                    "another --out") from None
        return self

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def is_empty(out: Path) -> bool:
    """Nothing in ``out`` but what a run killed before its first record leaves: the lock file and the
    temporary file of that record (a folder the next run may take as new)."""
    return not any(p.name not in (LOCK_NAME, "run.json.tmp") for p in Path(out).iterdir())


def owned_paths(out: Path, record: dict) -> list[Path]:
    """Every path in ``out`` that this run's record says gandid wrote (existing or not), inside ``out``."""
    out = Path(out)
    names = ["run.json", "run.json.tmp", "report.html", "report.html.tmp", "samples.png", "samples.png.tmp"]
    names += [f for f in record.get("files", []) if isinstance(f, str)]
    for stage in record.get("stages", {}):
        names += [f"{stage}.json", f"{stage}.json.tmp", f"{STATE_DIR}/{stage}.pt", f"{STATE_DIR}/{stage}.tmp"]
        names += [f for f in record["stages"][stage].get("files", []) if isinstance(f, str)]
        names += [f"{STATE_DIR}/exchange/{stage}.pt", f"{STATE_DIR}/exchange/{stage}.tmp"]  # a shard's
    # the private folders of a run's other processes (torchrun): state and scratch files, all gandid's
    world = (record.get("distributed") or {}).get("world_size", 1)
    for rank in range(1, world if isinstance(world, int) else 1):
        private = out / STATE_DIR / f"rank-{rank}"
        if private.is_dir() and not private.is_symlink():
            names += [p.relative_to(out).as_posix() for p in private.rglob("*") if p.is_file() or p.is_symlink()]
    root = out.resolve()
    paths = []
    for name in dict.fromkeys(names):
        p = out / name
        # A name from a file is not trusted: nothing outside the folder, whatever the record says.
        if root not in (p.parent.resolve() / p.name).parents:
            continue
        paths.append(p)
    return paths


def clear_run(out: Path, record: dict) -> tuple[list[str], list[str]]:
    """``--force``: remove what the run wrote; return (removed, kept) paths relative to ``out``."""
    out = Path(out)
    removed = []
    for p in owned_paths(out, record):
        if p.is_symlink() or p.is_file():
            p.unlink()
            removed.append(p.relative_to(out).as_posix())
    # Folders gandid made (state/, subfolders of artefacts) go only when nothing else is left in them.
    for d in sorted({p.parent for p in owned_paths(out, record)}, key=lambda d: -len(d.parts)):
        if d != out and d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    kept = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                  if p.name != LOCK_NAME and (p.is_file() or p.is_symlink()))
    return removed, kept


def stale_temporaries(out: Path, record: dict) -> list[str]:
    """Temporary files of atomic writes that a killed run left behind (the caller holds the lock)."""
    out = Path(out)
    return [p.relative_to(out).as_posix() for p in owned_paths(out, record) if p.name.endswith(".tmp") and p.exists()]
