"""Ground truth: the analyses on a generator whose unit-to-object mapping is planted (ground_truth.py)."""
import json
import types

import pytest
import torch
from ground_truth import LABELS, GroundTruthGenerator, GroundTruthSegmenter
from order_statistics import inverse_cdf

from gandid import hookimpl
from gandid.config import RunConfig
from gandid.outdir import MARKER
from gandid.registry import Registry
from gandid.runner import run


@pytest.fixture
def gt_registry():

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
            mod = __import__(f"gandid_plugins.analyses.{name}", fromlist=["x"])
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


def brute_force_iou(thresholds, samples=48, seed=0, strict=False):
    """IoU of every unit with every class, from all samples held in memory at once (active: at or above
    the threshold, or strictly above it)."""
    gen, seg = GroundTruthGenerator(), GroundTruthSegmenter()
    z = gen.sample_z(samples, seed)
    with torch.no_grad():
        feats = gen.feat(z)
        labels = seg.segment(gen.forward(z))
    up = torch.nn.functional.interpolate(feats, size=(16, 16), mode="bilinear", align_corners=False)
    iou = torch.zeros(13, len(LABELS), dtype=torch.float64)
    for u in range(13):
        for c in range(len(LABELS)):
            a = up[:, u] > thresholds[u][c] if strict else up[:, u] >= thresholds[u][c]
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
    assert units[0]["iou_lift"] > 3 and units[0]["chance_iou"] < units[0]["iou"] / 3  # far above chance
    assert units[2]["label"] == "yellow" and units[2]["iou"] > 0.6
    for u in range(4, 12):
        assert units[u]["label"] == "blue" and units[u]["iou"] > 0.6
    assert units[12]["iou"] < 0.7  # the constant background unit is not an object detector
    assert layer["interpretable"]["blue"] == 8 and layer["interpretable_by_category"]["object"] >= 10
    # IoU by brute force on the same samples with the same thresholds (iqr: strictly above, as gandissect)
    thresholds = [[units[u]["threshold"]] * len(LABELS) for u in range(13)]
    brute = brute_force_iou(thresholds, strict=mode == "iqr")
    for u in range(13):
        c = LABELS.index(units[u]["label"])
        assert units[u]["iou"] == pytest.approx(float(brute[u, c]), abs=1e-9)
    assert (tmp_path / "out" / "dissect_feat.csv").exists()
    assert all(len(units[u]["top_seeds"]) == 8 for u in units)


@pytest.mark.slow
def test_dissect_statistics_merge_from_two_halves(tmp_path, gt_registry):
    """Resuming after half the samples (statistics saved, then continued) equals one pass."""
    whole = run(gt_config(tmp_path, out=str(tmp_path / "whole")), registry=gt_registry).results["dissect"]
    half = gt_config(tmp_path, out=str(tmp_path / "half"), samples=24)
    run(half, registry=gt_registry)
    state_file = tmp_path / "half" / "state" / "dissect.pt"
    state = torch.load(state_file, weights_only=True)
    assert state["tally"]["feat"]["done"] == 24
    # continue the same statistics over samples 24..47 in a run whose config asks for 48
    (tmp_path / "rest").mkdir()
    (tmp_path / "rest" / "state").mkdir()
    torch.save(state, tmp_path / "rest" / "state" / "dissect.pt")
    cfg = gt_config(tmp_path, out=str(tmp_path / "rest"))
    record = {"format": MARKER, "config": cfg.to_json(), "stages": {}, "files": [], "status": "interrupted"}
    (tmp_path / "rest" / "run.json").write_text(json.dumps(record))
    cfg.resume = True
    merged = run(cfg, registry=gt_registry).results["dissect"]
    a = {u["unit"]: u for u in whole["layers"]["feat"]["units"]}
    b = {u["unit"]: u for u in merged["layers"]["feat"]["units"]}
    for u in a:
        assert a[u]["iou_per_class"] == pytest.approx(b[u]["iou_per_class"], abs=1e-12)
        assert a[u]["top_seeds"] == b[u]["top_seeds"]


