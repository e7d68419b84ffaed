"""A bounded load test of `gandid serve` on 127.0.0.1: rounds of 50 concurrent edits against a real
uvicorn server. Every request is answered (200) or cleanly refused (503 with a message), the process's
memory stays flat across rounds and the server still answers afterwards."""
import concurrent.futures
import json
import urllib.error
import urllib.request

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
from gt_run import build_run, serving  # noqa: E402

from gandid.serve.app import create_app  # noqa: E402

pytestmark = [pytest.mark.slow]

CONCURRENT, ROUNDS = 50, 3


def resident_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/statm"), reason="reads memory from /proc")
def test_fifty_concurrent_edits_are_answered_or_refused_and_memory_stays_flat(tmp_path):
    reg = build_run(tmp_path / "run")
    app = create_app(tmp_path / "run", registry=reg, device="cpu", queue=8)
    statuses, memory = [], []
    with serving(app) as base, concurrent.futures.ThreadPoolExecutor(CONCURRENT) as pool:
        for round_ in range(ROUNDS):
            bodies = [{"sample": i, "layer": "feat", "units": [i % 13], "mode": ("ablate", "insert")[i % 2],
                       "strength": 1.0, "region": None} for i in range(CONCURRENT)]
            answers = list(pool.map(lambda b: post(base + ("/api/edit", "/api/arms")[b["sample"] % 5 == 0], b), bodies))
            for status, body in answers:
                assert status in (200, 503), (status, body)
                if status == 503:
                    assert "busy" in body["error"]
                else:
                    assert body["edited"]["image"].startswith("data:image/png") if "edited" in body else body["arms"]
            statuses.append([s for s, _ in answers])
            memory.append(resident_mib())
        with urllib.request.urlopen(base + "/api/run", timeout=30) as response:
            assert response.status == 200  # still serving after the load
    print(f"answered/refused per round: {[(r.count(200), r.count(503)) for r in statuses]}; resident MiB: {memory}")
    assert all(any(s == 200 for s in round_) for round_ in statuses)
    assert memory[-1] - memory[0] < 40, f"resident memory grew across rounds: {memory} MiB"
