"""DID and per-unit ACE throughput of the one-pass engine, against the naive way and the floor.

- floor: one plain forward of the same 4N rows, no intervention, eager pixel norm;
- engine: ``counterfactuals`` (prefix once, 4N rows, fused op with borrowed β);
- naive: four separate hooked forwards that record and replay β (``counterfactuals_naive``).
Per-unit ACE: every single-unit ablation of the layer for N latents with ``per_unit`` against one full
forward per unit. Throughput is latents (or units) per second; ratios print at the end of the run.
GANDID_BENCH_QUICK=1 shrinks the generators.
"""
import os

import pytest
import torch

from gandid.intervene import BufferPool, Intervention, counterfactuals, counterfactuals_naive, per_unit
from gandid_plugins.pggan import PGGANGenerator

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


def setup_module():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def generators():
    return {name: random_generator(sizes) for name, sizes in GENERATORS.items()}


@pytest.mark.parametrize("method", ["floor", "engine", "naive"])
@pytest.mark.parametrize("name", list(GENERATORS))
def test_did(benchmark, generators, name, method):
    gen = generators[name]
    n = LATENTS[name]
    z = gen.sample_z(n, seed=0)
    iv = Intervention("layer4", list(range(20 if not QUICK else 4)))
    pool = BufferPool()
    fns = {
        "floor": lambda: gen.forward(z.repeat(4, 1)),
        "engine": lambda: counterfactuals(gen, z, iv, pool=pool),
        "naive": lambda: counterfactuals_naive(gen, z, iv),
    }
    with torch.no_grad():
        fns[method]()
        benchmark.pedantic(fns[method], rounds=3 if not QUICK else 2, iterations=1, warmup_rounds=0)
    seconds = benchmark.stats.stats.median
    benchmark.extra_info["latents/s"] = n / seconds
    _results[("did", name, method)] = seconds


@pytest.mark.parametrize("method", ["engine", "one_forward_per_unit"])
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

    fn = engine if method == "engine" else one_forward_per_unit
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
        if len(r) == 3:
            lines.append(f"DID {name}: engine/floor time {r['engine'] / r['floor']:.2f} (target <= 1.10), "
                         f"naive/engine time {r['naive'] / r['engine']:.2f}x, "
                         f"engine {LATENTS[name] / r['engine']:.2f} latents/s")
        a = {k[2]: v for k, v in _results.items() if k[0] == "ace" and k[1] == name}
        if len(a) == 2:
            lines.append(f"per-unit ACE {name}: one-forward-per-unit/engine time "
                         f"{a['one_forward_per_unit'] / a['engine']:.2f}x")
    lay = {k[2]: v for k, v in _results.items() if k[0] == "layout"}
    if len(lay) == 2:
        lines.append(f"plain forward toyroom64 x64: channels_last/NCHW time {lay['nhwc'] / lay['nchw']:.2f}")
    if lines:
        print("\n" + "\n".join(lines))
