"""One process of a test run of the whole pipeline on the planted generator: ``python dist_worker.py OUT
[--resume] [--shard K/N]`` alone, or under ``torchrun --nproc-per-node N`` (each process runs this
file); ``python dist_worker.py OUT --merge SHARD_DIR...`` joins shards.

``GANDID_TEST_KILL_AT=K``: a process other than rank 0 kills itself (SIGKILL) at its K-th
segmentation, to test that a run whose process died resumes to the same numbers.
``GANDID_TEST_SAVE_EVERY=S``: statistics reach the disk every S seconds (0: after every batch).
"""
import os
import signal
import sys
import types

from ground_truth import GroundTruthGenerator, GroundTruthSegmenter

import gandid.analysis
import gandid.buffers
from gandid import hookimpl
from gandid.config import RunConfig
from gandid.interrupts import sigterm_interrupts
from gandid.registry import Registry
from gandid.runner import run

# Small engine chunks (3 units of 24 latents): ace's per-unit passes then have several chunks to split.
gandid.buffers.CACHE_FRIENDLY_BYTES = 4 * 13 * 64 * 24 * 3
if "GANDID_TEST_SAVE_EVERY" in os.environ:
    gandid.analysis.SAVE_EVERY_SECONDS = float(os.environ["GANDID_TEST_SAVE_EVERY"])


class CountingSegmenter(GroundTruthSegmenter):
    calls = 0

    def segment(self, images):
        CountingSegmenter.calls += 1
        kill_at = int(os.environ.get("GANDID_TEST_KILL_AT", "0"))
        if kill_at and int(os.environ.get("GANDID_TEST_KILL_RANK", os.environ.get("RANK", "0"))) > 0 \
                and CountingSegmenter.calls == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().segment(images)


def registry() -> Registry:
    module = types.ModuleType("ground_truth_plugin")
    module.gandid_register_generators = hookimpl(lambda register: register("gt", GroundTruthGenerator))
    module.gandid_register_segmenters = hookimpl(lambda register: register("gt", CountingSegmenter))
    reg = Registry(load_entry_points=False)
    reg.add_plugin(module, "ground-truth")
    for name in ("dissect", "ace", "did", "entangle"):
        mod = __import__(f"gandid_plugins.analyses.{name}", fromlist=["x"])
        reg.add_plugin(mod, name)
    return reg


def config(out: str, resume: bool = False, samples: int = 40, shard: str | None = None) -> RunConfig:
    # 40 samples in batches of 8: 5 batches, split 2 + 3 between two processes
    return RunConfig(generator="gt", segmenter="gt", analysis=["dissect", "ace", "did", "entangle"], samples=samples,
                     batch_size=8, device="cpu", out=out, layer=["feat"], resume=resume, shard=shard, analysis_options={
                         "dissect": {"quantile": 0.9, "fit_samples": 36, "top_seeds": 6},
                         "ace": {"samples": 24, "top_k": 4, "alpha_steps": 4, "alpha_samples": 8,
                                 "context_locations": 6, "stat_samples": 40},
                         "did": {"top_k": 1, "samples": 40, "resamples": 400}})


if __name__ == "__main__":
    args = sys.argv[1:]
    with sigterm_interrupts():  # as `gandid run` does: torchrun ends the survivors of a failure with SIGTERM
        if "--merge" in args:
            from gandid.merge import merge

            result = merge(args[args.index("--merge") + 1:], args[0], registry=registry())
        else:
            shard = args[args.index("--shard") + 1] if "--shard" in args else None
            result = run(config(args[0], resume="--resume" in args, shard=shard), registry=registry())
    print(f"rank {os.environ.get('RANK', '0')}: {result.status}, {CountingSegmenter.calls} segmentations")
    sys.exit(0 if not result.errors else 1)
