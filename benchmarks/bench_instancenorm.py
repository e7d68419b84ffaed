"""The fused op ``instance_norm`` against plain PyTorch, and InstanceNorm's share of a DID pass.

    python benchmarks/bench_instancenorm.py [--repeats 15] [--did-repeats 3] [--skip-did]

Part 1, per StyleGAN-like shape (float32, NCHW): median wall time of
  - ``legacy``: the plain-PyTorch InstanceNorm.forward this op replaced (var_mean, stack, subtract,
    divide in place), with an override, as the engine runs it at a controlled site;
  - ``reference``: gandid.ops.instance_norm_reference (the op's spec and fallback), own statistics;
  - ``fused``: gandid.ops.instance_norm, own statistics, one call (an InstanceNorm without override);
  - ``fused out=``: the same into a preallocated output: the kernel without the page faults of a
    fresh output (every other method allocates its result, as a generator's forward does);
  - ``fused+override``: InstanceNorm.forward with an override: statistics, override, normalise with
    stats_in (two calls), what the engine's controlled sites cost now;
and the ratios to ``legacy``. All measured in the same run, interleaved.

Part 2: a 4-arm DID pass (``counterfactuals``, 2 latents x 4 arms) from ``32.conv1`` of a 256 px
rosinality StyleGAN v1 with real channel counts (512, 512, 512, 512, 256, 128, 64; random weights),
with InstanceNorm.forward timed inside the pass: its share of the pass with the legacy forward
(before) and with the fused op (after).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from gandid.model import InstanceNorm  # noqa: E402
from gandid.ops import backend_name, instance_norm, instance_norm_reference  # noqa: E402

SHAPES = [(8, 512, 32, 32), (8, 256, 64, 64), (8, 64, 256, 256)]


def legacy_forward(self, x):
    """InstanceNorm.forward before the fused op (gandid/model.py at the parent commit)."""
    xs = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    var, mean = torch.var_mean(xs, dim=(2, 3), correction=0)
    stats = torch.stack([mean, torch.sqrt(var + self.eps)], 1)
    if self.override is not None:
        stats = self.override(stats)
    stats = stats.to(x.dtype)
    return (x - stats[:, 0, :, None, None]).div_(stats[:, 1, :, None, None])


def median_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def bench_shapes(repeats):
    print(f"instance_norm, float32 NCHW, backend {backend_name('cpu')}, {torch.get_num_threads()} threads; "
          f"median of {repeats}, ms")
    print(f"{'shape':>18} {'MB':>4} {'legacy':>8} {'reference':>9} {'fused':>7} {'fused out=':>10} {'fused+ovr':>9} "
          f"{'legacy/fused':>12} {'legacy/fused+ovr':>16} {'out= GB/s':>9}")
    rows = []
    for shape in SHAPES:
        x = torch.randn(*shape) * 2 + 0.5
        n = shape[0]
        src = torch.arange(n).remainder(n // 2)  # rows borrow like DID arms: an override that swaps rows
        norm = InstanceNorm()
        norm.override = lambda s: s[src]
        out = torch.empty_like(x)

        methods = {
            "legacy": lambda: legacy_forward(norm, x),
            "reference": lambda: instance_norm_reference(x, 1e-5),
            "fused": lambda: instance_norm(x, 1e-5, return_stats=False),
            "fused out=": lambda: instance_norm(x, 1e-5, return_stats=False, out=out),
            "fused+override": lambda: norm(x),
        }
        times = {k: [] for k in methods}
        for fn in methods.values():
            fn()
        with torch.no_grad():
            for _ in range(repeats):  # interleaved, so a noisy neighbour hits every method alike
                for k, fn in methods.items():
                    t0 = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t0)
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        mb = x.numel() * 4 / 1e6
        gbs = 2 * mb / med["fused out="]  # one read of x and one write of y
        print(f"{str(shape):>18} {mb:4.0f} {med['legacy']:8.2f} {med['reference']:9.2f} {med['fused']:7.2f} "
              f"{med['fused out=']:10.2f} {med['fused+override']:9.2f} {med['legacy'] / med['fused']:12.2f} "
              f"{med['legacy'] / med['fused+override']:16.2f} {gbs:9.1f}")
        rows.append((shape, med))
    return rows


def did_share(did_repeats):
    import stylegan_files

    from gandid.intervene import Intervention, counterfactuals
    from gandid_plugins.generators.stylegan import stylegan

    state = stylegan_files.make_state_dict(channels=(512, 512, 512, 512, 256, 128, 64),
                                           fused=(False, False, False, False, True, True, True),
                                           style_dim=512, n_mlp=8)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stylegan256.pt"
        torch.save(state, path)
        gen = stylegan(weights=str(path))
    z = gen.sample_z(2, 0)
    iv = Intervention("32.conv1", list(range(64)))
    spent = [0.0]
    fused_forward = InstanceNorm.forward

    def timed(impl):
        def forward(self, x):
            t0 = time.perf_counter()
            try:
                return impl(self, x)
            finally:
                spent[0] += time.perf_counter() - t0
        return forward

    results = {}
    print(f"\n4-arm DID pass, 256 px StyleGAN v1 (channels 512..64), 2 latents x 4 arms, from 32.conv1; "
          f"median of {did_repeats}")
    try:
        with torch.no_grad():
            for label, impl in (("before (plain PyTorch)", legacy_forward), ("after (fused op)", fused_forward)):
                InstanceNorm.forward = timed(impl)
                counterfactuals(gen, z, iv)  # warm-up
            passes = {"before (plain PyTorch)": [], "after (fused op)": []}
            for _ in range(did_repeats):
                for label, impl in (("before (plain PyTorch)", legacy_forward), ("after (fused op)", fused_forward)):
                    InstanceNorm.forward = timed(impl)
                    spent[0] = 0.0
                    t0 = time.perf_counter()
                    counterfactuals(gen, z, iv)
                    passes[label].append((time.perf_counter() - t0, spent[0]))
    finally:
        InstanceNorm.forward = fused_forward
    for label, runs in passes.items():
        total = statistics.median(t for t, _ in runs)
        inorm = statistics.median(s for _, s in runs)
        share = statistics.median(s / t for t, s in runs)
        results[label] = (total, inorm, share)
        print(f"  {label:24s} pass {total:7.2f} s   InstanceNorm.forward {inorm:6.2f} s   share {100 * share:5.1f} %")
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--did-repeats", type=int, default=3)
    ap.add_argument("--skip-did", action="store_true")
    args = ap.parse_args(argv)
    bench_shapes(args.repeats)
    if not args.skip_did:
        did_share(args.did_repeats)


if __name__ == "__main__":
    main()
