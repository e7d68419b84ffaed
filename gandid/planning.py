"""Everything a run decides before any work: a :class:`RunPlan`.

:func:`plan_run` checks, cheapest first, so that a mistake costs seconds rather than a model load:

1. plugin names (``--generator auto`` recognised from the weights) and ``analysis_options`` names;
2. every option against its factory's signature (names and types);
3. the device and CPU threads of this process, then the output folder: writable, locked for this run
   alone, and what happens to what it holds (:func:`claim_out_dir`: new, ``--resume`` or ``--force``);
   rank 0 decides for every process of the run;
4. the models (:mod:`gandid.models`), the layers, each analysis's effective options, the analyses in
   dependency order (:func:`order_analyses`) and their own checks;
5. what runs the fused op (:func:`choose_op`), built here on a first run.

Nothing on disk changes beyond an empty output folder and its lock, until the run starts and
:func:`take_over` applies the claim.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from . import outdir
from .config import RunConfig, check_options, option_names
from .distributed import Collective, process_device, split_threads
from .errors import ConfigError, FusedOpUnavailable, GandidError, OutputExistsError, UnknownNameError
from .model import find_layer
from .models import as_config_error, build_models, build_plugin, model_options, resolve_device
from .record import RECORD_NAME, RunRecord, now
from .registry import Registry, get_registry
from .state import load_state_file, state_path

_RESUME_IGNORES = ("resume", "force", "out", "require_fused")  # none changes a number


@dataclass
class RunPlan:
    """A validated run, ready to execute: its models, analyses and order, and the output folder's lock
    (held until :meth:`close`)."""

    cfg: RunConfig
    registry: Registry
    console: Console
    collective: Collective
    notes: list[str] = field(default_factory=list)  # said once on the console and kept in run.json
    device: str = "cpu"  # this process's device, e.g. cuda:1
    threads: int = 1  # CPU threads of this process
    lock: outdir.OutputLock | None = None  # rank 0's (or a shard's) lock on the output folder
    previous: RunRecord | None = None  # the run found in the output folder, to continue or replace
    generator: Any = None
    segmenter: Any = None  # None without --segmenter
    layers: list[str] = field(default_factory=list)
    analysis_options: dict[str, dict] = field(default_factory=dict)  # effective, per analysis
    analyses: dict[str, Any] = field(default_factory=dict)  # name -> built analysis
    order: list[str] = field(default_factory=list)  # the analyses in the order they run
    op_backend: str = "reference"

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    def note(self, message: str) -> None:
        """Keep ``message`` for run.json's notes and say it once (rank 0), not once per process."""
        self.notes.append(message)
        if self.collective.is_writer:
            self.console.print(f"[yellow]note:[/yellow] {escape(message)}")

    def close(self) -> None:
        """Release the output folder (idempotent)."""
        if self.lock is not None:
            self.lock.release()

    def plugin_versions(self) -> dict:
        """``kind:name`` -> plugin, package and version of every plugin the run uses."""
        used = [("generator", self.cfg.generator)] + [("analysis", n) for n in self.order]
        if self.cfg.segmenter:
            used.append(("segmenter", self.cfg.segmenter))
        out = {}
        for kind, name in used:
            plugin = self.registry.get(kind, name).plugin
            out[f"{kind}:{name}"] = {"plugin": plugin.name, "package": plugin.package, "version": plugin.version}
        return out

    def new_record(self) -> RunRecord:
        """The record of this run starting afresh."""
        return RunRecord.begin(config=self.cfg.to_json(), plugins=self.plugin_versions(), seed=self.cfg.seed,
                               device=self.device,
                               distributed={**self.collective.describe(), "threads_per_process": self.threads},
                               layers=self.layers, analysis_options=self.analysis_options)


def plan_run(cfg: RunConfig, registry: Registry | None = None, console: Console | None = None,
             collective: Collective | None = None) -> RunPlan:
    """Check everything and load the models (see the module docstring); the caller closes the plan."""
    registry = registry or get_registry()
    console = console or Console(stderr=True)
    cfg.check()
    plan = RunPlan(cfg, registry, console, collective or Collective())
    analysis_names = _check_names(plan)
    gen_options, seg_options = model_options(cfg)
    _check_option_types(plan, analysis_names, gen_options, seg_options)
    plan.device = process_device(resolve_device(cfg.device), plan.collective)
    plan.threads = split_threads(plan.collective)
    created = _claim(plan)
    try:
        _load(plan, gen_options, seg_options, analysis_names)
    except BaseException:
        plan.close()
        if created and plan.out.is_dir() and not any(plan.out.iterdir()):
            plan.out.rmdir()
        raise
    return plan


