import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gandid.cli import build_parser, config_from_args
from gandid.config import RunConfig
from gandid.errors import ConfigError, OutputExistsError, UnknownNameError
from gandid.runner import run

ROOT = Path(__file__).resolve().parents[2]


def cfg(tmp_path, **kw):
    base = dict(generator="tiny", segmenter="tiny", analysis=["count", "unitstats"], samples=10, batch_size=4,
                out=str(tmp_path / "out"), device="cpu")
    base.update(kw)
    return RunConfig(**base)


@pytest.mark.slow
def test_run_writes_results_and_run_json(tmp_path, registry):
    result = run(cfg(tmp_path, layer=["layer1", "layer2"]), registry=registry)
    assert result.status == "completed" and not result.errors
    out = tmp_path / "out"
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "completed"
    assert record["config"]["samples"] == 10 and record["config"]["layer"] == ["layer1", "layer2"]
    assert record["versions"]["torch"] and record["versions"]["gandid"]
    assert record["versions"]["plugins"]["analysis:unitstats"]["plugin"] == "unitstats"
    assert record["device"] == "cpu" and record["op_backend"] in ("reference", "ext-cpu")
    assert record["seeds"] == {"samples": 0}
    assert set(record["stages"]) == {"count", "unitstats"}
    assert all(s["status"] == "done" and s["seconds"] >= 0 for s in record["stages"].values())
    for f in record["files"]:
        assert (out / f).exists(), f
    assert "unitstats_layer1.csv" in record["files"]
    counts = json.loads((out / "count.json").read_text())
    assert counts["samples"] == 10 and sum(counts["counts"]) == 10 * 16 * 16
    stats = json.loads((out / "unitstats.json").read_text())
    assert len(stats["layers"]["layer2"]["mean"]) == 16


@pytest.mark.slow
def test_generator_suggested_options_apply_under_the_users(tmp_path, registry):
    suggest = {"suggest_samples": 6}
    result = run(cfg(tmp_path, out=str(tmp_path / "a"), generator_options=suggest), registry=registry)
    assert result.results["count"]["samples"] == 6
    record = json.loads((tmp_path / "a" / "run.json").read_text())
    assert record["analysis_options"]["count"] == {"samples": 6}  # the unknown suggestion is dropped
    assert record["config"]["analysis_options"] == {}
    result = run(cfg(tmp_path, out=str(tmp_path / "b"), generator_options=suggest,
                     analysis_options={"count": {"samples": 7}}), registry=registry)
    assert result.results["count"]["samples"] == 7


@pytest.mark.slow
def test_same_seed_same_numbers_any_batch_size(tmp_path, registry):
    a = run(cfg(tmp_path, out=str(tmp_path / "a"), batch_size=3), registry=registry)
    b = run(cfg(tmp_path, out=str(tmp_path / "b"), batch_size=10), registry=registry)
    assert a.results["count"] == b.results["count"]
    c = run(cfg(tmp_path, out=str(tmp_path / "c"), seed=1), registry=registry)
    assert c.results["count"] != a.results["count"]


@pytest.mark.slow
def test_refuses_to_overwrite_then_force_and_resume(tmp_path, registry):
    run(cfg(tmp_path), registry=registry)
    with pytest.raises(OutputExistsError, match="--resume.*--force"):
        run(cfg(tmp_path), registry=registry)
    assert run(cfg(tmp_path, force=True), registry=registry).status == "completed"
    # --force never clears a folder that gandid did not write
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(OutputExistsError, match="not a gandid output folder"):
        run(cfg(tmp_path, out=str(foreign), force=True), registry=registry)
    assert (foreign / "thesis.tex").read_text() == "precious"


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_numbers(tmp_path, registry):
    whole = run(cfg(tmp_path, out=str(tmp_path / "whole"), analysis=["count"]), registry=registry)
    config = cfg(tmp_path, analysis=["count"], analysis_options={"count": {"interrupt_at": 8}})
    with pytest.raises(KeyboardInterrupt):
        run(config, registry=registry)
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["status"] == "interrupted" and record["stages"]["count"]["status"] == "interrupted"
    assert (tmp_path / "out" / "state" / "count.pt").exists()  # partial statistics kept on disk
    with pytest.raises(ConfigError, match="config differs.*samples"):
        run(cfg(tmp_path, analysis=["count"], analysis_options={"count": {"interrupt_at": 8}}, samples=11,
                resume=True), registry=registry)
    # the resumed run skips samples 0..7 and must end with the uninterrupted numbers
    config.resume = True
    resumed = run(config, registry=registry)
    assert resumed.status == "completed"
    assert resumed.results["count"] == whole.results["count"]
    assert json.loads((tmp_path / "out" / "run.json").read_text())["resumes"]


