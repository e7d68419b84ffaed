"""The fused op's build: a run killed at any moment of it never blocks or slows the next one, a living
builder is named and waited for within a bound, environments with the same torch share one build, and
an unusable cache or a damaged library still ends in a working op or a plain note."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.utils.cpp_extension

from gandid.config import RunConfig
from gandid.errors import FusedOpUnavailable
from gandid.ops import build
from gandid.runner import run

pytestmark = [pytest.mark.slow]

REAL_IMPORT = build._import_library


def tiny_run(out, *extra):
    return [sys.executable, "-m", "gandid.cli", "run", "--generator", "tiny", "--segmenter", "tiny", "--analysis",
            "count", "--samples", "8", "--batch-size", "4", "--device", "cpu", "--out", str(out), *extra]


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """This process's op forgotten and its cache in ``tmp_path/cache``: the next load builds."""
    cache = tmp_path / "cache"
    monkeypatch.setattr(build, "_module", None)
    monkeypatch.setattr(build, "_error", None)
    monkeypatch.setattr(build, "_cache_note", None)
    monkeypatch.setattr(build, "cache_root", lambda: cache)
    return cache


@pytest.fixture
def fake_compiler(monkeypatch):
    """torch's ``load`` replaced by one that leaves a library in the build folder (no compiler runs);
    imports of cached libraries return what the file says. Returns the list of builds."""
    builds = []

    def fake_load(**kw):
        builds.append(kw)
        (Path(kw["build_directory"]) / f"{kw['name']}.so").write_text(f"library {len(builds)}")
        return f"built {len(builds)}"

    monkeypatch.setattr(torch.utils.cpp_extension, "load", fake_load)
    monkeypatch.setattr(build, "_import_library", lambda name, path: f"imported {path.read_text()}")
    return builds


