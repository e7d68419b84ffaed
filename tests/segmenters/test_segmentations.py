"""What the analyses take from segmenters beyond one label per pixel. Multi-label segmentations
((B, K, H, W): object, part, material planes, -1 where a plane has no label) through the shared
measurements and the analyses: against plain loops, invariant to repeating a plane or adding an empty
one, and dissection's IoU with a label that only a second plane holds, recomputed here. And a segmenter
without gradients (ONNX), which ACE's screen and α optimisation cannot follow."""
import json
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ground_truth import LABELS, GroundTruthGenerator, GroundTruthSegmenter

from gandid import hookimpl
from gandid.config import RunConfig
from gandid.registry import Registry
from gandid.runner import run
from gandid.segmentation import class_fractions, distinct_planes, presence

UPPER = len(LABELS)  # the second plane's one label: the top half of the image


def loop_presence(labels, classes):
    b, k, h, w = labels.shape
    out = np.zeros((b, classes, h, w), dtype=bool)
    for i in range(b):
        for plane in range(k):
            for y in range(h):
                for x in range(w):
                    c = int(labels[i, plane, y, x])
                    if c >= 0:
                        out[i, c, y, x] = True
    return out


def test_presence_fractions_and_distinct_planes_against_loops():
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(-1, 6, (3, 3, 5, 7), generator=g)
    labels[:, 2] = torch.where(torch.rand(3, 5, 7, generator=g) < 0.5, labels[:, 0], labels[:, 2])  # repeats
    expected = loop_presence(labels.numpy(), 6)
    assert (presence(labels, 6).numpy() == expected).all()
    assert np.allclose(class_fractions(labels, 6, torch.float64).numpy(), expected.mean((2, 3)))
    pairs = distinct_planes(labels)
    for i in range(3):
        for y in range(5):
            for x in range(7):
                shown = [int(c) for c in pairs[i, :, y, x] if c >= 0]
                assert sorted(shown) == sorted(set(int(c) for c in labels[i, :, y, x] if c >= 0))
    single = labels[:, 0].clamp_min(0)
    assert torch.equal(class_fractions(single, 6), F.one_hot(single.reshape(3, -1), 6).float().mean(1))


def test_dissect_counts_only_the_labels_shown_into_their_own_columns():
    from gandid_plugins.analyses.dissect import labels_shown, one_hot_pixels

    g = torch.Generator().manual_seed(4)
    labels = torch.randint(-1, 4, (3, 2, 5, 7), generator=g) * 3  # labels 0, 3, 6, 9 of 12; -3 -> none
    labels[labels < 0] = -1
    shown, compact = labels_shown(labels)
    assert shown.tolist() == sorted({int(c) for c in labels.flatten() if c >= 0})
    full = one_hot_pixels(labels, 12)
    assert torch.equal(one_hot_pixels(compact, len(shown)), full[:, shown])
    assert full[:, [c for c in range(12) if c not in shown.tolist()]].sum() == 0
    empty_shown, empty = labels_shown(torch.full((2, 3, 3), -1))  # nothing labelled
    assert len(empty_shown) == 1 and one_hot_pixels(empty, 1).sum() == 0


