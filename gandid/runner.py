"""`gandid run`: validate everything, then run the analyses, keeping run.json current."""
from __future__ import annotations

import datetime as dt
import json
import platform
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from . import __version__, outdir
from .analysis import Analysis, AnalysisResult, RunContext, load_state_file
from .config import RunConfig, check_options, option_names
from .contracts import check_contract
from .distributed import (
    EXCHANGE_DIR,
    Collective,
    Shard,
    ShardStop,
    from_environment,
    launched_by_torchrun,
    process_device,
    split_threads,
)
from .errors import ConfigError, DiskFullError, FusedOpUnavailable, GandidError, OutputExistsError, UnknownNameError
from .model import Generator, Segmenter, find_layer
from .registry import Registry, get_registry

_RESUME_IGNORES = ("resume", "force", "out", "require_fused")  # none changes a number


class RateColumn(ProgressColumn):
    """Items per second (samples, units, steps)."""

    def render(self, task):
        return Text("" if task.speed is None else f"{task.speed:,.1f}/s", style="cyan")


@dataclass
class RunResult:
    out_dir: Path
    status: str
    results: dict = field(default_factory=dict)  # analysis -> JSON data
    errors: dict = field(default_factory=dict)  # analysis -> message
    deferred: list = field(default_factory=list)  # a shard's stages left to `gandid merge`


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _order_analyses(names: list[str], analyses: dict) -> list[str]:
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


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device (use --device cpu or auto)")
    return device


def _claim_out_dir(cfg: RunConfig, out: Path) -> dict | None:
    """Decide what happens to ``out`` (the caller holds its lock); change nothing yet.

    Returns the previous gandid record when resuming or replacing, None for an empty folder."""
    if outdir.is_empty(out):
        if cfg.resume:
            raise ConfigError(f"--resume: nothing to resume in {str(out)!r} (no run.json); run without --resume")
        return None
    record = outdir.read_record(out)
    has_run_json = (out / "run.json").exists()
    not_ours = ("its run.json was not written by this gandid (no gandid format marker or an unreadable file)"
                if has_run_json else "it has no run.json")
    killed = record is not None and record.get("status") == "running"
    if cfg.resume:
        if record is None:
            raise ConfigError(f"--resume: {str(out)!r} is not a gandid run to resume: {not_ours}")
        old = record.get("config", {})
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


def _check_state_files(out: Path, record: dict) -> None:
    """Every unfinished stage's saved statistics must load before a resume starts any work."""
    for name, stage in record.get("stages", {}).items():
        path = out / outdir.STATE_DIR / f"{name}.pt"
        if stage.get("status") != "done" and path.exists():
            load_state_file(path, name)


def _as_config_error(reg: Registry, kind: str, name: str, fn, *args, **kwargs):
    """Call a plugin's factory or check; what it refuses becomes gandid's own message, not a traceback."""
    try:
        return fn(*args, **kwargs)
    except GandidError:
        raise
    except Exception as exc:
        plugin = reg.get(kind, name).plugin.name
        raise ConfigError(f"{kind} {name!r} (plugin {plugin!r}) refused its options: {type(exc).__name__}: {exc}"
                          ) from exc


PROTOCOLS = {"generator": Generator, "segmenter": Segmenter, "analysis": Analysis}


def _build(reg: Registry, kind: str, name: str, options: dict):
    """The plugin's object, checked against its protocol before any work."""
    obj = _as_config_error(reg, kind, name, reg.get(kind, name).factory, **options)
    check_contract(obj, PROTOCOLS[kind], f"{kind} {name!r} (plugin {reg.get(kind, name).plugin.name!r})")
    return obj


def model_options(cfg: RunConfig) -> tuple[dict, dict]:
    """The generator's and the segmenter's factory options, weights included."""
    return (dict(cfg.generator_options, **({"weights": cfg.weights} if cfg.weights else {})),
            dict(cfg.segmenter_options, **({"weights": cfg.seg_weights} if cfg.seg_weights else {})))


