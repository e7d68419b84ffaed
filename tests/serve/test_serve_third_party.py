"""A third party's analysis, written here and registered through gandid.testing.registry_with, shows in
`gandid serve` through its own ``explorer(result)`` description, with no change to the front end: its Units
column and flag, its unit-page facts, its Paint unit set and its class cards, in the API and in the browser.
Also: an analysis without ``explorer`` is listed with no view, and a broken description is an error of that
analysis alone."""
import math
import os
import types

import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("httpx")
from ground_truth import GroundTruthGenerator, GroundTruthSegmenter  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from gandid import hookimpl  # noqa: E402
from gandid.config import RunConfig  # noqa: E402
from gandid.model import find_layer  # noqa: E402
from gandid.runner import run  # noqa: E402
from gandid.serve.app import create_app  # noqa: E402
from gandid.serve.describe import BadDescription, describe, json_safe  # noqa: E402
from gandid.stats import Moments, Sum  # noqa: E402
from gandid.testing import registry_with  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
CHROMIUM = "/usr/bin/chromium"


class Activity:
    """Each unit's mean activation per layer, and each class's share of the image."""

    def run(self, ctx):
        labels = list(ctx.segmenter.labels)
        stats = {layer: Moments((find_layer(ctx.generator, layer).channels,)) for layer in ctx.layers}
        stats["area"] = Sum((len(labels),))
        stream = ctx.tally(stats, key="activity", description="activity")
        for batch in stream:
            for layer, feats in batch.features.items():
                stats[layer].update(feats.transpose(1, 3).reshape(-1, feats.shape[1]).double())
            stats["area"].update(torch.bincount(batch.labels.flatten().clamp_min(0), minlength=len(labels)).double())
        area = stats["area"].total / stats["area"].total.sum()
        return {"layers": {layer: stats[layer].mean.tolist() for layer in ctx.layers},
                "area": {label: float(a) for label, a in zip(labels, area)}}

    def explorer(self, result):
        units, groups = {}, {}
        for layer, means in result["layers"].items():
            busy = [u for u in sorted(range(len(means)), key=lambda u: -means[u]) if means[u] > 0.5]
            units[layer] = {
                "note": "Activity: each unit's mean activation over the run's samples.",
                "columns": [{"key": "mean", "label": "mean activation", "digits": 3, "values": means,
                             "tips": ["busy" if u in busy else None for u in range(len(means))]}],
                "flag": {"label": "busy", "units": busy},
                "headline": "mean",
                "sections": [{"kind": "facts", "rows": [{"label": "mean activation", "digits": 4, "values": means}]}],
            }
            groups[layer] = [{"name": "busy", "units": busy, "text": f"busy ({len(busy)})"}]
        return {
            "units": units,
            "absent": "No activity at this layer.",
            "unit_sets": [{"key": "busy", "title": "the busiest units", "layers": groups, "note": "{group} units",
                           "empty": "no busy unit"}],
            "classes": {"note": "activity:", "entries": {label: {
                "badge": {"text": "seen" if a > 0 else "unseen", "tone": "good" if a > 0 else "neutral"},
                "facts": [{"text": "share of the image", "value": a, "format": "pct"}],
                "blocks": [{"kind": "facts", "title": "Activity", "rows": [
                    {"label": "share of the image", "value": a, "format": "pct", "digits": 2}]}],
            } for label, a in result["area"].items() if label != "background"}},
        }


class Plain:
    """An analysis with no ``explorer``: its result is served, the views show nothing of it."""

    needs_segmenter = False

    def run(self, ctx):
        return {"answer": 42}


class Broken(Plain):
    def explorer(self, result):
        return {"units": {"feat": {"columns": [{"values": [object()]}]}}}


def gt_plugin():
    module = types.ModuleType("gt")
    module.gandid_register_generators = hookimpl(lambda register: register("gt", GroundTruthGenerator))
    module.gandid_register_segmenters = hookimpl(lambda register: register("gt", GroundTruthSegmenter))
    return module


@pytest.fixture(scope="module")
def third_party_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve-third-party") / "run"
    reg = registry_with(gt_plugin(), analyses={"activity": Activity, "plain": Plain, "broken": Broken})
    cfg = RunConfig(generator="gt", segmenter="gt", analysis=["activity", "plain", "broken"], samples=16,
                    batch_size=8, device="cpu", out=str(out), layer=["feat"])
    result = run(cfg, registry=reg)
    assert result.status == "completed", result.errors
    return out, reg


def test_the_analyses_descriptions_come_from_the_plugins(third_party_run):
    out, reg = third_party_run
    client = TestClient(create_app(out, registry=reg, device="cpu"))
    analyses = {a["name"]: a for a in client.get("/api/analyses").json()["analyses"]}
    assert list(analyses) == ["activity", "plain", "broken"]
    result = client.get("/api/results/activity").json()
    view = analyses["activity"]["view"]
    assert analyses["activity"]["error"] is None and view == Activity().explorer(result)
    column = view["units"]["feat"]["columns"][0]
    assert len(column["values"]) == 13 and column["values"][12] == pytest.approx(1.0)  # the constant unit
    assert view["units"]["feat"]["flag"]["units"] == [12]
    assert set(view["classes"]["entries"]) == {"red", "green", "blue", "yellow"}
    assert analyses["plain"] == {"name": "plain", "status": "done", "result": True, "view": None, "error": None}
    assert analyses["broken"]["view"] is None and "not a JSON value" in analyses["broken"]["error"]
    # /api/run is unchanged by the descriptions
    assert client.get("/api/run").json()["analyses"]["activity"] == {"status": "done", "result": True}


