"""Ground truth: the analyses on a generator whose unit-to-object mapping is planted (ground_truth.py)."""
import json
import types

import pytest
import torch

from gandid import hookimpl
from gandid.config import RunConfig
from gandid.registry import Registry
from gandid.runner import run
from ground_truth import LABELS, GroundTruthGenerator, GroundTruthSegmenter


@pytest.fixture
def gt_registry():
    import gandid_plugins.dissect

    module = types.ModuleType("ground_truth_plugin")

    def gandid_register_generators(register):
        register("gt", GroundTruthGenerator)

    def gandid_register_segmenters(register):
        register("gt", GroundTruthSegmenter)

    module.gandid_register_generators = hookimpl(gandid_register_generators)
    module.gandid_register_segmenters = hookimpl(gandid_register_segmenters)
    reg = Registry(load_entry_points=False)
    reg.add_plugin(module, "ground-truth")
    for name in ("dissect", "ace", "did", "entangle"):
        try:
            mod = __import__(f"gandid_plugins.{name}", fromlist=["x"])
        except ImportError:
            continue
        reg.add_plugin(mod, name)
    assert not reg.broken(), reg.broken()
    return reg


def gt_config(tmp_path, **kw):
    base = dict(generator="gt", segmenter="gt", analysis=["dissect"], samples=48, batch_size=16, device="cpu",
                out=str(tmp_path / "out"), layer=["feat"])
    base.update(kw)
    return RunConfig(**base)


def brute_force_iou(thresholds, samples=48, seed=0):
    """IoU of every unit with every class, from all samples held in memory at once."""
    gen, seg = GroundTruthGenerator(), GroundTruthSegmenter()
    z = gen.sample_z(samples, seed)
    with torch.no_grad():
        feats = gen.feat(z)
        labels = seg.segment(gen.forward(z))
    up = torch.nn.functional.interpolate(feats, size=(16, 16), mode="bilinear", align_corners=False)
    iou = torch.zeros(13, len(LABELS), dtype=torch.float64)
    for u in range(13):
        for c in range(len(LABELS)):
            a = up[:, u] >= thresholds[u][c]
            s = labels == c
            iou[u, c] = int((a & s).sum()) / max(1, int((a | s).sum()))
    return iou


@pytest.mark.parametrize("mode, options", [("quantile", {"quantile": 0.9}), ("iqr", {})])
def test_dissect_finds_the_planted_units(tmp_path, gt_registry, mode, options):
    cfg = gt_config(tmp_path, analysis_options={"dissect": {"threshold_mode": mode, "fit_samples": 64, **options}})
    result = run(cfg, registry=gt_registry)
    assert result.status == "completed", result.errors
    layer = result.results["dissect"]["layers"]["feat"]
    units = {u["unit"]: u for u in layer["units"]}
    assert units[0]["label"] == "red" and units[0]["iou"] > 0.6
    assert units[2]["label"] == "yellow" and units[2]["iou"] > 0.6
    for u in range(4, 12):
        assert units[u]["label"] == "blue" and units[u]["iou"] > 0.6
    assert units[12]["iou"] < 0.7  # the constant background unit is not an object detector
    assert layer["interpretable"]["blue"] == 8
    # IoU by brute force on the same samples with the same thresholds
    thresholds = [[units[u]["threshold"]] * len(LABELS) for u in range(13)]
    if mode == "iqr":  # per-class thresholds: recompute each unit's best class at its own threshold
        for u in range(13):
            c = LABELS.index(units[u]["label"])
            thresholds[u][c] = units[u]["threshold"]
    brute = brute_force_iou(thresholds)
    for u in range(13):
        c = LABELS.index(units[u]["label"])
        assert units[u]["iou"] == pytest.approx(float(brute[u, c]), abs=1e-9)
    assert (tmp_path / "out" / "dissect_feat.csv").exists()
    assert all(len(units[u]["top_seeds"]) == 8 for u in units)


def test_dissect_statistics_merge_from_two_halves(tmp_path, gt_registry):
    """Resuming after half the samples (statistics saved, then continued) equals one pass."""
    whole = run(gt_config(tmp_path, out=str(tmp_path / "whole")), registry=gt_registry).results["dissect"]
    half = gt_config(tmp_path, out=str(tmp_path / "half"), samples=24)
    run(half, registry=gt_registry)
    state_file = tmp_path / "half" / "state" / "dissect.pt"
    state = torch.load(state_file, weights_only=True)
    assert state["feat"]["done"] == 24
    # continue the same statistics over samples 24..47 in a run whose config asks for 48
    (tmp_path / "rest").mkdir()
    (tmp_path / "rest" / "state").mkdir()
    torch.save(state, tmp_path / "rest" / "state" / "dissect.pt")
    cfg = gt_config(tmp_path, out=str(tmp_path / "rest"))
    record = {"config": cfg.to_json(), "stages": {}, "files": [], "status": "interrupted"}
    (tmp_path / "rest" / "run.json").write_text(json.dumps(record))
    cfg.resume = True
    merged = run(cfg, registry=gt_registry).results["dissect"]
    a = {u["unit"]: u for u in whole["layers"]["feat"]["units"]}
    b = {u["unit"]: u for u in merged["layers"]["feat"]["units"]}
    for u in a:
        assert a[u]["iou_per_class"] == pytest.approx(b[u]["iou_per_class"], abs=1e-12)
        assert a[u]["top_seeds"] == b[u]["top_seeds"]
