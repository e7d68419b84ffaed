"""Interventions on units, β control, and the batched counterfactual engine.

Notation (ARCHITECTURE §4): units U of a layer, a feature-map region with mask m, strength α per
unit, insertion values k. Ablation: ``r' = (1 - α m) r``; insertion: ``r' = (1 - α m) r + α m k``.

The engine runs a generator's prefix (everything up to the intervened layer) once, expands the rows,
and runs the rest with every pixel-norm site computed by the fused op ``intervene_pixelnorm``: the
intervention is fused into the pixel norm that reads the intervened layer, and β is borrowed across
rows (``beta_src``) or replayed from a recording (``beta_in``) at the controlled sites.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from .model import Generator, features_at, find_layer
from .ops import intervene_pixelnorm
from .ops.reference import intervene

DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of activations per chunk, at most
# Rows per chunk are also capped so that the largest activation of a chunk stays near this size:
# on the 2-core CPU this was measured on, a plain forward costs 10-40 % more per row at 128 rows
# than at 16-32, as activations fall out of cache.
CACHE_FRIENDLY_BYTES = 16 << 20
# Norm kinds the engine can record and override: pixel norm through the fused op, weight
# demodulation (StyleGAN2; coefficients d of shape (N, out)) in plain PyTorch.
CONTROLLABLE = ("pixelnorm", "demod")


@dataclass
class Intervention:
    """Ablate (``value=None``) or insert units of one layer, everywhere or in a feature-map region.

    units: unit (channel) indices; alpha: scalar or one per unit, in [0, 1]; value: insertion value
    k, scalar or one per unit; region: (h, w) or (N, h, w) mask in [0, 1] on the layer's map.
    """

    layer: str
    units: Sequence[int]
    region: torch.Tensor | None = None
    alpha: float | Sequence[float] | torch.Tensor = 1.0
    value: float | Sequence[float] | torch.Tensor | None = None

    def check(self, generator: Generator):
        info = find_layer(generator, self.layer)
        units = torch.as_tensor(list(self.units), dtype=torch.long)  # empty: a no-op intervention
        bad = units[(units < 0) | (units >= info.channels)]
        if bad.numel():
            shown = bad.tolist()[:10] + (["..."] if bad.numel() > 10 else [])
            raise ValueError(f"invalid unit indices {shown} for layer {self.layer!r}, which has "
                             f"{info.channels} units (0..{info.channels - 1})")
        if units.unique().numel() != units.numel():
            raise ValueError(f"intervention on {self.layer!r}: unit indices repeat: {units.tolist()}")
        for name, v in (("alpha", self.alpha), ("value", self.value)):
            t = None if v is None else torch.as_tensor(v, dtype=torch.float32)
            if t is not None and t.dim() > 0 and t.shape != (len(units),):
                raise ValueError(f"intervention on {self.layer!r}: {name} must be a scalar or one per unit "
                                 f"({len(units)}), got shape {tuple(t.shape)}")
        if self.region is not None:
            r = self.region
            if r.dim() not in (2, 3) or tuple(r.shape[-2:]) != tuple(info.size):
                raise ValueError(f"intervention on {self.layer!r}: region must be (h, w) = {tuple(info.size)} "
                                 f"or (N, h, w), got {tuple(r.shape)}")
        return info

    def alpha_vector(self, channels: int, device) -> torch.Tensor:
        """(C,) strengths: alpha at the units, zero elsewhere."""
        alpha = torch.zeros(channels, device=device)
        alpha[torch.as_tensor(list(self.units), dtype=torch.long, device=device)] = torch.as_tensor(
            self.alpha, dtype=torch.float32, device=device)
        return alpha

    def value_vector(self, channels: int, device) -> torch.Tensor | None:
        if self.value is None:
            return None
        value = torch.zeros(channels, device=device)
        value[torch.as_tensor(list(self.units), dtype=torch.long, device=device)] = torch.as_tensor(
            self.value, dtype=torch.float32, device=device)
        return value

    def region_mask(self, latents: int, repeats: int, device) -> torch.Tensor | None:
        """(1 or repeats*latents, h, w) mask for rows laid out as ``repeats`` blocks of the latents."""
        if self.region is None:
            return None
        r = self.region.to(device=device, dtype=torch.float32)
        if r.dim() == 2:
            return r.unsqueeze(0)
        if r.shape[0] != latents:
            raise ValueError(f"intervention on {self.layer!r}: region has {r.shape[0]} rows for {latents} latents")
        return r.repeat(repeats, 1, 1)

    def apply(self, x: torch.Tensor, latents: int, repeats: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The intervention on features x in plain PyTorch (for layers not followed by a pixel norm)."""
        c = x.shape[1]
        return intervene(x, self.alpha_vector(c, x.device).to(x.dtype), self.region_mask(latents, repeats, x.device),
                         self.value_vector(c, x.device), rows)


