"""`gandid serve` against hostile requests and a run that is still being written: bodies nested past any
parser's stack, NUL characters in paths, and run.json rewritten under a running server."""
import json
import shutil
import types

import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")
from ground_truth import GroundTruthSegmenter  # noqa: E402
from gt_run import build_run, ground_truth_registry  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from gandid import hookimpl  # noqa: E402
from gandid.serve.app import MAX_DEPTH, create_app  # noqa: E402
from gandid.serve.explorer import NotFound  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
GOOD = {"sample": 1, "layer": "feat", "units": [0], "mode": "ablate", "strength": 1.0}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run, built once; tests that change it work on a copy (``run_copy``)."""
    out = tmp_path_factory.mktemp("serve-faults") / "run"
    build_run(out)
    return out


@pytest.fixture(scope="module")
def client(finished):
    return TestClient(create_app(finished, registry=ground_truth_registry(), device="cpu"))


@pytest.fixture
def run_copy(finished, tmp_path):
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"


def write_atomic(path, data):
    """As the runner writes run.json: a temporary file replacing it."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


# -- nested bodies --------------------------------------------------------------------------------
NESTED = {
    "lists past the parser's stack": "[" * 100_000 + "]" * 100_000,
    "objects past the parser's stack": '{"a":' * 100_000 + "1" + "}" * 100_000,
    "lists the parser takes": "[" * 500 + "]" * 500,  # parses, but repr() in an error message would not
    "a region nested too deep": json.dumps(dict(GOOD, region=[[[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]]])),
}


@pytest.mark.parametrize("body", NESTED.values(), ids=NESTED.keys())
@pytest.mark.parametrize("route", ["/api/edit", "/api/arms"])
def test_deeply_nested_bodies_get_400(client, route, body):
    r = client.post(route, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert f"more than {MAX_DEPTH} deep" in r.json()["error"]


def test_a_body_at_the_depth_limit_is_parsed_and_judged_on_its_content(client):
    def post(units):
        return client.post("/api/edit", content=json.dumps(dict(GOOD, units=units)),
                           headers={"content-type": "application/json"})

    at_limit = [0]
    for _ in range(MAX_DEPTH - 2):  # the body object, then MAX_DEPTH - 1 lists
        at_limit = [at_limit]
    r = post(at_limit)
    assert r.status_code == 400 and "invalid unit" in r.json()["error"]  # parsed: refused for what it says
    r = post([at_limit])
    assert r.status_code == 400 and f"more than {MAX_DEPTH} deep" in r.json()["error"]
    assert post([0]).status_code == 200


# -- NUL in paths ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/files/x%00.txt", "/files/samples.png%00", "/files/%00",
                                  "/files/a%00%2F..%2Frun.json", "/api/results/ace%00", "/api/results/%00",
                                  "/static/js/main.js%00", "/api/sample/1%00"])
def test_a_nul_in_the_path_is_a_400_not_a_500(client, path):
    r = client.get(path)
    assert r.status_code == 400, (path, r.status_code, r.text)
    assert "NUL" in r.json()["error"]


def test_a_nul_in_a_file_name_run_json_lists_is_not_found(run_copy):
    """The explorer alone (no middleware in front): a listed name with a NUL never reaches the file system."""
    record = json.loads((run_copy / "run.json").read_text())
    record["files"].append("x\x00.txt")
    write_atomic(run_copy / "run.json", record)
    explorer = create_app(run_copy, registry=ground_truth_registry(), device="cpu").state.explorer
    with pytest.raises(NotFound, match="no file"):
        explorer.file("x\x00.txt")


# -- a run still being written --------------------------------------------------------------------
def as_running(run):
    """Rewind ``run`` to the moment ace started: run.json says running, ace's result not yet written.
    Returns the finished run.json and the results it lists that the rewind removed, to write back."""
    finished = json.loads((run / "run.json").read_text())
    results = {name: (run / f"{name}.json").read_text() for name in ("ace", "did", "entangle")}
    record = json.loads(json.dumps(finished))
    record["status"] = "running"
    record.pop("ended", None)
    record["stages"]["ace"] = {"status": "running", "files": []}
    for name in ("did", "entangle"):
        record["stages"][name] = {"status": "pending"}
    for name in ("ace", "did", "entangle"):
        (run / f"{name}.json").unlink()
        record["files"] = [f for f in record["files"] if f != f"{name}.json"]
    write_atomic(run / "run.json", record)
    return finished, results


