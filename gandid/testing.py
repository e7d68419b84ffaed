"""For plugin authors' tests: a tiny generator and segmenter that satisfy gandid's protocols, a
registry holding just the plugins you name, and a way to run one analysis in a temporary folder.

    from gandid.testing import run_analysis

    def test_my_analysis(tmp_path):
        result = run_analysis(MyAnalysis(), tmp_path, samples=8)
        assert result["samples"] == 8

Nothing here downloads or trains anything; everything runs on the CPU in well under a second.
"""
from __future__ import annotations

import types
from pathlib import Path

import torch
from torch import nn

from .analysis import AnalysisResult, RunContext
from .config import RunConfig
from .hookspecs import hookimpl
from .model import LayerInfo, NormSite, PixelNorm, normal_rows
from .registry import Registry


class TinyGenerator(nn.Module):
    """z (8) -> layer1 (16, 4x4) -> pixel norm -> layer2 (16, 8x8) -> pixel norm -> image (3, 16x16).

    Random weights from ``seed``. Every member of :class:`gandid.model.Generator`, including the
    ``norm_module``/``forward_from`` that the counterfactual engine (ace, did) needs."""

    z_dim = 8
    resolution = 16

    def __init__(self, seed: int = 0, suggest_samples: int | None = None):
        super().__init__()
        if suggest_samples is not None:  # suggested options, one of them unknown to `count`
            self.analysis_defaults = {"count": {"samples": suggest_samples, "not_an_option": 1}}
        g = torch.Generator().manual_seed(seed)
        self.z_norm = PixelNorm()
        self.fc = nn.Linear(8, 16 * 16)
        self.layer1 = nn.Sequential(nn.LeakyReLU(0.2))
        self.norm1 = PixelNorm()
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.layer2 = nn.Sequential(nn.LeakyReLU(0.2))
        self.norm2 = PixelNorm()
        self.to_rgb = nn.Conv2d(16, 3, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.layers = [LayerInfo("layer1", 16, (4, 4)), LayerInfo("layer2", 16, (8, 8))]
        self.norm_sites = [NormSite("z.norm", "pixelnorm", None), NormSite("layer2.norm", "pixelnorm", "layer1"),
                           NormSite("out.norm", "pixelnorm", "layer2")]
        self._norms = {"z.norm": self.z_norm, "layer2.norm": self.norm1, "out.norm": self.norm2}

    def sample_z(self, n, seed, start=0):
        return normal_rows(seed, start, n, self.z_dim)

    def layer_module(self, name):
        return getattr(self, name)

    def norm_module(self, site):
        return self._norms[site]

    def forward(self, z):
        x = self.layer1(self.fc(self.z_norm(z.view(len(z), -1, 1, 1)).flatten(1)).view(-1, 16, 4, 4))
        return self.forward_from("layer1", x, z)

    def forward_from(self, layer, features, z=None):
        x = features
        if layer == "layer1":
            x = self.layer2(self.conv2(nn.functional.interpolate(self.norm1(x), scale_factor=2)))
        return torch.tanh(self.to_rgb(nn.functional.interpolate(self.norm2(x), scale_factor=2)))


class BrightnessSegmenter:
    """Labels by mean brightness: 1 'dark' (< -0.2), 2 'bright' (> 0.2), 0 'unlabelled' otherwise;
    ``class_scores`` is the soft (differentiable) fraction of a class's pixels."""

    labels = ["unlabelled", "dark", "bright"]

    def segment(self, images):
        m = images.mean(1)
        return (m < -0.2).long() * 1 + (m > 0.2).long() * 2

    def class_scores(self, images, c):
        m = images.mean(1)
        soft = torch.sigmoid((-m - 0.2) * 20) if c == 1 else torch.sigmoid((m - 0.2) * 20)
        return soft.flatten(1).mean(1)


def registry_with(*plugins, generators: dict | None = None, segmenters: dict | None = None,
                  analyses: dict | None = None) -> Registry:
    """A registry holding only ``plugins`` (modules or objects with gandid hooks) and the factories given
    by name, e.g. ``registry_with(my_plugin, generators={"tiny": TinyGenerator})``; pass it to
    :func:`gandid.run` as ``registry=``."""
    registry = Registry(load_entry_points=False)
    for plugin in plugins:
        registry.add_plugin(plugin, getattr(plugin, "__name__", None))
    extra = types.ModuleType("gandid_testing_factories")
    for kind, table in (("generators", generators), ("segmenters", segmenters), ("analyses", analyses)):
        if table:
            def hook(register, table=table):
                for name, factory in table.items():
                    register(name, factory)

            setattr(extra, f"gandid_register_{kind}", hookimpl(hook))
    if any((generators, segmenters, analyses)):
        registry.add_plugin(extra, "gandid.testing factories")
    return registry


class _Quiet:
    """A progress display that shows nothing (RunContext's progress interface)."""

    def add_task(self, *args, **kwargs):
        return 0

    def advance(self, *args, **kwargs):
        pass

    def remove_task(self, *args, **kwargs):
        pass


def run_analysis(analysis, out_dir, *, generator=None, segmenter=None, samples: int = 8, seed: int = 0,
                 batch_size: int = 4, layers=None, results: dict | None = None, name: str = "analysis"):
    """Run one analysis object as ``gandid run`` would, in ``out_dir``, without the runner: the tiny
    generator and segmenter unless given, ``results`` of analyses it ``requires``. Returns its result
    data (``AnalysisResult.data`` when it returns one)."""
    generator = generator if generator is not None else TinyGenerator()
    segmenter = segmenter if segmenter is not None else BrightnessSegmenter()
    layers = list(layers or [generator.layers[-1].name])
    config = RunConfig(samples=samples, seed=seed, batch_size=batch_size, device="cpu", out=str(out_dir),
                       layer=layers, analysis=[name])
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    ctx = RunContext(name=name, config=config, generator=generator, segmenter=segmenter, layers=layers, device="cpu",
                     out_dir=out_dir, progress=_Quiet(), results=dict(results or {}), options={})
    check = getattr(analysis, "check", None)
    if check is not None:
        check(generator, segmenter, layers)
    value = analysis.run(ctx)
    return value.data if isinstance(value, AnalysisResult) else value
