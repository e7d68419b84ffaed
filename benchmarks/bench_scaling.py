"""What one sample and one unit cost, the numbers docs/scaling.md plans with.

    python benchmarks/bench_scaling.py [--generator toyroom] [--layer layer5] [--threads N]

Times, on the default toyroom models (or any installed generator and segmenter), the units of work a
run splits between processes: one generated sample streamed for dissection (forward + segmentation,
and the forward alone up to the layer), and one unit-latent of ACE's per-unit pass (the suffix from
the layer with one unit ablated, then segmentation). Median of ``--repeats`` after a warm-up.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: allocations, the fused op's first call
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", default="toyroom")
    parser.add_argument("--segmenter", default="toyroom")
    parser.add_argument("--layer", default=None)
    parser.add_argument("--batch", type=int, default=16, help="samples per forward (the run's --batch-size)")
    parser.add_argument("--latents", type=int, default=16, help="latents per unit (ace's samples)")
    parser.add_argument("--units", type=int, default=32, help="units per timed per-unit pass")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import gandid
    from gandid.hooks import Trace
    from gandid.intervene import per_unit

    gen = gandid.load_generator(args.generator)
    seg = gandid.load_segmenter(args.segmenter)
    layer = args.layer or getattr(gen, "default_layer", None) or gen.layers[len(gen.layers) // 2].name
    z = gen.sample_z(args.batch, seed=0)
    zu = gen.sample_z(args.latents, seed=1)

    def full_sample():
        with torch.no_grad(), Trace(gen, [layer]):
            seg.segment(gen.forward(z))

    def features_only():
        with torch.no_grad(), Trace(gen, [layer], stop=True):
            gen.forward(z)

    def unit_latents():
        with torch.no_grad():
            for _, images in per_unit(gen, zu, layer, list(range(args.units))):
                seg.segment(images.flatten(0, 1))

    sample = median_seconds(full_sample, args.repeats) / args.batch
    prefix = median_seconds(features_only, args.repeats) / args.batch
    unit = median_seconds(unit_latents, args.repeats) / (args.units * args.latents)
    print(f"{args.generator} at {layer}, {torch.get_num_threads()} threads, batch {args.batch}:")
    print(f"  sample (forward + segmentation):   {sample * 1e3:7.2f} ms")
    print(f"  sample (forward up to {layer}):   {prefix * 1e3:7.2f} ms")
    print(f"  unit-latent (suffix + segmentation): {unit * 1e3:7.2f} ms")


if __name__ == "__main__":
    main()
