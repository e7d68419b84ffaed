"""Several processes (torchrun, gloo on CPU) and shards give the numbers of one process.

Every run here is the whole pipeline (dissect, ace, did, entangle) on the planted generator, each in
its own process(es) started by the test (``dist_worker.py``); the reference is the same run by one
process. Counts, seeds, thresholds and rankings must be equal, other floats equal to 1e-9 relative
(sums are float64; the processes merge them in another order than one process adds them).
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gandid.distributed import Collective, ProcessGroup, split_range

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

HERE = Path(__file__).resolve().parents[1]  # tests/
WORKER = HERE / "dist_worker.py"
ANALYSES = ("dissect", "ace", "did", "entangle")
# the worker imports gandid from this checkout and ground_truth from this folder
ENV = dict(os.environ, GANDID_THREADS="1", PYTHONPATH=os.pathsep.join((str(HERE.parent), str(HERE))))


def launch(*args, processes=1, env=None, check=True):
    """Run the worker alone or under torchrun with ``processes`` processes; the finished process."""
    cmd = [sys.executable, str(WORKER), *map(str, args)]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               *cmd[1:]]
    done = subprocess.run(cmd, env=dict(ENV, **(env or {})), capture_output=True, text=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


EXACT_FLOATS = ("threshold",)  # keys whose floats must be bit-equal: a dissection threshold is an order statistic


def assert_same(a, b, path=""):
    """Equal JSON: floats to 1e-9 relative (or 1e-12 absolute near 0) except under the keys of
    :data:`EXACT_FLOATS`, everything else exactly."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (path, set(a) ^ set(b))
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (path, a, b)
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and path.rsplit(".", 1)[-1] in EXACT_FLOATS:
        assert a == b, (path, a, b)
    elif isinstance(a, float) and isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-9, abs=1e-12), (path, a, b)
    else:
        assert a == b, (path, a, b)


def results(out: Path) -> dict:
    return {name: json.loads((out / f"{name}.json").read_text()) for name in ANALYSES}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    launch(out)
    return results(out)