class PlanesSegmenter(GroundTruthSegmenter):
    """The ground-truth labels as plane 0 and a second plane chosen by ``second``."""

    labels = LABELS + ["upper"]
    categories = {**{name: "object" for name in LABELS}, "upper": "part"}
    second = "upper"

    def segment(self, images):
        first = super().segment(images)
        if self.second == "same":
            other = first
        elif self.second == "empty":
            other = torch.full_like(first, -1)
        else:
            other = torch.full_like(first, -1)
            other[:, : first.shape[1] // 2] = UPPER
        return torch.stack([first, other], 1)

    def class_scores(self, images, c):
        if c == UPPER:
            return torch.full((len(images),), 0.5, dtype=images.dtype) + 0 * images.mean((1, 2, 3))
        return super().class_scores(images, c)


def run_with(tmp_path, name, segmenter_class, mode="quantile", ace=None):
    module = types.ModuleType(name)
    module.gandid_register_generators = hookimpl(lambda register: register("gt", GroundTruthGenerator))
    module.gandid_register_segmenters = hookimpl(lambda register: register("seg", segmenter_class))
    reg = Registry(load_entry_points=False)
    reg.add_plugin(module, name)
    import gandid_plugins.analyses.ace
    import gandid_plugins.analyses.did
    import gandid_plugins.analyses.dissect

    for mod in (gandid_plugins.analyses.dissect, gandid_plugins.analyses.ace, gandid_plugins.analyses.did):
        reg.add_plugin(mod, mod.__name__)
    out = tmp_path / name
    cfg = RunConfig(generator="gt", segmenter="seg", analysis=["dissect", "ace", "did"], samples=32, batch_size=16,
                    device="cpu", out=str(out), layer=["feat"],
                    analysis_options={"dissect": {"quantile": 0.9, "fit_samples": 32, "threshold_mode": mode},
                                      "ace": {"samples": 8, "top_k": 3, "alpha_steps": 3,
                                              "classes": ["red", "blue", "yellow"], **(ace or {})},
                                      "did": {"top_k": 1}})
    result = run(cfg, registry=reg)
    assert result.status == "completed", result.errors
    return {name: json.loads((out / f"{name}.json").read_text()) for name in ("dissect", "ace", "did")}


def without(data, *keys):
    if isinstance(data, dict):
        return {k: without(v, *keys) for k, v in data.items() if k not in keys}
    if isinstance(data, list):
        return [without(v, *keys) for v in data]
    return data


@pytest.mark.parametrize("mode", ["quantile", "iqr"])
@pytest.mark.slow
def test_a_repeated_or_empty_plane_changes_nothing(tmp_path, mode):
    """[L, L] and [L, none] show the same labels as L: every analysis's numbers are the same."""
    single = type("Single", (GroundTruthSegmenter,), {"labels": LABELS + ["upper"]})
    same = type("Same", (PlanesSegmenter,), {"second": "same"})
    empty = type("Empty", (PlanesSegmenter,), {"second": "empty"})
    reference = run_with(tmp_path, "single", single, mode)
    for variant in (same, empty):
        got = run_with(tmp_path, variant.__name__.lower(), variant, mode)
        # categories differ (upper is a part here), which dissect reports; the numbers must not
        assert without(got["dissect"], "categories", "category_conditioned", "interpretable_by_category") == \
            without(reference["dissect"], "categories", "category_conditioned", "interpretable_by_category")
        assert got["ace"] == reference["ace"] and got["did"] == reference["did"]


@pytest.mark.slow
def test_dissection_iou_with_a_second_plane_label_recomputed_here(tmp_path):
    got = run_with(tmp_path, "planes", PlanesSegmenter)["dissect"]
    units = got["layers"]["feat"]["units"]
    gen = GroundTruthGenerator()
    z = gen.sample_z(32, 0)
    with torch.no_grad():  # float32 as dissect thresholds it: ties at a threshold (unit 3 is 0.3 or 0) are on
        maps = F.interpolate(gen.feat(z), size=(16, 16), mode="bilinear", align_corners=False)  # (32, 13, 16, 16)
    upper = torch.zeros(32, 16, 16, dtype=torch.bool)
    upper[:, :8] = True
    for entry in units:
        on = maps[:, entry["unit"]] >= torch.tensor(entry["threshold"], dtype=torch.float32)
        inter, union = float((on & upper).sum()), float((on | upper).sum())
        assert entry["iou_per_class"]["upper"] == pytest.approx(inter / max(union, 1), abs=1e-6), entry["unit"]
    # unit 0 paints red in the top-left square: all of it is in the upper half
    assert units[0]["iou_per_class"]["upper"] > 0
    assert got["categories"] == ["object", "part"] and got["category_conditioned"]


@pytest.mark.slow
def test_ace_refuses_a_segmenter_without_gradients_when_screening_or_optimising_alpha(tmp_path):
    """An ONNX-like segmenter (differentiable = False): the screen and the α optimisation are refused before
    any work, naming the settings that run ACE without them; with them, ACE runs."""
    from gandid.errors import ConfigError

    no_gradients = type("NoGradients", (GroundTruthSegmenter,), {"differentiable": False})
    with pytest.raises(ConfigError, match="screen = false, alpha_steps = 0"):
        run_with(tmp_path, "refused", no_gradients)
    assert not (tmp_path / "refused" / "ace.json").exists()
    exhaustive = run_with(tmp_path, "exhaustive", no_gradients, ace={"screen": False, "alpha_steps": 0})["ace"]
    assert all(entry["screen"]["enabled"] is False for entry in exhaustive["classes"].values())


class HalfSizeSegmenter(GroundTruthSegmenter):
    """Labels at half the image's size (every other pixel), as a segmenter run at reduced size gives them."""

    def segment(self, images):
        return super().segment(images)[:, ::2, ::2]


@pytest.mark.slow
def test_dissection_at_the_labels_size(tmp_path):
    got = run_with(tmp_path, "half", HalfSizeSegmenter)["dissect"]
    gen, seg = GroundTruthGenerator(), GroundTruthSegmenter()
    z = gen.sample_z(32, 0)
    with torch.no_grad():
        maps = F.interpolate(gen.feat(z), size=(8, 8), mode="bilinear", align_corners=False)
        red = seg.segment(gen.forward(z))[:, ::2, ::2] == LABELS.index("red")
    entry = got["layers"]["feat"]["units"][0]
    on = maps[:, 0] >= torch.tensor(entry["threshold"], dtype=torch.float32)
    assert entry["iou_per_class"]["red"] == pytest.approx(float((on & red).sum()) / float((on | red).sum()), abs=1e-6)
    assert entry["label"] == "red"
