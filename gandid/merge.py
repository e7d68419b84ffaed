"""`gandid merge SHARD_DIR... --out DIR`: join the shards of one run (``gandid run --shard K/N``) into
the output folder one process would have written.

Each shard ran its share of every stage up to the stage's first exchange (see
:mod:`gandid.distributed`). The merge checks that the shards belong together (same config but for
``out`` and ``shard``, same gandid and plugin versions, shards 0..N-1 each exactly once, every shard
finished), then runs the analyses in one process: each stage starts from shard 0's state, takes the
shards' contributions where the shards stopped and does the rest itself.
"""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from .config import RunConfig, parse_shard
from .distributed import Merge
from .errors import ConfigError
from .record import RunRecord
from .state import EXCHANGE_DIR, exchange_path

_PER_SHARD = ("out", "shard", "resume", "force", "require_fused")  # config keys that may differ between shards


def read_shards(folders: list[str | Path]) -> list[tuple[Path, RunRecord]]:
    """The shards' folders and run.json records, in shard order, refused clearly unless they are the
    complete, consistent set of one run's shards."""
    if not folders:
        raise ConfigError("gandid merge: give the shard folders (written by `gandid run --shard K/N`)")
    shards = []
    for folder in map(Path, folders):
        record = RunRecord.read(folder)
        if record is None:
            raise ConfigError(f"gandid merge: {str(folder)!r} is not a gandid output folder (no gandid run.json)")
        shard = record.config.get("shard")
        if shard is None:
            raise ConfigError(f"gandid merge: {str(folder)!r} is a whole run, not a shard (it was not run with --shard)")
        shards.append((folder, record, parse_shard(shard)))
    counts = {count for _, _, (_, count) in shards}
    if len(counts) > 1:
        raise ConfigError(f"gandid merge: the shards split the run in different ways ({sorted(counts)} shards): "
                          "merge the shards of one split")
    count = counts.pop()
    seen: dict[int, Path] = {}
    for folder, _, (index, _) in shards:
        if index in seen:
            raise ConfigError(f"gandid merge: shard {index}/{count} given twice ({str(seen[index])!r} and "
                              f"{str(folder)!r}): the shards overlap")
        seen[index] = folder
    missing = [k for k in range(count) if k not in seen]
    if missing:
        raise ConfigError(f"gandid merge: shards {', '.join(f'{k}/{count}' for k in missing)} are missing: every "
                          f"shard of the {count} must be given")
    shards.sort(key=lambda item: item[2][0])
    first_folder, first, _ = shards[0]
    base = {k: v for k, v in first.config.items() if k not in _PER_SHARD}
    for folder, record, (index, _) in shards:
        config = {k: v for k, v in record.config.items() if k not in _PER_SHARD}
        differ = sorted(k for k in set(base) | set(config) if base.get(k) != config.get(k))
        if differ:
            raise ConfigError(f"gandid merge: shard {index} ({str(folder)!r}) was run with another config than shard "
                              f"0 ({str(first_folder)!r}) in: {', '.join(differ)}")
        if record.versions != first.versions:
            raise ConfigError(f"gandid merge: shard {index} ({str(folder)!r}) was run with other versions of gandid, "
                              f"torch or the plugins than shard 0: {record.versions} vs {first.versions}")
        if record.status != "shard_done":
            raise ConfigError(f"gandid merge: shard {index} ({str(folder)!r}) has not finished (status "
                              f"{record.status!r}): run it again with --resume")
    return [(folder, record) for folder, record, _ in shards]


def contributed_stages(shards: list[tuple[Path, RunRecord]]) -> set[str]:
    """Stages every shard contributed to (the same in all of them, each with its exchange file)."""
    stages = None
    for folder, record in shards:
        mine = {name for name, stage in record.stages.items() if stage.status == "contributed"}
        if stages is not None and mine != stages:
            raise ConfigError(f"gandid merge: {str(folder)!r} contributed to other stages ({sorted(mine)}) than the "
                              f"first shard ({sorted(stages)}): were they run with the same analyses?")
        stages = mine
        for name in mine:
            if not exchange_path(folder, name).exists():
                raise ConfigError(f"gandid merge: {str(folder)!r} lacks state/{EXCHANGE_DIR}/{name}.pt: run the shard "
                                  "again with --resume")
    return stages or set()


def merge(folders: list[str | Path], out: str, force: bool = False, registry=None, console: Console | None = None):
    """Check the shards, then run the analyses into ``out`` as one process would have, with the
    shards' work. Returns the :class:`gandid.stages.RunResult`."""
    from .runner import run

    shards = read_shards(folders)
    contributed = contributed_stages(shards)
    config = {k: v for k, v in shards[0][1].config.items() if k not in _PER_SHARD}
    cfg = RunConfig.from_dict(dict(config, out=str(out), force=bool(force)))
    collective = Merge([folder for folder, _ in shards], contributed)
    return run(cfg, registry=registry, console=console, collective=collective)