def test_shares_cover_every_item_once_in_whole_blocks():
    class Rank(Collective):
        def __init__(self, rank, world):
            self.rank, self.world_size = rank, world

    for total, block, world in [(40, 8, 2), (41, 8, 3), (13, 3, 2), (5, 8, 4), (0, 4, 2), (100, 1, 7)]:
        parts = [Rank(r, world).share(total, block) for r in range(world)]
        assert [i for p in parts for i in p] == list(range(total))
        assert all(p.start % block == 0 for p in parts)
        sizes = [len(split_range(-(-total // block), world, r)) for r in range(world)]
        assert max(sizes) - min(sizes) <= 1  # balanced in blocks


def test_processes_leave_together_unless_one_failed(capsys):
    """A finished process waits at a barrier for the others before tearing its group down; one that
    failed does not (the others may be gone)."""
    calls = []

    class FakeDist:
        def is_initialized(self):
            return True

        def monitored_barrier(self, group=None, timeout=None):
            calls.append("barrier")
            assert timeout is not None  # never forever: a failed peer never arrives
            if fail:
                raise RuntimeError("rank 1 failed to pass monitoredBarrier")

        def destroy_process_group(self):
            calls.append("destroy")

    fail = False
    group = ProcessGroup.__new__(ProcessGroup)  # no torch.distributed behind it
    group.dist, group.owned, group.rank, group.world_size, group.group = FakeDist(), True, 0, 2, None
    group.close(finished=True)
    assert calls == ["barrier", "destroy"]
    calls.clear()
    group.close(finished=False)
    assert calls == ["destroy"]
    calls.clear()
    fail = True  # a peer that never arrives: said, and the group torn down all the same
    group.close(finished=True)
    assert calls == ["barrier", "destroy"] and "leaving anyway" in capsys.readouterr().err


def test_two_processes_give_the_numbers_of_one(one_process, tmp_path):
    out = tmp_path / "two"
    launch(out, processes=2)
    assert_same(one_process, results(out))
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "completed" and record["distributed"]["world_size"] == 2
    ranks = record["stages"]["ace"]["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    units = [next(s["range"] for s in r["shares"] if s["what"] == "ablated units") for r in ranks]
    assert units[0][0] == 0 and units[0][1] == units[1][0] and units[1][1] > units[1][0]  # both measured units
    dissect = [next(s["range"] for s in r["shares"] if s["what"] == "feat") for r in record["stages"]["dissect"]["ranks"]]
    assert dissect == [[0, 16], [16, 40]]  # whole batches of 8
    # rank 1 keeps its state (and any file an analysis makes) in its own folder; rank 0 writes the run's
    assert (out / "state" / "rank-1" / "ace.pt").exists() and (out / "ace_red.png").exists()
    assert not any(f.startswith("state/") for f in record["files"])


def test_a_killed_process_resumes_to_the_same_numbers(one_process, tmp_path):
    out = tmp_path / "killed"
    # rank 1 kills itself (SIGKILL) at its 40th segmentation, in ace's per-unit passes or later
    first = launch(out, processes=2, env={"GANDID_TEST_KILL_AT": "40"}, check=False)
    assert first.returncode != 0
    record = json.loads((out / "run.json").read_text())
    assert record["stages"]["dissect"]["status"] == "done"
    # rank 0 outlived rank 1: torchrun's SIGTERM (or the broken group) ended it, and it said so in run.json
    assert record["status"] in ("interrupted", "failed"), record["status"]
    assert not [n for n, s in record["stages"].items() if s["status"] == "running"], record["stages"]
    # the other process count is refused: each process's share depends on it
    refused = launch(out, "--resume", check=False)
    assert refused.returncode != 0 and "started by 2 process" in refused.stdout + refused.stderr
    launch(out, "--resume", processes=2)
    assert_same(one_process, results(out))


def test_two_shards_merged_give_the_numbers_of_one(one_process, tmp_path):
    for k in (0, 1):
        launch(tmp_path / f"shard{k}", "--shard", f"{k}/2")
        record = json.loads((tmp_path / f"shard{k}" / "run.json").read_text())
        assert record["status"] == "shard_done" and record["stages"]["dissect"]["status"] == "contributed"
        assert record["stages"]["did"]["status"] == "deferred"  # needs the whole of ace
    launch(tmp_path / "merged", "--merge", tmp_path / "shard1", tmp_path / "shard0")  # any order
    assert_same(one_process, results(tmp_path / "merged"))
    assert (tmp_path / "merged" / "report.html").exists()


def test_a_shard_killed_mid_stage_resumes_and_merges_to_the_same_numbers(one_process, tmp_path):
    launch(tmp_path / "shard0", "--shard", "0/2")
    # statistics saved after every batch; the 3rd segmentation is in dissect's counting pass, one batch of it saved
    killed = launch(tmp_path / "shard1", "--shard", "1/2", env={"GANDID_TEST_KILL_AT": "3", "GANDID_TEST_SAVE_EVERY": "0",
                                                              "GANDID_TEST_KILL_RANK": "1"}, check=False)
    assert killed.returncode == -9
    record = json.loads((tmp_path / "shard1" / "run.json").read_text())
    assert record["status"] == "running"
    stage = next(name for name, s in record["stages"].items() if s["status"] == "running")
    saved = torch.load(tmp_path / "shard1" / "state" / f"{stage}.pt", weights_only=True)["tally"]
    part_done = {key: t["done"] for key, t in saved.items() if t["share"][0] < t["done"] < t["share"][1]}
    assert part_done, (stage, {key: (t["share"], t["done"]) for key, t in saved.items()})
    # an unfinished shard is refused by the merge
    refused = launch(tmp_path / "merged", "--merge", tmp_path / "shard0", tmp_path / "shard1", check=False)
    assert refused.returncode != 0 and "has not finished" in refused.stderr
    launch(tmp_path / "shard1", "--shard", "1/2", "--resume")
    launch(tmp_path / "merged", "--merge", tmp_path / "shard0", tmp_path / "shard1")
    assert_same(one_process, results(tmp_path / "merged"))


def test_mismatched_shards_are_refused(tmp_path):
    from gandid.errors import ConfigError
    from gandid.merge import read_shards

    def shard_record(folder, shard, seed=0, status="shard_done", version="x"):
        from gandid.outdir import MARKER

        folder.mkdir()
        config = {"seed": seed, "out": str(folder), "shard": shard, "samples": 40}
        (folder / "run.json").write_text(json.dumps({"format": MARKER, "config": config, "stages": {}, "files": [],
                                                     "status": status, "versions": {"gandid": version}}))
        return folder

    a = shard_record(tmp_path / "a", "0/2")
    b = shard_record(tmp_path / "b", "1/2")
    read_shards([a, b])  # the matching pair is accepted
    cases = {
        "overlap": ([a, shard_record(tmp_path / "a2", "0/2"), b], "given twice"),
        "gap": ([a], "missing"),
        "config": ([a, shard_record(tmp_path / "c", "1/2", seed=1)], "another config"),
        "split": ([a, shard_record(tmp_path / "d", "1/3")], "different ways"),
        "unfinished": ([a, shard_record(tmp_path / "e", "1/2", status="running")], "has not finished"),
        "versions": ([a, shard_record(tmp_path / "f", "1/2", version="y")], "other versions"),
    }
    for name, (folders, message) in cases.items():
        with pytest.raises(ConfigError, match=message):
            read_shards(folders)
    whole = tmp_path / "whole"
    whole.mkdir()
    with pytest.raises(ConfigError, match="not a gandid output folder"):
        read_shards([whole])


def test_each_process_gets_its_gpu_and_its_part_of_the_cores(monkeypatch):
    from gandid.distributed import process_device, split_threads

    class Fourth(Collective):  # process 3 of 8, the 4th of 4 on its machine
        world_size, local_rank, local_world_size = 8, 3, 4

    assert process_device("cuda", Fourth()) == "cuda:3"
    assert process_device("cuda:1", Fourth()) == "cuda:1"  # a device the user named stays
    assert process_device("cpu", Fourth()) == "cpu" and process_device("cuda", Collective()) == "cuda"
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("GANDID_THREADS", raising=False)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(10)), raising=False)
        assert split_threads(Fourth()) == 2 == torch.get_num_threads()  # 10 cores // 4 processes
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
        assert split_threads(Fourth()) == 1  # never 0 threads
        monkeypatch.setenv("GANDID_THREADS", "3")
        assert split_threads(Fourth()) == 3 == torch.get_num_threads()
        monkeypatch.delenv("GANDID_THREADS")
        torch.set_num_threads(before)
        assert split_threads(Collective()) == before  # one process: left as it is
    finally:
        torch.set_num_threads(before)
