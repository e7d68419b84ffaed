"""gandid.testing's tiny generator and brightness segmenter registered as plugins, and two analyses
(pixel counts, one that always fails), for tests of the core through real entry points."""
import time

import torch

from gandid import hookimpl
from gandid.testing import BrightnessSegmenter, TinyGenerator


class FailingAnalysis:
    """Raises: a failing analysis must not take the others down."""

    needs_segmenter = False

    def run(self, ctx):
        raise RuntimeError("failing on purpose")


class CountAnalysis:
    """Counts labelled pixels per class.

    A run that is not a ``--resume`` stops with KeyboardInterrupt at sample ``interrupt_at``, as a user's
    Ctrl-C would, for the resume tests; ``delay`` slows each batch so a test can signal a real process.
    """

    def __init__(self, interrupt_at: int = -1, samples: int | None = None, delay: float = 0.0):
        self.interrupt_at, self.samples, self.delay = interrupt_at, samples, delay

    def run(self, ctx):
        state = ctx.load_state() or {"done": 0, "counts": torch.zeros(3, dtype=torch.long)}
        for batch in ctx.batches(samples=self.samples, start=state["done"]):
            if batch.start == self.interrupt_at and not ctx.config.resume:
                raise KeyboardInterrupt
            state["counts"] += torch.bincount(batch.labels.flatten(), minlength=3)
            state["done"] = batch.start + len(batch.z)
            ctx.save_state(state)
            time.sleep(self.delay)  # seconds per batch, so a test can signal a run in the middle
        return {"samples": state["done"], "counts": state["counts"].tolist()}


@hookimpl
def gandid_register_generators(register):
    register("tiny", TinyGenerator, description="tiny pixel-norm generator (tests)")


@hookimpl
def gandid_register_segmenters(register):
    register("tiny", BrightnessSegmenter, description="brightness segmenter (tests)")


@hookimpl
def gandid_register_analyses(register):
    register("count", CountAnalysis, description="pixel counts per class (tests)")
    register("failing", FailingAnalysis, description="always fails (tests)")
