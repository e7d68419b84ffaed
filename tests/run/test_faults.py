"""Fault injection: every way a first hour goes wrong, each answered by gandid's own message before
any work starts (or by a clean recovery), and never a file outside gandid's own touched."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from gandid.config import RunConfig
from gandid.errors import CheckpointError, ConfigError, GandidError, OutputExistsError, UnknownNameError
from gandid.outdir import MARKER, OutputLock, OutputLockedError
from gandid.registry import Registry
from gandid.runner import run

ROOT = Path(__file__).resolve().parents[2]


def cfg(tmp_path, **kw):
    base = dict(generator="tiny", segmenter="tiny", analysis=["count"], samples=10, batch_size=4,
                out=str(tmp_path / "out"), device="cpu")
    base.update(kw)
    return RunConfig(**base)


def snapshot(root: Path) -> dict:
    """Every file under root with its content hash and mtime: what 'untouched' means."""
    return {p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def user_files(tmp_path):
    """A user's own files beside the output folder: every case must leave them untouched."""
    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    (home / "thesis.tex").write_text("precious")
    (home / "notes" / "run.json").write_text('{"mine": true}')
    before = snapshot(home)
    yield home, before
    assert snapshot(home) == before


def gandid_cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "gandid.cli", *map(str, args)], env=env or dict(os.environ),
                          cwd=cwd, capture_output=True, text=True, timeout=300)


# -- 1. --force removes only what gandid wrote --------------------------------------------------------
def test_force_refuses_a_folder_whose_run_json_is_not_gandids(tmp_path, registry):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text('{"status": "done", "config": {}}')  # another tool's run.json
    (out / "data.csv").write_text("1,2,3")
    before = snapshot(out)
    with pytest.raises(OutputExistsError, match="not a gandid output folder.*not written by this gandid"):
        run(cfg(tmp_path, force=True), registry=registry)
    assert snapshot(out) == before


@pytest.mark.slow
def test_force_removes_the_runs_files_and_keeps_the_users(tmp_path, registry, user_files):
    home, home_before = user_files
    out = tmp_path / "out"
    first = run(cfg(tmp_path, analysis=["count", "unitstats"]), registry=registry)
    assert first.status == "completed"
    record = json.loads((out / "run.json").read_text())
    assert record["format"] == MARKER
    (out / "my_notes.txt").write_text("mine")
    (out / "state" / "keep.txt").write_text("mine too")
    (out / "figures").mkdir()
    (out / "figures" / "plot.svg").write_text("<svg/>")
    # A gandid-marked record that lists paths outside the folder must not make --force reach them.
    record["files"] += ["../home/thesis.tex", str(home / "notes" / "run.json"), "../../etc/hostname"]
    (out / "run.json").write_text(json.dumps(record))
    messages = []
    console = _RecordingConsole(messages)
    again = run(cfg(tmp_path, analysis=["count"], force=True), registry=registry, console=console)
    assert again.status == "completed"
    assert (out / "my_notes.txt").read_text() == "mine"
    assert (out / "state" / "keep.txt").read_text() == "mine too"
    assert (out / "figures" / "plot.svg").exists()
    assert not (out / "unitstats.json").exists() and not (out / "unitstats_layer2.csv").exists()  # the old run's
    said = "\n".join(messages)
    assert "--force: removed" in said and "kept 3 files gandid did not write" in said and "my_notes.txt" in said
    assert snapshot(home) == home_before


class _RecordingConsole:
    """A rich Console that also keeps every printed message."""

    def __new__(cls, messages):
        from rich.console import Console

        console = Console(stderr=True)
        original = console.print

        def print_(*args, **kw):
            messages.append(" ".join(str(a) for a in args))
            return original(*args, **kw)

        console.print = print_
        return console


