"""`gandid serve`'s JSON API through Starlette's ASGI test client, on a small ground-truth run: every
endpoint, its numbers against a straightforward float64 computation written here, bad parameters,
path traversal, the model queue's bounds and the CLI's guards."""
import asyncio
import base64
import io
import json

import numpy as np
import pytest
import torch

pytest.importorskip("starlette")
pytest.importorskip("httpx")
from ground_truth import GroundTruthGenerator, GroundTruthSegmenter  # noqa: E402
from gt_run import build_run  # noqa: E402
from PIL import Image  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from gandid.errors import GandidError  # noqa: E402
from gandid.serve.app import Busy, ModelQueue, create_app  # noqa: E402
from gandid.serve.explorer import MAX_SAMPLE  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "run"
    reg = build_run(out)
    client = TestClient(create_app(out, registry=reg, device="cpu", queue=4))
    return out, client


def pixels(data_url: str) -> np.ndarray:
    assert data_url.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


# -- a straightforward float64 model of the ground-truth world, independent of gandid's engine --------
GEN, SEG = GroundTruthGenerator().double(), GroundTruthSegmenter()


def latent(i, seed=0):
    return GEN.sample_z(1, seed, start=i).double()


def edited_features(z, units, alpha, region, values):
    x = GEN.feat(z).clone()
    m = torch.ones(x.shape[-2:], dtype=torch.float64) if region is None else torch.tensor(region, dtype=torch.float64)
    for i, u in enumerate(units):
        k = 0.0 if values is None else values[i]
        x[:, u] = (1 - alpha * m) * x[:, u] + alpha * m * k
    return x


def beta(x):
    return torch.sqrt((x * x).mean(1, keepdim=True) + GEN.norm.eps)


def rgb(image):
    return ((image.clamp(-1, 1) + 1) * 127.5).round()[0].permute(1, 2, 0).numpy()


def areas(labels):
    counts = torch.bincount(labels.flatten(), minlength=len(SEG.labels)).double() / labels.numel()
    return {name: float(c) for name, c in zip(SEG.labels, counts) if c > 0}


def first_sample_with(present, absent=()):
    for i in range(200):
        z = latent(i)[0]
        if all(z[c] > 0 for c in present) and all(z[c] <= 0 for c in absent):
            return i
    raise AssertionError("no such sample")


# -- reading the run ------------------------------------------------------------------------------
@pytest.mark.slow
def test_run_info_describes_the_run_and_its_results(served):
    out, client = served
    info = client.get("/api/run").json()
    record = json.loads((out / "run.json").read_text())
    assert info["generator"] == "gt" and info["segmenter"] == "gt" and info["seed"] == record["config"]["seed"]
    assert info["layers"] == [{"name": "feat", "channels": 13, "size": [8, 8]}]
    assert info["analysed_layers"] == ["feat"] and info["labels"] == SEG.labels
    assert len(info["colours"]) == len(SEG.labels) and len({tuple(c) for c in info["colours"]}) == len(SEG.labels)
    assert {name: a["result"] for name, a in info["analyses"].items()} == {
        "dissect": True, "ace": True, "did": True, "entangle": True}
    assert info["did_sites"] == json.loads((out / "did.json").read_text())["sites"]
    assert info["files"] == record["files"] and info["arm_titles"]["original"] == "Y(β,u)"
    assert info["limits"]["queue"] == 4


def test_results_are_the_runs_own_json_and_unknown_ones_are_404(served):
    out, client = served
    for name in ("dissect", "ace", "did", "entangle"):
        written = json.loads((out / f"{name}.json").read_text(), parse_constant=lambda c: None)  # NaN -> null
        assert client.get(f"/api/results/{name}").json() == written
    r = client.get("/api/results/nope")
    assert r.status_code == 404 and "nope" in r.json()["error"] and "dissect" in r.json()["error"]


