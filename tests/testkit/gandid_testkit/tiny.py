"""A tiny pixel-norm generator and a brightness segmenter, for tests of the core."""
import time

import torch
from torch import nn

from gandid import hookimpl
from gandid.model import LayerInfo, NormSite, normal_rows


def pixel_norm(x, eps=1e-8):
    return x / (x.pow(2).mean(1, keepdim=True) + eps).sqrt()


class TinyGenerator(nn.Module):
    """z (8) -> layer1 (16, 4x4) -> layer2 (16, 8x8) -> image (3, 16x16)."""

    z_dim = 8
    resolution = 16

    def __init__(self, seed: int = 0, suggest_samples: int | None = None):
        super().__init__()
        if suggest_samples is not None:  # suggested options, one of them unknown to `count`
            self.analysis_defaults = {"count": {"samples": suggest_samples, "not_an_option": 1}}
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(8, 16 * 16)
        self.layer1 = nn.Sequential(nn.LeakyReLU(0.2))
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.layer2 = nn.Sequential(nn.LeakyReLU(0.2))
        self.to_rgb = nn.Conv2d(16, 3, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.layers = [LayerInfo("layer1", 16, (4, 4)), LayerInfo("layer2", 16, (8, 8))]
        self.norm_sites = [NormSite("layer2.norm", "pixelnorm", "layer1"), NormSite("out.norm", "pixelnorm", "layer2")]

    def sample_z(self, n, seed, start=0):
        return normal_rows(seed, start, n, self.z_dim)

    def layer_module(self, name):
        return getattr(self, name)

    def forward(self, z):
        x = self.layer1(self.fc(pixel_norm(z)).view(-1, 16, 4, 4))
        x = nn.functional.interpolate(pixel_norm(x), scale_factor=2)
        x = self.layer2(self.conv2(x))
        x = nn.functional.interpolate(pixel_norm(x), scale_factor=2)
        return torch.tanh(self.to_rgb(x))


class BrightnessSegmenter:
    """Labels by mean brightness: 1 'dark' (< -0.2), 2 'bright' (> 0.2), 0 otherwise."""

    labels = ["unlabelled", "dark", "bright"]

    def segment(self, images):
        m = images.mean(1)
        return (m < -0.2).long() * 1 + (m > 0.2).long() * 2

    def class_scores(self, images, c):
        m = images.mean(1)
        soft = torch.sigmoid((-m - 0.2) * 20) if c == 1 else torch.sigmoid((m - 0.2) * 20)
        return soft.flatten(1).mean(1)


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