def test_a_run_in_progress_is_served_as_it_grows(run_copy, capsys):
    finished, results = as_running(run_copy)
    app = create_app(run_copy, registry=ground_truth_registry(), device="cpu")
    err = " ".join(capsys.readouterr().err.split())
    assert "warning" in err and "'running'" in err and "re-reads run.json" in err
    client = TestClient(app)
    info = client.get("/api/run").json()
    assert info["status"] == "running" and info["did_sites"] is None
    assert {n: a["result"] for n, a in info["analyses"].items()} == {
        "dissect": True, "ace": False, "did": False, "entangle": False}
    r = client.get("/api/results/ace")
    assert r.status_code == 404 and "dissect" in r.json()["error"]
    assert client.get("/files/ace.json").status_code == 404
    generator, segmenter = app.state.explorer.generator, app.state.explorer.segmenter

    # the run finishes: results first, then run.json (the runner's order)
    for name, text in results.items():
        (run_copy / f"{name}.json").write_text(text)
    write_atomic(run_copy / "run.json", finished)

    info = client.get("/api/run").json()
    assert info["status"] == "completed"
    assert {n: a["result"] for n, a in info["analyses"].items()} == {
        "dissect": True, "ace": True, "did": True, "entangle": True}
    assert info["did_sites"] == json.loads((run_copy / "did.json").read_text())["sites"]
    r = client.get("/api/results/ace")
    assert r.status_code == 200 and r.json() == json.loads(results["ace"], parse_constant=lambda c: None)
    assert client.get("/files/ace.json").status_code == 200
    # the same models: run.json names the same ones, so nothing was rebuilt
    assert app.state.explorer.generator is generator and app.state.explorer.segmenter is segmenter
    assert client.post("/api/arms", json=GOOD).json()["sites"] == info["did_sites"]


def test_a_finished_run_starts_without_a_warning(finished, capsys):
    create_app(finished, registry=ground_truth_registry(), device="cpu")
    assert "warning" not in capsys.readouterr().err


def test_a_damaged_rewrite_keeps_the_last_good_view_until_the_next(run_copy, capsys):
    client = TestClient(app := create_app(run_copy, registry=ground_truth_registry(), device="cpu"))
    good = json.loads((run_copy / "run.json").read_text())
    generator = app.state.explorer.generator
    (run_copy / "run.json").write_text('{"status": "runn')  # not what the runner writes, but a reader must survive it
    assert client.get("/api/run").json()["status"] == "completed"
    assert "not reloading" in capsys.readouterr().err
    # models other than the ones served (ground truth takes no weights): tried, refused, the old ones kept
    broken = json.loads(json.dumps(good))
    broken["status"] = "interrupted"
    broken["config"]["generator_options"] = {"weights": "G.pth"}
    write_atomic(run_copy / "run.json", broken)
    assert client.get("/api/run").json()["status"] == "completed"
    assert "not reloading" in capsys.readouterr().err
    assert app.state.explorer.generator is generator
    good["status"] = "interrupted"
    write_atomic(run_copy / "run.json", good)
    assert client.get("/api/run").json()["status"] == "interrupted"
    assert app.state.explorer.generator is generator



def test_a_rewrite_naming_other_models_rebuilds_them(run_copy):
    """A --force rerun in the served folder with another segmenter: the next request serves its models."""
    reg = ground_truth_registry()
    other = types.ModuleType("gt2")
    other.gandid_register_segmenters = hookimpl(lambda register: register("gt2", GroundTruthSegmenter))
    reg.add_plugin(other, "gt2")
    app = create_app(run_copy, registry=reg, device="cpu")
    client, generator, segmenter = TestClient(app), app.state.explorer.generator, app.state.explorer.segmenter
    record = json.loads((run_copy / "run.json").read_text())
    record["config"]["segmenter"] = "gt2"
    write_atomic(run_copy / "run.json", record)
    assert client.get("/api/run").json()["segmenter"] == "gt2"
    assert app.state.explorer.segmenter is not segmenter and app.state.explorer.generator is not generator
    assert client.get("/api/sample/3").status_code == 200