def test_files_are_confined_to_what_run_json_lists(served):
    out, client = served
    listed = json.loads((out / "run.json").read_text())["files"]
    name = next(f for f in listed if f.endswith(".png"))
    r = client.get(f"/files/{name}")
    assert r.status_code == 200 and r.content == (out / name).read_bytes()
    (out.parent / "secret.txt").write_text("not yours")
    for path in ("..%2Fsecret.txt", "%2e%2e/secret.txt", "..%5Csecret.txt", "%2Fetc%2Fpasswd", "state%2F..%2F..%2Fsecret.txt"):
        r = client.get(f"/files/{path}")
        assert r.status_code == 400 and "leaves the run folder" in r.json()["error"], path
    for path in ("run.json", "state", "nothing.png"):  # inside the folder but not a listed result file
        r = client.get(f"/files/{path}")
        assert r.status_code == 404 and "run.json lists" in r.json()["error"], path
    assert client.get("/static/..%2F__init__.py").status_code == 404
    assert client.get("/static/explorer.py").status_code == 404


def test_index_is_served_with_a_policy_that_loads_nothing_from_elsewhere(served):
    _, client = served
    r = client.get("/")
    assert r.status_code == 200 and "<html" in r.text.lower()
    policy = r.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src 'self'" in policy and "http" not in policy


# -- the model ------------------------------------------------------------------------------------
def test_sample_matches_an_independent_forward_pass(served):
    _, client = served
    i = first_sample_with(present=[0, 2])
    got = client.get(f"/api/sample/{i}").json()
    with torch.no_grad():
        image = GEN.paint(GEN.feat(latent(i)) / beta(GEN.feat(latent(i))))
    assert got["index"] == i
    assert np.abs(pixels(got["image"]).astype(int) - rgb(image)).max() <= 1
    assert got["areas"] == pytest.approx(areas(SEG.segment(image)), abs=1e-6)
    colours = np.array(client.get("/api/run").json()["colours"])
    seg = pixels(got["segmentation"])
    assert (seg == colours[SEG.segment(image)[0].numpy()]).all()


@pytest.mark.parametrize("mode", ["ablate", "insert"])
def test_edit_matches_an_independent_intervention(served, mode):
    _, client = served
    i = first_sample_with(present=[0], absent=[1])
    # ablate: half the red square (a partial ablation would leave it red: the pixel norm scales what is left
    # back up); insert: blue units into the empty bottom-right quarter
    rows, cols, units, values, alpha = ((range(4), range(2), [0, 3], None, 1.0) if mode == "ablate"
                                        else (range(4, 8), range(5, 8), [5, 6], [2.0, 1.5], 0.8))
    region = [[1.0 if r in rows and c in cols else 0.0 for c in range(8)] for r in range(8)]
    body = {"sample": i, "layer": "feat", "units": units, "mode": mode, "strength": alpha, "values": values,
            "region": region}
    got = client.post("/api/edit", json=body).json()
    z = latent(i)
    with torch.no_grad():
        x, x_edit = GEN.feat(z), edited_features(z, units, alpha, region, values)
        original, edited = GEN.paint(x / beta(x)), GEN.paint(x_edit / beta(x_edit))
    assert np.abs(pixels(got["original"]["image"]).astype(int) - rgb(original)).max() <= 1
    assert np.abs(pixels(got["edited"]["image"]).astype(int) - rgb(edited)).max() <= 1
    before, after = areas(SEG.segment(original)), areas(SEG.segment(edited))
    assert got["edited"]["areas"] == pytest.approx(after, abs=1e-6)
    expected = {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)}
    assert got["change"] == pytest.approx({k: v for k, v in expected.items() if v != 0}, abs=1e-6)
    assert got["change"], "the edit should change the picture"
    assert got["values"] == values and got["ms"] > 0


