"""Segmentation throughput of the real-segmenter plugins, and their share of a dissection run.

`python benchmarks/bench_segmenters.py [--rounds 3] [--batch 4] [--size 256] [--dissect-samples 16]`:

- **throughput**: every `upp` and `semseg` architecture at its published width (random weights written
  in the real file layout by ``tests/segmenter_files.py`` into a temporary folder and loaded by the
  plugin, as a downloaded checkpoint is), and SegFormer-B0 through the `transformers` plugin when
  transformers is installed (a random model at B0's real size saved with ``save_pretrained``);
  float32, ``--size`` px images, ``--batch`` per call, best of ``--rounds``, images/s;
- **share of a dissection**: the `dissect` analysis (quantile mode, `layer4`) on a random 256 px
  PG-GAN (the test bench's `pggan256` depths) with each of `upp`, `semseg`
  resnet50dilated-ppm_deepsup and SegFormer-B0, ``--dissect-samples`` fit and run samples; the time
  spent inside ``segment`` as a share of the whole analysis (generation, features, statistics).

Run it alone on the machine (other processes change the numbers).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from segmenter_files import images, write_semseg_folder, write_upp_folder  # noqa: E402
from test_bench_engine import GENERATORS, random_generator  # noqa: E402

from gandid.testing import run_analysis  # noqa: E402
from gandid_plugins.analyses.dissect import Dissect  # noqa: E402
from gandid_plugins.segmenters.semseg import semseg  # noqa: E402
from gandid_plugins.segmenters.upp import upp  # noqa: E402

SEMSEG = [("resnet18dilated", "ppm_deepsup"), ("resnet50dilated", "ppm_deepsup"),
          ("resnet101dilated", "ppm_deepsup"), ("resnet50", "upernet"), ("resnet101", "upernet"), ("hrnetv2", "c1")]


def segformer_b0(folder: Path) -> Path | None:
    """A random SegFormer-B0 (150 ADE20K-sized classes, transformers' default config is B0) saved to
    ``folder``; None without transformers."""
    try:
        import transformers as tf
    except ImportError:
        return None
    config = tf.SegformerConfig(num_labels=150, id2label={i: f"class{i}" for i in range(150)},
                                label2id={f"class{i}": i for i in range(150)})
    torch.manual_seed(0)
    tf.SegformerForSemanticSegmentation(config).save_pretrained(folder)
    tf.SegformerImageProcessor(size={"height": 512, "width": 512}).save_pretrained(folder)
    return folder


def segmenters(root: Path, only: str = ""):
    """(name, factory) of every segmenter measured (those whose name contains ``only``), its files
    written under ``root``."""
    if only in "upp (quad division)":
        write_upp_folder(root / "upp", div=1)
        yield "upp (quad division)", lambda: upp(weights=str(root / "upp"))
    for encoder, decoder in SEMSEG:
        if only not in f"semseg {encoder}-{decoder}":
            continue
        folder = root / f"ade20k-{encoder}-{decoder}"
        write_semseg_folder(folder, encoder, decoder, div=1)
        yield f"semseg {encoder}-{decoder}", lambda folder=folder: semseg(weights=str(folder))
    hf = segformer_b0(root / "segformer-b0") if only in "transformers SegFormer-B0, size 256" else None
    if hf is not None:
        from gandid_plugins.segmenters.hf_segmenter import HFSegmenter

        yield "transformers SegFormer-B0, size 256", lambda: HFSegmenter(weights=str(hf), size=256)


def throughput(seg, imgs: torch.Tensor, rounds: int) -> float:
    with torch.no_grad():
        seg.segment(imgs[:1])  # warm-up: first-call allocations
        best = min(_timed(seg.segment, imgs) for _ in range(rounds))
    return len(imgs) / best


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


class TimedSegmenter:
    """A segmenter whose ``segment`` calls are timed (everything else passes through)."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def segment(self, imgs):
        t0 = time.perf_counter()
        try:
            return self.inner.segment(imgs)
        finally:
            self.seconds += time.perf_counter() - t0


def dissect_share(factory, samples: int, out: Path) -> tuple[float, float]:
    """(whole dissect seconds, seconds inside segment) on a random 256 px PG-GAN."""
    gen = random_generator(GENERATORS["pggan256"])
    seg = TimedSegmenter(factory())
    t0 = time.perf_counter()
    run_analysis(Dissect(fit_samples=samples), out, generator=gen, segmenter=seg, samples=samples, batch_size=8,
                 layers=["layer4"], name="dissect")
    return time.perf_counter() - t0, seg.seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--dissect-samples", type=int, default=16)
    parser.add_argument("--only", default="", help="measure only the segmenters whose name contains this")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    imgs = images(args.batch, args.size, seed=0)
    results = {"throughput": {}, "dissect": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, factory in segmenters(root / "weights", args.only):
            results["throughput"][name] = rate = throughput(factory(), imgs, args.rounds)
            print(f"{name:<45} {rate:6.2f} images/s", flush=True)
            if name.startswith(("upp", "semseg resnet50dilated", "transformers")):
                whole, inside = dissect_share(factory, args.dissect_samples, root / "out" / name.split()[0])
                results["dissect"][name] = {"seconds": whole, "segment_seconds": inside, "share": inside / whole}
                print(f"{'':<45} dissect {whole:6.1f} s, {inside / whole:.0%} of it segmenting", flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
