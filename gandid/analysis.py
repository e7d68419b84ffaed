"""The Analysis contract and the context an analysis runs in.

An analysis is an object with ``run(ctx) -> dict | AnalysisResult`` (:class:`Analysis`). It streams
samples into mergeable statistics with ``ctx.tally`` (or ``ctx.batches`` and its own
``ctx.save_state``/``ctx.load_state``) so an interrupted run resumes with the same numbers.
"""
from __future__ import annotations

import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol, runtime_checkable

import torch

from . import outdir
from .distributed import Collective
from .errors import GandidError
from .hooks import Trace
from .model import iter_chunks
from .state import load_state_file, save_state_file
from .stats import Stat

SAVE_EVERY_SECONDS = 10.0  # a stage's statistics reach the disk at most this often (and at the end)
ANALYSIS_OPTIONAL = ("requires", "after", "needs_segmenter", "check", "report_section", "report_findings", "explorer")


@runtime_checkable
class Analysis(Protocol):
    """What the stage loop (:mod:`gandid.stages`) calls on an analysis. Optional members (:data:`ANALYSIS_OPTIONAL`):

    - ``requires``: names of analyses whose results it reads (``ctx.results[name]``); they run first.
    - ``after``: names of analyses it runs after when they are selected too (pipeline order).
    - ``needs_segmenter``: False if it never segments (default True).
    - ``check(generator, segmenter, layers)``: raise to refuse the run before any work.
    - ``report_section(result, out_dir) -> str`` and ``report_findings(result) -> list``: its part of
      report.html (see :mod:`gandid.report`).
    - ``explorer(result) -> dict``: what `gandid serve` shows of it (docs/serve.md, "What an analysis shows").
    """

    def run(self, ctx: "RunContext") -> "dict | AnalysisResult":
        """Compute the result (JSON-able) from ``ctx``; files go through ``ctx.path``."""


def read_result(data: dict, analysis: str, version: int, result_type: type) -> dict:
    """``data`` (an analysis's JSON, as other analyses read it from ``ctx.results``) checked against the
    type and version its analysis publishes; a result written by another version is refused clearly."""
    found = data.get("version") if isinstance(data, dict) else None
    if found != version:
        raise GandidError(f"the {analysis!r} result was written by another version of {analysis!r} (result version "
                          f"{found}, this gandid reads {version}): run {analysis!r} again (--force, or a new --out)")
    missing = [key for key in typing.get_type_hints(result_type) if key not in data]
    if missing:
        raise GandidError(f"the {analysis!r} result lacks {missing}: run {analysis!r} again (--force, or a new --out)")
    return data


@dataclass
class AnalysisResult:
    data: dict
    artefacts: list[str] = field(default_factory=list)  # paths relative to the output folder


@dataclass
class Batch:
    """Samples [start, start + len(z)) of a stream."""

    start: int
    z: torch.Tensor  # (B, z_dim) latents, or what a conditional generator's sample_z gives, e.g. (B, C, H, W) images
    images: torch.Tensor | None  # (B, 3, H, W) in [-1, 1]
    features: dict[str, torch.Tensor]  # layer -> (B, C, h, w)
    labels: torch.Tensor | None  # (B, H, W) int segmentation of images, if asked for

    @property
    def seeds(self) -> range:
        """Sample indices: with the stream's seed they reproduce each image."""
        return range(self.start, self.start + len(self.z))


