"""ctx.tally: statistics as the unit of resume, saved at most every few seconds."""
import types

import pytest
import torch

from gandid import hookimpl
from gandid.config import RunConfig
from gandid.runner import run
from gandid.stats import PerSample, Sum


class PixelSums:
    """Per-class pixel counts and per-sample brightness through ctx.tally; optionally interrupted."""

    def __init__(self, interrupt_at: int = -1, save_every: float = 10.0):
        self.interrupt_at, self.save_every = interrupt_at, save_every

    def run(self, ctx):
        stats = {"counts": Sum(3), "brightness": PerSample(1)}
        stream = ctx.tally(stats, key="pixels", save_every=self.save_every)
        for batch in stream:
            stats["counts"].update(torch.bincount(batch.labels.flatten(), minlength=3))
            if batch.start == self.interrupt_at and not ctx.config.resume:
                raise KeyboardInterrupt  # after a partial update: the saved state must not contain it
            stats["brightness"].update(batch.images.mean((1, 2, 3))[:, None], batch.seeds)
        rows = stats["brightness"].rows()
        return {"done": stream.done, "counts": stats["counts"].total.tolist(), "brightness": rows[:, 0].tolist()}


@pytest.fixture
def tally_registry(registry):
    module = types.ModuleType("pixelsums")
    module.gandid_register_analyses = hookimpl(lambda register: register("pixelsums", PixelSums))
    registry.add_plugin(module, "pixelsums")
    return registry


def cfg(tmp_path, name, **options):
    return RunConfig(generator="tiny", segmenter="tiny", analysis=["pixelsums"], samples=20, batch_size=4,
                     out=str(tmp_path / name), device="cpu", analysis_options={"pixelsums": options})


@pytest.mark.slow
def test_an_interrupted_tally_resumes_to_the_same_numbers(tmp_path, tally_registry):
    whole = run(cfg(tmp_path, "whole"), registry=tally_registry).results["pixelsums"]
    assert whole["done"] == 20 and sum(whole["counts"]) == 20 * 16 * 16
    config = cfg(tmp_path, "cut", interrupt_at=12, save_every=0.0)
    with pytest.raises(KeyboardInterrupt):
        run(config, registry=tally_registry)
    saved = torch.load(tmp_path / "cut" / "state" / "pixelsums.pt", weights_only=True)["tally"]["pixels"]
    assert saved["done"] == 12 and saved["stats"]["brightness"]["ids"].tolist() == list(range(12))
    config.resume = True
    assert run(config, registry=tally_registry).results["pixelsums"] == whole


def test_tally_saves_at_most_every_save_every_seconds(tmp_path, tally_registry, monkeypatch):
    saves = []
    from gandid.analysis import RunContext

    real = RunContext.save_state
    monkeypatch.setattr(RunContext, "save_state", lambda self, state=None: saves.append(1) or real(self, state))
    run(cfg(tmp_path, "every", save_every=0.0), registry=tally_registry)
    assert len(saves) == 5 + 1  # after each of the 5 batches, and at the end
    saves.clear()
    run(cfg(tmp_path, "rarely", save_every=3600.0), registry=tally_registry)
    assert len(saves) == 1  # only at the end


def test_features_only_batches_stop_after_the_layer_with_the_same_features(tmp_path):
    """ctx.batches(features_only=True): the layer's features of the full forward, no image, no label,
    and the layers after it never run."""
    from gandid.testing import TinyGenerator, run_analysis

    gen = TinyGenerator(seed=4)
    calls = []
    gen.to_rgb.register_forward_hook(lambda *args: calls.append(1))

    class Compare:
        def run(self, ctx):
            full = list(ctx.batches(samples=6, layers=["layer1"], segment=False))
            before = len(calls)
            stopped = list(ctx.batches(samples=6, layers=["layer1"], segment=False, features_only=True))
            assert len(calls) == before and before > 0  # to_rgb ran for the full batches only
            for a, b in zip(full, stopped):
                assert b.images is None and b.labels is None
                assert torch.equal(a.features["layer1"], b.features["layer1"])
            return {"batches": len(stopped)}

    assert run_analysis(Compare(), tmp_path, generator=gen, batch_size=4)["batches"] == 2