@pytest.fixture(scope="module")
def ace_result(tmp_path_factory, request):
    import gandid_plugins.analyses.ace
    import gandid_plugins.analyses.dissect

    tmp = tmp_path_factory.mktemp("ace")
    module = types.ModuleType("gt")
    module.gandid_register_generators = hookimpl(lambda register: register("gt", GroundTruthGenerator))
    module.gandid_register_segmenters = hookimpl(lambda register: register("gt", GroundTruthSegmenter))
    reg = Registry(load_entry_points=False)
    reg.add_plugin(module, "gt")
    for mod in (gandid_plugins.analyses.ace, gandid_plugins.analyses.dissect):
        reg.add_plugin(mod, mod.__name__)
    extra = {}
    for name in ("did", "entangle"):
        try:
            mod = __import__(f"gandid_plugins.analyses.{name}", fromlist=["x"])
            reg.add_plugin(mod, name)
            extra[name] = {}
        except ImportError:
            pass
    cfg = gt_config(tmp, analysis=["ace", *extra], samples=32, analysis_options={
        "ace": {"samples": 24, "top_k": 4, "alpha_steps": 40, "alpha_lr": 0.05, "alpha_samples": 12,
                "context_locations": 64}, **{k: ({"top_k": 1} if k == "did" else {}) for k in extra}})
    return run(cfg, registry=reg), tmp / "out"


@pytest.mark.slow
def test_ace_ranks_planted_units_first_with_the_right_sign(ace_result):
    result, out = ace_result
    assert result.status == "completed", result.errors
    classes = result.results["ace"]["classes"]
    assert set(classes) == {"red", "blue", "yellow"}  # green only exists after an ablation
    red, yellow, blue = classes["red"], classes["yellow"], classes["blue"]
    assert red["ranking"][0] == 0 and red["unit_ace"][0] > 0.2
    assert red["topk_stability"]["0"] == 1.0 and red["rank_distinguishable"][0]  # unit 0 is clearly first
    assert red["unit_ace_ci95"][0][0] > 0.1
    assert yellow["ranking"][0] == 2 and yellow["unit_ace"][2] > 0.2
    # blue is redundant: its eight units share the effect equally (a flat distribution), and they
    # rank above every other unit
    blue_ace = [blue["unit_ace"][u] for u in range(4, 12)]
    assert min(blue_ace) > 0 and max(blue_ace) - min(blue_ace) < 1e-6
    assert set(blue["ranking"][:8]) == set(range(4, 12))
    # the ablation curve removes the planted class at k = 1, and blue survives two ablations
    assert red["topk_removed_fraction"][0] == 0 and red["topk_removed_fraction"][1] > 0.99
    assert yellow["topk_removed_fraction"][1] > 0.99
    assert blue["topk_removed_fraction"][2] < 0.01
    assert (out / "ace_red.png").exists()


def test_ace_alpha_optimisation_turns_on_the_planted_unit(ace_result):
    result, _ = ace_result
    opt = result.results["ace"]["classes"]["red"]["alpha_opt"]
    assert 0 in opt["units_above_half"]
    assert opt["alpha"][0] > 0.9
    assert opt["final_delta"] > opt["delta_history"][0]


def test_ace_context_gain_depends_on_the_location(ace_result):
    result, _ = ace_result
    ctx = result.results["ace"]["classes"]["yellow"]["context_gain"]
    assert ctx, "no context measured"
    assert all(v["count"] > 0 for v in ctx.values())
    assert max(v["mean_gain"] for v in ctx.values()) > 0