class RunContext:
    """What an analysis sees of the run: models, config, streaming, state, output folder."""

    def __init__(self, *, name, config, generator, segmenter, layers, device, out_dir, progress, results,
                 options=None, on_artefact=None, collective: Collective | None = None):
        self.name = name
        self.config = config
        self.options = dict(options if options is not None else config.analysis_options.get(name, {}))
        self.generator = generator
        self.segmenter = segmenter
        self.layers = list(layers)
        self.device = device
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.results = results
        self.artefacts: list[str] = []
        self._on_artefact = on_artefact  # the stage loop lists each file in run.json as soon as it is made
        self._state: dict | None = None
        self.collective = collective or Collective()
        self.shares: list[dict] = []  # what this process took of each split loop, for run.json

    # -- several processes ------------------------------------------------------------------
    @property
    def rank(self) -> int:
        """This process's rank (0 in a one-process run)."""
        return self.collective.rank

    @property
    def is_writer(self) -> bool:
        """Whether this process writes the output folder (rank 0, or a shard): others may skip pictures."""
        return self.collective.is_writer

    @property
    def world_size(self) -> int:
        """How many processes share the run (1 unless launched by torchrun)."""
        return self.collective.world_size

    def share(self, total: int, block: int = 1, what: str = "", decides: bool = False) -> range:
        """This process's contiguous part of range(total), in whole blocks of ``block`` (e.g. the
        engine's unit chunks, so that each item is computed in the same chunk as in one process).
        ``decides``: the pass decides what the run does next (thresholds, insertion values), so a
        shard, which cannot wait for the others, runs it whole. Every process must call :meth:`share`
        and :meth:`all_gather` in the same order with the same arguments."""
        part = self.collective.share(total, block, decides)
        if self.world_size > 1:
            self.shares.append({"what": what, "range": [part.start, part.stop], "of": total})
        return part

    def all_gather(self, value, decides: bool = False) -> list:
        """Every process's ``value`` in rank order; ``[value]`` in one process (``decides`` as for
        :meth:`share`, which it follows). Every process must call it at the same point, so control flow
        must not depend on what only this process saved: each stage starts from rank 0's saved state
        for that reason. In a shard, the stage's first exchange ends the shard's part of the stage."""
        return self.collective.all_gather(value, decides)

    def merge_stats(self, stats: dict[str, Stat], samples: int = 0, decides: bool = False) -> int:
        """Replace each statistic by the merge of every process's, in rank order (so every process
        holds the same values), in one exchange; returns ``samples`` summed over the processes."""
        own = {"samples": samples, "stats": {name: stat.state_dict() for name, stat in stats.items()}}
        gathered = self.all_gather(own, decides)
        if len(gathered) == 1 and gathered[0] is own:  # one process: nothing to merge
            return samples
        for name, stat in stats.items():
            device = next(iter(stat.state_dict().values())).device
            merged = type(stat).from_state(gathered[0]["stats"][name])
            for other in gathered[1:]:
                merged.merge(type(stat).from_state(other["stats"][name]))
            stat.load_state_dict(merged.to(device).state_dict())
        return sum(int(other["samples"]) for other in gathered)

    # -- streaming ------------------------------------------------------------------------
    @torch.no_grad()
    def batches(self, samples: int | None = None, seed: int | None = None, layers=None, segment: bool = True,
                start: int = 0, description: str | None = None, generate: bool = True,
                features_only: bool = False, origin: int = 0) -> Iterator[Batch]:
        """Stream generated samples [start, samples) with features at ``layers`` (default: the run's).

        ``generate=False`` yields only the latents (images, features and labels left empty), for
        analyses that run their own forward passes on them; ``features_only=True`` runs each forward
        only as far as the deepest of ``layers`` (images and labels None): a threshold fit at an early
        layer of a 256 px generator then costs a small part of a full forward. ``origin``: where the
        progress bar starts counting (the first sample of this process's share)."""
        samples = self.config.samples if samples is None else samples
        seed = self.config.seed if seed is None else seed
        layers = self.layers if layers is None else list(layers)
        if segment and self.segmenter is None:
            raise GandidError(f"analysis {self.name!r} needs a segmenter but none is configured (--segmenter)")
        task = self.progress.add_task(description or self.name, total=samples - origin, completed=start - origin)
        try:
            for lo, hi in iter_chunks(samples, self.config.batch_size):
                if hi <= start:
                    continue
                lo = max(lo, start)
                z = self.generator.sample_z(hi - lo, seed, start=lo).to(self.device)
                if not generate:
                    yield Batch(lo, z, None, {}, None)
                    self.progress.advance(task, hi - lo)
                    continue
                images = None
                with Trace(self.generator, layers, stop=features_only) as trace:
                    images = self.generator.forward(z)
                features = dict(trace.outputs)
                for layer, value in [("output image", images), *features.items()]:
                    if value is not None and not torch.isfinite(value).all():
                        raise GandidError(f"NaN or Inf in {layer} for samples {lo}..{hi - 1} (seed {seed}): "
                                          "check the weights file and the device's numerics")
                labels = self.segmenter.segment(images) if segment and not features_only else None
                yield Batch(lo, z, images, features, labels)
                self.progress.advance(task, hi - lo)
        finally:
            self.progress.remove_task(task)

    def track(self, iterable, total: int, description: str, size=None):
        """Wrap any loop in a progress bar of ``total`` steps; each item advances it by ``size(item)``
        (default 1), e.g. the number of units in a chunk, so the bar shows a real count and an ETA."""
        task = self.progress.add_task(description, total=total)
        try:
            for item in iterable:
                yield item
                self.progress.advance(task, 1 if size is None else size(item))
        finally:
            self.progress.remove_task(task)

    def tally(self, stats: dict[str, Stat], key: str, save_every: float | None = None, decides: bool = False,
              **batch_options) -> "Tally":
        """Stream batches into ``stats``, resumably: the statistics (and how many samples they cover)
        are restored from this stage's saved state under ``key``, the remaining batches are yielded for
        the caller to update ``stats`` with, and the statistics are saved at most every ``save_every``
        seconds (default :data:`SAVE_EVERY_SECONDS`, read at the call) and when the stream ends. A save
        always holds whole batches, so a resumed run gives the same numbers. ``batch_options`` go to :meth:`batches` (``samples``, ``seed``, ``layers``,
        ``segment``, ``description``, ``generate``); ``.done`` is the number of samples covered.
        Several processes each stream their share and merge the statistics when the stream ends;
        ``decides`` as for :meth:`share`."""
        return Tally(self, stats, key, save_every, batch_options, decides)

    @property
    def state(self) -> dict:
        """This stage's saved state (loaded once; {} for a fresh stage), shared by :meth:`tally` and the
        analysis's own keys; :meth:`save_state` with no argument writes it."""
        if self._state is None:
            # in a group of processes, rank 0's (see Collective.initial_state)
            self._state = self.collective.initial_state(self.load_state() or {})
        return self._state

    # -- options, state and files ---------------------------------------------------------------
    def _private_dir(self) -> Path:
        """Where a process other than rank 0 keeps its state and files (rank 0 writes the output folder)."""
        return self.out_dir / "state" / f"rank-{self.rank}"

    @property
    def _state_path(self) -> Path:
        base = self.out_dir / "state" if self.collective.is_writer else self._private_dir()
        return base / f"{self.name}.pt"

    def save_state(self, state: dict | None = None) -> None:
        """Persist fixed-size statistics (tensors, numbers, lists) so a resumed run continues here
        (default: :attr:`state`)."""
        if state is None:
            state = self.state
        self._state_path.parent.mkdir(parents=True, exist_ok=True)
        save_state_file(self._state_path, state)

    def load_state(self) -> dict | None:
        if not self._state_path.exists():
            return None
        return load_state_file(self._state_path, self.name)

    def path(self, name: str) -> Path:
        """Path for an artefact inside the output folder; it is listed in run.json. In a process other
        than rank 0 it is a private scratch path, so analyses need not know who writes."""
        if not self.collective.is_writer:
            p = self._private_dir() / "files" / name
            p.parent.mkdir(parents=True, exist_ok=True)
            return p
        p = self.out_dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        self.artefacts.append(name)
        if self._on_artefact is not None:
            self._on_artefact(name)
        return p

    def write_json(self, name: str, data: Any) -> Path:
        p = self.path(name)
        outdir.write_json(p, data)
        return p