def hold_build_lock(folder: Path) -> subprocess.Popen:
    """Another living process holding the build lock of ``folder``, as a run building the op does."""
    folder.mkdir(parents=True, exist_ok=True)
    code = ("import sys, time\nfrom gandid.locks import ProcessLock\n"
            "assert ProcessLock(sys.argv[1]).try_acquire('gandid run (building the op)') is None\n"
            "print('held', flush=True)\ntime.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder / "build.lock")], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_runs_killed_during_the_first_build_leave_nothing_that_blocks_the_next(tmp_path, installed_plugins):
    """SIGKILL, then Ctrl-C, each in the middle of compiling: the third run builds at once (no wait on a
    lock) and runs on the fused op; a torch-style ``lock`` file left in the build folder changes nothing."""
    env = dict(installed_plugins, GANDID_CACHE_DIR=str(tmp_path / "cache"))
    cache = tmp_path / "cache" / "ext"
    out = tmp_path / "out"
    for sig in (signal.SIGKILL, signal.SIGINT):
        killed_builds = set(cache.glob("gandid_fused_*/tmp-*"))  # the SIGKILLed run's compiler may still run there
        # its own process group, so that the SIGKILL takes ninja and the compilers with it, as a closed
        # terminal would (an orphaned compiler would only slow the next build)
        proc = subprocess.Popen(tiny_run(out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + 180
        while not [p for p in cache.glob("gandid_fused_*/tmp-*/build.ninja") if p.parent not in killed_builds] \
                and time.time() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        time.sleep(1.5)  # the compiler is running
        assert proc.poll() is None, "the build ended before the test could stop it"
        if sig == signal.SIGKILL:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)  # to gandid alone: it must stop the build itself
        _, stderr = proc.communicate(timeout=120)
        said = " ".join(stderr.split())
        if sig == signal.SIGINT:
            assert proc.returncode == 130, stderr[-3000:]
            assert "before the run started writing" in said and "nothing to resume" in said, said
        else:
            assert proc.returncode == -signal.SIGKILL
        assert not (out / "run.json").exists()  # the op is built before the run writes anything
        assert not list(cache.glob("gandid_fused_*/*.so"))  # no half-built library in the cache
    (folder,) = cache.glob("gandid_fused_*")
    (folder / "lock").write_text("")  # what torch's own build lock left behind blocked every later run
    t0 = time.monotonic()
    done = subprocess.run(tiny_run(out), env=env, capture_output=True, text=True, timeout=600)
    took = time.monotonic() - t0
    said = " ".join(done.stderr.split())
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["op_backend"] == "ext-cpu"
    assert "fused op built in" in said and "waiting for" not in said, said
    assert took < 400, took  # one build's time, not a wait on a dead lock (which never ended)
    assert not list(folder.glob("tmp-*"))  # the killed builds' folders were cleared
    again = subprocess.run(tiny_run(tmp_path / "again"), env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "building" not in again.stderr, again.stderr[-2000:]


def test_a_living_builder_is_named_and_waited_for_within_a_bound(fresh_build, fake_compiler, monkeypatch, capsys):
    folder = fresh_build / "gandid_fused_test"
    holder = hold_build_lock(folder)
    try:
        monkeypatch.setenv("GANDID_BUILD_WAIT", "1")
        t0 = time.monotonic()
        with pytest.raises(build.BuildWaitTimeout, match=f"waited 1 s for pid {holder.pid} .*GANDID_BUILD_WAIT"):
            build.cached_extension("gandid_fused_test", [])
        assert 1 <= time.monotonic() - t0 < 10
        said = " ".join(capsys.readouterr().err.split())
        assert f"waiting for pid {holder.pid}" in said and "building the fused op" in said, said
        assert fake_compiler == []
    finally:
        holder.kill()
        holder.wait()
    # killed: its lock went with it (its file stays) and the next build goes ahead at once
    assert (folder / "build.lock").exists()
    monkeypatch.setenv("GANDID_BUILD_WAIT", "0")
    assert build.cached_extension("gandid_fused_test", []) == "built 1"
    assert build.cached_extension("gandid_fused_test", []) == "imported library 1"  # from the cache


def test_a_run_that_cannot_get_the_op_says_so_or_stops(fresh_build, monkeypatch, registry, tmp_path):
    """The fallback to the reference is in run.json's notes and the report, with why; --require-fused
    refuses to run on it, before any work."""
    holder = hold_build_lock(fresh_build / build.build_name(build._with_cuda(), build.FLAGS))
    monkeypatch.setenv("GANDID_BUILD_WAIT", "0.5")
    try:
        config = dict(generator="tiny", segmenter="tiny", analysis=["count"], samples=4, batch_size=4, device="cpu")
        with pytest.raises(FusedOpUnavailable, match=f"--require-fused: the fused op is not used .*pid {holder.pid}"):
            run(RunConfig(**config, out=str(tmp_path / "strict"), require_fused=True), registry=registry)
        assert not (tmp_path / "strict").exists()
        run(RunConfig(**config, out=str(tmp_path / "out")), registry=registry)
    finally:
        holder.kill()
        holder.wait()
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["op_backend"] == "reference"
    (note,) = [n for n in record["notes"] if "fused op is not used" in n]
    assert f"pid {holder.pid}" in note and "gandid build-ext" in note and "--require-fused" in note
    assert "slower" in note  # what it costs
    assert "fused op is not used" in (tmp_path / "out" / "report.html").read_text()


def test_another_environment_with_the_same_torch_imports_the_same_build(tmp_path):
    """A second virtualenv (its own prefix, scripts and no ninja of its own) seeing the same torch and
    gandid imports the cached build without compiling."""
    build.load()  # this environment's build, in the real cache
    venv = tmp_path / "venv2"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = venv.glob("lib/python*/site-packages")
    here = [p for p in sys.path if p.endswith("site-packages") and Path(p, "torch").is_dir()]
    (site / "borrow.pth").write_text("".join(f"import site; site.addsitedir({p!r})\n" for p in here))
    code = ("import sys, time\nfrom gandid.ops import build\nt0 = time.perf_counter()\nm = build.load()\n"
            "print(sys.prefix, build.built_here, m.__name__, round(time.perf_counter() - t0, 2))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{venv / 'bin'}:/usr/bin:/bin"
    done = subprocess.run([str(venv / "bin" / "python"), "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    prefix, built, name, seconds = done.stdout.split()
    assert prefix == str(venv) and built == "False" and name == build._module.__name__
    assert "building" not in done.stderr and float(seconds) < 20


def test_an_unwritable_cache_builds_in_a_temporary_folder_and_says_so(fresh_build, fake_compiler, monkeypatch):
    blocker = fresh_build.parent / "not-a-folder"
    blocker.write_text("a file where the cache should be")
    monkeypatch.setattr(build, "cache_root", lambda: blocker / "ext")
    assert build.cached_extension("gandid_fused_test", []) == "built 1"
    assert "cannot be written" in build.cache_note() and "GANDID_CACHE_DIR" in build.cache_note()
    assert not Path(fake_compiler[0]["build_directory"]).exists()  # the temporary folder is gone


def test_a_cache_that_vanishes_during_the_build_still_gives_the_op(fresh_build, fake_compiler, monkeypatch):
    import shutil

    real = torch.utils.cpp_extension.load

    def load_then_vanish(**kw):
        module = real(**kw)
        shutil.rmtree(fresh_build)  # someone clears ~/.cache meanwhile
        return module

    monkeypatch.setattr(torch.utils.cpp_extension, "load", load_then_vanish)
    assert build.cached_extension("gandid_fused_test", []) == "built 1"
    assert "could not be kept" in build.cache_note()
    monkeypatch.setattr(build, "_cache_note", None)
    monkeypatch.setattr(torch.utils.cpp_extension, "load", real)
    assert build.cached_extension("gandid_fused_test", []) == "built 2"  # built again, kept this time
    assert build.cache_note() is None and build.library_path("gandid_fused_test").exists()


def test_a_cached_library_that_does_not_load_is_built_again(fresh_build, fake_compiler, monkeypatch, capsys):
    library = build.library_path("gandid_fused_test")
    library.parent.mkdir(parents=True)
    library.write_bytes(b"\x7fELF truncated")  # e.g. a disk that filled while copying the cache
    monkeypatch.setattr(build, "_import_library", REAL_IMPORT)  # the real import, which fails on this file
    assert build.cached_extension("gandid_fused_test", [], announce="the test op") == "built 1"
    said = " ".join(capsys.readouterr().err.split())
    assert "again: the cached library" in said and "did not load" in said, said
    assert library.read_text() == "library 1"

