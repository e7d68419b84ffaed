"""`gandid run`: plan everything, then run the analyses, keeping run.json current.

The run in parts: :mod:`gandid.planning` checks the config, claims the output folder and loads the
models (a :class:`~gandid.planning.RunPlan`); :func:`~gandid.planning.take_over` applies the claim;
:mod:`gandid.samples` draws samples.png; :mod:`gandid.stages` runs the analyses; :mod:`gandid.report`
writes report.html; :class:`~gandid.record.RunRecord` is run.json throughout. This module puts them in
order and records how the run ends, whatever stops it.
"""
from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from .config import RunConfig
from .distributed import Collective, Shard, from_environment, launched_by_torchrun
from .errors import ConfigError, DiskFullError, GandidError
from .models import resolve_device, weights_info
from .planning import RunPlan, plan_run, take_over
from .progress import no_bars, progress_bars
from .record import RunRecord, now
from .registry import Registry
from .samples import SAMPLES_NAME, write_samples
from .stages import RunResult, StageLoop

__all__ = ["run", "RunResult"]


def run(config: RunConfig | dict, registry: Registry | None = None, console: Console | None = None,
        collective: Collective | None = None) -> RunResult:
    """Validate ``config`` fully, then run every selected analysis into ``config.out``. Under ``torchrun``
    (or with a ``collective``) the processes share the work and rank 0 writes the folder."""
    cfg = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
    own = collective is None
    if cfg.shard is not None and (collective is not None or launched_by_torchrun()):
        raise ConfigError("--shard runs one shard without a process group: do not combine it with torchrun")
    if collective is None and cfg.shard is not None:
        collective = Shard(*cfg.shard_of(), cfg.out)
    collective = collective or from_environment(resolve_device(cfg.device))
    finished = False
    try:
        plan = plan_run(cfg, registry=registry, console=console, collective=collective)
        try:
            result = _execute(plan)
        finally:
            plan.close()
        finished = True
        return result
    finally:
        if own:
            collective.close(finished)


def _execute(plan: RunPlan) -> RunResult:
    out, console = plan.out, plan.console
    writer = plan.collective.is_writer
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        record = take_over(plan)
    # every process needs to know which stages are done; only rank 0 writes the folder
    record = plan.collective.broadcast(record if writer else None)
    if not writer:
        return _execute_as_helper(plan, record)
    record.op_backend = plan.op_backend
    record.notes = list(dict.fromkeys((record.notes or []) + plan.notes))
    record.weights = {kind: info for kind, info in (("generator", weights_info(plan.generator)),
                                                    ("segmenter", weights_info(plan.segmenter))) if info}
    record.write(out)
    result = RunResult(out, "running")
    progress = progress_bars(console)
    try:  # from here on, any stop is recorded in run.json
        try:
            write_samples(out, plan.generator, plan.segmenter, plan.cfg.seed, plan.device)
            record.add_files([SAMPLES_NAME])
        except DiskFullError:  # every write after this one would fail too
            raise
        except Exception as exc:  # pictures are a convenience: never lose the run for them
            console.print(f"[yellow]samples.png not written: {escape(f'{type(exc).__name__}: {exc}')}[/yellow]")
        with progress:
            StageLoop(plan, record, result, progress).run()
        record.status = result.status = "completed" if not result.errors else "completed_with_errors"
        record.ended = now()
        if isinstance(plan.collective, Shard):  # no report: the results are the merge's
            record.status = result.status = "shard_done" if not result.errors else "failed"
        else:
            _write_report(plan, record, result)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        record.status = result.status = "interrupted" if interrupted else "failed"
        if not interrupted:
            record.error = f"{type(exc).__name__}: {exc}"
        record.interrupt_running_stages()
        record.ended = now()
        try:
            record.write(out)
        except GandidError as again:  # a full disk may refuse this too: the original error matters more
            console.print(f"[yellow]run.json not updated: {escape(str(again))}[/yellow]")
        raise
    record.write(out)
    if isinstance(plan.collective, Shard):
        console.print(f"shard {plan.cfg.shard} done in {out}: once every shard is, join them with "
                      f"`gandid merge SHARD_DIR... --out DIR`")
    else:
        console.print(f"report: {out / 'report.html'}")
    return result


def _write_report(plan: RunPlan, record: RunRecord, result: RunResult) -> None:
    """report.html, listed in the record with every image it shows."""
    from .report import write_report

    record.add_files(["report.html"])
    shown = record.to_json()  # the report reads the record as run.json has it and lists its images there
    try:
        write_report(plan.out, shown, plan.analyses, result.results)
    finally:
        record.files = shown["files"]


def _execute_as_helper(plan: RunPlan, record: RunRecord) -> RunResult:
    """A process other than rank 0: run every stage's share, write nothing of the output folder
    (its state and scratch files go to ``state/rank-K/``), log stages instead of drawing bars."""
    result = RunResult(plan.out, "running")
    StageLoop(plan, record, result, no_bars(plan.console)).run()
    result.status = "completed" if not result.errors else "completed_with_errors"
    return result
