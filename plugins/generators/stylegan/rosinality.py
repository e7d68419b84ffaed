"""StyleGAN v1 in rosinality's layout: :class:`StyleGANGenerator` (the forward pass, noise and truncation at a
fixed progressive step) and its loading from a state dict. The network's modules and the facts of the key
layout: :mod:`.rosinality_net`.

From rosinality/style-based-gan-pytorch ``generate.py``: ``step = log2(size) - 2``, truncation with
``mean_style``.
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn

from gandid.checkpoints import check_state_dict, to_float
from gandid.errors import CheckpointError
from gandid.model import PixelNorm

from .base import NOISE_MODES, _StyleGANBase
from .checkpoint import _dims
from .rosinality_net import EqualLinear, Synthesis


class StyleGANGenerator(_StyleGANBase):
    """rosinality's StyledGenerator behind gandid's Generator protocol, at a fixed progressive step.

    ``channels[i]``: depth of the block at 4 * 2**i; ``fused[i]``: whether block i upsamples with the
    fused transposed conv; ``step``: the last block used (resolution 4 * 2**step).
    """

    def __init__(self, channels, fused, style_dim, n_mlp, step=None, truncation=1.0, noise="latent"):
        super().__init__()
        if noise not in NOISE_MODES:
            raise ValueError(f"stylegan: noise must be one of {NOISE_MODES}, got {noise!r}")
        layers = [PixelNorm()]
        for _ in range(n_mlp):
            layers += [EqualLinear(style_dim, style_dim), nn.LeakyReLU(0.2)]
        self.style = nn.Sequential(*layers)
        self.generator = Synthesis(list(channels), list(fused), style_dim)
        self.register_buffer("mean_style", torch.zeros(style_dim), persistent=False)
        self.step = len(channels) - 1 if step is None else step
        self.truncation, self.noise_mode = truncation, noise
        self.z_dim, self.resolution = style_dim, 4 * 2 ** self.step
        self._name_sites(channels, self.step + 1)

    def _param(self):
        return self.generator.to_rgb[0].conv.weight_orig

    def _pixel_norm(self):
        return self.style[0]

    def _activation(self, block, half):
        return getattr(self.generator.progression[block], f"lrelu{half}")

    def _instance_norm(self, block, half):
        return getattr(self.generator.progression[block], f"adain{half}").norm

    # -- noise --------------------------------------------------------------------------------
    def noise_map(self, z: torch.Tensor, block: int) -> torch.Tensor:
        """Block ``block``'s noise (N, 1, r, r): a function of each row of z only (see the docstring
        of :mod:`.base`). Each block has its own stream, so a pass that stops early draws no more than it uses."""
        n, r = len(z), 4 * 2 ** block
        dev, dtype = z.device, self._param().dtype
        if self.noise_mode == "zero":
            return torch.zeros(n, 1, r, r, device=dev, dtype=dtype)
        if self.noise_mode == "const":
            g = torch.Generator().manual_seed(block)
            return torch.randn(1, 1, r, r, generator=g).to(device=dev, dtype=dtype).expand(n, 1, r, r)
        return self._latent_noise(z, block.to_bytes(2, "little"), r)

    def noise_maps(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Every block's noise, (N, 1, r, r) for r = 4, 8, ..., resolution."""
        return [self.noise_map(z, i) for i in range(self.step + 1)]

    def mapping(self, z):
        w = self.style(z)
        if self.truncation < 1:  # generate.py: mean_style + style_weight * (style - mean_style)
            w = self.mean_style + self.truncation * (w - self.mean_style)
        return w

    def _run(self, z, start_block=0, resume_at=0, x=None):
        w = self.mapping(z)
        out = len(z) if x is None else x
        for i in range(start_block, self.step + 1):
            out = self.generator.progression[i](out, w, self.noise_map(z, i), resume_at if i == start_block else 0)
        return self.generator.to_rgb[self.step](out).clamp(-1, 1)

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, state: dict, resolution: int | None = None, truncation: float = 1.0,
                        noise: str = "latent", source: str = "state dict") -> "StyleGANGenerator":
        what = f"StyleGAN generator ({source})"
        prefix = "generator.progression."
        if "style.1.linear.weight_orig" not in state or f"{prefix}0.conv1.input" not in state:
            raise CheckpointError(f"{source}: not a rosinality style-based-gan-pytorch StyledGenerator (no "
                                  f"'style.1.linear.weight_orig' / '{prefix}0.conv1.input'); its first keys are "
                                  f"{sorted(state)[:8]}.")
        style_dim = _dims(state, "style.1.linear.weight_orig", 2, what)[1]
        n_mlp = len([k for k in state if re.fullmatch(r"style\.\d+\.linear\.weight_orig", k)])
        blocks = 1 + max(int(m.group(1)) for m in (re.match(re.escape(prefix) + r"(\d+)\.", k) for k in state) if m)
        channels, fused = [], []
        for i in range(blocks):
            key = f"{prefix}{i}.adain1.style.linear.bias"  # (2C,): gamma and beta of block i's C channels
            if key not in state:
                raise CheckpointError(f"{what}: cannot tell block {i}'s channels: missing keys (1): {key}")
            channels.append(_dims(state, key, 1, what)[0] // 2)
            fused.append(f"{prefix}{i}.conv1.0.weight" in state)
        step, chosen = _choose_step(state, blocks, resolution, source)
        gen = cls(channels, fused, style_dim, n_mlp, step, truncation, noise)
        expected = {k: tuple(v.shape) for k, v in gen.state_dict().items()}
        check_state_dict(state, expected, what)
        state, dtypes = to_float(state)
        gen.load_state_dict(state, strict=True)
        gen.weights_info = {"file": source, **dtypes, "layout": "rosinality", "resolution": gen.resolution,
                            "resolution_from": chosen, "noise": noise}
        if truncation < 1:  # generate.py averages style(z) over 10 x 1024 random latents
            with torch.no_grad():
                g = torch.Generator().manual_seed(0)
                gen.mean_style.copy_(gen.style(torch.randn(10 * 1024, style_dim, generator=g)).mean(0))
        return gen.eval()


def _choose_step(state, blocks, resolution, source):
    """The progressive step to run at, and how it was chosen.

    rosinality's checkpoints hold all nine blocks (4..1024 px) whatever resolution training reached; a
    block that never trained keeps its initial noise weights, which are zeros (NoiseInjection), while
    trained ones are not. So without ``resolution`` the step is the last block with non-zero noise
    weights.
    """
    if resolution is not None:
        step = int(round(math.log2(resolution))) - 2 if resolution > 0 else -1
        if resolution != 4 * 2 ** max(step, 0) or not 0 <= step < blocks:
            raise CheckpointError(f"stylegan: resolution must be one of {[4 * 2 ** i for i in range(blocks)]} "
                                  f"for {source}, got {resolution}")
        return step, "option"
    trained = [i for i in range(blocks) if any(
        float(state[f"generator.progression.{i}.noise{h}.weight_orig"].abs().max()) > 0
        for h in (1, 2) if f"generator.progression.{i}.noise{h}.weight_orig" in state)]
    if not trained:
        return blocks - 1, "all blocks (no block has trained noise weights; give resolution= to choose)"
    return max(trained), "last block with trained (non-zero) noise weights"