# -- 2. one run per output folder ---------------------------------------------------------------------
def test_a_second_run_on_the_same_folder_is_refused_naming_the_first(tmp_path, registry):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from gandid.outdir import OutputLock
        OutputLock({str(out)!r}).acquire(command="gandid run --out busy")
        print("locked", flush=True)
        time.sleep(120)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputLockedError, match=f"another gandid run is using .*pid {holder.pid} .*gandid run "
                                                    "--out busy"):
            run(cfg(tmp_path), registry=registry)
        assert [p.name for p in out.iterdir()] == [".gandid.lock"]  # nothing written by the refused run
    finally:
        holder.send_signal(signal.SIGKILL)  # like kill -9: the kernel drops the lock with the process
        holder.wait()
    # The lock file the killed holder left is stale: the next run takes it over.
    assert run(cfg(tmp_path), registry=registry).status == "completed"
    assert not (out / ".gandid.lock").exists()  # released when the run ends


def test_lock_is_exclusive_within_one_process_too(tmp_path):
    (tmp_path / "o").mkdir()
    with OutputLock(tmp_path / "o"):
        with pytest.raises(OutputLockedError, match=f"pid {os.getpid()}"):
            OutputLock(tmp_path / "o").acquire()
    OutputLock(tmp_path / "o").acquire().release()


# -- 3. weights of the wrong dtype --------------------------------------------------------------------
@pytest.fixture
def pggan_registry(testkit):
    import gandid_plugins.generators.pggan

    reg = Registry(load_entry_points=False)
    reg.add_plugin(gandid_plugins.generators.pggan, "pggan")
    reg.add_plugin(testkit, "testkit")
    return reg


def test_integer_weights_are_refused(tmp_path, pggan_registry):
    from pggan_files import make_state_dict
    from safetensors.torch import save_file

    state = make_state_dict(16)
    bad = {k: (v * 100).long() for k, v in state.items()}
    save_file(bad, tmp_path / "int64.safetensors")
    with pytest.raises(CheckpointError, match=r"not floating-point weights.*layer1\.conv\.weight: torch\.int64"):
        run(cfg(tmp_path, generator="pggan", weights=str(tmp_path / "int64.safetensors")), registry=pggan_registry)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_half_precision_weights_are_converted_and_recorded(tmp_path, pggan_registry):
    from pggan_files import make_state_dict
    from safetensors.torch import save_file

    state = make_state_dict(16)
    save_file({k: v.half() for k, v in state.items()}, tmp_path / "half.safetensors")
    result = run(cfg(tmp_path, generator="pggan", weights=str(tmp_path / "half.safetensors")),
                 registry=pggan_registry)
    assert result.status == "completed"
    weights = json.loads((tmp_path / "out" / "run.json").read_text())["weights"]["generator"]
    assert weights["stored_dtypes"] == {"float16": len(state)} and weights["loaded_as"] == "float32"
    assert weights["converted"] is True and weights["file"].endswith("half.safetensors")


# -- 4. damaged state, and what kill -9 leaves ---------------------------------------------------------
def _interrupted(tmp_path, registry):
    config = cfg(tmp_path, analysis_options={"count": {"interrupt_at": 8}})
    with pytest.raises(KeyboardInterrupt):
        run(config, registry=registry)
    config.resume = True
    return config


@pytest.mark.slow
def test_a_damaged_state_file_is_named_with_the_fix(tmp_path, registry, user_files, installed_plugins):
    home, home_before = user_files
    config = _interrupted(tmp_path, registry)
    state = tmp_path / "out" / "state" / "count.pt"
    state.write_bytes(state.read_bytes()[:40] + os.urandom(64))
    with pytest.raises(GandidError, match=r"saved state of stage 'count' is damaged: .*count\.pt.*--force.*delete"):
        run(config, registry=registry)
    proc = gandid_cli("run", "--config", _toml(tmp_path, config), "--resume", env=installed_plugins)
    assert proc.returncode == 2 and "damaged" in proc.stderr and "Traceback" not in proc.stderr
    state.unlink()  # the fix the message gives: redo only that stage
    assert run(config, registry=registry).status == "completed"
    assert snapshot(home) == home_before


