"""run.json: the record of one run (:class:`RunRecord`) and of each of its stages (:class:`StageRecord`),
with the one writer and the one reader of the file.

The record is what a run says about itself while it runs and after: status, config, versions, where it
ran, each stage's status, time and files, every file gandid wrote (so ``--force`` removes exactly those),
notes, and how it ended. ``format`` (:data:`gandid.outdir.MARKER`) tells gandid's run.json from anyone
else's. Times are ISO 8601 in UTC to the second; ``seconds`` are wall-clock seconds of a stage.

JSON keys follow the fields' order. A field that is None is not in the file (``error`` only after a
failure, ``resumes`` only after a ``--resume``); a record read from a file keeps that file's key order, new
keys following in field order, and keys this gandid does not know (``extra``): a record read and
written again changes only what the run changed.
"""
from __future__ import annotations

import datetime as dt
import json
import platform
from dataclasses import dataclass, field, fields
from pathlib import Path

from . import outdir
from .version import __version__

RECORD_NAME = "run.json"
# what a run.json must hold to be taken as gandid's (besides the format marker)
_SCHEMA = {"format": str, "config": dict, "stages": dict, "files": list, "status": str}


def now() -> str:
    """The time now, as run.json writes it: ISO 8601, UTC, to the second."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class _JsonRecord:
    """A dataclass written as one JSON object: its fields are the keys (``extra`` and ``key_order`` aside)."""

    @classmethod
    def keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if f.name not in ("extra", "key_order"))

    def to_json(self) -> dict:
        """The JSON object: keys in the order they were read (unknown ones included), then the fields set since."""
        present = {key: getattr(self, key) for key in self.keys()
                   if getattr(self, key) is not None or key in self.key_order}
        present.update(self.extra)
        order = [key for key in self.key_order if key in present] + [key for key in present
                                                                     if key not in self.key_order]
        return {key: present[key] for key in order}

    @classmethod
    def _fields_of(cls, data: dict) -> dict:
        """``data``'s known keys as constructor arguments, with its unknown keys and its key order."""
        known = cls.keys()
        return dict({k: v for k, v in data.items() if k in known},
                    extra={k: v for k, v in data.items() if k not in known}, key_order=tuple(data))


@dataclass
class StageRecord(_JsonRecord):
    """One stage (analysis) in run.json's ``stages``.

    ``status``: running, done, failed, skipped (a required analysis failed), interrupted, deferred (a
    shard's stage that needs the merged result of another), contributed (a shard did its part)."""

    status: str
    started: str | None = None
    files: list[str] | None = None  # relative to the output folder, listed as soon as each is created
    error: str | None = None
    traceback: str | None = None
    seconds: float | None = None  # wall clock, rounded to the millisecond
    ranks: list[dict] | None = None  # per process of a group: rank, seconds, shares
    note: str | None = None
    extra: dict = field(default_factory=dict, repr=False)
    key_order: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict) -> StageRecord:
        if not isinstance(data, dict) or not isinstance(data.get("status"), str):
            raise ValueError(f"a stage record is an object with a status, not {data!r}")
        return cls(**cls._fields_of(data))


@dataclass
class RunRecord(_JsonRecord):
    """The whole of run.json (see the module docstring for how it is written)."""

    format: str = outdir.MARKER
    gandid_version: str | None = None
    status: str = "running"  # then completed, completed_with_errors, failed, interrupted or shard_done
    started: str | None = None
    config: dict = field(default_factory=dict)  # RunConfig.to_json()
    versions: dict | None = None  # gandid, torch, python and each plugin used
    seeds: dict | None = None
    device: str | None = None
    distributed: dict | None = None  # world_size, backend, threads_per_process, ...
    layers: list[str] | None = None
    analysis_options: dict | None = None  # effective: the config's over the generator's suggestions
    stages: dict[str, StageRecord] = field(default_factory=dict)  # in the order they ran
    files: list[str] = field(default_factory=list)  # every file of the run, relative to the output folder
    op_backend: str | None = None
    notes: list[str] | None = None
    weights: dict | None = None  # per model: what it says it loaded
    resumes: list[str] | None = None  # when each --resume started
    error: str | None = None
    ended: str | None = None
    extra: dict = field(default_factory=dict, repr=False)
    key_order: tuple[str, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def begin(cls, *, config: dict, plugins: dict, seed: int, device: str, distributed: dict, layers: list[str],
              analysis_options: dict) -> RunRecord:
        """A new run's record, status running, started now."""
        import torch

        return cls(gandid_version=__version__, status="running", started=now(), config=config,
                   versions={"gandid": __version__, "torch": torch.__version__, "python": platform.python_version(),
                             "plugins": plugins},
                   seeds={"samples": seed}, device=device, distributed=distributed, layers=layers,
                   analysis_options=analysis_options, stages={}, files=[])

    def to_json(self) -> dict:
        data = super().to_json()
        if "stages" in data:
            data["stages"] = {name: stage.to_json() for name, stage in self.stages.items()}
        return data

    @classmethod
    def from_json(cls, data: dict) -> RunRecord:
        """The record of run.json's object ``data`` (ValueError if a stage is not a stage record)."""
        values = cls._fields_of(data)
        values["stages"] = {name: StageRecord.from_json(stage) for name, stage in data.get("stages", {}).items()}
        return cls(**values)

    # -- the one writer and the one reader -----------------------------------------------------
    def write(self, folder: Path) -> None:
        """``folder/run.json``, atomically: it holds the previous record or this one, never half of one."""
        outdir.write_json(Path(folder) / RECORD_NAME, self.to_json())

    @classmethod
    def read(cls, folder: Path) -> RunRecord | None:
        """``folder/run.json`` if it is gandid's (format marker and schema), else None."""
        try:
            return cls.load(folder)
        except ValueError:
            return None

    @classmethod
    def load(cls, folder: Path) -> RunRecord:
        """``folder/run.json``; ValueError saying why it is not gandid's (unreadable, no format marker, or a
        key of the wrong kind), for messages that must say what is wrong with the file."""
        try:
            data = json.loads((Path(folder) / RECORD_NAME).read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"unreadable: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != outdir.MARKER:
            raise ValueError("no gandid format marker")
        wrong = [key for key, kind in _SCHEMA.items() if not isinstance(data.get(key), kind)]
        if wrong:
            raise ValueError(f"{', '.join(map(repr, wrong))} missing or of the wrong kind")
        try:
            return cls.from_json(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(str(exc)) from None

    # -- what a run changes --------------------------------------------------------------------
    def stage_status(self, name: str) -> str | None:
        """The status of stage ``name``, None if it has not run."""
        stage = self.stages.get(name)
        return None if stage is None else stage.status

    def add_files(self, names: list[str]) -> None:
        """List ``names`` among the run's files (once each, in order)."""
        self.files = list(dict.fromkeys(self.files + list(names)))

    def interrupt_running_stages(self) -> None:
        """Stages still running when the run stopped are interrupted."""
        for stage in self.stages.values():
            if stage.status == "running":
                stage.status = "interrupted"