def test_did_detects_pixel_norm_inpainting_with_the_predicted_sign(ace_result):
    """Ablating red's top unit: pixel norm lifts the green underpaint where red was (positive area DID
    for green); in the fixed-β arm nothing is in-painted. Yellow's ablation in-paints nothing."""
    result, out = ace_result
    assert "did" in result.results, result.errors
    did = result.results["did"]["classes"]
    red = did["red"]["area_did"]
    assert red["green"]["mean"] > 0.05 and red["green"]["ci95"][0] > 0  # in-painted, interval above 0
    assert red["green"]["significant"] and red["green"]["q"] < 0.05
    assert not did["yellow"]["area_did"]["green"]["significant"]
    arm = did["red"]["arm_mean_area"]
    assert arm["intervened"]["green"] > 0.05 and arm["intervened_fixed_beta"]["green"] == 0  # only with the ablated run's β
    assert abs(did["yellow"]["area_did"]["green"]["mean"]) < 1e-9
    assert did["red"]["pixel_did_mean_abs"] > 0
    assert (out / "did_red.png").exists() and (out / "did_red_map.png").exists()


def test_entangle_calls_the_planted_classes(ace_result):
    result, out = ace_result
    calls = {name: e["call"] for name, e in result.results["entangle"]["classes"].items()}
    assert calls == {"red": "type2_misablation", "blue": "type1_deactivating", "yellow": "disentangled"}
    red = result.results["entangle"]["classes"]["red"]
    assert "green" in red["emerging"] and "green gains" in red["why"]
    assert result.results["entangle"]["classes"]["blue"]["remaining_fraction"] > 0.99
    assert result.results["did"]["classes"]["blue"]["units"][0] in range(4, 12)  # a blue unit was ablated
    assert (out / "entangle.png").exists()


def test_ace_curve_points_ladder_and_explicit_ks():
    from gandid_plugins.analyses.ace import ACE

    assert ACE(top_k=20).curve_points(128) == [1, 2, 3, 5, 8, 13, 20]
    assert ACE(top_k=20).curve_points(6) == [1, 2, 3, 5, 6]  # fewer units than top_k
    assert ACE(top_k=10, curve_ks=[4, 1, 4, 30, 0]).curve_points(128) == [1, 4]  # sorted, deduplicated, in range


def test_a_result_from_another_version_is_refused_clearly():
    from gandid.errors import GandidError
    from gandid_plugins.analyses import ace, did
    from gandid_plugins.analyses.ace import read_ace_result
    from gandid_plugins.analyses.did import read_did_result

    old_ace = {"layer": "layer4", "classes": {"chair": {"ranking": [3, 1]}}}  # written before results had versions
    with pytest.raises(GandidError, match=r"'ace' result was written by another version of 'ace' \(result version "
                                          rf"None, this gandid reads {ace.RESULT_VERSION}\): run 'ace' again"):
        read_ace_result(old_ace)
    with pytest.raises(GandidError, match=r"'did' result lacks \['sites', 'top_k', 'arm_titles', 'classes'\]"):
        read_did_result({"version": did.RESULT_VERSION, "layer": "layer4"})


def test_consumers_read_the_typed_results(ace_result):
    """did reads ace's ranking and entangle did's arm areas by arm name, through the published types."""
    import typing

    from gandid_plugins.analyses.ace import AceResult, read_ace_result
    from gandid_plugins.analyses.did import ARMS, DidResult, read_did_result

    result = ace_result[0].results
    ace, did = read_ace_result(result["ace"]), read_did_result(result["did"])
    assert set(typing.get_type_hints(AceResult)) <= set(ace) and set(typing.get_type_hints(DidResult)) <= set(did)
    for name, entry in did["classes"].items():
        assert list(entry["arm_mean_area"]) == list(ARMS)
        assert entry["units"] == ace["classes"][name]["ranking"][: did["top_k"]]
    assert set(result["entangle"]["classes"]) == set(did["classes"])