def test_insert_without_values_uses_each_units_99th_percentile(served):
    _, client = served
    got = client.post("/api/edit", json={"sample": 0, "layer": "feat", "units": [0, 12], "mode": "insert"}).json()
    with torch.no_grad():
        x = GEN.feat(torch.cat([latent(i) for i in range(16)]))
    expected = [float(np.quantile(x[:, u].flatten().numpy(), 0.99)) for u in (0, 12)]
    assert got["values"] == pytest.approx(expected, rel=1e-5)


def test_did_arms_match_four_independent_passes(served):
    """Ablating the red unit in-paints green under it (the ground truth's pixel-norm effect): the arms,
    ΔY and the area DID against four plain float64 passes with β recorded and replayed by hand."""
    _, client = served
    i = first_sample_with(present=[0])
    got = client.post("/api/arms", json={"sample": i, "layer": "feat", "units": [0], "mode": "ablate"}).json()
    z = latent(i)
    with torch.no_grad():
        x, x_edit = GEN.feat(z), edited_features(z, [0], 1.0, None, None)
        b, b_edit = beta(x), beta(x_edit)
        arms = {"original": GEN.paint(x / b), "intervened": GEN.paint(x_edit / b_edit),
                "intervened_fixed_beta": GEN.paint(x_edit / b), "original_swapped_beta": GEN.paint(x / b_edit)}
    assert set(got["arms"]) == set(arms) and got["arm_titles"]["intervened_fixed_beta"] == "Y(β,u')"
    area = {}
    for name, image in arms.items():
        assert np.abs(pixels(got["arms"][name]["image"]).astype(int) - rgb(image)).max() <= 1, name
        area[name] = areas(SEG.segment(image))
    delta = (arms["intervened"] - arms["original_swapped_beta"]) - (arms["intervened_fixed_beta"] - arms["original"])
    assert got["did"]["mean_abs"] == pytest.approx(float(delta.abs().mean()), rel=1e-5)
    did = {}
    for label in SEG.labels:
        a = {name: area[name].get(label, 0.0) for name in arms}
        did[label] = (a["intervened"] - a["original_swapped_beta"]) - (a["intervened_fixed_beta"] - a["original"])
    assert got["did"]["area"] == pytest.approx({k: v for k, v in did.items() if v != 0}, abs=1e-6)
    assert got["did"]["area"]["green"] > 0  # the in-painting is the renormalisation's doing
    assert pixels(got["did"]["image"]).shape == (16, 16, 3)


def test_unit_images_outline_the_map_above_threshold(served):
    _, client = served
    samples = [first_sample_with(present=[0]), first_sample_with(present=[], absent=[0])]
    got = client.get(f"/api/unit-images?layer=feat&unit=0&threshold=1.5&samples={samples[0]},{samples[1]}").json()
    assert [g["index"] for g in got["images"]] == samples and got["unit"] == 0 and got["threshold"] == 1.5
    for entry, i in zip(got["images"], samples):
        with torch.no_grad():
            up = torch.nn.functional.interpolate(GEN.feat(latent(i))[:, :1], size=(16, 16), mode="bilinear",
                                                 align_corners=False)
        assert entry["area"] == pytest.approx(float((up > 1.5).double().mean()), abs=1e-6)
        assert pixels(entry["overlay"]).shape == pixels(entry["image"]).shape == (16, 16, 3)
    assert got["images"][0]["area"] > 0 and got["images"][1]["area"] == 0


