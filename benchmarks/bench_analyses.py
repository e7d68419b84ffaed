"""Throughput and memory of the analyses on a toyroom-sized generator (random weights).

`python benchmarks/bench_analyses.py` runs, each in its own process:
- dissect alone at 1x and 4x samples, reporting peak RSS (statistics are fixed-size, so it should not grow);
- dissect, ace, did and entangle together, reporting samples per second per stage (from run.json).
The segmenter is a stand-in that labels pixels by colour (6 classes), enough to exercise every path.
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r'''
import json, sys, types, torch
from gandid import hookimpl
from gandid.config import RunConfig
from gandid.registry import Registry
from gandid.runner import run

class ColourSegmenter:
    labels = ["dark", "bright", "red", "green", "blue", "grey"]
    def segment(self, images):
        m = images.mean(1)
        lab = images.argmax(1) + 2
        spread = images.max(1).values - images.min(1).values
        lab[spread < 0.15] = 5
        lab[m < -0.5] = 0
        lab[m > 0.5] = 1
        return lab
    def class_scores(self, images, c):
        if c >= 2 and c <= 4:
            return torch.softmax(images * 5, 1)[:, c - 2].flatten(1).mean(1)
        m = images.mean(1)
        return torch.sigmoid((m - 0.5) * 10 if c == 1 else (-m - 0.5) * 10).flatten(1).mean(1)

plugin = types.ModuleType("bench_segmenter")
plugin.gandid_register_segmenters = hookimpl(lambda register: register("colours", ColourSegmenter))
reg = Registry()
reg.add_plugin(plugin, "bench")
cfg = RunConfig.from_dict(json.loads(sys.argv[1]))
result = run(cfg, registry=reg)
print(json.dumps({"status": result.status, "errors": result.errors}))
'''


def random_weights(path):
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from pggan_files import make_state_dict  # noqa: E402

    state = make_state_dict(64, z_dim=128, depth=128)
    torch.save(state, path)


def main():
    import resource

    tmp = Path(tempfile.mkdtemp())
    weights = tmp / "toyroom64_random.pth"
    random_weights(weights)
    base = {"generator": "pggan", "weights": str(weights), "segmenter": "colours", "layer": ["layer5"],
            "batch_size": 16, "device": "cpu"}
    print("generator: random-weight PG-GAN, 64 px, depths 128-128-128-64-32 (toyroom size); layer5 (128 units, 16x16)")
    for samples in (200, 800):
        cfg = dict(base, analysis=["dissect"], samples=samples, out=str(tmp / f"dissect{samples}"),
                   analysis_options={"dissect": {"fit_samples": 100}})
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        record = json.loads((tmp / f"dissect{samples}" / "run.json").read_text())
        secs = record["stages"]["dissect"]["seconds"]
        print(f"dissect, {samples} samples: {secs:.1f} s, {(samples + 100) / secs:.0f} samples/s (incl. 100 fit), "
              f"peak RSS of the largest child so far {peak / 1024:.0f} MiB (before: {before / 1024:.0f} MiB)"
              + ("" if proc.returncode == 0 else f" FAILED: {proc.stderr[-500:]}"))
    cfg = dict(base, analysis=["dissect", "ace", "did", "entangle"], samples=64, out=str(tmp / "all"),
               analysis_options={"dissect": {"fit_samples": 64}, "ace": {"samples": 16, "top_k": 10},
                                 "did": {"top_k": 10}})
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(cfg)], capture_output=True, text=True)
    record = json.loads((tmp / "all" / "run.json").read_text())
    print("all analyses, 64 samples:", record["status"])
    for stage, info in record["stages"].items():
        print(f"  {stage:9s} {info.get('seconds', float('nan')):7.1f} s  {info['status']}")
    if proc.returncode != 0:
        print(proc.stderr[-2000:])


if __name__ == "__main__":
    main()
