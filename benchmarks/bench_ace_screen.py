"""Screened against exhaustive per-unit ACE: recall of the exact top k and the time it takes.

`python benchmarks/bench_ace_screen.py [--cases toyroom,planted,pggan256] [--markdown]` runs, in this one
process and one after the other (2 threads):
- ``exhaustive``: ``ace`` with ``screen = false`` (every unit ablated and inserted for every class);
- ``screened``: ``ace`` as shipped (first-order screen, exact counterfactuals for the candidates);
- ``loop``: a straightforward one-unit-at-a-time loop, the way GAN Dissection's InstrumentedModel is
  used: a forward hook on the layer sets one unit to 0 (or k), the whole generator runs, the images are
  segmented; timed on a few units and scaled to (1 + classes) x units, since every unit costs the same.
Both ``ace`` runs skip the parts that do not depend on screening (alpha optimisation, context) and
share everything else (statistics, latents, curves at k = top_k only). Recall: per class, how many of
the exhaustive top k the screened top k holds, and the rank correlation of the screened values with the
exhaustive ones over the exhaustive top k. The chance level to read it against: the exhaustive top k's
own stability when the latents are resampled (``topk_stability`` summed), printed beside it.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from test_bench_engine import random_generator as random_pggan  # noqa: E402  (random-weight PG-GAN)

from gandid.segmentation import class_fractions  # noqa: E402
from gandid.testing import run_analysis  # noqa: E402
from gandid_plugins.analyses.ace import ACE, rank_correlation  # noqa: E402


class ColourSegmenter:
    """Pixels by colour: dark, bright, red, green, blue, grey. ``class_scores`` is a soft version of the
    same rules (dark and bright override grey, grey overrides the colours), so that its gradient speaks
    for the segmentation (a score that ignored the overrides misled the screen: RESULTS.md)."""

    labels = ["dark", "bright", "red", "green", "blue", "grey"]

    def segment(self, images):
        m = images.mean(1)
        lab = images.argmax(1) + 2
        lab[(images.max(1).values - images.min(1).values) < 0.15] = 5
        lab[m < -0.5] = 0
        lab[m > 0.5] = 1
        return lab

    def class_scores(self, images, c):
        m = images.mean(1)
        dark, bright = torch.sigmoid((-m - 0.5) * 10), torch.sigmoid((m - 0.5) * 10)
        neither = (1 - dark) * (1 - bright)
        grey = torch.sigmoid((0.15 - (images.max(1).values - images.min(1).values)) * 20)
        soft = {0: dark, 1: bright * (1 - dark), 5: grey * neither}.get(c)
        if soft is None:
            soft = torch.softmax(images * 5, 1)[:, c - 2] * (1 - grey) * neither
        return soft.flatten(1).mean(1)


def case(name):
    """(generator, segmenter, layer, ace options, latents) for one case."""
    if name == "toyroom":
        import gandid_plugins.worlds.toyroom as toyroom
        from gandid_plugins.worlds.toyroom.segmenter import ToyroomSegmenter

        gen = toyroom.toyroom_generator()
        options = dict(toyroom.DEFAULT_RUN_OPTIONS["ace"])
        return gen, ToyroomSegmenter(), "layer5", {"min_area": options["min_area"]}, 16
    if name == "planted":
        from ground_truth import GroundTruthGenerator, GroundTruthSegmenter

        return GroundTruthGenerator(), GroundTruthSegmenter(), "feat", {"top_k": 3, "screen_candidates": 4}, 16
    if name == "pggan256":
        # the real 256 px layout up to layer4 (512 units, 8x8); later layers narrower so that the exhaustive
        # path fits in a CPU session (stated in RESULTS.md); every colour class covering 1 % of the images
        gen = random_pggan([512, 512, 512, 128, 64, 32, 16, 8, 8])
        return gen, ColourSegmenter(), "layer4", {}, 4
    raise SystemExit(f"unknown case {name!r}; choose from toyroom, planted, pggan256")


def loop_seconds_per_image(gen, seg, layer, z, units, value):
    """Time the straightforward loop on ``units`` (one hooked full forward + segmentation per unit)."""
    module = gen.layer_module(layer)
    classes = len(seg.labels)
    start = time.perf_counter()
    with torch.no_grad():
        for u in units:
            def edit(_module, _inputs, out, u=u):
                out = out.clone()
                out[:, u] = 0 if value is None else value[u]
                return out

            handle = module.register_forward_hook(edit)
            try:
                class_fractions(seg.segment(gen.forward(z)), classes)
            finally:
                handle.remove()
    return (time.perf_counter() - start) / (len(units) * len(z))


def run_case(name, tmp):
    gen, seg, layer, extra, latents = case(name)
    common = dict(samples=latents, alpha_steps=0, context_locations=0, stat_samples=64, **extra)
    common["curve_ks"] = [common.get("top_k", 20)]
    timings, results = {}, {}
    for mode, options in (("exhaustive", {"screen": False}), ("screened", {})):
        start = time.perf_counter()
        results[mode] = run_analysis(ACE(**common, **options), tmp / f"{name}_{mode}", generator=gen,
                                     segmenter=seg, layers=[layer], samples=64, batch_size=16)
        timings[mode] = time.perf_counter() - start
    exhaustive, screened = results["exhaustive"], results["screened"]
    units = exhaustive["units"]
    k = min(common.get("top_k", 20), units)
    rows = []
    for cls, e in exhaustive["classes"].items():
        s = screened["classes"][cls]
        top = e["ranking"][:k]
        got = s["ranking"][:k]
        exact = torch.tensor([e["unit_ace"][u] for u in top], dtype=torch.float64)
        found = torch.tensor([s["unit_ace"][u] if s["unit_ace"][u] is not None else float("-inf") for u in top],
                             dtype=torch.float64)
        rows.append({"class": cls, "overlap": len(set(top) & set(got)), "k": k,
                     "rank_corr": rank_correlation(exact, found.clamp_min(-1.0)),
                     "measured": s["screen"]["measured"], "units": units,
                     "widened": s["screen"]["widened_to"], "spearman_all": s["screen"]["spearman"],
                     "self_stability": sum(e["topk_stability"].values())})
    # the loop, on a few units for the ablation and the first class's insertion, scaled to the whole job
    z = gen.sample_z(latents, 0)
    classes = list(exhaustive["classes"])
    first = classes[0]
    value = torch.tensor(exhaustive["classes"][first]["insert_value"])
    probe = list(range(min(8, units)))
    per_image = 0.5 * (loop_seconds_per_image(gen, seg, layer, z, probe, None)
                       + loop_seconds_per_image(gen, seg, layer, z, probe, value))
    timings["loop (scaled)"] = per_image * (1 + len(classes)) * units * latents
    return rows, timings


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="planted,toyroom,pggan256")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp())
    for name in args.cases.split(","):
        rows, t = run_case(name, tmp)
        print(f"\n### {name}\n")
        print("| class | exhaustive top-k found | rank corr. (top k) | units measured | widened to | "
              "estimate/exact Spearman (measured) | exhaustive top-k stability (resampled latents) |")
        print("| --- | ---: | ---: | ---: | --- | ---: | ---: |")
        for r in rows:
            print(f"| {r['class']} | {r['overlap']}/{r['k']} | {r['rank_corr']:.2f} | {r['measured']}/{r['units']} | "
                  f"{', '.join(map(str, r['widened'])) or '-'} | {r['spearman_all']:.2f} | {r['self_stability']:.1f}/{r['k']} |")
        print(f"\nACE time (s): exhaustive {t['exhaustive']:.1f}, screened {t['screened']:.1f}, "
              f"one-unit loop (scaled) {t['loop (scaled)']:.1f}; exhaustive/screened "
              f"{t['exhaustive'] / t['screened']:.2f}x, loop/screened {t['loop (scaled)'] / t['screened']:.2f}x")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