# -- bad parameters -------------------------------------------------------------------------------
GOOD = {"sample": 1, "layer": "feat", "units": [0], "mode": "ablate", "strength": 1.0}
BAD_EDITS = [
    ({"sample": -1}, "'sample'"), ({"sample": MAX_SAMPLE}, "'sample'"), ({"sample": "3"}, "'sample'"),
    ({"sample": True}, "'sample'"), ({"layer": "fet"}, "feat"), ({"layer": 3}, "'layer'"),
    ({"units": []}, "'units'"), ({"units": [13]}, "0..12"), ({"units": [-1]}, "0..12"), ({"units": [1, 1]}, "repeat"),
    ({"units": ["a"]}, "invalid unit"), ({"units": list(range(14))}, "'units'"), ({"units": 3}, "'units'"),
    ({"mode": "erase"}, "'mode'"), ({"strength": 1.5}, "'strength'"), ({"strength": -0.1}, "'strength'"),
    ({"strength": "1"}, "'strength'"), ({"values": [1.0]}, "only with mode 'insert'"),
    ({"mode": "insert", "values": [1.0, 2.0]}, "one per unit"), ({"mode": "insert", "values": [1e9]}, "'values'"),
    ({"region": [[1] * 8] * 7}, "8 x 8"), ({"region": [[1] * 7] * 8}, "8 x 8"), ({"region": [[2] * 8] * 8}, "'region'"),
    ({"region": [[0] * 8] * 8}, "empty"), ({"region": "all"}, "8 x 8"), ({"colour": "red"}, "unknown parameters"),
]


@pytest.mark.parametrize("change,needle", BAD_EDITS, ids=[repr(c) for c, _ in BAD_EDITS])
@pytest.mark.parametrize("route", ["/api/edit", "/api/arms"])
def test_bad_edit_parameters_get_400_naming_them(served, route, change, needle):
    _, client = served
    r = client.post(route, json=dict(GOOD, **change))
    assert r.status_code == 400 and needle in r.json()["error"], r.json()


def test_non_finite_and_malformed_bodies_get_400(served):
    _, client = served
    for text in ('{"sample": 1, "layer": "feat", "units": [0], "strength": NaN}', "not json", "[1, 2]",
                 '{"sample": 1, "layer": "feat", "units": [0], "strength": Infinity}'):
        r = client.post("/api/edit", content=text, headers={"content-type": "application/json"})
        assert r.status_code == 400, text
    r = client.post("/api/edit", content=b" " * (1 << 20 + 1), headers={"content-type": "application/json"})
    assert r.status_code == 400 and "at most" in r.json()["error"]
    assert client.get("/api/edit").status_code == 405


@pytest.mark.parametrize("query,needle", [
    ("layer=feat&unit=0&threshold=1", "missing"), ("layer=feat&unit=13&threshold=1&samples=1", "'unit'"),
    ("layer=feat&unit=x&threshold=1&samples=1", "'unit'"), ("layer=feat&unit=0&threshold=nan&samples=1", "'threshold'"),
    ("layer=feat&unit=0&threshold=abc&samples=1", "'threshold'"), ("layer=nope&unit=0&threshold=1&samples=1", "feat"),
    ("layer=feat&unit=0&threshold=1&samples=" + ",".join(["1"] * 17), "'samples'"),
    ("layer=feat&unit=0&threshold=1&samples=-3", "'sample'"), ("layer=feat&unit=0&threshold=1&samples=", "'samples'"),
])
def test_bad_unit_image_queries_get_400(served, query, needle):
    _, client = served
    r = client.get(f"/api/unit-images?{query}")
    assert r.status_code == 400 and needle in r.json()["error"], r.json()


@pytest.mark.parametrize("index", ["-1", "abc", str(MAX_SAMPLE), "1.5"])
def test_bad_sample_index_gets_400(served, index):
    _, client = served
    r = client.get(f"/api/sample/{index}")
    assert r.status_code == 400 and "'sample'" in r.json()["error"]


@pytest.mark.slow
def test_unknown_host_header_is_refused_when_hosts_are_restricted(tmp_path):
    reg = build_run(tmp_path / "run")
    app = create_app(tmp_path / "run", registry=reg, device="cpu", allowed_hosts=["127.0.0.1", "localhost"])
    assert TestClient(app).get("/api/run").status_code == 400  # the test client's Host is "testserver"
    assert TestClient(app, base_url="http://127.0.0.1:8765").get("/api/run").status_code == 200


# -- the queue ------------------------------------------------------------------------------------
class FakeRequest:
    """What ModelQueue reads of a request: ``receive``, which returns the disconnect when ``gone`` is set."""

    def __init__(self):
        self.gone = asyncio.Event()

    async def receive(self):
        await self.gone.wait()
        return {"type": "http.disconnect"}