@dataclass
class BetaControl:
    """Which norm sites have β controlled in a DID.

    ``sites=None``: every pixel-norm (and weight-demodulation) site from the one that reads the
    intervened layer to the output (the papers control layers 4 to 13 of PG-GAN); or a list of names.
    """

    sites: Sequence[str] | None = None

    def resolve(self, generator: Generator, layer: str) -> list[str]:
        names = [s.name for s in generator.norm_sites]
        if self.sites is not None:
            unknown = [s for s in self.sites if s not in names]
            if unknown:
                from .errors import UnknownNameError

                raise UnknownNameError("norm site", unknown[0], names)
            return list(self.sites)
        layer_names = [l.name for l in generator.layers]
        start = layer_names.index(layer)
        after = set(layer_names[start:])
        return [s.name for s in generator.norm_sites if s.kind in CONTROLLABLE and s.layer in after]


@dataclass
class Arms:
    """The four DID arms, each (N, 3, H, W), and the controlled sites."""

    original: torch.Tensor  # Y(β, u)
    intervened: torch.Tensor  # Y(β', u'): the natural intervened run
    intervened_fixed_beta: torch.Tensor  # Y(β, u'): intervened units, the original run's β
    original_swapped_beta: torch.Tensor  # Y(β', u): original units, the intervened run's β
    sites: list[str] = field(default_factory=list)

    @property
    def did(self) -> torch.Tensor:
        """ΔY = [Y(β',u') - Y(β',u)] - [Y(β,u') - Y(β,u)], per image (N, 3, H, W)."""
        return (self.intervened - self.original_swapped_beta) - (self.intervened_fixed_beta - self.original)


class BufferPool:
    """Preallocated outputs of the fused op, one pair per (site, shape, dtype, layout), reused across
    batches: on CPU a fresh large tensor costs page faults on every call."""

    def __init__(self):
        self._buffers: dict = {}

    def get(self, site: str, x: torch.Tensor):
        cl = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        key = (site, tuple(x.shape), x.dtype, x.device, cl)
        if key not in self._buffers:
            out = torch.empty_like(x, memory_format=torch.channels_last if cl else torch.contiguous_format)
            beta = x.new_empty((x.shape[0], 1, x.shape[2], x.shape[3]))
            self._buffers[key] = (out, beta)
        return self._buffers[key]

    def clear(self):
        self._buffers.clear()


@contextlib.contextmanager
def _site_overrides(generator: Generator, fns: dict):
    """Install overrides on norm-site modules (their ``override`` attribute), removed on exit."""
    modules = []
    try:
        for site, fn in fns.items():
            module = generator.norm_module(site)
            if not hasattr(module, "override"):
                raise TypeError(f"norm site {site!r} ({type(module).__name__}) has no 'override' attribute; the "
                                "engine cannot control it (pixel norms should be gandid.model.PixelNorm)")
            module.override = fn
            modules.append(module)
        yield
    finally:
        for module in modules:
            module.override = None


def _norm_fn(site: str, pool: BufferPool | None, record: dict | None = None, **op_kwargs):
    """The fused op at one site; records each row's own β when ``record`` is given."""

    def fn(x):
        shape = x.shape
        if x.dim() == 2:  # a pixel norm on vectors (e.g. StyleGAN2's on z): one 1x1 "pixel" per row
            x = x.view(shape[0], shape[1], 1, 1)
        out, beta_out = pool.get(site, x) if pool is not None and not torch.is_grad_enabled() else (None, None)
        with torch.profiler.record_function("gandid::norm_site"):  # so profiles show the norm sites' share
            y, beta = intervene_pixelnorm(x, out=out, beta_out=beta_out, **op_kwargs)
        if record is not None:
            record[site] = beta.clone()
        return y.view(shape)

    return fn


