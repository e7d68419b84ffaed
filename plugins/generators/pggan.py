"""PG-GAN generator in the PyTorch layout GAN Dissection published (netdissect/proggan.py).

Layout of a 256 px checkpoint: ``layer1`` .. ``layer14`` then ``output_256x256``. Each layer is
PixelNorm -> [2x nearest upsample on even layers from layer3] -> conv (no bias) -> WScale
(``x * scale + b``; ``scale = gain / sqrt(in_channels)`` is a constant, gain = sqrt(2) / kernel) ->
LeakyReLU(0.2). ``layer1`` is a 4x4 conv with padding 3 on z viewed as (N, z_dim, 1, 1); the output
block is PixelNorm -> 1x1 conv to RGB -> WScale(gain 1). Keys: ``layerN.conv.weight`` (out, in, k, k),
``layerN.wscale.b`` (out,), ``output_RxR.conv.weight`` (3, C, 1, 1), ``output_RxR.wscale.b`` (3,).
Older files name them ``features.N.*`` and ``output.*`` and may store ``wscale.scale``.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from gandid import hookimpl
from gandid.checkpoints import check_state_dict, load_state_dict_file, to_float
from gandid.errors import CheckpointError
from gandid.model import LayerInfo, NormSite, PixelNorm, normal_rows


class WScale(nn.Module):
    """Equalised learning rate: ``x * scale + b`` with a constant scale (not in the state dict)."""

    def __init__(self, channels: int, fan_in: int, gain: float):
        super().__init__()
        self.scale = gain / math.sqrt(fan_in)
        self.b = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return x * self.scale + self.b.view(1, -1, 1, 1)


class Upsample2x(nn.Module):
    def forward(self, x):
        return nn.functional.interpolate(x, scale_factor=2, mode="nearest")


class ConvBlock(nn.Module):
    """PixelNorm -> [upsample] -> conv -> WScale -> LeakyReLU(0.2)."""

    def __init__(self, in_channels, out_channels, kernel_size, padding, upsample=False):
        super().__init__()
        self.norm = PixelNorm()
        self.up = Upsample2x() if upsample else None
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, 1, padding, bias=False)
        self.wscale = WScale(out_channels, in_channels, math.sqrt(2) / kernel_size)
        self.relu = nn.LeakyReLU(0.2)

    def forward(self, x):
        x = self.norm(x)
        if self.up is not None:
            x = self.up(x)
        # conv -> WScale -> LeakyReLU with the scale folded into the weight and b as the conv's bias:
        # the same function in one pass over the output instead of three (the engine profile showed
        # the separate mul, add and leaky_relu at ~23 % of a 256 px forward).
        conv = self.conv
        x = nn.functional.conv2d(x, conv.weight * self.wscale.scale, self.wscale.b, conv.stride, conv.padding)
        return nn.functional.leaky_relu(x, 0.2, inplace=not torch.is_grad_enabled())


class OutputBlock(nn.Module):
    """PixelNorm -> 1x1 conv to RGB -> WScale(gain 1)."""

    def __init__(self, in_channels):
        super().__init__()
        self.norm = PixelNorm()
        self.conv = nn.Conv2d(in_channels, 3, 1, 1, 0, bias=False)
        self.wscale = WScale(3, in_channels, 1.0)

    def forward(self, x):
        return self.wscale(self.conv(self.norm(x)))


def expected_shapes(sizes: list[int]) -> "OrderedDict[str, tuple]":
    """State-dict keys and shapes of a generator with channel depths ``sizes`` = [z_dim, 4x4, 8x8, ...]."""
    shapes = OrderedDict()
    layer = 0

    def add(name, cin, cout, k):
        shapes[f"{name}.conv.weight"] = (cout, cin, k, k)
        shapes[f"{name}.wscale.b"] = (cout,)

    add("layer1", sizes[0], sizes[1], 4)
    add("layer2", sizes[1], sizes[1], 3)
    layer = 2
    for cin, cout in zip(sizes[1:-1], sizes[2:]):
        add(f"layer{layer + 1}", cin, cout, 3)
        add(f"layer{layer + 2}", cout, cout, 3)
        layer += 2
    res = resolution_of(sizes)
    shapes[f"output_{res}x{res}.conv.weight"] = (3, sizes[-1], 1, 1)
    shapes[f"output_{res}x{res}.wscale.b"] = (3,)
    return shapes


def resolution_of(sizes: list[int]) -> int:
    return 4 * 2 ** (len(sizes) - 2)


def sizes_from_state_dict(state: dict) -> list[int]:
    """[z_dim, depth at 4x4, depth at 8x8, ...] read from the conv weights."""
    if "layer1.conv.weight" not in state:
        raise CheckpointError("not a PG-GAN generator checkpoint: no 'layer1.conv.weight' (nor the older "
                              f"'features.0.conv.weight'); its first keys are {sorted(state)[:8]}")
    sizes = [state["layer1.conv.weight"].shape[1]]
    n = 1
    while f"layer{n}.conv.weight" in state:
        if n % 2 == 1:
            sizes.append(state[f"layer{n}.conv.weight"].shape[0])
        n += 1
    return sizes


def convert_old_names(state: dict) -> tuple[dict, dict]:
    """``features.N.*`` / ``output.*`` -> ``layer{N+1}.*`` / ``output_RxR.*``; returns (state, stored scales)."""
    new, scales = {}, {}
    count = 0
    for key, value in state.items():
        m = re.fullmatch(r"features\.(\d+)\.(.+)", key)
        if m:
            name = f"layer{int(m.group(1)) + 1}"
            count = max(count, int(m.group(1)) + 1)
        elif key.startswith("output."):
            name, m = "output", re.fullmatch(r"output\.(.+)", key)
        else:
            new[key] = value  # left for the unexpected-keys report
            continue
        rest = m.group(2) if name != "output" else m.group(1)
        if rest == "wscale.scale":
            scales[name] = float(torch.as_tensor(value).reshape(-1)[0])
        else:
            new[f"{name}.{rest}"] = value
    sizes = [new["layer1.conv.weight"].shape[1]] + [new[f"layer{n}.conv.weight"].shape[0]
                                                     for n in range(1, count + 1, 2)]
    res = resolution_of(sizes)
    out_name = f"output_{res}x{res}"
    for key in [k for k in new if k.startswith("output.")]:
        new[out_name + key[len("output"):]] = new.pop(key)
    if "output" in scales:
        scales[out_name] = scales.pop("output")
    return new, scales


class ProgressiveGenerator(nn.Sequential):
    """The generator network itself: children layer1..layerK, output_RxR (GAN Dissection's names)."""

    def __init__(self, sizes: list[int]):
        blocks = OrderedDict()
        blocks["layer1"] = ConvBlock(sizes[0], sizes[1], 4, 3)
        blocks["layer2"] = ConvBlock(sizes[1], sizes[1], 3, 1)
        n = 2
        for cin, cout in zip(sizes[1:-1], sizes[2:]):
            blocks[f"layer{n + 1}"] = ConvBlock(cin, cout, 3, 1, upsample=True)
            blocks[f"layer{n + 2}"] = ConvBlock(cout, cout, 3, 1)
            n += 2
        res = resolution_of(sizes)
        blocks[f"output_{res}x{res}"] = OutputBlock(sizes[-1])
        super().__init__(blocks)

    def forward(self, z):
        return super().forward(z.view(z.shape[0], z.shape[1], 1, 1))


class PGGANGenerator(nn.Module):
    """A PG-GAN generator behind gandid's Generator protocol.

    ``layers`` are ``layer1``..``layerK`` (post-LeakyReLU, pre-norm features, so an intervention on
    ``layerN`` feeds ``layer{N+1}.norm``); ``norm_sites`` are every block's pixel norm.
    """

    def __init__(self, sizes: list[int], scales: dict | None = None, output_clamp: bool = True):
        super().__init__()
        self.sizes = list(sizes)
        self.net = ProgressiveGenerator(self.sizes)
        for name, scale in (scales or {}).items():
            getattr(self.net, name).wscale.scale = scale
        self.z_dim = self.sizes[0]
        self.resolution = resolution_of(self.sizes)
        self.output_clamp = output_clamp
        names = [n for n in self.net._modules]
        self._block_names = names
        self.layers = []
        size = 4
        for i, name in enumerate(names[:-1]):
            if i >= 2 and i % 2 == 0:
                size *= 2
            self.layers.append(LayerInfo(name, self.net._modules[name].conv.out_channels, (size, size)))
        self.norm_sites = [NormSite(f"{name}.norm", "pixelnorm", prev)
                           for prev, name in zip([None] + names[:-1], names)]
        self.default_layer = "layer4" if len(self.layers) >= 4 else self.layers[len(self.layers) // 2].name

    @classmethod
    def from_state_dict(cls, state: dict, source: str = "state dict") -> "PGGANGenerator":
        if isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        scales = {}
        if "features.0.conv.weight" in state:
            state, scales = convert_old_names(state)
        sizes = sizes_from_state_dict(state)
        check_state_dict(state, expected_shapes(sizes), f"PG-GAN generator ({source})")
        state, dtypes = to_float(state)
        gen = cls(sizes, scales)
        gen.net.load_state_dict(state, strict=True)
        gen.weights_info = {"file": source, **dtypes}
        return gen

    @classmethod
    def from_file(cls, path) -> "PGGANGenerator":
        return cls.from_state_dict(load_state_dict_file(path), source=str(path))

    def checkpoint(self) -> tuple[dict, dict]:
        """The tensors in GAN Dissection's layout (``layer1.conv.weight``, ...), for `gandid convert`."""
        return self.net.state_dict(), {}

    # -- Generator protocol ----------------------------------------------------------------
    def sample_z(self, n, seed, start=0):
        return normal_rows(seed, start, n, self.z_dim).to(self.net.layer1.conv.weight.device)

    def forward(self, z):
        x = self.net(z)
        return x.clamp(-1, 1) if self.output_clamp else x

    def layer_module(self, name):
        if name not in self._block_names[:-1]:
            from gandid.errors import UnknownNameError

            raise UnknownNameError("layer", name, self._block_names[:-1])
        return self.net._modules[name]

    def norm_module(self, site):
        block = site[: -len(".norm")] if site.endswith(".norm") else None
        if block not in self._block_names:
            from gandid.errors import UnknownNameError

            raise UnknownNameError("norm site", site, [s.name for s in self.norm_sites])
        return self.net._modules[block].norm

    def forward_from(self, layer, features, z=None):
        start = self._block_names.index(layer) + 1
        x = features
        for name in self._block_names[start:]:
            x = self.net._modules[name](x)
        return x.clamp(-1, 1) if self.output_clamp else x


def pggan(weights: str | None = None, output_clamp: bool = True) -> PGGANGenerator:
    """Factory for ``--generator pggan --weights FILE`` (.pth, .pt or .safetensors)."""
    if weights is None:
        raise CheckpointError("generator 'pggan' needs a weights file: --weights conferenceroom_lsun.pth")
    gen = PGGANGenerator.from_file(Path(weights))
    gen.output_clamp = output_clamp
    return gen.eval()


def recognise(peek) -> str | None:
    """GAN Dissection's PG-GAN state dict (optionally under 'state_dict'), or its older 'features.N' names."""
    for inside in (None, "state_dict"):
        if peek.has("layer1.conv.weight", inside=inside):
            return "a PG-GAN state dict in GAN Dissection's layout (layer1..layerK, output_RxR)"
        if peek.has("features.0.conv.weight", inside=inside):
            return "a PG-GAN state dict with GAN Dissection's older names (features.N, output)"
    return None


@hookimpl
def gandid_register_generators(register):
    register("pggan", pggan, description="PG-GAN (GAN Dissection's PyTorch layout, .pth/.safetensors)",
             recognise=recognise)