@pytest.mark.slow
def test_failing_analysis_does_not_take_others_down(tmp_path, registry):
    result = run(cfg(tmp_path, analysis=["failing", "count"]), registry=registry)
    assert result.status == "completed_with_errors"
    assert "failing" in result.errors and "count" in result.results
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["stages"]["failing"]["status"] == "failed"
    assert "plugin 'testkit'" in record["stages"]["failing"]["error"]


@pytest.mark.parametrize("change, message", [
    (dict(generator="tinny"), "did you mean 'tiny'"),
    (dict(generator="toyroom"), "no default generator installed: the embedded 'toyroom' model"),
    (dict(segmenter="tyni"), "did you mean 'tiny'"),
    (dict(analysis=["unitstat"]), "did you mean 'unitstats'"),
    (dict(layer=["layer3"]), "unknown layer 'layer3'; did you mean 'layer2' or 'layer1'? Valid: layer1, layer2"),
    (dict(analysis_options={"unitstats": {"topp": 3}}), "unknown option of analysis 'unitstats' 'topp'"),
    (dict(generator_options={"sead": 1}), "did you mean 'seed'"),
    (dict(samples=0), "samples must be an integer >= 1"),
    (dict(device="tpu"), "unknown device 'tpu'"),
])
def test_validation_fails_fast_with_suggestions(tmp_path, registry, change, message):
    with pytest.raises((UnknownNameError, ConfigError)) as exc:
        run(cfg(tmp_path, **change), registry=registry)
    assert message in str(exc.value)
    assert not (tmp_path / "out").exists()  # nothing written before validation passed


def test_config_file_and_flag_precedence(tmp_path):
    toml = tmp_path / "conf" / "run.toml"
    toml.parent.mkdir()
    toml.write_text('generator = "tiny"\nweights = "w.pth"\nsamples = 5\nseed = 3\nanalysis = "count,unitstats"\n'
                    '[analysis_options.unitstats]\ntop = 2\n')
    args = build_parser().parse_args(["run", "--config", str(toml), "--samples", "7", "--analysis", "count",
                                      "--layer", "layer1,layer2"])
    c = config_from_args(args)
    assert c.samples == 7 and c.seed == 3  # flag wins, file fills the rest
    assert c.analysis == ["count"] and c.layer == ["layer1", "layer2"]
    assert c.weights == str(toml.parent / "w.pth")  # relative to the file
    assert c.analysis_options == {"unitstats": {"top": 2}}
    assert config_from_args(build_parser().parse_args(["run", "--config", str(toml)])).analysis == ["count",
                                                                                                     "unitstats"]
    toml.write_text("sampels = 5\n")
    with pytest.raises(UnknownNameError, match="did you mean 'samples'"):
        RunConfig.from_toml(toml)


def gandid_cli(env, *args, cwd=None):
    return subprocess.run([sys.executable, "-m", "gandid.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_third_party_plugin_via_entry_points(installed_plugins, tmp_path):
    proc = gandid_cli(installed_plugins, "plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {(r["name"], r["kind"]): r for r in json.loads(proc.stdout)}
    unitstats = rows[("unitstats", "analysis")]
    assert unitstats["package"] == "gandid-unitstats" and unitstats["version"] == "0.1.0"
    assert unitstats["status"] == "ok"
    broken = rows[("testkit_broken", "plugin")]
    assert broken["status"] == "broken" and "broken on purpose" in broken["error"]
    assert rows[("tiny", "generator")]["status"] == "ok"  # the broken plugin takes nothing else down

    table = gandid_cli(installed_plugins, "plugins")
    assert "unitstats" in table.stdout and "broken" in table.stdout

    proc = gandid_cli(installed_plugins, "run", "--generator", "tiny", "--segmenter", "tiny", "--analysis",
                      "unitstats", "--samples", "6", "--out", str(tmp_path / "run"), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "run" / "unitstats.json").read_text())
    assert result["samples"] == 6 and set(result["layers"]) == {"layer2"}  # the middle of its two layers

    proc = gandid_cli(installed_plugins, "run", "--generator", "tiyn", "--out", str(tmp_path / "bad"))
    assert proc.returncode == 2 and "did you mean 'tiny'" in proc.stderr


def test_help_and_version():
    env = dict(os.environ)
    proc = gandid_cli(env, "run", "--help")
    assert proc.returncode == 0 and "--seg-weights" in proc.stdout and "--resume" in proc.stdout
    assert gandid_cli(env, "--version").stdout.strip()