def _demod_fn(site: str, record: dict | None = None, beta_src=None, beta_in=None):
    """Weight-demodulation coefficients d (N, out): recorded, borrowed (d[beta_src]) or replayed."""

    def fn(d):
        if record is not None:
            record[site] = d.detach().clone()
        if beta_in is not None:
            return beta_in.to(d)
        return d if beta_src is None else d[beta_src]

    return fn


def _pixelnorm_sites(generator: Generator) -> list[str]:
    return [s.name for s in generator.norm_sites if s.kind == "pixelnorm"]


def _demod_sites(generator: Generator) -> list[str]:
    return [s.name for s in generator.norm_sites if s.kind == "demod"]


def _site_after(generator: Generator, layer: str) -> str | None:
    """The pixel-norm site that reads ``layer``'s output directly, if any."""
    for s in generator.norm_sites:
        if s.layer == layer and s.kind == "pixelnorm":
            return s.name
    return None


def _single_layer(interventions: Sequence[Intervention]) -> str:
    layers = {i.layer for i in interventions}
    if len(layers) != 1:
        raise ValueError(f"these interventions must all be at one layer; got {sorted(layers)}")
    return layers.pop()


def _as_list(intervention) -> list[Intervention]:
    if isinstance(intervention, Intervention):
        return [intervention]
    return list(intervention)