def test_a_state_file_holding_objects_is_refused_without_torchs_advice(tmp_path, registry):
    config = _interrupted(tmp_path, registry)
    state = tmp_path / "out" / "state" / "count.pt"
    # a pickle torch's tensors-only loader refuses, with its advice to load it unsafely
    torch.save({"tally": {}, "extra": Path("x")}, state)
    with pytest.raises(GandidError) as refused:
        run(config, registry=registry)
    message = str(refused.value)
    assert "saved state of stage 'count' is damaged" in message and "Python object pathlib" in message
    assert "weights_only" not in message and "will likely succeed" not in message


@pytest.mark.slow
def test_a_damaged_result_of_a_finished_stage_is_named_with_the_fix(tmp_path, registry):
    config = cfg(tmp_path, analysis=["count", "unitstats"])
    whole = run(config, registry=registry)
    (tmp_path / "out" / "count.json").write_text('{"half a resu')
    config.resume = True
    with pytest.raises(GandidError, match=r"result of stage 'count' is damaged: .*count\.json.*Delete it and --resume"):
        run(config, registry=registry)
    (tmp_path / "out" / "count.json").unlink()  # the fix the message gives
    assert run(config, registry=registry).results["count"] == whole.results["count"]


@pytest.mark.slow
def test_kill_9_leftovers_are_cleaned_up_on_resume(tmp_path, registry):
    whole = run(cfg(tmp_path, out=str(tmp_path / "whole")), registry=registry)
    config = _interrupted(tmp_path, registry)
    out = tmp_path / "out"
    # What kill -9 in the middle of a save leaves: a 0-byte temporary and a run.json that says running.
    (out / "state" / "count.tmp").write_bytes(b"")
    record = json.loads((out / "run.json").read_text())
    record["status"] = "running"
    record["stages"]["count"]["status"] = "running"
    (out / "run.json").write_text(json.dumps(record))
    with pytest.raises(OutputExistsError, match="still says 'running'.*killed.*--resume"):
        run(cfg(tmp_path, analysis_options={"count": {"interrupt_at": 8}}), registry=registry)
    messages = []
    resumed = run(config, registry=registry, console=_RecordingConsole(messages))
    said = "\n".join(messages)
    assert "removed state/count.tmp" in said and "killed while running" in said
    assert resumed.results["count"] == whole.results["count"]
    assert not (out / "state" / "count.tmp").exists()
    assert json.loads((out / "run.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_kill_9_leftovers_are_cleaned_up_by_force(tmp_path, registry):
    _interrupted(tmp_path, registry)
    out = tmp_path / "out"
    (out / "state" / "count.tmp").write_bytes(b"")
    (out / "run.json.tmp").write_bytes(b"")
    record = json.loads((out / "run.json").read_text())
    record["status"] = "running"
    (out / "run.json").write_text(json.dumps(record))
    messages = []
    assert run(cfg(tmp_path, force=True), registry=registry, console=_RecordingConsole(messages)).status == "completed"
    said = "\n".join(messages)
    assert "killed while running (run.json said 'running'; it left partial writes: " in said, said
    assert "state/count.tmp" in said and "starting over" in said
    assert not (out / "state" / "count.tmp").exists() and not (out / "run.json.tmp").exists()


# -- 5./6. options checked before the first sample -----------------------------------------------------
@pytest.mark.parametrize("options, message", [
    ({"count": {"samples": "abc"}}, "option 'samples' of analysis 'count' must be an integer (or left out), "
                                    "got 'abc' (str)"),
    ({"unitstats": {"top": 2.5}}, "option 'top' of analysis 'unitstats' must be an integer"),
    ({"count": {"interrupt_at": True}}, "must be an integer, got True"),
])
def test_option_types_from_the_factories_annotations(tmp_path, registry, options, message):
    with pytest.raises(ConfigError) as exc:
        run(cfg(tmp_path, analysis=["count", "unitstats"], analysis_options=options), registry=registry)
    assert message in str(exc.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_options_of_an_installed_but_unselected_analysis_are_ignored_with_a_note(tmp_path, registry):
    result = run(cfg(tmp_path, analysis_options={"unitstats": {"top": 2}}), registry=registry)
    assert result.status == "completed"
    notes = json.loads((tmp_path / "out" / "run.json").read_text())["notes"]
    assert notes == ["[analysis_options.unitstats] ignored: analysis 'unitstats' is not selected in this run"]
    with pytest.raises(UnknownNameError, match="did you mean 'unitstats'"):
        run(cfg(tmp_path, out=str(tmp_path / "b"), analysis_options={"unitstat": {"top": 2}}), registry=registry)


def _toml(tmp_path, config, **analysis_options) -> Path:
    """A config file for the CLI with the given analysis options."""
    lines = [f'generator = "{config.generator}"', f'segmenter = "{config.segmenter}"',
             f"samples = {config.samples}", f"batch_size = {config.batch_size}", f'out = "{config.out}"',
             'device = "cpu"', "analysis = [" + ", ".join(f'"{a}"' for a in config.analysis) + "]"]
    for name, options in {**config.analysis_options, **analysis_options}.items():
        lines.append(f"[analysis_options.{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in options.items()]
    path = tmp_path / "run.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("analysis, options, message", [
    ("ace", {"samples": "abc"}, "option 'samples' of analysis 'ace' must be an integer, got 'abc' (str)"),
    ("dissect", {"quantile": 1.5}, "analysis 'dissect' (plugin 'dissect') refused its options: ValueError: dissect: "
                                   "quantile must be in (0, 1), got 1.5"),
    ("ace", {"classes": ["windw"]}, "unknown class in ace's classes 'windw'; did you mean 'window'?"),
    ("did", {"sites": ["layer9.nrom"]}, "unknown norm site in did's sites 'layer9.nrom'"),
    ("ace", {"top_k": 0}, "ace: top_k must be at least 1"),
    ("entangle", {"survive_threshold": 50}, "entangle: survive_threshold must be in (0, 1)"),
    ("entangle", {"background": ["wall", "flor"]}, "unknown class in entangle's background 'flor'; did you mean "
                                                   "'floor' or 'door'?"),
])
@pytest.mark.slow
def test_real_analyses_refuse_bad_options_before_any_work(tmp_path, analysis, options, message):
    """The shipped plugins and the toyroom models, through the command line: a message, never a traceback."""
    config = RunConfig(analysis=["dissect", "ace", "did", "entangle"], out=str(tmp_path / "out"), samples=4,
                       batch_size=4)
    proc = gandid_cli("run", "--config", _toml(tmp_path, config, **{analysis: options}))
    assert proc.returncode == 2, proc.stderr
    assert message in " ".join(proc.stderr.split()), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


# -- 7. the output folder must be writable, checked before the models load ----------------------------
def test_unwritable_out_is_refused_before_models_load(tmp_path, registry, monkeypatch):
    import gandid.testing

    built = []
    monkeypatch.setattr(gandid.testing.TinyGenerator, "__init__",
                        lambda self, *a, **k: built.append(1) or torch.nn.Module.__init__(self))
    with pytest.raises(ConfigError, match=r"--out '/sys/gandid-out' is not writable \(.*\): choose a folder"):
        run(cfg(tmp_path, out="/sys/gandid-out"), registry=registry)
    real_open = Path.write_bytes

    def read_only(self, data):
        if self.name.startswith(".gandid-write-test"):
            raise OSError(30, "Read-only file system", str(self))
        return real_open(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(ConfigError, match="is not writable \\(the filesystem is read-only\\)"):
        run(cfg(tmp_path), registry=registry)
    assert built == []


# -- 8. messages that do not mislead -------------------------------------------------------------------
def test_random_bytes_are_not_a_pytorch_file(tmp_path):
    from gandid.checkpoints import load_state_dict_file

    (tmp_path / "noise.pth").write_bytes(b"\x13" + os.urandom(2000))
    with pytest.raises(CheckpointError, match="not a PyTorch file \\(it is neither a zip archive nor a pickle\\)"):
        load_state_dict_file(tmp_path / "noise.pth")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a PyTorch file \\(it is empty\\)"):
        load_state_dict_file(tmp_path / "empty.pt")
    zipped = tmp_path / "trunc.pth"
    torch.save({"w": torch.randn(64, 64)}, zipped)
    zipped.write_bytes(zipped.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        load_state_dict_file(zipped)


def test_a_directory_is_called_a_directory(tmp_path):
    from gandid.checkpoints import load_state_dict_file

    with pytest.raises(CheckpointError, match="is a directory: give the weights file inside it"):
        load_state_dict_file(tmp_path)


def test_a_pickle_with_code_is_refused_without_suggesting_weights_only_false(tmp_path):
    from gandid.checkpoints import load_state_dict_file

    marker = tmp_path / "pwned"
    payload = ("import os\nclass Evil:\n    def __reduce__(self):\n"
               f"        return (os.system, ('touch {marker}',))\n")
    for protocol in (2, 4):
        path = tmp_path / f"evil{protocol}.pth"
        subprocess.run([sys.executable, "-c", payload + "import pickle, sys\n"
                        f"open({str(path)!r}, 'wb').write(pickle.dumps({{'w': Evil()}}, protocol={protocol}))"],
                       check=True)
        with pytest.raises(CheckpointError) as exc:
            load_state_dict_file(path)
        text = str(exc.value)
        assert "refusing to load" in text and "never unpickles code" in text
        assert "weights_only" not in text and "likely succeed" not in text
        assert not marker.exists()
    torch.save({"w": torch.zeros(2), "opt": torch.optim.SGD}, tmp_path / "global.pth")
    with pytest.raises(CheckpointError, match="needs the Python object torch.optim.sgd.SGD"):
        load_state_dict_file(tmp_path / "global.pth")


@pytest.mark.slow
def test_a_third_party_plugin_named_like_a_builtin_is_listed_with_why(tmp_path):
    pkg = tmp_path / "src"
    (pkg / "fake_ace").mkdir(parents=True)
    (pkg / "fake_ace" / "__init__.py").write_text(
        "from gandid import hookimpl\n\n@hookimpl\ndef gandid_register_analyses(register):\n"
        "    register('ace2', object)\n")
    (pkg / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "fake-ace"
        version = "0.1.0"

        [project.entry-points.gandid]
        ace = "fake_ace"
        """))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(site), str(pkg)], check=True, capture_output=True)
    env = dict(os.environ, PYTHONPATH=str(site))  # first on sys.path: gandid's own 'ace' must still win
    proc = gandid_cli("plugins", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    builtin = [r for r in rows if r["name"] == "ace" and r["kind"] == "analysis"]
    assert builtin and builtin[0]["package"] == "gandid" and builtin[0]["status"] == "ok"
    refused = [r for r in rows if r["name"] == "ace (fake-ace)"]
    assert refused and refused[0]["status"] == "broken"
    assert "has the name of the plugin 'ace' from package 'gandid'" in refused[0]["error"]
    assert "rename the entry point" in refused[0]["error"]
    assert not [r for r in rows if r["name"] == "ace2"]  # nothing of it was loaded
    table = gandid_cli("plugins", env=env)
    assert "fake-ace" in table.stdout and "broken" in table.stdout


# -- 9. progress: every bar has a total ------------------------------------------------------------
@pytest.mark.slow
def test_every_progress_bar_has_a_total(tmp_path, monkeypatch):
    """The shipped analyses on the planted ground-truth generator: no bar without a total (so no ETA)."""
    import types

    from ground_truth import GroundTruthGenerator, GroundTruthSegmenter

    import gandid.progress
    import gandid_plugins.analyses.ace
    import gandid_plugins.analyses.did
    import gandid_plugins.analyses.dissect
    from gandid import hookimpl

    totals = []

    class RecordingProgress(gandid.progress.Progress):
        def add_task(self, description, *args, total=100.0, **kwargs):
            totals.append((description, total))
            return super().add_task(description, *args, total=total, **kwargs)

    monkeypatch.setattr(gandid.progress, "Progress", RecordingProgress)
    module = types.ModuleType("gt")
    module.gandid_register_generators = hookimpl(lambda register: register("gt", GroundTruthGenerator))
    module.gandid_register_segmenters = hookimpl(lambda register: register("gt", GroundTruthSegmenter))
    reg = Registry(load_entry_points=False)
    reg.add_plugin(module, "gt")
    for mod in (gandid_plugins.analyses.dissect, gandid_plugins.analyses.ace, gandid_plugins.analyses.did):
        reg.add_plugin(mod, mod.__name__)
    config = RunConfig(generator="gt", segmenter="gt", analysis=["dissect", "ace", "did"], samples=8, batch_size=8,
                       device="cpu", out=str(tmp_path / "out"), layer=["feat"],
                       analysis_options={"ace": {"samples": 4, "top_k": 3, "context_locations": 2, "alpha_steps": 2,
                                                 "alpha_samples": 2}, "did": {"samples": 4, "resamples": 50},
                                         "dissect": {"fit_samples": 8}})
    assert run(config, registry=reg).status == "completed"
    assert any("per unit" in d for d, _ in totals)
    assert [d for d, t in totals if t is None or t <= 0] == []


# -- what already worked, kept covered: real signals to a real `gandid run` ---------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
@pytest.mark.slow
def test_a_signalled_cli_run_resumes_to_the_same_numbers(tmp_path, installed_plugins, sig):
    def args(out, *extra):
        return ["run", "--generator", "tiny", "--segmenter", "tiny", "--analysis", "count", "--samples", "40",
                "--batch-size", "4", "--device", "cpu", "--out", out, *extra]

    whole = gandid_cli(*args(tmp_path / "whole"), env=installed_plugins)
    assert whole.returncode == 0, whole.stderr
    toml = tmp_path / "slow.toml"
    toml.write_text("[analysis_options.count]\ndelay = 0.3\n")
    out = tmp_path / "out"
    # SIGINT at its default in the run: a shell that starts the test suite in the background (`cmd &`
    # without job control) ignores SIGINT for it, the run inherits that, and Ctrl-C never arrives
    proc = subprocess.Popen([sys.executable, "-m", "gandid.cli", *map(str, args(out, "--config", toml))],
                            env=installed_plugins, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (out / "state" / "count.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.4)
    assert proc.poll() is None, "the run ended before the test could signal it"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    record = json.loads((out / "run.json").read_text())
    if sig in (signal.SIGINT, signal.SIGTERM):  # SIGTERM: a scheduler's limit, `kill`, torchrun ending a group
        said = " ".join(stderr.split())
        assert proc.returncode == (130 if sig == signal.SIGINT else 143), (proc.returncode, stderr[-3000:])
        assert "partial results are in" in said and "--resume" in said, said
        assert ("terminated (SIGTERM)" in said) == (sig == signal.SIGTERM)
        assert record["status"] == "interrupted"
    else:  # nothing ran after the kill: run.json still says running, and the lock went with the process
        assert proc.returncode == -signal.SIGKILL and record["status"] == "running"
        again = gandid_cli(*args(out, "--config", toml), env=installed_plugins)
        assert again.returncode == 2 and "that run was killed" in " ".join(again.stderr.split())
    resumed = gandid_cli(*args(out, "--config", toml, "--resume"), env=installed_plugins)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "count.json").read_text()) == json.loads((tmp_path / "whole" / "count.json").read_text())
    assert json.loads((out / "run.json").read_text())["status"] == "completed"
