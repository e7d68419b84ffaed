"""Generator and Segmenter protocols and layer descriptions (hooks: :mod:`gandid.hooks`).

The core talks to models only through these protocols; concrete models are plugins.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence, runtime_checkable

import torch

from .errors import UnknownNameError

NORM_KINDS = ("pixelnorm", "instancenorm", "demod", "layernorm", "batchnorm")


@dataclass(frozen=True)
class LayerInfo:
    """A dissectable / intervenable layer: its output is (N, channels, height, width)."""

    name: str
    channels: int
    size: tuple[int, int]


@dataclass(frozen=True)
class NormSite:
    """A normalisation whose coefficients (β) a DID can record and override.

    ``layer`` names the layer whose output this site normalises (None if it is not a layer output,
    e.g. the mapping network's pixel norm on z).
    """

    name: str
    kind: str
    layer: str | None = None


GENERATOR_OPTIONAL = ("default_layer", "analysis_defaults", "weights_info", "checkpoint", "noise_draws")
SEGMENTER_OPTIONAL = ("categories", "background", "differentiable")


@runtime_checkable
class Generator(Protocol):
    """What gandid and its analyses use of a generator; every member is required (a plugin's object is
    checked against this list when it is built).

    Optional attributes (:data:`GENERATOR_OPTIONAL`): ``default_layer`` (the layer analysed when none is
    given), ``analysis_defaults`` ({analysis: {option: value}}: options sized to this model, applied
    under the user's own), ``weights_info`` ({file, stored_dtypes, loaded_as}, recorded in run.json) and
    ``checkpoint()`` -> (tensors, config): what `gandid convert` writes, a file this generator's plugin
    loads back (default: ``state_dict()`` and no config), and ``noise_draws(draw)``: a context manager
    inside which the generator's noise inputs are draw number ``draw`` (the ``noise`` analysis)."""


    z_dim: int
    resolution: int
    layers: Sequence[LayerInfo]
    norm_sites: Sequence[NormSite]

    def sample_z(self, n: int, seed: int, start: int = 0) -> torch.Tensor:
        """(n, z_dim) latents; row i depends only on (seed, start + i). A conditional generator's "latents"
        are its inputs, any shape with the samples first (pix2pix: (n, C, S, S) images, z_dim = C*S*S)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(N, z_dim) latents (or a conditional generator's inputs) -> images (N, 3, H, W) in [-1, 1]."""

    def layer_module(self, name: str) -> torch.nn.Module:
        """The module whose forward output is layer ``name``'s features."""

    def norm_module(self, site: str) -> torch.nn.Module:
        """The module of norm site ``site`` (a :class:`PixelNorm` for kind 'pixelnorm', an
        :class:`InstanceNorm` for kind 'instancenorm')."""

    def forward_from(self, layer: str, features: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Continue the forward pass from layer ``layer``'s output ``features`` (rows matching ``z``)."""


@runtime_checkable
class Segmenter(Protocol):
    """``labels``: class names (index 0 may be "unlabelled"). Optional (:data:`SEGMENTER_OPTIONAL`):
    ``categories`` ({label: category}: object, part, material, ...; groups dissection counts, unlisted
    labels count as objects), ``background`` (classes an ablated object uncovers, e.g. walls) and
    ``differentiable`` (False when ``class_scores`` cannot give gradients, e.g. an ONNX model: analyses
    that need them refuse the run before any work)."""


    labels: Sequence[str]

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] -> int labels (N, H, W), or (N, K, H, W) multi-label (e.g. object,
        part and material planes: a pixel shows every label its planes hold; -1 in a plane: no label there)."""

    def class_scores(self, images: torch.Tensor, c: int) -> torch.Tensor:
        """Differentiable per-image score of class ``c``, (N,): e.g. its soft pixel fraction."""


class PixelNorm(torch.nn.Module):
    """Pixel normalisation ``x / sqrt(mean_c x^2 + eps)``, overridable by the engine.

    Generators build their pixel-norm sites from this module so that the counterfactual engine can
    replace a site's computation (fused intervention, borrowed or recorded β) through ``override``:
    a callable ``x -> y`` or None. It has no parameters, so checkpoints are unaffected.
    """

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps
        self.override = None

    def forward(self, x):
        if self.override is not None:
            return self.override(x)
        return x / torch.sqrt(torch.mean(x * x, dim=1, keepdim=True) + self.eps)


class InstanceNorm(torch.nn.Module):
    """Instance normalisation ``(x - mean) / std`` per sample and channel over the feature map,
    overridable by the engine; what StyleGAN's AdaIN does before its style scale and bias.

    ``std = sqrt(var + eps)`` with the biased variance and ``eps = 1e-5``: exactly
    ``torch.nn.InstanceNorm2d()``'s defaults, which rosinality/style-based-gan-pytorch's
    ``AdaptiveInstanceNorm`` uses (``nn.InstanceNorm2d(in_channel)``, model.py).

    The coefficients a DID records and overrides are the statistics, one tensor ``(N, 2, C)``:
    ``[:, 0]`` the means and ``[:, 1]`` the stds (eps included, so replaying them divides by exactly
    what the recorded run divided by). ``override``: None or a callable ``stats -> stats`` that
    returns the statistics to normalise with (the engine's: record, borrow from another row, replay),
    as a demodulation site's override maps its coefficients. No parameters: checkpoints are unaffected.
    """

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.override = None

    def statistics(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, 2, C): each row's per-channel mean and sqrt(biased var + eps), in float32
        (float64 for float64 features; half-precision features accumulate in float32)."""
        from .ops import instance_norm

        return instance_norm(x, self.eps, normalize=False)[1]

    @staticmethod
    def normalise(x: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` with statistics (N, 2, C) (own, borrowed or recorded)."""
        from .ops import instance_norm

        n, c = x.shape[:2]
        if stats.shape != (n, 2, c):
            raise ValueError(f"instance-norm statistics must be (N, 2, C) = {(n, 2, c)} for features of shape "
                             f"{tuple(x.shape)}, got {tuple(stats.shape)}")
        return instance_norm(x, stats_in=stats, return_stats=False)[0]

    def forward(self, x):
        # The fused op gandid.ops.instance_norm (the PyTorch reference where the extension is missing,
        # or where autograd needs gradients): one call without an override, else statistics, then the
        # override, then normalising with what it returned.
        if self.override is None:
            from .ops import instance_norm

            return instance_norm(x, self.eps, return_stats=False)[0]
        stats = self.override(self.statistics(x))
        return self.normalise(x, stats)


def normal_rows(seed: int, start: int, n: int, dim: int) -> torch.Tensor:
    """(n, dim) standard normals; row i is drawn from its own stream keyed by (seed, start + i).

    This is what makes a run's numbers independent of batch size and of how samples are split
    across processes.
    """
    out = torch.empty(n, dim)
    g = torch.Generator()
    for i in range(n):
        # A large odd multiplier keeps streams of neighbouring seeds apart.
        g.manual_seed((int(seed) * 0x9E3779B97F4A7C15 + start + i) % (2**63 - 1))
        out[i] = torch.randn(dim, generator=g)
    return out


def find_site(generator: Generator, name: str) -> NormSite:
    for site in generator.norm_sites:
        if site.name == name:
            return site
    raise UnknownNameError("norm site", name, [site.name for site in generator.norm_sites])


def find_layer(generator: Generator, name: str) -> LayerInfo:
    for info in generator.layers:
        if info.name == name:
            return info
    raise UnknownNameError("layer", name, [info.name for info in generator.layers])


def iter_chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) pairs covering range(total) in steps of ``size``."""
    for start in range(0, total, size):
        yield start, min(total, start + size)