class Tally:
    """The stream behind :meth:`RunContext.tally` (iterate it; ``done`` counts the samples covered).

    In a run of several processes each streams its own share of whole batches, and when the stream
    ends the statistics are merged across processes (``done`` then counts every process's samples)."""

    def __init__(self, ctx: RunContext, stats: dict[str, Stat], key: str, save_every: float | None, batch_options: dict,
                 decides: bool = False):
        self.ctx, self.stats, self.key = ctx, stats, key
        self.save_every = SAVE_EVERY_SECONDS if save_every is None else save_every
        self.batch_options, self.decides = batch_options, decides
        samples = batch_options.get("samples")
        samples = ctx.config.samples if samples is None else samples
        self.part = ctx.share(samples, block=ctx.config.batch_size, what=key, decides=decides)
        saved = ctx.state.get("tally", {}).get(key)
        self.position = self.part.start  # the next sample of this process's share
        if saved is not None:
            unknown = sorted(set(saved["stats"]) ^ set(stats))
            if unknown:
                raise GandidError(f"the saved state of {ctx.name!r} ({key}) does not match its statistics "
                                  f"({unknown}): it was written by another version; start over with --force")
            start = saved.get("share", [0])[0]
            if start != self.part.start or not self.part.start <= int(saved["done"]) <= self.part.stop:
                raise GandidError(f"the saved state of {ctx.name!r} ({key}) covers samples {start}..{saved['done']} "
                                  f"but this process's share is {self.part.start}..{self.part.stop}: resume with "
                                  "the same number of processes, or start over with --force")
            for name, stat in stats.items():
                stat.load_state_dict(saved["stats"][name])
            self.position = int(saved["done"])
        self.done = self.position - self.part.start

    def save(self) -> None:
        # Copies: the live tensors go on changing in place after this snapshot.
        self.ctx.state.setdefault("tally", {})[self.key] = {
            "done": self.position, "share": [self.part.start, self.part.stop],
            "stats": {name: {k: v.clone() for k, v in stat.state_dict().items()} for name, stat in self.stats.items()},
        }
        self.ctx.save_state()

    def __iter__(self) -> Iterator[Batch]:
        last = time.monotonic()
        options = dict(self.batch_options, samples=self.part.stop)
        for batch in self.ctx.batches(start=self.position, origin=self.part.start, **options):
            yield batch
            # reached only once the caller has used the whole batch
            self.position = batch.start + len(batch.z)
            self.done = self.position - self.part.start
            if time.monotonic() - last >= self.save_every:
                self.save()
                last = time.monotonic()
        self.save()
        self.done = self.ctx.merge_stats(self.stats, self.done, self.decides)
