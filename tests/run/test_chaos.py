"""Chaos: real `gandid` processes killed dead (SIGKILL) at every named step (a state save, each JSON
write, the report, a merge) and at random moments, then continued with ``--resume`` (or run again when
nothing was recorded yet): never a hang, and the numbers of an uninterrupted run. A full disk
(RLIMIT_FSIZE) at several writes: gandid's message naming the file, nothing half-written left, and the
run resumes to the same numbers. (The build of the op is killed in test_build.py.)

Points are named in gandid.faults; ``GANDID_KILL_AT=NAME:K`` kills a process the K-th time it passes one.
"""
import json
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

ANALYSES = ("count", "unitstats")
TIMEOUT = 180  # a hang fails the test instead of stalling the suite


def gandid(*args, env, limit_bytes=None):
    def limits():
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", "gandid.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=TIMEOUT, preexec_fn=limits)


def run_args(out, *extra, analyses=ANALYSES):
    return ["run", "--generator", "tiny", "--segmenter", "tiny", "--analysis", ",".join(analyses), "--samples", "24",
            "--batch-size", "4", "--device", "cpu", "--out", out, *extra]


def results(out: Path, analyses=ANALYSES) -> dict:
    return {name: json.loads((out / f"{name}.json").read_text()) for name in analyses}


def leftovers(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.name.endswith(".tmp"))


def continue_and_check(out: Path, whole: dict, env: dict, command=run_args) -> None:
    """--resume when the killed run left a record, else the same command again; then the whole run's numbers."""
    recorded = (out / "run.json").exists()
    done = gandid(*command(out, *(["--resume"] if recorded else [])), env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert results(out) == whole
    assert json.loads((out / "run.json").read_text())["status"] == "completed"
    assert leftovers(out) == [] and (out / "report.html").exists()


@pytest.fixture(scope="module")
def whole(installed_plugins, tmp_path_factory):
    """The uninterrupted run's numbers and how long it took (seconds, for random kill times)."""
    out = tmp_path_factory.mktemp("whole") / "out"
    t0 = time.monotonic()
    done = gandid(*run_args(out), env=installed_plugins)
    assert done.returncode == 0, done.stderr[-3000:]
    return results(out), time.monotonic() - t0


@pytest.mark.parametrize("point", ["json:1", "json:2", "state:1", "state:5", "json:9", "report:1"])
def test_killed_at_a_step_continues_to_the_same_numbers(point, whole, tmp_path, installed_plugins):
    out = tmp_path / "out"
    killed = gandid(*run_args(out), env=dict(installed_plugins, GANDID_KILL_AT=point))
    assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-2000:])
    continue_and_check(out, whole[0], installed_plugins)


def test_killed_at_random_moments_continues_to_the_same_numbers(whole, tmp_path, installed_plugins):
    numbers, seconds = whole
    out = tmp_path / "out"
    moments = random.Random(27).sample([i / 10 for i in range(5, int(seconds * 10))], 3)
    for moment in moments:  # each kill lands on whatever the run (or its continuation) is doing then
        recorded = (out / "run.json").exists()
        proc = subprocess.Popen([sys.executable, "-m", "gandid.cli", *map(str, run_args(out, *(
            ["--resume"] if recorded else []))), ], env=installed_plugins, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        time.sleep(moment)
        proc.kill()
        proc.communicate(timeout=TIMEOUT)
        if proc.returncode == 0 and json.loads((out / "run.json").read_text())["status"] == "completed":
            break  # it finished first: the next continuation would be refused as done
    else:
        continue_and_check(out, numbers, installed_plugins)
        return
    assert results(out) == numbers


@pytest.mark.parametrize("limit", [1200, 2500, 8000])
def test_a_full_disk_is_named_and_the_run_resumes(limit, whole, tmp_path, installed_plugins):
    """RLIMIT_FSIZE stops the first write larger than ``limit`` bytes (a state file, run.json, samples.png
    or the report, depending on the limit)."""
    out = tmp_path / "out"
    full = gandid(*run_args(out), env=installed_plugins, limit_bytes=limit)
    said = " ".join(full.stderr.split())
    assert full.returncode == 2, full.stderr[-3000:]
    assert f"could not write {out}" in said and "file-size limit" in said and "--resume" in said, said
    assert "Traceback" not in full.stderr
    assert leftovers(out) == []  # nothing half-written for a later run to find (or call 'killed')
    if (out / "run.json").exists():
        assert json.loads((out / "run.json").read_text())["status"] in ("failed", "running")
    continue_and_check(out, whole[0], installed_plugins)


@pytest.mark.distributed
def test_a_merge_killed_midway_is_redone_to_the_same_numbers(tmp_path, installed_plugins):
    sharded = ("unitstats",)  # an analysis that splits its samples between shards (ctx.tally)
    shards = []
    for k in range(2):
        shard = tmp_path / f"shard{k}"
        done = gandid(*run_args(shard, "--shard", f"{k}/2", analyses=sharded), env=installed_plugins)
        assert done.returncode == 0, done.stderr[-3000:]
        shards.append(shard)
    merged = gandid("merge", *shards, "--out", tmp_path / "merged", env=installed_plugins)
    assert merged.returncode == 0, merged.stderr[-3000:]
    for point in ("json:2", "report:1"):
        out = tmp_path / f"killed-{point.replace(':', '-')}"
        killed = gandid("merge", *shards, "--out", out, env=dict(installed_plugins, GANDID_KILL_AT=point))
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
        again = gandid("merge", *shards, "--out", out, "--force", env=installed_plugins)
        assert again.returncode == 0, again.stderr[-3000:]
        assert results(out, sharded) == results(tmp_path / "merged", sharded) and leftovers(out) == []


def test_a_conversion_killed_before_its_file_is_in_place_leaves_no_out_and_is_redone(tmp_path):
    """SIGKILL after the converted file is written and checked, before it takes OUT's name: no OUT (a
    later run never reads half a conversion), and the rerun writes the tensors an uninterrupted one does."""
    import os

    import torch
    from safetensors.torch import load_file

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import pggan_files

    source = tmp_path / "pggan.pth"
    torch.save(pggan_files.make_state_dict(32), source)
    env = dict(os.environ)
    whole = gandid("convert", source, tmp_path / "whole.safetensors", "--generator", "pggan", env=env)
    assert whole.returncode == 0, whole.stderr[-3000:]
    out = tmp_path / "out.safetensors"
    killed = gandid("convert", source, out, "--generator", "pggan", env=dict(env, GANDID_KILL_AT="convert"))
    assert killed.returncode == -signal.SIGKILL and not out.exists(), killed.stderr[-2000:]
    again = gandid("convert", source, out, "--generator", "pggan", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    expected, got = load_file(tmp_path / "whole.safetensors"), load_file(out)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
