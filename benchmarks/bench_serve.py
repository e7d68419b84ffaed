"""How fast `gandid serve` answers the Paint view: an edit and the four DID arms of it, over real HTTP.

    python benchmarks/bench_serve.py RUN_DIR [--layer layer5] [--units 8] [--requests 30]

Serves RUN_DIR (any finished run; the default toyroom run is what the issue's targets are about) with
uvicorn on 127.0.0.1 in this process and times, one request at a time as the browser sends them,
``POST /api/edit`` and ``POST /api/arms`` for a class's worth of units in a painted region: median and
95th percentile of the wall time seen by the client (request, engine call, segmentation, PNG encoding,
JSON), and the server's own ``ms``. Then the same edit as one engine call without HTTP, the floor.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def timed(fn, repeats: int) -> tuple[list[float], list]:
    fn()  # warm-up: allocations, the fused op's first call
    seconds, answers = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        answers.append(fn())
        seconds.append(time.perf_counter() - t0)
    return seconds, answers


def summary(seconds: list[float]) -> str:
    ms = sorted(1000 * s for s in seconds)
    return f"median {statistics.median(ms):.1f} ms, p95 {ms[int(0.95 * (len(ms) - 1))]:.1f} ms"


def main(argv=None) -> None:
    from gt_run import serving

    from gandid.intervene import Intervention, counterfactuals, variants
    from gandid.serve.app import create_app

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--layer", default=None, help="default: the run's first analysed layer")
    parser.add_argument("--units", type=int, default=8)
    parser.add_argument("--requests", type=int, default=30)
    args = parser.parse_args(argv)

    app = create_app(args.run_dir, device="cpu")
    explorer = app.state.explorer
    layer = args.layer or explorer.info()["analysed_layers"][0]
    h, w = explorer.layer(layer).size
    region = [[1 if h // 4 <= r < 3 * h // 4 and w // 4 <= c < 3 * w // 4 else 0 for c in range(w)] for r in range(h)]
    body = {"sample": 3, "layer": layer, "units": list(range(args.units)), "mode": "ablate", "strength": 1.0,
            "region": region}
    print(f"machine: {torch.get_num_threads()} threads, torch {torch.__version__}; run {args.run_dir}, "
          f"{explorer.config.generator} at {layer} ({h}x{w}), {args.units} units in a {h // 2}x{w // 2} region")
    with serving(app) as base:
        for route in ("edit", "arms"):
            for mode in ("ablate", "insert"):
                seconds, answers = timed(lambda: post(f"{base}/api/{route}", dict(body, mode=mode)), args.requests)
                server = statistics.median(a["ms"] for a in answers)
                print(f"POST /api/{route} ({mode}): {summary(seconds)} at the client; server's own {server:.1f} ms")
    edit = explorer.parse_edit(body)
    iv, _ = explorer._intervention(edit)  # noqa: SLF001 (a benchmark of the explorer's own engine call)
    z = explorer._latents([edit.sample])  # noqa: SLF001
    with torch.no_grad():
        seconds, _ = timed(lambda: list(variants(explorer.generator, z, [Intervention(layer, []), iv])), args.requests)
        print(f"engine only, original + edited (variants): {summary(seconds)}")
        seconds, _ = timed(lambda: counterfactuals(explorer.generator, z, iv), args.requests)
        print(f"engine only, four arms (counterfactuals): {summary(seconds)}")


if __name__ == "__main__":
    main()
