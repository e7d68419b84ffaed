"""The output folder: who may write it (an exclusive lock), what gandid owns in it, and how a
stale or replaced run is cleaned up without touching anyone else's files.

gandid owns exactly: ``run.json`` (marked with :data:`MARKER`), the lock file, the files its
record lists, each stage's ``NAME.json``, ``state/NAME.pt`` and (a shard's) ``state/exchange/NAME.pt``,
the private folders ``state/rank-K/`` of a run's other processes, and the temporary files of its
atomic writes (``*.tmp``). ``--force`` removes those and nothing else.
"""
from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path

from .errors import ConfigError, OutputExistsError

MARKER = "gandid.run/1"  # run.json's "format": what tells gandid's run.json from anyone else's
LOCK_NAME = ".gandid.lock"
STATE_DIR = "state"
_SCHEMA = {"format": str, "config": dict, "stages": dict, "files": list, "status": str}


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
        why = {errno.EROFS: "the filesystem is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted", errno.ENOSPC: "the disk is full"}.get(exc.errno, exc.strerror)
        raise ConfigError(f"--out {str(out)!r} is not writable ({why}): choose a folder you can write to") from None


class OutputLock:
    """An exclusive ``flock`` on ``out/.gandid.lock`` held for the whole run.

    The kernel releases it when the process ends in any way (kill -9 included), so a lock file left
    behind by a dead run is simply taken over; its PID is only there to name the holder in messages.
    """

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self, command: str = "") -> "OutputLock":
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = self._describe_holder(fd)
                os.close(fd)
                raise OutputLockedError(f"another gandid run is using {str(self.path.parent)!r} ({holder}): "
                                        "wait for it to finish, stop it, or choose another --out") from None
            # The holder before us may have unlinked the file after we opened it: lock the file that is
            # there now, or we would share the folder with whoever creates the next one.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": command or " ".join(sys.argv),
                "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        os.fsync(fd)
        self.fd = fd
        return self

    @staticmethod
    def _describe_holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        except (OSError, ValueError):
            info = {}
        if not info:
            return "process unknown"
        return (f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}: "
                f"{info.get('command', '')}").strip()

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it, so nobody locks a file we remove
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def read_record(out: Path) -> dict | None:
    """run.json of ``out`` if it is gandid's (format marker and schema), else None."""
    path = Path(out) / "run.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != MARKER:
        return None
    if any(not isinstance(record.get(key), kind) for key, kind in _SCHEMA.items()):
        return None
    return record


def is_empty(out: Path) -> bool:
    return not any(p.name != LOCK_NAME for p in Path(out).iterdir())


def owned_paths(out: Path, record: dict) -> list[Path]:
    """Every path in ``out`` that this run's record says gandid wrote (existing or not), inside ``out``."""
    out = Path(out)
    names = ["run.json", "run.json.tmp", "report.html", "samples.png"]
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