def build_models(reg: Registry, cfg: RunConfig, device: str, gen_options: dict | None = None,
                 seg_options: dict | None = None):
    """The run's generator and segmenter (None without one), checked against their protocols, on ``device``.
    Options default to the config's, weights included (how `gandid serve` rebuilds a finished run's models)."""
    if gen_options is None or seg_options is None:
        gen_options, seg_options = model_options(cfg)
    generator = _build(reg, "generator", cfg.generator, gen_options)
    segmenter = _build(reg, "segmenter", cfg.segmenter, seg_options) if cfg.segmenter else None
    for model in (generator, segmenter):
        if model is not None and hasattr(model, "to"):
            model.to(device)
    return generator, segmenter


class Session:
    """A validated run, ready to execute. Construction does every check, takes the output folder's
    lock and loads the models; it changes nothing on disk beyond creating an empty output folder."""

    def __init__(self, cfg: RunConfig, registry: Registry | None = None, console: Console | None = None,
                 collective: Collective | None = None):
        self.registry = registry or get_registry()
        self.console = console or Console(stderr=True)
        cfg.check()
        self.cfg = cfg
        self.collective = collective or Collective()
        self.notes: list[str] = []  # said once on the console and kept in run.json
        reg = self.registry

        # 1. Names first: cheap, and the most common mistake.
        if cfg.generator == "auto":  # which plugin reads --weights; the run records the one found
            if not cfg.weights:
                raise ConfigError("--generator auto recognises the generator from its weights: give --weights FILE")
            from .formats import detect_generator

            cfg.generator, found = detect_generator(reg, cfg.weights)
            self._note(f"--generator auto: {found} -> generator {cfg.generator!r}")
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
                self._note(f"[analysis_options.{name}] ignored: analysis {name!r} is not selected in this run")

        # 2. Options against the factories' signatures: names and types.
        gen_options, seg_options = model_options(cfg)
        check_options(f"generator {cfg.generator!r}", reg.get("generator", cfg.generator).factory, gen_options)
        if cfg.segmenter is not None:
            check_options(f"segmenter {cfg.segmenter!r}", reg.get("segmenter", cfg.segmenter).factory, seg_options)
        for name in analysis_names:
            check_options(f"analysis {name!r}", reg.get("analysis", name).factory, cfg.analysis_options.get(name, {}))

        # 3. The output folder, before anything slow: writable, ours alone, and what happens to it.
        #    Rank 0 decides for every process of the run and tells them (or what it refused).
        self.device = process_device(resolve_device(cfg.device), self.collective)
        self.threads = split_threads(self.collective)
        out = Path(cfg.out)
        created = False
        if self.collective.is_writer:
            try:
                if out.exists() and not out.is_dir():
                    raise OutputExistsError(f"--out {str(out)!r} exists and is not a folder")
                created = not out.exists()
                outdir.check_writable(out)
                self.lock = outdir.OutputLock(out)
                self.lock.acquire()
                self.previous = _claim_out_dir(cfg, out)
                self._check_world(self.previous)
            except GandidError as exc:
                self.collective.broadcast(("refused", type(exc).__name__, str(exc)))
                self.close()
                raise
            self.collective.broadcast(("ok", None, self.previous))
        else:
            verdict, kind, detail = self.collective.broadcast(None)
            if verdict == "refused":
                raise GandidError(f"rank 0 refused the run ({kind}): {detail}")
            self.previous = detail
        try:
            self._load(gen_options, seg_options, analysis_names)
        except BaseException:
            self.close()
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            raise

    def _load(self, gen_options: dict, seg_options: dict, analysis_names: list[str]) -> None:
        """4. Models, then layers (which only the generator knows), then the analyses and their checks."""
        cfg, reg = self.cfg, self.registry
        self.generator, self.segmenter = build_models(reg, cfg, self.device, gen_options, seg_options)
        layers = cfg.layer or [getattr(self.generator, "default_layer", None)
                               or self.generator.layers[len(self.generator.layers) // 2].name]
        self.layers = [find_layer(self.generator, name).name for name in layers]
        self.analysis_options = {name: self._options_for(name) for name in analysis_names}
        self.analyses = {name: _build(reg, "analysis", name, self.analysis_options[name]) for name in analysis_names}
        self.order = _order_analyses(analysis_names, self.analyses)
        if self.segmenter is None:
            needing = [n for n in self.order if getattr(self.analyses[n], "needs_segmenter", True)]
            if needing:
                raise ConfigError(f"analyses {needing} need a segmenter: give --segmenter")
        for name in self.order:  # e.g. class names, which only the segmenter knows
            check = getattr(self.analyses[name], "check", None)
            if check is not None:
                _as_config_error(reg, "analysis", name, check, self.generator, self.segmenter, self.layers)
        # 5. The fused op, built here on a first run: before any work, and so that a run interrupted during
        #    the build has written nothing
        self.op_backend = self._choose_op()

    def _choose_op(self) -> str:
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
                backend = backend_name(self.device)
        except ValueError as exc:  # a misspelt GANDID_OP_BACKEND or GANDID_BUILD_WAIT
            raise ConfigError(str(exc)) from None
        except Exception as exc:
            if forced != "ext":
                raise
            raise FusedOpUnavailable(f"GANDID_OP_BACKEND=ext: the fused op is unavailable: {build.summary(exc)}. "
                                     "Run `gandid build-ext --verbose` to see the build") from None
        if build.cache_note():
            self._note(build.cache_note())
        if backend != "reference":
            return backend
        if forced == "reference":
            why = "GANDID_OP_BACKEND=reference asks for the reference"
        elif build.build_error():
            why = build.build_error()
        else:
            why = f"it has no kernels for {torch.device(self.device).type!r} tensors"
        message = (f"the fused op is not used ({why}): the PyTorch reference runs instead, {REFERENCE_COST}. "
                   "`gandid build-ext` builds the op and shows what failed; --require-fused makes this an error")
        if self.cfg.require_fused:
            raise FusedOpUnavailable(f"--require-fused: {message}")
        self._note(message)
        return backend

    def _check_world(self, previous: dict | None) -> None:
        """A run continues with the number of processes it started with: each one's share depends on it."""
        if previous is None or not self.cfg.resume:
            return
        was = (previous.get("distributed") or {}).get("world_size", 1)
        if was != self.collective.world_size:
            raise ConfigError(f"--resume: the run in {self.cfg.out!r} was started by {was} process(es) and this is "
                              f"{self.collective.world_size}: resume it with {was} (each process's share of the samples "
                              "and units depends on the count), or use a new --out")

    def _note(self, message: str) -> None:
        self.notes.append(message)
        if self.collective.is_writer:  # said once, not once per process
            self.console.print(f"[yellow]note:[/yellow] {escape(message)}")

    def close(self) -> None:
        """Release the output folder (idempotent)."""
        lock = getattr(self, "lock", None)
        if lock is not None:
            lock.release()

    def _options_for(self, analysis: str) -> dict:
        """The generator's suggested options for this analysis (``analysis_defaults``, sized to the
        model: e.g. the embedded toyroom keeps the default run under five minutes on a CPU), under
        the user's; suggestions the analysis does not take are dropped (a third-party analysis may
        share a name with the one they were written for)."""
        suggested = dict((getattr(self.generator, "analysis_defaults", None) or {}).get(analysis, {}))
        accepted = option_names(self.registry.get("analysis", analysis).factory)
        if accepted is not None:
            suggested = {k: v for k, v in suggested.items() if k in accepted}
        return {**suggested, **self.cfg.analysis_options.get(analysis, {})}

    def _plugin_versions(self) -> dict:
        used = [("generator", self.cfg.generator)] + [("analysis", n) for n in self.order]
        if self.cfg.segmenter:
            used.append(("segmenter", self.cfg.segmenter))
        out = {}
        for kind, name in used:
            plugin = self.registry.get(kind, name).plugin
            out[f"{kind}:{name}"] = {"plugin": plugin.name, "package": plugin.package, "version": plugin.version}
        return out

    def _initial_record(self) -> dict:
        import torch

        return {
            "format": outdir.MARKER,
            "gandid_version": __version__,
            "status": "running",
            "started": _now(),
            "config": self.cfg.to_json(),
            "versions": {"gandid": __version__, "torch": torch.__version__, "python": platform.python_version(),
                         "plugins": self._plugin_versions()},
            "seeds": {"samples": self.cfg.seed},
            "device": self.device,
            "distributed": {**self.collective.describe(), "threads_per_process": self.threads},
            "layers": self.layers,
            "analysis_options": self.analysis_options,  # effective: the config's over the generator's suggestions
            "stages": {},
            "files": [],
        }

    def write_samples(self, out: Path, n: int = 16) -> None:
        """samples.png: the first n samples of the run's seed, with their segmentation below."""
        import torch

        from .plotting import pyplot
        from .segmentation import label_planes

        plt = pyplot()

        with torch.no_grad():
            z = self.generator.sample_z(n, self.cfg.seed).to(self.device)
            images = self.generator.forward(z).clamp(-1, 1).float().cpu()
            labels = self.segmenter.segment(images.to(self.device)).cpu() if self.segmenter is not None else None
        rows = 2 if labels is None else 4
        fig, axes = plt.subplots(rows, n // 2, figsize=(n // 2 * 1.3, rows * 1.35), squeeze=False)
        for i in range(n):
            r, c = (i // (n // 2)) * (rows // 2), i % (n // 2)
            axes[r][c].imshow(((images[i] + 1) / 2).permute(1, 2, 0).numpy())
            if labels is not None:
                axes[r + 1][c].imshow(label_planes(labels)[i, 0].numpy(), cmap="tab20", vmin=0, vmax=19,
                                      interpolation="nearest")  # a multi-label segmentation's first plane
        for ax in axes.ravel():
            ax.axis("off")
        fig.tight_layout()
        try:
            outdir.write_atomic(out / "samples.png", out / "samples.png.tmp",
                                lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
        finally:
            plt.close(fig)

    def _take_over(self, out: Path) -> dict:
        """Apply the decision made at validation: replace (``--force``) or continue (``--resume``) the
        previous run, cleaning up after one that was killed, and say what was found."""
        previous = self.previous
        if previous is not None and self.cfg.force:
            found, partial = [], outdir.stale_temporaries(out, previous)
            if previous.get("status") == "running":
                found.append("run.json said 'running'")
            if partial:
                found.append(f"it left partial writes: {', '.join(partial)}")
            if found:
                self._note(f"--force: the previous run was killed while running ({'; '.join(found)}); starting over")
            removed, kept = outdir.clear_run(out, previous)
            self._note(f"--force: removed {len(removed)} files of the previous run in {str(out)!r}"
                       + (f"; kept {len(kept)} files gandid did not write: {', '.join(kept[:8])}"
                          + (" ..." if len(kept) > 8 else "") if kept else ""))
            previous = None
        if previous is None:
            return self._initial_record()
        for name in outdir.stale_temporaries(out, previous):
            (out / name).unlink()
            self._note(f"removed {name}, a partial write left by a run that was killed")
        if previous.get("status") == "running":
            self._note("the previous run was killed while running (run.json said 'running'); continuing it")
        for name, stage in previous["stages"].items():
            if stage.get("status") == "running":
                stage["status"] = "interrupted"
        previous["status"] = "running"
        previous.setdefault("resumes", []).append(_now())
        return previous

    def execute(self) -> RunResult:
        try:
            return self._execute()
        finally:
            self.close()

    def _execute(self) -> RunResult:
        out = Path(self.cfg.out)
        writer = self.collective.is_writer
        if writer:
            out.mkdir(parents=True, exist_ok=True)
            record = self._take_over(out)
        # every process needs to know which stages are done; only rank 0 writes the folder
        record = self.collective.broadcast(record if writer else None)
        if not writer:
            return self._execute_as_helper(record)
        record["op_backend"] = self.op_backend
        record["notes"] = list(dict.fromkeys(record.get("notes", []) + self.notes))
        record["weights"] = {kind: info for kind, info in (("generator", _weights_info(self.generator)),
                                                           ("segmenter", _weights_info(self.segmenter))) if info}
        run_json = out / "run.json"
        outdir.write_json(run_json, record)
        result = RunResult(out, "running")
        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            RateColumn(), TimeElapsedColumn(), TimeRemainingColumn(), console=self.console,
                            transient=True)
        try:  # from here on, any stop is recorded in run.json
            try:
                self.write_samples(out)
                record["files"] = list(dict.fromkeys(record["files"] + ["samples.png"]))
            except DiskFullError:  # every write after this one would fail too
                raise
            except Exception as exc:  # pictures are a convenience: never lose the run for them
                self.console.print(f"[yellow]samples.png not written: {escape(f'{type(exc).__name__}: {exc}')}"
                                   "[/yellow]")
            with progress:
                for name in self.order:
                    self._run_stage(name, record, result, progress)
            record["status"] = result.status = "completed" if not result.errors else "completed_with_errors"
            record["ended"] = _now()
            if isinstance(self.collective, Shard):  # no report: the results are the merge's
                record["status"] = result.status = "shard_done" if not result.errors else "failed"
            else:
                from .report import write_report

                record["files"] = list(dict.fromkeys(record["files"] + ["report.html"]))
                write_report(out, record, self.analyses, result.results)
        except BaseException as exc:
            interrupted = isinstance(exc, KeyboardInterrupt)
            record["status"] = result.status = "interrupted" if interrupted else "failed"
            if not interrupted:
                record["error"] = f"{type(exc).__name__}: {exc}"
            for stage in record["stages"].values():
                if stage.get("status") == "running":
                    stage["status"] = "interrupted"
            record["ended"] = _now()
            try:
                outdir.write_json(run_json, record)
            except GandidError as again:  # a full disk may refuse this too: the original error matters more
                self.console.print(f"[yellow]run.json not updated: {escape(str(again))}[/yellow]")
            raise
        outdir.write_json(run_json, record)
        if isinstance(self.collective, Shard):
            self.console.print(f"shard {self.cfg.shard} done in {out}: once every shard is, join them with "
                               f"`gandid merge SHARD_DIR... --out DIR`")
        else:
            self.console.print(f"report: {out / 'report.html'}")
        return result

    def _execute_as_helper(self, record: dict) -> RunResult:
        """A process other than rank 0: run every stage's share, write nothing of the output folder
        (its state and scratch files go to ``state/rank-K/``), log stages instead of drawing bars."""
        result = RunResult(Path(self.cfg.out), "running")
        progress = Progress(console=self.console, disable=True)
        for name in self.order:
            self._run_stage(name, record, result, progress)
        result.status = "completed" if not result.errors else "completed_with_errors"
        return result

    def _kept_result(self, name: str, record: dict) -> dict | None:
        """A stage finished by an earlier run: its result (read by rank 0, sent to every process), or None."""
        data = None
        if self.collective.is_writer:
            data_file = Path(self.cfg.out) / f"{name}.json"
            if record["stages"].get(name, {}).get("status") == "done" and data_file.exists():
                try:
                    data = json.loads(data_file.read_text())
                except (ValueError, UnicodeDecodeError) as exc:
                    raise GandidError(f"the result of stage {name!r} is damaged: {data_file} ({exc}). Delete it and "
                                      f"--resume to redo only {name!r}, or start over with --force") from None
        return self.collective.broadcast(data)

    def _write(self, path: Path, data: dict) -> None:
        """Rank 0 writes the output folder; the other processes keep to their own state."""
        if self.collective.is_writer:
            outdir.write_json(path, data)

    def _say(self, message: str) -> None:
        """Rank 0 speaks on its console; the others prefix their rank (they log, not draw)."""
        prefix = "" if self.collective.is_writer else escape(f"[rank {self.collective.rank}] ")
        self.console.print(prefix + message)

    def _run_stage(self, name: str, record: dict, result: RunResult, progress: Progress) -> None:
        out = Path(self.cfg.out)
        run_json = out / "run.json"
        self.collective.begin_stage(name)
        kept = self._kept_result(name, record)
        if kept is not None:
            result.results[name] = kept
            self._say(f"[dim]{name}: done in a previous run, kept[/dim]")
            return
        if (record["stages"].get(name, {}).get("status") == "contributed"
                and (out / "state" / EXCHANGE_DIR / f"{name}.pt").exists()):
            result.deferred.append(name)
            self._say(f"[dim]{name}: this shard's part done in a previous run, kept[/dim]")
            return
        waiting = [d for d in getattr(self.analyses[name], "requires", ()) if d in result.deferred]
        if waiting:
            record["stages"][name] = {"status": "deferred", "note": f"needs the merged {waiting}: gandid merge runs it"}
            result.deferred.append(name)
            return
        missing = [d for d in getattr(self.analyses[name], "requires", ()) if d not in result.results]
        if missing:
            record["stages"][name] = {"status": "skipped", "error": f"required analyses failed: {missing}"}
            result.errors[name] = record["stages"][name]["error"]
            return
        record["stages"][name] = {"status": "running", "started": _now(), "files": []}

        def listed(file: str) -> None:
            # Listed the moment it is created, so --force can remove it even if this run is killed.
            if file not in record["stages"][name]["files"]:
                record["stages"][name]["files"].append(file)
                self._write(run_json, record)

        ctx = RunContext(name=name, config=self.cfg, generator=self.generator, segmenter=self.segmenter,
                         layers=self.layers, device=self.device, out_dir=out, progress=progress,
                         results=result.results, options=self.analysis_options[name], on_artefact=listed,
                         collective=self.collective)
        self._write(run_json, record)
        t0 = time.perf_counter()
        try:
            ctx.state  # noqa: B018 -- every process loads its starting state (Collective.initial_state) here
            value = self.analyses[name].run(ctx)
        except ShardStop:
            exchange = f"state/{EXCHANGE_DIR}/{name}.pt"
            record["stages"][name].update(status="contributed", seconds=round(time.perf_counter() - t0, 3),
                                          files=[exchange])
            result.deferred.append(name)
            self._write(run_json, record)
            self._say(f"[green]{name}[/green]: this shard's part done in {record['stages'][name]['seconds']:.1f} s")
            return
        except Exception as exc:  # one failing analysis must not take the others down
            if isinstance(exc, DiskFullError):  # ... but a full disk takes them all: stop, keep what is written
                raise
            full = outdir.disk_full_error(exc, getattr(exc, "filename", None)
                                          or f"a file of analysis {name!r} in {str(out)!r}")
            if full is not None:
                raise full from None
            plugin = self.registry.get("analysis", name).plugin.name
            message = (f"analysis {name!r} failed: {exc}" if isinstance(exc, GandidError)
                       else f"analysis {name!r} (plugin {plugin!r}) failed: {type(exc).__name__}: {exc}")
            record["stages"][name].update(status="failed", error=message, traceback=traceback.format_exc(limit=8),
                                          seconds=round(time.perf_counter() - t0, 3))
            result.errors[name] = message
            self._say(f"[red]{escape(message)}[/red]")
            self._write(run_json, record)
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
        self._write(out / f"{name}.json", value.data)
        files = [f"{name}.json", *dict.fromkeys(ctx.artefacts + value.artefacts)]
        record["stages"][name].update(status="done", seconds=seconds, files=files)
        if self.collective.world_size > 1:
            record["stages"][name]["ranks"] = ranks
        record["files"] = list(dict.fromkeys(record["files"] + files))
        result.results[name] = value.data
        self._write(run_json, record)
        self._say(f"[green]{name}[/green] done in {seconds:.1f} s")


def _weights_info(model) -> dict | None:
    """What a model says it loaded (file, stored dtypes, dtype used), for run.json."""
    info = getattr(model, "weights_info", None)
    return dict(info) if isinstance(info, dict) else None


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
        result = Session(cfg, registry=registry, console=console, collective=collective).execute()
        finished = True
        return result
    finally:
        if own:
            collective.close(finished)
