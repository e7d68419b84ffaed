"""ACE screening: the first-order estimate against finite differences, the planted units found with a
small candidate set, widening when the exact top k reaches the screen's edge, and decisive units."""
import json

import pytest
import torch
from ground_truth import GroundTruthGenerator, GroundTruthSegmenter

import gandid_plugins.analyses.ace as ace_module
from gandid.hooks import features_at
from gandid.testing import BrightnessSegmenter, TinyGenerator, run_analysis
from gandid_plugins.analyses.ace import ACE, best_unit_ace, rank_correlation, screen_estimates

QUICK = dict(samples=12, alpha_steps=0, context_locations=0, alpha_samples=2)


def test_screen_estimate_is_k_times_the_derivative_along_the_unit(tmp_path):
    """Against central finite differences in float64: d/dt s_c(r + t e_u), e_u = unit u at every pixel,
    times k_u, averaged over latents (a different code path: no autograd, one unit at a time)."""
    gen, seg = TinyGenerator(seed=3).double(), BrightnessSegmenter()
    z = gen.sample_z(5, seed=1).double()
    g = torch.Generator().manual_seed(2)
    values = torch.rand(16, 3, generator=g, dtype=torch.float64) * 2  # (U, C) fresh insertion values
    est = screen_estimates(gen, seg, z, "layer1", values, [1, 2], batch=2)
    with torch.no_grad():
        feats = features_at(gen, z, "layer1")
        eps = 1e-6
        for i, c in enumerate([1, 2]):
            for u in range(16):
                step = torch.zeros_like(feats)
                step[:, u] = eps
                up = seg.class_scores(gen.forward_from("layer1", feats + step, z), c)
                down = seg.class_scores(gen.forward_from("layer1", feats - step, z), c)
                expected = float(((up - down) / (2 * eps)).mean()) * float(values[u, c])
                assert est[i, u].item() == pytest.approx(expected, rel=1e-5, abs=1e-9)


def test_rank_correlation_against_scipy():
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, generator=g), torch.randn(40, generator=g)
    b = a + 0.7 * b
    assert rank_correlation(a, b) == pytest.approx(spearmanr(a.numpy(), b.numpy())[0], rel=1e-12)


def gt_ace(tmp_path, **options):
    return run_analysis(ACE(**{**QUICK, **options}), tmp_path, generator=GroundTruthGenerator(),
                        segmenter=GroundTruthSegmenter(), layers=["feat"], samples=16, batch_size=8)


@pytest.mark.slow
def test_screen_finds_the_planted_units_from_two_candidates(tmp_path):
    result = gt_ace(tmp_path, top_k=1, screen_candidates=2)
    classes = result["classes"]
    for name, unit in (("red", 0), ("yellow", 2)):
        e = classes[name]
        assert e["ranking"][0] == unit and e["unit_ace"][unit] > 0.2
        assert e["screen"]["measured"] < 13 and not e["screen"]["exhaustive"]
        assert None in e["unit_ace"] and len(e["unit_ace_estimate"]) == 13
        assert e["unit_ace_estimate"][unit] == max(e["unit_ace_estimate"])  # the estimate ranks it first too
    # blue is redundant: no single blue unit decides it; red's and yellow's planted units each do
    assert [d["unit"] for d in classes["red"]["decisive_units"]] == [0]
    assert [d["unit"] for d in classes["yellow"]["decisive_units"]] == [2]
    assert classes["red"]["decisive_units"][0]["removed_fraction"] > 0.99
    assert classes["blue"]["decisive_units"] == []
    # best_unit_ace: exact where measured, the calibrated estimate elsewhere
    red = classes["red"]
    fit = red["screen"]["fit"]
    best = best_unit_ace(red)
    for u in range(13):
        expected = red["unit_ace"][u] if red["unit_ace"][u] is not None else (
            fit["intercept"] + fit["slope"] * red["unit_ace_estimate"][u])
        assert best[u] == pytest.approx(expected)


@pytest.mark.slow
def test_screening_every_unit_gives_the_exhaustive_numbers(tmp_path):
    screened = gt_ace(tmp_path / "a", top_k=3, screen_candidates=13)
    exhaustive = gt_ace(tmp_path / "b", top_k=3, screen=False)
    for name, e in exhaustive["classes"].items():
        s = screened["classes"][name]
        assert s["unit_ace"] == e["unit_ace"] and s["ranking"][:3] == e["ranking"][:3]
        assert s["screen"]["exhaustive"] and e["unit_ace_estimate"] is None and not e["screen"]["enabled"]