def brute_force_iqr(levels, samples, seed, fractions=None):
    """GAN Dissection's IQR selection written out directly (gandissect collect_iqr + dissect), on all
    fit samples in memory: returns per unit (label, level index, IQR); with the candidates' top
    ``fractions`` (V,), that of its report records instead (generate_report's iqr_label: pairs whose
    best level has a top fraction above 0.5 are skipped)."""
    import math

    gen, seg = GroundTruthGenerator(), GroundTruthSegmenter()
    z = gen.sample_z(samples, seed)
    with torch.no_grad():
        up = torch.nn.functional.interpolate(gen.feat(z), size=(16, 16), mode="bilinear", align_corners=False)
        labels = seg.segment(gen.forward(z))
    n = labels.numel()
    out = []
    for u in range(levels.shape[0]):
        a = up[:, u].double()
        best = (-1.0, None, None)  # (iqr, label, level index)
        for c in range(len(LABELS)):
            s = labels == c
            truth = int(s.sum()) / n
            best_c = (0.0, 0)
            for v in range(levels.shape[1]):
                on = a > levels[u, v]
                p11 = int((on & s).sum()) / n  # one category: every image holds it, so preds is over all pixels
                p10, p01 = int(on.sum()) / n - p11, truth - p11
                p00 = 1 - (p11 + p10 + p01)
                cells = [[p11, p10], [p01, p00]]
                rows, cols = [p11 + p10, p01 + p00], [p11 + p01, p10 + p00]
                mi = sum(cells[j][k] * math.log(cells[j][k] / (rows[j] * cols[k]))
                         for j in range(2) for k in range(2) if cells[j][k] > 0)
                je = -sum(cells[j][k] * math.log(cells[j][k]) for j in range(2) for k in range(2) if cells[j][k] > 0)
                excluded = (v == levels.shape[1] - 1 or truth < 1e-3 or p11 + p00 <= 0.8
                            or float(levels[u, v]) <= 0 or je <= 0)
                iqr = 0.0 if excluded else max(mi, 0.0) / je
                if iqr > best_c[0]:
                    best_c = (iqr, v)
            if fractions is not None and float(fractions[best_c[1]]) > 0.5:
                continue
            if best_c[0] > best[0]:
                best = (best_c[0], c, best_c[1])
        out.append((best[1], best[2], best[0]))
    return out


def test_iqr_matches_a_direct_implementation_of_gan_dissections_selection(tmp_path, gt_registry):
    from gandid_plugins.analyses.dissect import FIT_SEED_OFFSET, IQR_FRACTIONS

    cfg = gt_config(tmp_path, analysis_options={"dissect": {"threshold_mode": "iqr", "fit_samples": 32}})
    assert run(cfg, registry=gt_registry).status == "completed"
    fit = torch.load(tmp_path / "out" / "state" / "dissect.pt", weights_only=True)["fits"]["feat"]
    levels = fit["levels"]
    # the stated bound: each candidate level within 1/2048 of the unit's range of the exact quantile (rank
    # ceil(q N)) of the fit set's upsampled activations
    gen = GroundTruthGenerator()
    with torch.no_grad():
        up = torch.nn.functional.interpolate(gen.feat(gen.sample_z(32, cfg.seed + FIT_SEED_OFFSET)), size=(16, 16),
                                             mode="bilinear", align_corners=False)
    values = up.transpose(0, 1).reshape(up.shape[1], -1).double()
    exact = torch.stack([inverse_cdf(values, float(q)) for q in 1 - IQR_FRACTIONS], 1)  # (U, V)
    width = (values.max(1).values - values.min(1).values) / 2048
    assert ((levels - exact).abs() <= width[:, None] * (1 + 1e-9) + 1e-12).all(), (levels - exact).abs().max()
    expected = brute_force_iqr(levels, 32, cfg.seed + FIT_SEED_OFFSET)
    for u, (label, level, iqr) in enumerate(expected):
        if iqr > 0:  # a unit with no admissible level has no defined label (gandissect's argmax of zeros)
            assert int(fit["fit_label"][u]) == label, u
            assert float(fit["thresholds"][u]) == pytest.approx(float(levels[u, level]), rel=1e-6), u
            assert float(fit["fit_fraction"][u]) == pytest.approx(float(IQR_FRACTIONS[level]), rel=1e-12)
        assert float(fit["fit_iqr"][u]) == pytest.approx(iqr, abs=1e-9), u
    # the label of the authors' report records, and what dissect.json says of it
    units = json.loads((tmp_path / "out" / "dissect.json").read_text())["layers"]["feat"]["units"]
    reported = brute_force_iqr(levels, 32, cfg.seed + FIT_SEED_OFFSET, fractions=IQR_FRACTIONS)
    for u, (label, level, iqr) in enumerate(reported):
        entry = units[u]["iqr_label"]
        if iqr > 0:
            assert entry["label"] == LABELS[label], u
            assert entry["threshold"] == pytest.approx(float(levels[u, level]), rel=1e-6), u
            assert entry["fit_top_fraction"] == pytest.approx(float(IQR_FRACTIONS[level]), rel=1e-12)
        assert entry["fit_iqr"] == pytest.approx(iqr, abs=1e-9), u


