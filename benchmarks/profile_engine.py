"""Where the one-pass DID engine spends its time: `python benchmarks/profile_engine.py [pggan256|toyroom64]`.

Groups the profiler's self CPU time into convolutions, norm sites (the fused op), upsampling and the
rest, for one `counterfactuals` call on a random-weight generator.
"""
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_bench_engine import GENERATORS, LATENTS, random_generator  # noqa: E402

from gandid.intervene import BufferPool, Intervention, counterfactuals  # noqa: E402


def main(name="pggan256"):
    gen = random_generator(GENERATORS[name])
    z = gen.sample_z(LATENTS[name], seed=0)
    iv = Intervention("layer4", list(range(20)))
    pool = BufferPool()
    with torch.no_grad():
        counterfactuals(gen, z, iv, pool=pool)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            counterfactuals(gen, z, iv, pool=pool)
    groups = {"convolution": 0.0, "norm sites (fused op)": 0.0, "upsample": 0.0, "other": 0.0}
    others = {}
    total = 0.0
    for evt in prof.key_averages():
        t = evt.self_cpu_time_total
        total += t
        key = evt.key
        if "conv" in key or "mkldnn" in key:
            groups["convolution"] += t
        elif key == "gandid::norm_site":
            groups["norm sites (fused op)"] += t
        elif "upsample" in key:
            groups["upsample"] += t
        else:
            groups["other"] += t
            others[key] = others.get(key, 0.0) + t
    print(f"{name}: {LATENTS[name]} latents x 4 arms, total {total / 1e3:.0f} ms")
    for k, v in groups.items():
        print(f"  {k:24s} {v / 1e3:8.1f} ms  {100 * v / total:5.1f} %")
    top = sorted(others.items(), key=lambda kv: -kv[1])[:5]
    print("  largest in 'other': " + ", ".join(f"{k} {v / 1e3:.1f} ms" for k, v in top))


if __name__ == "__main__":
    main(*sys.argv[1:])
