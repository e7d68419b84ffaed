"""The batched counterfactual engine: the four DID arms in one pass, every single-unit intervention
after one shared prefix, arbitrary variants, and passes that record or replay β.

The engine runs a generator's prefix (everything up to the intervened layer) once, expands the rows,
and runs the rest with every pixel-norm site computed by the fused op ``intervene_pixelnorm``: the
intervention is fused into the pixel norm that reads the intervened layer, and β is borrowed across
rows (``beta_src``) or replayed from a recording (``beta_in``) at the controlled sites. Hooks go
through :mod:`gandid.hooks`; the data types live in :mod:`gandid.interventions`, the memory policy in
:mod:`gandid.buffers`.

What is recorded, borrowed and replayed per norm kind ("β" in names stands for all of them):

- ``pixelnorm``: β (N, 1, h, w), through the fused op;
- ``demod`` (StyleGAN2's weight demodulation): the coefficients d (N, out);
- ``instancenorm`` (StyleGAN's AdaIN before its style affine): the statistics (N, 2, C), means in
  ``[:, 0]`` and stds ``sqrt(var + eps)`` in ``[:, 1]`` (see :class:`gandid.model.InstanceNorm`).

The last two are per-row coefficient tensors that the site's module hands to its ``override``: the
engine records them, swaps rows (``d[beta_src]``) or substitutes a recording, in plain PyTorch.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from .buffers import DEFAULT_MEMORY_BUDGET, BufferPool, preferred_layout, rows_per_chunk
from .errors import UnknownNameError
from .hooks import Trace, features_at, norm_overrides, norm_site_reading
from .interventions import Arms, BetaControl, Intervention
from .model import Generator, find_layer
from .ops import intervene_pixelnorm
from .ops.reference import intervene


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


def _coefficient_fn(site: str, record: dict | None = None, beta_src=None, beta_in=None):
    """A site's per-row coefficients (demod d (N, out), instance-norm statistics (N, 2, C)): recorded,
    borrowed (d[beta_src]: row i uses row beta_src[i]'s own coefficients) or replayed."""

    def fn(d):
        if record is not None:
            record[site] = d.detach().clone()
        if beta_in is not None:
            if tuple(beta_in.shape) != tuple(d.shape):
                raise ValueError(f"replayed coefficients for norm site {site!r} have shape {tuple(beta_in.shape)}, "
                                 f"but this pass computes {tuple(d.shape)} there (a recording of another batch "
                                 "size or another generator?)")
            return beta_in.to(d)
        return d if beta_src is None else d[beta_src]

    return fn


def _pixelnorm_sites(generator: Generator) -> list[str]:
    return [s.name for s in generator.norm_sites if s.kind == "pixelnorm"]


# Kinds whose module hands per-row coefficients to its override (see the module docstring).
COEFFICIENT_KINDS = ("demod", "instancenorm")


def _coefficient_sites(generator: Generator) -> list[str]:
    return [s.name for s in generator.norm_sites if s.kind in COEFFICIENT_KINDS]


def _single_layer(interventions: Sequence[Intervention]) -> str:
    layers = {i.layer for i in interventions}
    if len(layers) != 1:
        raise ValueError(f"these interventions must all be at one layer; got {sorted(layers)}")
    return layers.pop()


def _as_list(intervention) -> list[Intervention]:
    if isinstance(intervention, Intervention):
        return [intervention]
    return list(intervention)


def _expanded(generator, z, layer, interventions, repeats, rows_mask, beta_src, controlled, pool, backend,
              channels_last):
    """Run the suffix from ``layer`` on ``repeats`` blocks of z, intervening on the rows in rows_mask."""
    n = len(z)
    feats = features_at(generator, z, layer)
    x = preferred_layout(feats.repeat(repeats, 1, 1, 1), channels_last)
    zz = _repeat_rows(z, repeats)
    first = norm_site_reading(generator, layer)
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
        for site in _coefficient_sites(generator):
            if site in controlled:
                fns[site] = _coefficient_fn(site, beta_src=beta_src)
    with norm_overrides(generator, fns):
        return generator.forward_from(layer, x, zz)


def _repeat_rows(z: torch.Tensor, repeats: int) -> torch.Tensor:
    """``repeats`` blocks of the latents z, whatever their shape: (N, z_dim) vectors, or the (N, C, H, W)
    input images of a conditional generator (pix2pix)."""
    return z.repeat(repeats, *([1] * (z.dim() - 1)))


def counterfactuals(generator: Generator, z: torch.Tensor, intervention, beta_control: BetaControl | None = None,
                    *, memory_budget: int = DEFAULT_MEMORY_BUDGET, pool: BufferPool | None = None,
                    backend: str | None = None, channels_last: bool | None = None) -> Arms:
    """The four DID arms (docs/normalisation.md) from one pass per chunk of latents.

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
    every demod site to its coefficients (N, out) and every instance-norm site to its statistics
    (N, 2, C) (means, then stds), when ``record`` is set (else {}). Replaying ``beta_in`` = {site: β}
    (the same shapes) is how designs that need two passes (or β from another run) are built.
    """
    interventions = _as_list(intervention)
    for iv in interventions:
        iv.check(generator)
    beta_in = dict(beta_in or {})
    known = set(_pixelnorm_sites(generator)) | set(_coefficient_sites(generator))
    for site in beta_in:
        if site not in known:
            raise UnknownNameError("controllable norm site", site, sorted(known))
    recorded = {} if record else None
    fns = {}
    for site in _pixelnorm_sites(generator):
        fns[site] = _norm_fn(site, None, recorded, backend=backend, beta_in=beta_in.get(site))
    for site in _coefficient_sites(generator):
        fns[site] = _coefficient_fn(site, recorded, beta_in=beta_in.get(site))
    edits = {}
    for iv in interventions:
        previous = edits.get(iv.layer)
        edits[iv.layer] = (lambda out, iv=iv, previous=previous:
                           iv.apply(out if previous is None else previous(out), len(z), 1))
    with Trace(generator, edit=edits), norm_overrides(generator, fns):
        images = generator.forward(z)
    return images, (recorded or {})


def units_per_chunk(generator: Generator, latents: int, memory_budget: int = DEFAULT_MEMORY_BUDGET) -> int:
    """How many units :func:`per_unit` puts in one chunk for ``latents`` latents: split a unit list
    in multiples of it (e.g. between processes) and every unit is computed in the same chunk as before."""
    return max(1, rows_per_chunk(generator, memory_budget) // max(1, latents))


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
    per_chunk = units_per_chunk(generator, n, memory_budget)
    with torch.no_grad():
        feats = features_at(generator, z, layer)  # the prefix, once
        mask = None if region is None else region.to(feats.device, feats.dtype).unsqueeze(0)  # (1, h, w)
        strength = torch.full((1,), float(alpha), device=feats.device, dtype=feats.dtype)
        fns = {site: _norm_fn(site, pool, backend=backend) for site in _pixelnorm_sites(generator)}
        with norm_overrides(generator, fns):
            for lo in range(0, len(units), per_chunk):
                chunk = units[lo:lo + per_chunk]
                u = len(chunk)
                x = feats.repeat(u, 1, 1, 1)
                blocks = x.view(u, n, *x.shape[1:])
                for i, unit in enumerate(chunk):  # block i: its own unit, through the one formula
                    own = blocks[i, :, unit:unit + 1]  # (N, 1, h, w)
                    k = None if value is None else value.to(feats)[unit:unit + 1]
                    blocks[i, :, unit:unit + 1] = intervene(own, strength, mask, k)
                images = generator.forward_from(layer, preferred_layout(x, channels_last), _repeat_rows(z, u))
                yield chunk, images.view(u, n, *generator_output_shape(generator))


def variants(generator: Generator, z: torch.Tensor, interventions: Sequence[Intervention], *,
             memory_budget: int = DEFAULT_MEMORY_BUDGET, pool: BufferPool | None = None,
             backend: str | None = None, channels_last: bool | None = None
             ) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Many interventions on one layer for the same latents, after one shared prefix.

    Yields ``(indices, images)`` with images (len(indices), N, 3, H, W): block i is
    ``interventions[indices[i]]`` applied to every latent (plain PyTorch), then the rest of the
    generator with its pixel norms computed by the fused op, as in `per_unit`. This is `per_unit` for
    arbitrary unit sets, values and regions (top-k curves, locations).
    """
    interventions = list(interventions)
    if not interventions:
        return
    layer = _single_layer(interventions)
    for iv in interventions:
        iv.check(generator)
    n = len(z)
    per_chunk = max(1, rows_per_chunk(generator, memory_budget) // max(1, n))
    pool = pool if pool is not None else BufferPool()
    fns = {site: _norm_fn(site, pool, backend=backend) for site in _pixelnorm_sites(generator)}
    with torch.no_grad():
        feats = features_at(generator, z, layer)  # the prefix, once, with the generator's own norms
    with torch.no_grad(), norm_overrides(generator, fns):
        for lo in range(0, len(interventions), per_chunk):
            chunk = list(range(lo, min(lo + per_chunk, len(interventions))))
            x = torch.cat([interventions[i].apply(feats, n, 1) for i in chunk])
            images = generator.forward_from(layer, preferred_layout(x, channels_last), _repeat_rows(z, len(chunk)))
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