def test_the_report_label_skips_pairs_whose_best_level_leaves_most_pixels_on():
    """choose_by_iqr against a loop, on random IQR tables where the 0.5 rule changes most choices."""
    from gandid_plugins.analyses.dissect import IQR_FRACTIONS, choose_by_iqr

    g = torch.Generator().manual_seed(5)
    iqr = torch.rand(40, 6, 100, generator=g, dtype=torch.float64) ** 8  # a few high peaks per row
    iqr[:, :, 85:] *= 2  # more of the best levels where the top fraction is large, above 0.5 from level 90
    levels = torch.randn(40, 100, generator=g, dtype=torch.float64).sort(1, descending=True).values
    changed = 0
    for max_fraction in (None, 0.5):
        label, threshold, best, bucket = choose_by_iqr(iqr, levels, max_fraction)
        for u in range(40):
            pairs = []  # (best IQR, label, level) of each label, in label order
            for c in range(6):
                v = max(range(100), key=lambda k: (float(iqr[u, c, k]), -k))
                if max_fraction is None or float(IQR_FRACTIONS[v]) <= max_fraction:
                    pairs.append((float(iqr[u, c, v]), c, v))
            top, c, v = max(pairs, key=lambda t: (t[0], -t[1]))
            assert (int(label[u]), int(bucket[u]), float(best[u])) == (c, v, top), (max_fraction, u)
            assert float(threshold[u]) == float(levels[u, v])
        if max_fraction is None:
            unrestricted = label.clone()
        else:
            changed = int((label != unrestricted).sum())
    assert changed > 10


