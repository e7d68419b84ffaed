"""The stage loop: each analysis of a plan, in order, as one stage of the run.

A stage is kept when an earlier run finished it (its ``NAME.json``), deferred when a shard cannot
finish it (it needs the merged result of another, or this shard's part is already contributed),
skipped when an analysis it requires failed, and otherwise run: listed as running in run.json
before any work, each file listed as soon as it is made, then done, failed (the other stages go on,
unless other processes wait for this one) or, for a shard, contributed. Every process of a group
runs every stage's share; only rank 0 writes the output folder and run.json.
"""
from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from rich.markup import escape
from rich.progress import Progress

from . import outdir
from .analysis import AnalysisResult, RunContext
from .distributed import ShardStop
from .errors import DiskFullError, GandidError
from .planning import RunPlan
from .record import RunRecord, StageRecord, now
from .state import EXCHANGE_DIR, exchange_path


@dataclass
class RunResult:
    """What a run gives back (`gandid run`'s outcome; run.json has the rest)."""

    out_dir: Path
    status: str
    results: dict = field(default_factory=dict)  # analysis -> JSON data
    errors: dict = field(default_factory=dict)  # analysis -> message
    deferred: list = field(default_factory=list)  # a shard's stages left to `gandid merge`


class StageLoop:
    """Runs ``plan``'s stages into ``result``, keeping ``record`` current (rank 0 writes it)."""

    def __init__(self, plan: RunPlan, record: RunRecord, result: RunResult, progress: Progress):
        self.plan, self.record, self.result, self.progress = plan, record, result, progress
        self.collective = plan.collective

    def run(self) -> None:
        for name in self.plan.order:
            self.run_stage(name)

    def _kept_result(self, name: str) -> dict | None:
        """A stage finished by an earlier run: its result (read by rank 0, sent to every process), or None."""
        data = None
        if self.collective.is_writer:
            data_file = self.plan.out / f"{name}.json"
            if self.record.stage_status(name) == "done" and data_file.exists():
                try:
                    data = json.loads(data_file.read_text())
                except (ValueError, UnicodeDecodeError) as exc:
                    raise GandidError(f"the result of stage {name!r} is damaged: {data_file} ({exc}). Delete it and "
                                      f"--resume to redo only {name!r}, or start over with --force") from None
        return self.collective.broadcast(data)

    def _save_record(self) -> None:
        """Rank 0 writes run.json; the other processes keep to their own state."""
        if self.collective.is_writer:
            self.record.write(self.plan.out)

    def _say(self, message: str) -> None:
        """Rank 0 speaks on its console; the others prefix their rank (they log, not draw)."""
        prefix = "" if self.collective.is_writer else escape(f"[rank {self.collective.rank}] ")
        self.plan.console.print(prefix + message)

    def run_stage(self, name: str) -> None:
        plan, record, result = self.plan, self.record, self.result
        out = plan.out
        self.collective.begin_stage(name)
        kept = self._kept_result(name)
        if kept is not None:
            result.results[name] = kept
            self._say(f"[dim]{name}: done in a previous run, kept[/dim]")
            return
        if record.stage_status(name) == "contributed" and exchange_path(out, name).exists():
            result.deferred.append(name)
            self._say(f"[dim]{name}: this shard's part done in a previous run, kept[/dim]")
            return
        requires = getattr(plan.analyses[name], "requires", ())
        waiting = [d for d in requires if d in result.deferred]
        if waiting:
            record.stages[name] = StageRecord("deferred", note=f"needs the merged {waiting}: gandid merge runs it")
            result.deferred.append(name)
            return
        missing = [d for d in requires if d not in result.results]
        if missing:
            record.stages[name] = StageRecord("skipped", error=f"required analyses failed: {missing}")
            result.errors[name] = record.stages[name].error
            return
        stage = record.stages[name] = StageRecord("running", started=now(), files=[])

        def listed(file: str) -> None:
            # Listed the moment it is created, so --force can remove it even if this run is killed.
            if file not in stage.files:
                stage.files.append(file)
                self._save_record()

        ctx = RunContext(name=name, config=plan.cfg, generator=plan.generator, segmenter=plan.segmenter,
                         layers=plan.layers, device=plan.device, out_dir=out, progress=self.progress,
                         results=result.results, options=plan.analysis_options[name], on_artefact=listed,
                         collective=self.collective)
        self._save_record()
        t0 = time.perf_counter()
        try:
            ctx.state  # noqa: B018 -- every process loads its starting state (Collective.initial_state) here
            value = plan.analyses[name].run(ctx)
        except ShardStop:
            stage.status, stage.seconds = "contributed", round(time.perf_counter() - t0, 3)
            stage.files = [f"{outdir.STATE_DIR}/{EXCHANGE_DIR}/{name}.pt"]
            result.deferred.append(name)
            self._save_record()
            self._say(f"[green]{name}[/green]: this shard's part done in {stage.seconds:.1f} s")
            return
        except Exception as exc:  # one failing analysis must not take the others down
            if isinstance(exc, DiskFullError):  # ... but a full disk takes them all: stop, keep what is written
                raise
            full = outdir.disk_full_error(exc, getattr(exc, "filename", None)
                                          or f"a file of analysis {name!r} in {str(out)!r}")
            if full is not None:
                raise full from None
            plugin = plan.registry.get("analysis", name).plugin.name
            message = (f"analysis {name!r} failed: {exc}" if isinstance(exc, GandidError)
                       else f"analysis {name!r} (plugin {plugin!r}) failed: {type(exc).__name__}: {exc}")
            stage.status, stage.error, stage.traceback = "failed", message, traceback.format_exc(limit=8)
            stage.seconds = round(time.perf_counter() - t0, 3)
            result.errors[name] = message
            self._say(f"[red]{escape(message)}[/red]")
            self._save_record()
            if self.collective.waits_for_others:
                # the other processes wait for this one in the analysis's next exchange: stop them all
                # (torchrun ends the group when a process fails); --resume continues with the others' work
                raise
            return
        if not isinstance(value, AnalysisResult):
            value = AnalysisResult(value)
        seconds = round(time.perf_counter() - t0, 3)
        # decides=True: a shard (or the merge) has no one to exchange this with
        ranks = self.collective.all_gather({"rank": self.collective.rank, "seconds": seconds, "shares": ctx.shares},
                                           decides=True)
        if self.collective.is_writer:  # rank 0 writes the output folder
            outdir.write_json(out / f"{name}.json", value.data)
        files = [f"{name}.json", *dict.fromkeys(ctx.artefacts + value.artefacts)]
        stage.status, stage.seconds, stage.files = "done", seconds, files
        if self.collective.world_size > 1:
            stage.ranks = ranks
        record.add_files(files)
        result.results[name] = value.data
        self._save_record()
        self._say(f"[green]{name}[/green] done in {seconds:.1f} s")