def test_the_front_end_is_served_as_javascript_modules(third_party_run):
    out, reg = third_party_run
    client = TestClient(create_app(out, registry=reg, device="cpu"))
    page = client.get("/").text
    assert '<script type="module" src="/static/js/main.js">' in page
    for name in ("js/main.js", "js/api.js", "js/described.js"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript"), name
        assert r.headers["x-content-type-options"] == "nosniff"
    for path in ("js%2F..%2Fapp.css", "js/nope.js", "js", "..%2Fapp.py", "js%2F..%2F..%2Fapp.py"):
        assert client.get(f"/static/{path}").status_code == 404, path


def test_no_module_names_an_analysis():
    """The views know the analyses only from their descriptions."""
    from pathlib import Path

    static = Path(__file__).resolve().parents[2] / "gandid" / "serve" / "static"
    for path in [*static.rglob("*.js"), static / "index.html", static / "app.css"]:
        text = path.read_text()
        for name in ("dissect", "ace.json", "did.json", "entangle", "type2_misablation", "disentangled"):
            assert name not in text.lower(), f"{path.name} names {name!r}"
        assert text.count("\n") <= 500, path.name


def test_descriptions_are_made_json_safe_and_checked():
    class Described:
        def __init__(self, view):
            self.view = view

        def explorer(self, result):
            return self.view

    assert describe(Plain(), {}) is None
    safe = json_safe({"a": (1, math.nan, math.inf), "b": [True, None, "x"], "c": torch.tensor(2.5)})
    assert safe == {"a": [1, None, None], "b": [True, None, "x"], "c": 2.5}
    with pytest.raises(BadDescription, match="unknown keys"):
        describe(Described({"unit": {}}), {})
    with pytest.raises(BadDescription, match="not a dict"):
        describe(Described([]), {})
    with pytest.raises(BadDescription, match=r"\['units'\]\['l'\].*set"):
        describe(Described({"units": {"l": {1, 2}}}), {})
    with pytest.raises(BadDescription, match="'unit_sets' must be a list"):
        describe(Described({"unit_sets": {}}), {})


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no system Chromium at {CHROMIUM}")
@pytest.mark.slow
@pytest.mark.browser
def test_the_browser_shows_a_third_party_analysis(third_party_run):
    pytest.importorskip("uvicorn")
    sync_api = pytest.importorskip("playwright.sync_api")
    from gt_run import serving

    out, reg = third_party_run
    with serving(create_app(out, registry=reg, device="cpu")) as url, sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        except Exception as exc:  # a Chromium that Playwright cannot drive is an environment problem
            pytest.skip(f"Playwright cannot start {CHROMIUM}: {exc}")
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(15_000)
        problems = []
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(url + "/#units")
        page.wait_for_selector("#units-table tbody tr")
        assert page.locator("#units-table th").all_inner_texts() == ["unit ▲", "mean activation"]
        assert "Activity: each unit's mean activation" in page.inner_text("#units-note")
        assert page.inner_text("#units-only-label").strip() == "busy only"
        page.check("#units-only")
        assert page.locator("#units-table tbody tr").all_inner_texts() == ["12\t1.000"]

        page.goto(url + "/#units/feat/12")
        page.wait_for_selector("#unit-page dl.facts")
        assert "1.0000" in page.inner_text("#unit-page dl.facts") and "1.000" in page.inner_text("#unit-page h2")

        page.goto(url + "/#paint")
        page.wait_for_function("() => state.paint.sample && !state.paint.sampleLoading")
        page.check("input[name=source][value='activity.busy']")
        assert page.inner_text("#paint-units").startswith("busy units: 12")

        page.goto(url + "/#classes")
        page.wait_for_selector(".class-card")
        assert page.locator(".class-card").count() == 4
        assert page.locator("#class-red .call").inner_text() in ("seen", "unseen")
        assert "Activity" in page.inner_text("#class-red")
        messages = page.inner_text("#messages")  # the broken description is reported, the rest is shown
        assert "broken" in messages and "not a JSON value" in messages
        assert problems == []
        browser.close()


class ControlsNothing(Plain):
    """A third party's DID-like analysis that controlled no norm site at layer feat."""

    def explorer(self, result):
        return {"controlled_sites": {"layer": "feat", "sites": []}}


def test_the_sites_paint_controls_come_from_an_analysis_description(tmp_path):
    """Paint's DID arms control what an analysis of the run says it controlled (here: nothing), not every
    site from the layer on as they do when no analysis says (test_serve_api's run without a DID result)."""
    reg = registry_with(gt_plugin(), analyses={"controls": ControlsNothing})
    cfg = RunConfig(generator="gt", segmenter="gt", analysis=["controls"], samples=8, batch_size=8, device="cpu",
                    out=str(tmp_path / "run"), layer=["feat"])
    assert run(cfg, registry=reg).status == "completed"
    client = TestClient(create_app(tmp_path / "run", registry=reg, device="cpu"))
    assert client.get("/api/run").json()["did_sites"] == []
    edit = {"sample": 1, "layer": "feat", "units": [0], "mode": "ablate", "strength": 1.0}
    arms = client.post("/api/arms", json=edit).json()
    assert arms["sites"] == [] and len(arms["arms"]) == 4