def _check_names(plan: RunPlan) -> list[str]:
    """1. Names first: cheap, and the most common mistake. Returns the selected analyses."""
    cfg, reg = plan.cfg, plan.registry
    if cfg.generator == "auto":  # which plugin reads --weights; the run records the one found
        if not cfg.weights:
            raise ConfigError("--generator auto recognises the generator from its weights: give --weights FILE")
        from .formats import detect_generator

        cfg.generator, found = detect_generator(reg, cfg.weights)
        plan.note(f"--generator auto: {found} -> generator {cfg.generator!r}")
    if cfg.generator not in reg.names("generator"):
        if cfg.generator == RunConfig.generator:
            others = ", ".join(reg.names("generator")) or "none"
            raise ConfigError(f"no default generator installed: the embedded {cfg.generator!r} model is not in "
                              f"this installation. Choose one with --generator NAME --weights FILE "
                              f"(installed: {others})")
        raise UnknownNameError("generator", cfg.generator, reg.names("generator"))
    if cfg.segmenter is not None:
        reg.get("segmenter", cfg.segmenter)
    analysis_names = cfg.analysis if cfg.analysis is not None else reg.names("analysis")
    if not analysis_names:
        raise ConfigError("no analysis plugin is installed (see `gandid plugins`)")
    for name in analysis_names:
        reg.get("analysis", name)
    for name in cfg.analysis_options:
        if name not in reg.names("analysis"):
            raise UnknownNameError("analysis in analysis_options", name, reg.names("analysis"))
        if name not in analysis_names:  # a config shared between runs that select different analyses
            plan.note(f"[analysis_options.{name}] ignored: analysis {name!r} is not selected in this run")
    return analysis_names


def _check_option_types(plan: RunPlan, analysis_names: list[str], gen_options: dict, seg_options: dict) -> None:
    """2. Options against the factories' signatures: names and types."""
    cfg, reg = plan.cfg, plan.registry
    check_options(f"generator {cfg.generator!r}", reg.get("generator", cfg.generator).factory, gen_options)
    if cfg.segmenter is not None:
        check_options(f"segmenter {cfg.segmenter!r}", reg.get("segmenter", cfg.segmenter).factory, seg_options)
    for name in analysis_names:
        check_options(f"analysis {name!r}", reg.get("analysis", name).factory, cfg.analysis_options.get(name, {}))


def _claim(plan: RunPlan) -> bool:
    """3. The output folder, before anything slow: writable, ours alone, and what happens to it. Rank 0
    decides for every process of the run and tells them (or what it refused). Returns whether the
    folder was created here (an empty one is removed again if loading fails)."""
    out, collective = plan.out, plan.collective
    created = False
    if collective.is_writer:
        try:
            if out.exists() and not out.is_dir():
                raise OutputExistsError(f"--out {str(out)!r} exists and is not a folder")
            created = not out.exists()
            outdir.check_writable(out)
            plan.lock = outdir.OutputLock(out)
            plan.lock.acquire()
            plan.previous = claim_out_dir(plan.cfg, out)
            _check_world(plan)
        except GandidError as exc:
            collective.broadcast(("refused", type(exc).__name__, str(exc)))
            plan.close()
            raise
        collective.broadcast(("ok", None, plan.previous))
    else:
        verdict, kind, detail = collective.broadcast(None)
        if verdict == "refused":
            raise GandidError(f"rank 0 refused the run ({kind}): {detail}")
        plan.previous = detail
    return created


