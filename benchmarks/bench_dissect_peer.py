"""gandid's quantile dissection against a straightforward re-implementation of GAN Dissection's.

`python benchmarks/bench_dissect_peer.py [--samples 100] [--rounds 2]` times, alternating, in one
process (2 threads), on the same random PG-GAN (the real 256 px layout up to `layer4`, 512 units at
8x8; later layers narrower), the same latents count and the same colour segmenter:

- ``gandid``: the `dissect` analysis, quantile mode (q = 0.99): the exact order statistic of each
  unit's raw feature map over ``samples`` fit samples (two prefix-only passes), then IoU over
  ``samples`` run samples (generated, segmented, features upsampled and thresholded);
- ``peer``: GAN Dissection's algorithm as CSAILVision/gandissect `netdissect/dissection.py` runs it
  (read for the facts, not copied): `collect_quantiles_and_topk` (a full forward of every sample, the
  raw feature maps into a quantile estimate, per-unit top activations) then `collect_bincounts` (one
  image per batch, as it asserts; features upsampled to the segmentation, thresholded strictly above
  the level, and for each label present in the image except 0 the unit-on pixels inside it summed).
  The peer's streaming `RunningQuantile` is replaced by one exact `kthvalue` over all the values kept
  in memory, which is no slower than a sketch;
- ``peer_batched``: the same with `collect_bincounts` on batches of the run's size (what the peer
  would gain by dropping its batch-1 constraint), the stricter comparison.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ace_screen import ColourSegmenter, random_pggan  # noqa: E402

from gandid.hooks import Trace  # noqa: E402
from gandid.testing import run_analysis  # noqa: E402
from gandid_plugins.analyses.dissect import Dissect  # noqa: E402

LAYER, QUANTILE, BATCH, TOP = "layer4", 0.99, 16, 8
UNIT_CHUNK = 512 // 8  # units per upsampled block in the batched peer (gandid's dissect uses 64 too)


def features_and_images(gen, z):
    with Trace(gen, [LAYER]) as trace:
        images = gen.forward(z)
    return trace.outputs[LAYER], images


def peer(gen, seg, samples, bincount_batch):
    """GAN Dissection's two passes; returns (U, C) IoU."""
    classes = len(seg.labels)
    values, top = [], None
    with torch.no_grad():
        for lo in range(0, samples, BATCH):  # collect_quantiles_and_topk: full forward, raw maps
            feats, _ = features_and_images(gen, gen.sample_z(min(BATCH, samples - lo), 0, start=lo))
            values.append(feats.transpose(0, 1).reshape(feats.shape[1], -1))
            batch_max = feats.flatten(2).amax(2).t()  # (U, B)
            top = batch_max if top is None else torch.cat([top, batch_max], 1).topk(min(TOP, top.shape[1] + batch_max.shape[1]), 1).values
        flat = torch.cat(values, 1)
        level = flat.kthvalue(int(QUANTILE * (flat.shape[1] - 1)) + 1, dim=1).values  # (U,)
        units = flat.shape[0]
        inter = torch.zeros(classes, units, dtype=torch.long)
        active = torch.zeros(units, dtype=torch.long)
        label_counts = torch.zeros(classes, dtype=torch.long)
        for lo in range(0, samples, bincount_batch):  # collect_bincounts
            feats, images = features_and_images(gen, gen.sample_z(min(bincount_batch, samples - lo), 0, start=lo))
            labels = seg.segment(images)
            label_counts += torch.bincount(labels.flatten(), minlength=classes)
            present = [label for label in labels.unique().tolist() if label != 0]  # the peer ignores label 0
            for lo_u in range(0, units, UNIT_CHUNK):  # memory: at batch 1 this is the peer's one pass
                part = slice(lo_u, lo_u + UNIT_CHUNK)
                up = F.interpolate(feats[:, part], size=labels.shape[-2:], mode="bilinear", align_corners=False)
                amask = up > level[None, part, None, None]
                active[part] += amask.flatten(2).sum((0, 2))
                for label in present:
                    inter[label, part] += (amask & (labels == label)[:, None]).flatten(2).sum((0, 2))
    return inter.t().double() / (active[:, None] + label_counts[None, :] - inter.t()).clamp_min(1).double()


def ours(gen, seg, samples):
    return run_analysis(Dissect(quantile=QUANTILE, fit_samples=samples, top_seeds=TOP), tempfile.mkdtemp(),
                        generator=gen, segmenter=seg, layers=[LAYER], samples=samples, batch_size=BATCH)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    gen, seg = random_pggan([512, 512, 512, 128, 64, 32, 16, 8, 8]).eval(), ColourSegmenter()
    methods = {"gandid": lambda: ours(gen, seg, args.samples),
               "peer": lambda: peer(gen, seg, args.samples, 1),
               "peer_batched": lambda: peer(gen, seg, args.samples, BATCH)}
    times = {name: [] for name in methods}
    for _ in range(args.rounds):  # alternating, so that drifts in the machine's speed hit all alike
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    best = {name: min(t) for name, t in times.items()}
    print(f"{args.samples} samples, layer4 (512 units, 8x8) of a 256 px PG-GAN, {args.rounds} rounds (best):")
    for name, t in times.items():
        print(f"  {name}: best {best[name]:.1f} s (all: {', '.join(f'{x:.1f}' for x in t)})")
    print(f"  peer / gandid: {best['peer'] / best['gandid']:.2f}x; peer_batched / gandid: "
          f"{best['peer_batched'] / best['gandid']:.2f}x")


if __name__ == "__main__":
    main()