def test_queue_runs_one_at_a_time_refuses_past_its_bound_and_drops_departed_clients():
    async def scenario():
        queue = ModelQueue(limit=1)
        release, ran, active = asyncio.Event(), [], []
        loop = asyncio.get_running_loop()

        def work(name):
            active.append(name)
            assert len(active) == 1, "two model calls at once"
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result(5)
            ran.append(name)
            active.remove(name)
            return name

        first, waiting = FakeRequest(), FakeRequest()
        a = asyncio.ensure_future(queue.run(first, work, "a"))
        await asyncio.sleep(0.05)
        b = asyncio.ensure_future(queue.run(waiting, work, "b"))
        await asyncio.sleep(0.05)
        with pytest.raises(Busy, match="at most 1"):
            await queue.run(FakeRequest(), work, "c")
        waiting.gone.set()  # b's client leaves while it waits: b never runs
        assert await b is None
        release.set()
        assert await a == "a"
        assert await queue.run(FakeRequest(), work, "d") == "d"
        return ran, queue.pending

    ran, pending = asyncio.run(scenario())
    assert ran == ["a", "d"] and pending == 0


# -- the command ----------------------------------------------------------------------------------
def test_cli_refuses_a_folder_without_a_run_and_warns_off_localhost(tmp_path, monkeypatch, capsys):
    import uvicorn

    from gandid import cli
    from gandid.serve import app as serve_app

    assert cli.main(["serve", str(tmp_path)]) == 2
    assert "not a gandid run folder" in " ".join(capsys.readouterr().err.split())
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    monkeypatch.setattr(serve_app, "Explorer", lambda *a, **k: None)
    assert cli.main(["serve", str(tmp_path), "--host", "0.0.0.0", "--port", "9999"]) == 0
    err = " ".join(capsys.readouterr().err.split())  # rich wraps lines
    assert "warning" in err and "no authentication" in err and calls == [{"host": "0.0.0.0", "port": 9999,
                                                                          "log_level": "warning"}]
    assert cli.main(["serve", str(tmp_path), "--port", "0"]) == 2


@pytest.mark.slow
def test_an_interrupted_run_is_served_with_what_it_finished(tmp_path):
    reg = build_run(tmp_path / "run")
    record_path = tmp_path / "run" / "run.json"
    record = json.loads(record_path.read_text())
    record["status"] = "interrupted"
    for name in ("ace", "did", "entangle"):  # as if stopped during ace, before its result was written
        record["stages"][name] = {"status": "interrupted"} if name == "ace" else {"status": "pending"}
        (tmp_path / "run" / f"{name}.json").unlink()
    record_path.write_text(json.dumps(record))
    client = TestClient(create_app(tmp_path / "run", registry=reg, device="cpu"))
    info = client.get("/api/run").json()
    assert info["status"] == "interrupted" and info["did_sites"] is None
    assert {n: a["result"] for n, a in info["analyses"].items()} == {
        "dissect": True, "ace": False, "did": False, "entangle": False}
    r = client.get("/api/results/ace")
    assert r.status_code == 404 and "dissect" in r.json()["error"]
    arms = client.post("/api/arms", json=GOOD).json()  # no DID result: every controllable site from the layer on
    assert arms["sites"] == ["paint.norm"] and len(arms["arms"]) == 4


@pytest.mark.slow
def test_missing_weights_say_where_relative_paths_are_read_from(tmp_path):
    reg = build_run(tmp_path / "run")
    record_path = tmp_path / "run" / "run.json"
    record = json.loads(record_path.read_text())
    record["config"]["generator_options"] = {"weights": "G.pth"}  # ground truth takes no weights: a config error
    record_path.write_text(json.dumps(record))
    with pytest.raises(GandidError, match="relative to the folder `gandid run` was started in"):
        create_app(tmp_path / "run", registry=reg, device="cpu")
