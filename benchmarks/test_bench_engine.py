"""DID and per-unit ACE throughput of the one-pass engine, against the naive way and the floor.

- floor: the engine's own code path minus the intervention: prefix once (``features_at``), the same
  4N rows in the same chunks, the same memory format (``preferred_layout``), every pixel-norm site
  through the engine's fused-op norm function with no alpha/value/beta_src (``engine._norm_fn``, the
  one private piece, so that the floor follows the engine's norm sites), a reused BufferPool;
  ``engine / floor`` is the cost of the intervention and the β borrowing (target <= 1.05);
- plain_eager: one plain ``gen.forward`` of 4N rows, NCHW, eager pixel norm, prefix run 4N times
  (the "floor" of the earlier RESULTS.md tables, kept so that history stays comparable);
- engine: ``counterfactuals`` (prefix once, 4N rows, fused op with borrowed β);
- naive: four separate hooked forwards that record and replay β (``counterfactuals_naive``).
Per-unit ACE: every single-unit ablation of the layer for N latents with ``per_unit`` against one full
forward per unit, and against its floor (the same U x N rows in the same chunks, same path, no ablation,
a fresh BufferPool per call as ``per_unit`` makes). Throughput is latents (or units) per second; ratios
print at the end of the run (``-s`` to see them). GANDID_BENCH_QUICK=1 shrinks the generators.
"""
import os

import pytest
import torch

from gandid.engine import _norm_fn
from gandid.hooks import features_at, norm_overrides
from gandid.intervene import (
    DEFAULT_MEMORY_BUDGET,
    BufferPool,
    Intervention,
    counterfactuals,
    counterfactuals_naive,
    generator_output_shape,
    per_unit,
    preferred_layout,
    rows_per_chunk,
)
from gandid_plugins.generators.pggan import PGGANGenerator

QUICK = os.environ.get("GANDID_BENCH_QUICK") == "1"
# The real 256 px layout (conference room) and the toyroom size (64 px, narrower), random weights.
GENERATORS = {
    "pggan256": [512, 512, 512, 512, 512, 256, 128, 64, 32] if not QUICK else [32, 32, 32, 16, 8, 8, 4, 4, 4],
    "toyroom64": [128, 128, 128, 64, 32, 16] if not QUICK else [16, 16, 16, 8, 8, 4],
}
LATENTS = {"pggan256": 2, "toyroom64": 16}
UNITS = {"pggan256": 8, "toyroom64": 64}
_results: dict = {}


def random_generator(sizes, seed=0):
    gen = PGGANGenerator(sizes).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in gen.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.1 if p.dim() == 1 else 1.0))
    return gen


def pixelnorm_fns(gen, pool):
    """Every pixel-norm site computed by the engine's fused op, no intervention, no borrowing."""
    return {s.name: _norm_fn(s.name, pool) for s in gen.norm_sites if s.kind == "pixelnorm"}