@pytest.mark.slow
def test_iqr_finds_nothing_in_units_unrelated_to_the_objects(tmp_path):
    import gandid_plugins.analyses.dissect
    from gandid.testing import registry_with

    def noisy_feat(z):  # random smooth maps from z[6:], independent of the objects (z[:6])
        g = torch.Generator().manual_seed(0)
        basis = torch.randn(z.shape[1] - 6, 13 * 4 * 4, generator=g)
        maps = (z[:, 6:] @ basis).view(len(z), 13, 4, 4)
        return torch.nn.functional.interpolate(maps, size=(8, 8), mode="bilinear", align_corners=False)

    class Unrelated(GroundTruthGenerator):
        z_dim = 16

        def __init__(self):
            super().__init__()
            self.feat.forward = noisy_feat

        def forward(self, z):
            images = GroundTruthGenerator.forward_from(self, "feat", GroundTruthGenerator().feat(z[:, :6]), z)
            self.feat(z)  # the layer runs (and is traced) but the image does not read it
            return images

    reg = registry_with(gandid_plugins.analyses.dissect, generators={"unrelated": Unrelated},
                        segmenters={"gt": GroundTruthSegmenter})
    for mode in ("iqr", "quantile"):
        cfg = gt_config(tmp_path, generator="unrelated", out=str(tmp_path / mode), samples=64,
                        analysis_options={"dissect": {"threshold_mode": mode, "fit_samples": 64}})
        layer = run(cfg, registry=reg).results["dissect"]["layers"]["feat"]
        if mode == "iqr":
            assert layer["interpretable_total"] <= 1, layer["interpretable"]
        lifts = sorted(u["iou_lift"] for u in layer["units"] if u["iou_lift"] is not None)
        # near chance: the best of the labels is picked per unit, which alone lifts a pure-noise IoU a little
        assert lifts and lifts[len(lifts) // 2] < 2.0


@pytest.mark.slow
def test_category_conditioned_iou_counts_a_unit_only_in_images_with_the_labels_category(tmp_path):
    import gandid_plugins.analyses.dissect
    from gandid.testing import registry_with

    class WithCategories(GroundTruthSegmenter):
        categories = {"background": "object", "red": "object", "green": "material", "blue": "object",
                      "yellow": "part"}

    reg = registry_with(gandid_plugins.analyses.dissect, generators={"gt": GroundTruthGenerator},
                        segmenters={"gt": WithCategories})
    cfg = gt_config(tmp_path, analysis_options={"dissect": {"quantile": 0.9, "fit_samples": 32}})
    result = run(cfg, registry=reg).results["dissect"]
    assert result["category_conditioned"] and result["categories"] == ["material", "object", "part"]
    units = result["layers"]["feat"]["units"]
    gen, seg = GroundTruthGenerator(), WithCategories()
    z = gen.sample_z(48, 0)
    with torch.no_grad():
        up = torch.nn.functional.interpolate(gen.feat(z), size=(16, 16), mode="bilinear", align_corners=False)
        labels = seg.segment(gen.forward(z))
    for u in (2, 12):
        on = up[:, u] >= units[u]["threshold"]
        for name, category in WithCategories.categories.items():
            c = LABELS.index(name)
            labels_of_category = [LABELS.index(k) for k, v in WithCategories.categories.items() if v == category]
            images = torch.stack([(labels == k).flatten(1).any(1) for k in labels_of_category]).any(0)  # (N,)
            s = labels == c
            inter = int((on & s).sum())
            union = int(on[images].sum()) + int(s.sum()) - inter
            assert units[u]["iou_per_class"][name] == pytest.approx(inter / max(union, 1), abs=1e-9), (u, name)


def test_ace_uncertainty_against_numpy_and_clear_cut_rankings():
    import numpy as np

    from gandid_plugins.analyses.ace import ace_uncertainty

    g = torch.Generator().manual_seed(5)
    effects = torch.randn(6, 40, generator=g, dtype=torch.float64) * 0.01
    effects[0] += 0.2  # far ahead of everyone
    effects[1] += 0.05
    effects[2] = effects[1] + 1e-12 * torch.randn(40, generator=g, dtype=torch.float64)  # a tie with unit 1
    out = ace_uncertainty(effects, top=[0, 1, 2], seed=0, resamples=2000)
    x = effects.numpy()
    se = x.std(1, ddof=1) / np.sqrt(40)
    assert np.allclose(out["unit_ace_se"], se, rtol=1e-9)
    ci = np.array(out["unit_ace_ci95"])
    assert np.allclose((ci[:, 0] + ci[:, 1]) / 2, x.mean(1)) and np.allclose(ci[:, 1] - ci[:, 0], 2 * 2.0227 * se,
                                                                               rtol=1e-3)  # t(0.975, 39)
    assert out["topk_stability"]["0"] == 1.0 and out["rank_distinguishable"][0]
    assert 0.2 < out["rank_beats_next"][1] < 0.8 and not out["rank_distinguishable"][1]  # 1 vs 2: a coin toss


def test_ablation_effect_and_an_uncertain_entanglement_call():
    from gandid_plugins.analyses.did import ablation_effect
    from gandid_plugins.analyses.entangle import Entangle

    g = torch.Generator().manual_seed(2)
    before = torch.rand(200, 3, generator=g, dtype=torch.float64) * torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    after = before * torch.tensor([1.0, 0.5, 1.0], dtype=torch.float64) + torch.tensor([0.02, 0, 0], dtype=torch.float64)
    effect = ablation_effect(torch.cat([before, after], 1), 1, ["a", "b", "c"], seed=0)
    assert effect["remaining"]["mean"] == pytest.approx(float(after[:, 1].mean() / before[:, 1].mean()), rel=1e-12)
    lo, hi = effect["remaining"]["ci95"]
    assert lo <= effect["remaining"]["mean"] <= hi and hi - lo < 1e-9  # after_b is exactly half of before_b
    gain = effect["gain"]["a"]
    assert gain["mean"] == pytest.approx(0.02 / float(before[:, 1].mean()), rel=1e-9)
    assert gain["ci95"][0] < gain["mean"] < gain["ci95"][1]

    entangle = Entangle()
    entangle.background = ()
    ace = {"classes": {"b": {"unit_ace": [0.1, 0.05]}, "a": {"unit_ace": [0.0, 0.0]}}}
    base = {"original": {"a": 0.1, "b": 0.2}, "intervened": {"a": 0.1, "b": 0.1}}
    sure = {"units": [0, 1], "arm_mean_area": base,
            "ablation": {"remaining": {"mean": 0.5, "ci95": [0.30, 0.45]}, "gain": {"a": {"mean": 0.0, "ci95": [-0.1, 0.1]}}}}
    assert entangle.classify("b", ace, sure)["call"] == "disentangled"
    wide = dict(sure, ablation={"remaining": {"mean": 0.5, "ci95": [0.35, 0.62]}, "gain": sure["ablation"]["gain"]})
    call = entangle.classify("b", ace, wide)
    assert call["call"] == "uncertain" and "contains 50%" in call["uncertain_because"][0]
    emerging = dict(sure, ablation={"remaining": sure["ablation"]["remaining"],
                                    "gain": {"a": {"mean": 0.25, "ci95": [0.1, 0.4]}}})
    assert entangle.classify("b", ace, emerging)["call"] == "uncertain"
    # one class clearly emerging decides type 2, whatever a borderline other does
    base_clear = {"original": {"a": 0.1, "b": 0.2, "c": 0.1}, "intervened": {"a": 0.2, "b": 0.1, "c": 0.1}}
    clear = {"units": [0, 1], "arm_mean_area": base_clear,
             "ablation": {"remaining": sure["ablation"]["remaining"],
                          "gain": {"a": {"mean": 0.5, "ci95": [0.4, 0.6]}, "c": {"mean": 0.1, "ci95": [0.0, 0.3]}}}}
    assert entangle.classify("b", ace, clear)["call"] == "type2_misablation"


class AtomsAndTails(GroundTruthGenerator):
    """feat: heavy-tailed (cubed normals), with atoms at 0 (a ReLU) and at a cap: hard data for quantiles."""

    def __init__(self):
        super().__init__()
        self.feat.forward = self.features

    @staticmethod
    def features(z):
        g = torch.Generator().manual_seed(3)
        basis = torch.randn(z.shape[1], 13 * 8 * 8, generator=g)
        x = (z @ basis).view(len(z), 13, 8, 8) ** 3
        return torch.relu(x).clamp(max=40.0)


@pytest.mark.slow
def test_quantile_thresholds_are_the_exact_order_statistic_of_the_raw_map(tmp_path):
    import gandid_plugins.analyses.dissect
    from gandid.testing import registry_with
    from gandid_plugins.analyses.dissect import FIT_SEED_OFFSET

    reg = registry_with(gandid_plugins.analyses.dissect, generators={"atoms": AtomsAndTails},
                        segmenters={"gt": GroundTruthSegmenter})
    for q in (0.99, 0.5, 0.9):  # 0.5: inside the atom at 0 for most units
        out = tmp_path / str(q)
        cfg = gt_config(tmp_path, generator="atoms", out=str(out), samples=8, batch_size=7,
                        analysis_options={"dissect": {"quantile": q, "fit_samples": 30, "bins": 16}})
        assert run(cfg, registry=reg).status == "completed"
        fitted = torch.load(out / "state" / "dissect.pt", weights_only=True)["fits"]["feat"]["thresholds"]
        gen = AtomsAndTails()
        z = gen.sample_z(30, cfg.seed + FIT_SEED_OFFSET)
        feats = torch.cat([gen.feat(z[lo:lo + 7]) for lo in range(0, 30, 7)])  # the run's batches: the same floats
        exact = torch.quantile(feats.transpose(0, 1).reshape(13, -1), q, dim=1, interpolation="lower")  # raw map
        assert torch.equal(fitted, exact), (q, fitted - exact)