def _load(plan: RunPlan, gen_options: dict, seg_options: dict, analysis_names: list[str]) -> None:
    """4. Models, then layers (which only the generator knows), then the analyses and their checks."""
    cfg, reg = plan.cfg, plan.registry
    plan.generator, plan.segmenter = build_models(reg, cfg, plan.device, gen_options, seg_options)
    layers = cfg.layer or [getattr(plan.generator, "default_layer", None)
                           or plan.generator.layers[len(plan.generator.layers) // 2].name]
    plan.layers = [find_layer(plan.generator, name).name for name in layers]
    plan.analysis_options = {name: _options_for(plan, name) for name in analysis_names}
    plan.analyses = {name: build_plugin(reg, "analysis", name, plan.analysis_options[name])
                     for name in analysis_names}
    plan.order = order_analyses(analysis_names, plan.analyses)
    if plan.segmenter is None:
        needing = [n for n in plan.order if getattr(plan.analyses[n], "needs_segmenter", True)]
        if needing:
            raise ConfigError(f"analyses {needing} need a segmenter: give --segmenter")
    for name in plan.order:  # e.g. class names, which only the segmenter knows
        check = getattr(plan.analyses[name], "check", None)
        if check is not None:
            as_config_error(reg, "analysis", name, check, plan.generator, plan.segmenter, plan.layers)
    # 5. The fused op, built here on a first run: before any work, and so that a run interrupted during
    #    the build has written nothing
    plan.op_backend = choose_op(plan)


def _options_for(plan: RunPlan, analysis: str) -> dict:
    """The generator's suggested options for this analysis (``analysis_defaults``, sized to the
    model: e.g. the embedded toyroom keeps the default run under five minutes on a CPU), under
    the user's; suggestions the analysis does not take are dropped (a third-party analysis may
    share a name with the one they were written for)."""
    suggested = dict((getattr(plan.generator, "analysis_defaults", None) or {}).get(analysis, {}))
    accepted = option_names(plan.registry.get("analysis", analysis).factory)
    if accepted is not None:
        suggested = {k: v for k, v in suggested.items() if k in accepted}
    return {**suggested, **plan.cfg.analysis_options.get(analysis, {})}


def order_analyses(names: list[str], analyses: dict) -> list[str]:
    """Topological order honouring each analysis's ``requires`` (missing requirements are errors) and
    ``after`` (run after these when they are selected too, without needing them: the pipeline order the
    report follows)."""
    order, visiting = [], set()

    def visit(name, chain):
        if name in order:
            return
        if name in visiting:
            raise ConfigError(f"analyses require each other in a cycle: {' -> '.join(chain + [name])}")
        visiting.add(name)
        for dep in getattr(analyses[name], "requires", ()):
            if dep not in analyses:
                raise ConfigError(f"analysis {name!r} requires {dep!r}: add it to --analysis")
            visit(dep, chain + [name])
        for dep in getattr(analyses[name], "after", ()):
            if dep in analyses:
                visit(dep, chain + [name])
        visiting.discard(name)
        order.append(name)

    for name in names:
        visit(name, [])
    return order


def choose_op(plan: RunPlan) -> str:
    """What runs the fused ops: built or loaded now; a fallback to the reference is said plainly (console,
    run.json's notes, the report), with why and what it costs, or refused with ``require_fused``."""
    import os
    import warnings

    import torch

    from .ops import REFERENCE_COST, backend_name, build

    forced = os.environ.get("GANDID_OP_BACKEND", "").strip().lower()
    try:
        with warnings.catch_warnings():  # the note below says it, once, with what it costs
            warnings.filterwarnings("ignore", message="gandid: the fused op could not be built")
            backend = backend_name(plan.device)
    except ValueError as exc:  # a misspelt GANDID_OP_BACKEND or GANDID_BUILD_WAIT
        raise ConfigError(str(exc)) from None
    except Exception as exc:
        if forced != "ext":
            raise
        raise FusedOpUnavailable(f"GANDID_OP_BACKEND=ext: the fused op is unavailable: {build.summary(exc)}. "
                                 "Run `gandid build-ext --verbose` to see the build") from None
    if build.cache_note():
        plan.note(build.cache_note())
    if backend != "reference":
        return backend
    if forced == "reference":
        why = "GANDID_OP_BACKEND=reference asks for the reference"
    elif build.build_error():
        why = build.build_error()
    else:
        why = f"it has no kernels for {torch.device(plan.device).type!r} tensors"
    message = (f"the fused op is not used ({why}): the PyTorch reference runs instead, {REFERENCE_COST}. "
               "`gandid build-ext` builds the op and shows what failed; --require-fused makes this an error")
    if plan.cfg.require_fused:
        raise FusedOpUnavailable(f"--require-fused: {message}")
    plan.note(message)
    return backend


# -- the output folder's claim: decided here, applied by take_over when the work starts -------------
def claim_out_dir(cfg: RunConfig, out: Path) -> RunRecord | None:
    """Decide what happens to ``out`` (the caller holds its lock); change nothing yet.

    Returns the previous gandid record when resuming or replacing, None for an empty folder."""
    if outdir.is_empty(out):
        if cfg.resume:
            raise ConfigError(f"--resume: nothing to resume in {str(out)!r} (no run.json); run without --resume")
        return None
    try:
        record, why_not = RunRecord.load(out), None
    except ValueError as exc:
        record, why_not = None, str(exc)
    not_ours = (f"its run.json was not written by this gandid ({why_not})" if (out / RECORD_NAME).exists()
                else f"it has no {RECORD_NAME}")
    killed = record is not None and record.status == "running"
    if cfg.resume:
        if record is None:
            raise ConfigError(f"--resume: {str(out)!r} is not a gandid run to resume: {not_ours}")
        old = record.config
        new = cfg.to_json()
        differ = [k for k in new if k not in _RESUME_IGNORES and old.get(k) != new[k]]
        if differ:
            raise ConfigError(f"--resume: the config differs from the run in {str(out)!r} in: "
                              + ", ".join(f"{k} (was {old.get(k)!r}, now {new[k]!r})" for k in differ)
                              + "; resume with the same config or use a new --out")
        _check_state_files(out, record)
        return record
    if cfg.force:
        if record is None:
            raise OutputExistsError(f"--force: refusing to clear {str(out)!r}: it is not a gandid output folder "
                                    f"({not_ours}); choose another --out")
        return record
    hint = (" (its run.json still says 'running' but no process holds the folder: that run was killed)"
            if killed else "")
    raise OutputExistsError(f"output folder {str(out)!r} is not empty{hint}: pass --resume to continue that run, "
                            "--force to replace it, or choose another --out")


def _check_state_files(out: Path, record: RunRecord) -> None:
    """Every unfinished stage's saved statistics must load before a resume starts any work."""
    for name, stage in record.stages.items():
        path = state_path(out, name)
        if stage.status != "done" and path.exists():
            load_state_file(path, name)


def _check_world(plan: RunPlan) -> None:
    """A run continues with the number of processes it started with: each one's share depends on it."""
    previous, cfg = plan.previous, plan.cfg
    if previous is None or not cfg.resume:
        return
    was = (previous.distributed or {}).get("world_size", 1)
    if was != plan.collective.world_size:
        raise ConfigError(f"--resume: the run in {cfg.out!r} was started by {was} process(es) and this is "
                          f"{plan.collective.world_size}: resume it with {was} (each process's share of the samples "
                          "and units depends on the count), or use a new --out")


def take_over(plan: RunPlan) -> RunRecord:
    """Apply the decision made at planning: replace (``--force``) or continue (``--resume``) the previous
    run, cleaning up after one that was killed, and say what was found. Returns the record to continue
    (rank 0 only; the output folder exists)."""
    out, previous = plan.out, plan.previous
    if previous is not None and plan.cfg.force:
        found, partial = [], outdir.stale_temporaries(out, previous.to_json())
        if previous.status == "running":
            found.append("run.json said 'running'")
        if partial:
            found.append(f"it left partial writes: {', '.join(partial)}")
        if found:
            plan.note(f"--force: the previous run was killed while running ({'; '.join(found)}); starting over")
        removed, kept = outdir.clear_run(out, previous.to_json())
        plan.note(f"--force: removed {len(removed)} files of the previous run in {str(out)!r}"
                  + (f"; kept {len(kept)} files gandid did not write: {', '.join(kept[:8])}"
                     + (" ..." if len(kept) > 8 else "") if kept else ""))
        previous = None
    if previous is None:
        return plan.new_record()
    for name in outdir.stale_temporaries(out, previous.to_json()):
        (out / name).unlink()
        plan.note(f"removed {name}, a partial write left by a run that was killed")
    if previous.status == "running":
        plan.note("the previous run was killed while running (run.json said 'running'); continuing it")
    previous.interrupt_running_stages()
    previous.status = "running"
    previous.resumes = (previous.resumes or []) + [now()]
    return previous