def floor_did(gen, z, layer, pool, channels_last=None):
    """``counterfactuals`` minus the intervention and β borrowing: the same 4N rows, chunks and layout."""
    chunk = max(1, rows_per_chunk(gen, DEFAULT_MEMORY_BUDGET) // 4)
    parts = []
    for lo in range(0, len(z), chunk):
        zc = z[lo:lo + chunk]
        n = len(zc)
        x = preferred_layout(features_at(gen, zc, layer).repeat(4, 1, 1, 1), channels_last)
        with norm_overrides(gen, pixelnorm_fns(gen, pool)):
            parts.append(gen.forward_from(layer, x, zc.repeat(4, 1)).view(4, n, *generator_output_shape(gen)))
    return torch.cat(parts, dim=1)


def floor_per_unit(gen, z, layer, n_units, channels_last=None):
    """``per_unit`` minus the ablations: the same U x N rows and chunks, one prefix, a fresh pool per call."""
    n = len(z)
    per_chunk = max(1, rows_per_chunk(gen, DEFAULT_MEMORY_BUDGET) // max(1, n))
    feats = features_at(gen, z, layer)
    with norm_overrides(gen, pixelnorm_fns(gen, BufferPool())):
        for lo in range(0, n_units, per_chunk):
            u = min(per_chunk, n_units - lo)
            x = feats.repeat(u, 1, 1, 1)
            gen.forward_from(layer, preferred_layout(x, channels_last), z.repeat(u, 1)).view(
                u, n, *generator_output_shape(gen))


def setup_module():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def generators():
    return {name: random_generator(sizes) for name, sizes in GENERATORS.items()}


@pytest.mark.parametrize("method", ["floor", "plain_eager", "engine", "naive"])
@pytest.mark.parametrize("name", list(GENERATORS))
def test_did(benchmark, generators, name, method):
    gen = generators[name]
    n = LATENTS[name]
    z = gen.sample_z(n, seed=0)
    iv = Intervention("layer4", list(range(20 if not QUICK else 4)))
    pool = BufferPool()
    fns = {
        "floor": lambda: floor_did(gen, z, "layer4", pool),
        "plain_eager": lambda: gen.forward(z.repeat(4, 1)),
        "engine": lambda: counterfactuals(gen, z, iv, pool=pool),
        "naive": lambda: counterfactuals_naive(gen, z, iv),
    }
    with torch.no_grad():
        fns[method]()
        benchmark.pedantic(fns[method], rounds=3 if not QUICK else 2, iterations=1, warmup_rounds=0)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info["latents/s"] = n / seconds
    _results[("did", name, method)] = seconds


@pytest.mark.parametrize("method", ["floor", "engine", "one_forward_per_unit"])
@pytest.mark.parametrize("name", list(GENERATORS))
def test_per_unit_ace(benchmark, generators, name, method):
    gen = generators[name]
    z = gen.sample_z(LATENTS[name], seed=0)
    units = list(range(min(UNITS[name], gen.layers[3].channels)))

    def engine():
        for _ in per_unit(gen, z, "layer4", units):
            pass

    def one_forward_per_unit():
        from gandid.intervene import run_with_betas

        for u in units:
            run_with_betas(gen, z, Intervention("layer4", [u]), backend="reference")

    def floor():
        floor_per_unit(gen, z, "layer4", len(units))

    fn = {"floor": floor, "engine": engine, "one_forward_per_unit": one_forward_per_unit}[method]
    with torch.no_grad():
        benchmark.pedantic(fn, rounds=2, iterations=1, warmup_rounds=1)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info["units/s"] = len(units) / seconds
    _results[("ace", name, method)] = seconds


def test_channels_last_convolutions(benchmark, generators):
    """Does channels_last make this CPU's convolutions faster? (plain forward, NCHW vs NHWC)."""
    gen = generators["toyroom64"]
    z = gen.sample_z(64, seed=0)
    with torch.no_grad():
        import time

        times = {}
        for fmt in (torch.contiguous_format, torch.channels_last):
            gen.to(memory_format=fmt)
            gen.forward(z)
            t0 = time.perf_counter()
            for _ in range(3):
                gen.forward(z)
            times[str(fmt)] = (time.perf_counter() - t0) / 3
        gen.to(memory_format=torch.contiguous_format)
        benchmark.pedantic(lambda: gen.forward(z), rounds=1, iterations=1)
    benchmark.extra_info.update({k: v for k, v in times.items()})
    _results[("layout", "toyroom64", "nchw")] = times[str(torch.contiguous_format)]
    _results[("layout", "toyroom64", "nhwc")] = times[str(torch.channels_last)]


def teardown_module():
    lines = []
    for name in GENERATORS:
        r = {k[2]: v for k, v in _results.items() if k[0] == "did" and k[1] == name}
        parts = []
        if {"engine", "floor"} <= r.keys():
            parts.append(f"engine/floor time {r['engine'] / r['floor']:.2f} (target <= 1.05)")
        if {"engine", "plain_eager"} <= r.keys():
            parts.append(f"engine/plain_eager time {r['engine'] / r['plain_eager']:.2f} (was 'engine/floor', "
                         "target <= 1.10)")
        if {"engine", "naive"} <= r.keys():
            parts.append(f"naive/engine time {r['naive'] / r['engine']:.2f}x")
        if "engine" in r:
            parts.append(f"engine {LATENTS[name] / r['engine']:.2f} latents/s")
        if parts:
            lines.append(f"DID {name}: " + ", ".join(parts))
        a = {k[2]: v for k, v in _results.items() if k[0] == "ace" and k[1] == name}
        parts = []
        if {"engine", "floor"} <= a.keys():
            parts.append(f"engine/floor time {a['engine'] / a['floor']:.2f} (target <= 1.05)")
        if {"engine", "one_forward_per_unit"} <= a.keys():
            parts.append(f"one-forward-per-unit/engine time {a['one_forward_per_unit'] / a['engine']:.2f}x")
        if parts:
            lines.append(f"per-unit ACE {name}: " + ", ".join(parts))
    lay = {k[2]: v for k, v in _results.items() if k[0] == "layout"}
    if len(lay) == 2:
        lines.append(f"plain forward toyroom64 x64: channels_last/NCHW time {lay['nhwc'] / lay['nchw']:.2f}")
    if lines:
        print("\n" + "\n".join(lines))