def rows_per_chunk(generator: Generator, memory_budget: int) -> int:
    """Rows per chunk: a few live copies of the largest layer plus the image must fit the budget, and
    the largest activation of the chunk should stay cache-friendly (CACHE_FRIENDLY_BYTES)."""
    largest = max(l.channels * l.size[0] * l.size[1] for l in generator.layers)
    per_row = 4 * (4 * largest + 3 * generator.resolution ** 2)
    return max(1, min(memory_budget // per_row, CACHE_FRIENDLY_BYTES // (4 * largest)))


def _layout(x: torch.Tensor, channels_last: bool | None) -> torch.Tensor:
    """channels_last by default on CPU, where it made the convolutions 1.5-2x faster (benchmarks/RESULTS.md)."""
    if channels_last is None:
        channels_last = x.device.type == "cpu"
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def _expanded(generator, z, layer, interventions, repeats, rows_mask, beta_src, controlled, pool, backend,
              channels_last):
    """Run the suffix from ``layer`` on ``repeats`` blocks of z, intervening on the rows in rows_mask."""
    n = len(z)
    feats = features_at(generator, z, layer)
    x = _layout(feats.repeat(repeats, 1, 1, 1), channels_last)
    zz = z.repeat(repeats, *([1] * (z.dim() - 1)))
    first = _site_after(generator, layer)
    fused = first is not None and len(interventions) == 1
    if not fused:  # several interventions, or no pixel norm reads the layer: apply them in PyTorch
        for iv in interventions:
            x = iv.apply(x, n, repeats, rows_mask)
    fns = {}
    c = x.shape[1]
    for site in _pixelnorm_sites(generator):
        kwargs = {"backend": backend}
        if site in controlled and beta_src is not None:
            kwargs["beta_src"] = beta_src
        if fused and site == first:
            iv = interventions[0]
            kwargs.update(alpha=iv.alpha_vector(c, x.device), value=iv.value_vector(c, x.device),
                          region=iv.region_mask(n, repeats, x.device), rows=rows_mask)
        fns[site] = _norm_fn(site, pool, **kwargs)
    if beta_src is not None:
        for site in _demod_sites(generator):
            if site in controlled:
                fns[site] = _demod_fn(site, beta_src=beta_src)
    with _site_overrides(generator, fns):
        return generator.forward_from(layer, x, zz)


def counterfactuals(generator: Generator, z: torch.Tensor, intervention, beta_control: BetaControl | None = None,
                    *, memory_budget: int = DEFAULT_MEMORY_BUDGET, pool: BufferPool | None = None,
                    backend: str | None = None, channels_last: bool | None = None) -> Arms:
    """The four DID arms of ARCHITECTURE §4 from one pass per chunk of latents.

    Rows are laid out as four blocks of the N latents: arm 1 Y(β,u), arm 2 Y(β',u'), arm 3 Y(β,u')
    (borrows arm 1's β at the controlled sites), arm 4 Y(β',u) (borrows arm 2's). The prefix up to the
    intervened layer runs once per chunk; the op's ``beta_src`` does the borrowing.
    """
    interventions = _as_list(intervention)
    for iv in interventions:
        iv.check(generator)
    layer = _single_layer(interventions)
    controlled = set((beta_control or BetaControl()).resolve(generator, layer))
    pool = pool if pool is not None else BufferPool()
    chunk = max(1, rows_per_chunk(generator, memory_budget) // 4)
    parts = []
    with torch.no_grad():
        for lo in range(0, len(z), chunk):
            zc = z[lo:lo + chunk]
            n = len(zc)
            arm = torch.arange(n, device=zc.device)
            beta_src = torch.cat([arm, arm + n, arm, arm + n])
            rows = torch.zeros(4 * n, dtype=torch.bool, device=zc.device)
            rows[n:3 * n] = True
            ivs = [_slice_region(iv, lo, n) for iv in interventions]
            parts.append(_expanded(generator, zc, layer, ivs, 4, rows, beta_src, controlled, pool, backend,
                                   channels_last).view(4, n, *generator_output_shape(generator)))
    images = torch.cat(parts, dim=1)
    return Arms(images[0], images[1], images[2], images[3], sorted(controlled, key=_site_order(generator)))


def generator_output_shape(generator: Generator) -> tuple:
    return (3, generator.resolution, generator.resolution)


def _site_order(generator):
    order = {s.name: i for i, s in enumerate(generator.norm_sites)}
    return lambda name: order[name]


def _slice_region(iv: Intervention, lo: int, n: int) -> Intervention:
    if iv.region is None or iv.region.dim() == 2:
        return iv
    return Intervention(iv.layer, iv.units, iv.region[lo:lo + n], iv.alpha, iv.value)


def run_with_betas(generator: Generator, z: torch.Tensor, intervention=(), beta_in: dict | None = None,
                   *, record: bool = False, backend: str | None = None):
    """One forward pass with optional interventions and recorded β replayed at some sites.

    Returns ``(images, betas)`` where ``betas`` maps every pixel-norm site to each row's own β (N, 1, h, w),
    and every demod site to its coefficients (N, out), when ``record`` is set (else {}). Replaying ``beta_in`` = {site: β} is how designs that need two
    passes (or β from another run) are built.
    """
    interventions = _as_list(intervention)
    for iv in interventions:
        iv.check(generator)
    beta_in = dict(beta_in or {})
    known = set(_pixelnorm_sites(generator)) | set(_demod_sites(generator))
    for site in beta_in:
        if site not in known:
            from .errors import UnknownNameError

            raise UnknownNameError("controllable norm site", site, sorted(known))
    recorded = {} if record else None
    fns = {}
    for site in _pixelnorm_sites(generator):
        fns[site] = _norm_fn(site, None, recorded, backend=backend, beta_in=beta_in.get(site))
    for site in _demod_sites(generator):
        fns[site] = _demod_fn(site, recorded, beta_in=beta_in.get(site))
    hooks = []
    for iv in interventions:
        module = generator.layer_module(iv.layer)
        hooks.append(module.register_forward_hook(lambda m, i, out, iv=iv: iv.apply(out, len(z), 1)))
    try:
        with _site_overrides(generator, fns):
            images = generator.forward(z)
    finally:
        for h in hooks:
            h.remove()
    return images, (recorded or {})


def per_unit(generator: Generator, z: torch.Tensor, layer: str, units: Sequence[int] | None = None, *,
             value: torch.Tensor | None = None, alpha: float = 1.0, region: torch.Tensor | None = None,
             memory_budget: int = DEFAULT_MEMORY_BUDGET, pool: BufferPool | None = None,
             backend: str | None = None, channels_last: bool | None = None) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Every single-unit intervention of ``layer`` for the same latents, after one shared prefix.

    Yields ``(units_chunk, images)`` with images (len(units_chunk), N, 3, H, W): row block i is unit
    units_chunk[i] ablated (``value=None``) or inserted with ``value[unit]`` ((C,) tensor), with
    strength alpha in ``region`` ((h, w), optional).
    """
    info = find_layer(generator, layer)
    units = list(range(info.channels)) if units is None else list(units)
    Intervention(layer, units, region, alpha, None).check(generator)
    pool = pool if pool is not None else BufferPool()
    n = len(z)
    per_chunk = max(1, rows_per_chunk(generator, memory_budget) // max(1, n))
    with torch.no_grad():
        feats = features_at(generator, z, layer)  # the prefix, once
        mask = None if region is None else region.to(feats.device, feats.dtype)
        fns = {site: _norm_fn(site, pool, backend=backend) for site in _pixelnorm_sites(generator)}
        with _site_overrides(generator, fns):
            for lo in range(0, len(units), per_chunk):
                chunk = units[lo:lo + per_chunk]
                u = len(chunk)
                x = feats.repeat(u, 1, 1, 1)
                idx = torch.as_tensor(chunk, device=feats.device)
                blocks = x.view(u, n, *x.shape[1:])
                r = blocks[torch.arange(u), :, idx]  # (u, N, h, w): each block's own unit
                s = alpha if mask is None else alpha * mask
                k = 0.0 if value is None else value.to(feats.device)[idx].view(u, 1, 1, 1)
                blocks[torch.arange(u), :, idx] = r - s * (r - k)
                images = generator.forward_from(layer, _layout(x, channels_last), z.repeat(u, 1))
                yield chunk, images.view(u, n, *generator_output_shape(generator))


def variants(generator: Generator, z: torch.Tensor, interventions: Sequence[Intervention], *,
             memory_budget: int = DEFAULT_MEMORY_BUDGET, channels_last: bool | None = None
             ) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Many interventions on one layer for the same latents, after one shared prefix.

    Yields ``(indices, images)`` with images (len(indices), N, 3, H, W): block i is
    ``interventions[indices[i]]`` applied to every latent (plain PyTorch, then the generator's own
    norms). This is `per_unit` for arbitrary unit sets, values and regions (top-k curves, locations).
    """
    interventions = list(interventions)
    if not interventions:
        return
    layer = _single_layer(interventions)
    for iv in interventions:
        iv.check(generator)
    n = len(z)
    per_chunk = max(1, rows_per_chunk(generator, memory_budget) // max(1, n))
    with torch.no_grad():
        feats = features_at(generator, z, layer)
        for lo in range(0, len(interventions), per_chunk):
            chunk = list(range(lo, min(lo + per_chunk, len(interventions))))
            x = torch.cat([interventions[i].apply(feats, n, 1) for i in chunk])
            images = generator.forward_from(layer, _layout(x, channels_last), z.repeat(len(chunk), 1))
            yield chunk, images.view(len(chunk), n, *generator_output_shape(generator))


def counterfactuals_naive(generator: Generator, z: torch.Tensor, intervention,
                          beta_control: BetaControl | None = None, *, backend: str = "reference") -> Arms:
    """The four arms the slow way: four separate forward passes with hooks that record and replay β,
    as GAN Dissection-style hooks would. The baseline the one-pass engine is benchmarked against."""
    interventions = _as_list(intervention)
    layer = _single_layer(interventions)
    controlled = (beta_control or BetaControl()).resolve(generator, layer)
    with torch.no_grad():
        original, beta = run_with_betas(generator, z, record=True, backend=backend)
        intervened, beta_iv = run_with_betas(generator, z, interventions, record=True, backend=backend)
        fixed, _ = run_with_betas(generator, z, interventions, {s: beta[s] for s in controlled}, backend=backend)
        swapped, _ = run_with_betas(generator, z, (), {s: beta_iv[s] for s in controlled}, backend=backend)
    return Arms(original, intervened, fixed, swapped, controlled)