@pytest.mark.slow
def test_the_screen_widens_when_the_exact_top_k_sits_at_its_edge(tmp_path, monkeypatch):
    """A screen that puts red's planted unit 0 last of the first four candidates: the exact top 1 is then
    at the edge, so one more candidate (a third of four) is measured; there unit 0 is no longer at the edge."""
    placed = [1, 3, 12, 0, 2, 4, 5, 6, 7, 8, 9, 10, 11]  # screen order for both classes

    def misplaced(gen, seg, z, layer, values, classes, batch):
        est = torch.zeros(len(classes), 13, dtype=torch.float64)
        est[:, placed] = torch.arange(13, 0, -1, dtype=torch.float64)
        return est

    exhaustive = gt_ace(tmp_path / "all", classes=["red", "yellow"], top_k=1, screen=False)["classes"]
    monkeypatch.setattr(ace_module.compute, "screen_estimates", misplaced)  # where ACE.run looks it up
    result = gt_ace(tmp_path / "screened", classes=["red", "yellow"], top_k=1, screen_candidates=4,
                    screen_min_correlation=-1)["classes"]  # no fallback: this made-up screen ranks poorly
    red = result["red"]
    assert red["ranking"][0] == 0
    assert red["screen"]["widened_to"] == [5] and red["screen"]["measured"] == 5
    assert red["screen"]["edge_rank"] == 3
    assert [u for u in range(13) if red["unit_ace"][u] is not None] == sorted(placed[:5])
    # every measured value is the exhaustive one, the widened candidate's included (its ablation measured too)
    for name in ("red", "yellow"):
        for u, value in enumerate(result[name]["unit_ace"]):
            assert value is None or value == exhaustive[name]["unit_ace"][u], (name, u)


@pytest.mark.slow
def test_a_poorly_ranking_screen_falls_back_to_every_unit(tmp_path):
    """Rank correlation of estimate and exact ACE over the measured units below the floor: every unit of
    the class is measured, and the values are the exhaustive ones."""
    exhaustive = gt_ace(tmp_path / "all", classes=["red"], top_k=1, screen=False)["classes"]["red"]
    red = gt_ace(tmp_path / "screened", classes=["red"], top_k=1, screen_candidates=4,
                 screen_min_correlation=1.0)["classes"]["red"]
    assert red["screen"]["fallback"] and "every unit measured" in red["screen"]["fallback"]
    assert red["screen"]["exhaustive"] and red["unit_ace"] == exhaustive["unit_ace"]
    default = gt_ace(tmp_path / "default", classes=["red"], top_k=1, screen_candidates=4)["classes"]["red"]
    assert default["screen"]["fallback"] is None and not default["screen"]["exhaustive"]


def test_screen_candidates_must_be_positive():
    with pytest.raises(ValueError, match="screen_candidates must be at least 1"):
        ACE(screen_candidates=0)
    with pytest.raises(ValueError, match="screen_min_correlation must be in"):
        ACE(screen_min_correlation=2)


@pytest.mark.slow
def test_an_interrupted_screened_ace_resumes_to_the_same_numbers(tmp_path, monkeypatch):
    """Interrupted after its third exact pass (the estimates, the ablation union and one class's
    insertions saved), ace resumes from its state and reports exactly what an uninterrupted run does."""
    import types

    from gandid import hookimpl
    from gandid.config import RunConfig
    from gandid.registry import Registry
    from gandid.runner import run

    module = types.ModuleType("gt")
    module.gandid_register_generators = hookimpl(lambda register: register("gt", GroundTruthGenerator))
    module.gandid_register_segmenters = hookimpl(lambda register: register("gt", GroundTruthSegmenter))
    registry = Registry(load_entry_points=False)
    registry.add_plugin(module, "gt")
    registry.add_plugin(ace_module, "ace")

    def config(name):
        return RunConfig(generator="gt", segmenter="gt", analysis=["ace"], samples=16, batch_size=8, device="cpu",
                         out=str(tmp_path / name), layer=["feat"],
                         analysis_options={"ace": {**QUICK, "top_k": 2, "screen_candidates": 4}})

    whole = run(config("whole"), registry=registry).results["ace"]
    real, passes = ACE.measure, []

    def interrupted(self, ctx, *args, **kwargs):
        real(self, ctx, *args, **kwargs)
        passes.append(1)
        if len(passes) == 3 and not ctx.config.resume:
            raise KeyboardInterrupt

    monkeypatch.setattr(ACE, "measure", interrupted)
    cut = config("cut")
    with pytest.raises(KeyboardInterrupt):
        run(cut, registry=registry)
    state = torch.load(tmp_path / "cut" / "state" / "ace.pt", weights_only=True)
    assert "estimates" in state and bool(state["ablated_done"].any())
    cut.resume = True
    resumed = run(cut, registry=registry).results["ace"]
    assert json.dumps(resumed, sort_keys=True) == json.dumps(whole, sort_keys=True)  # NaN (blue's ties) == NaN
