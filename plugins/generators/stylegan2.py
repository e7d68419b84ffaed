"""StyleGAN2 generator in rosinality/stylegan2-pytorch's layout (the ``g_ema`` state dict), on the CPU.

Keys: mapping ``style.{1..n_mlp}.weight`` (D, D) / ``.bias`` (D,) after a PixelNorm on z (``style.0``);
``input.input`` (1, C, 4, 4); styled convs ``conv1`` and ``convs.{j}`` with ``.conv.weight``
(1, out, in, 3, 3), ``.conv.modulation.weight`` (in, D), ``.conv.modulation.bias`` (in,),
``.noise.weight`` (1,), ``.activate.bias`` (out,), and ``.conv.blur.kernel`` (4, 4) on the upsampling
ones (even j); ``to_rgb1`` / ``to_rgbs.{k}`` with ``.conv.*`` (weight (1, 3, in, 1, 1)), ``.bias``
(1, 3, 1, 1) and ``.upsample.kernel`` (4, 4); fixed noise ``noises.noise_{i}`` (1, 1, r, r).

Noise is the checkpoint's fixed noise buffers, so an image depends only on its latent. Weight
demodulation is computed explicitly (``conv(x * s) * d``), so its coefficients d are a norm site
(kind ``demod``) that the DID engine can record and override, like β of a pixel norm.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import re
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from gandid import hookimpl
from gandid.checkpoints import check_state_dict, load_state_dict_file, to_float
from gandid.errors import CheckpointError
from gandid.model import LayerInfo, NormSite, PixelNorm

SQRT2 = math.sqrt(2)


def upfirdn2d(x, kernel, up=1, pad=(0, 0)):
    """Zero-insertion upsampling, padding, then FIR filtering with ``kernel`` (k, k); plain PyTorch."""
    n, c, h, w = x.shape
    if up > 1:
        x = x.view(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1]).view(n, c, h * up, w * up)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    weight = torch.flip(kernel, [0, 1]).to(x.dtype).view(1, 1, *kernel.shape).repeat(c, 1, 1, 1)
    return F.conv2d(x, weight, groups=c)


def blur_kernel(upsample_factor=1):
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = k[None, :] * k[:, None]
    return k / k.sum() * upsample_factor ** 2


class EqualLinear(nn.Module):
    def __init__(self, in_dim, out_dim, bias_init=0.0, lr_mul=1.0, activation=False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_dim, in_dim))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale, self.lr_mul, self.activation = lr_mul / math.sqrt(in_dim), lr_mul, activation

    def forward(self, x):
        if self.activation:
            return F.leaky_relu(F.linear(x, self.weight * self.scale) + self.bias * self.lr_mul, 0.2) * SQRT2
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class ModulatedConv2d(nn.Module):
    """Style-modulated conv; with ``demodulate`` its coefficients d (N, out) form a 'demod' norm site.

    ``override``: None or a callable d -> d' used instead of the computed coefficients.
    """

    def __init__(self, in_channel, out_channel, kernel_size, style_dim, demodulate=True, upsample=False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1.0)
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.demodulate, self.upsample = demodulate, upsample
        if upsample:
            self.blur = Blur(pad=(1, 1), upsample_factor=2)
        self.override = None
        self.last_demod = None

    def demod_coefficients(self, style):
        w = self.scale * self.weight[0]  # (out, in, k, k)
        return torch.rsqrt((w.unsqueeze(0) * style.view(len(style), 1, -1, 1, 1)).pow(2).sum((2, 3, 4)) + 1e-8)

    def forward(self, x, w):
        style = self.modulation(w)  # (N, in)
        weight = self.scale * self.weight[0]
        x = x * style.view(len(style), -1, 1, 1)
        if self.upsample:
            out = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2))
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            d = self.demod_coefficients(style)
            if self.override is not None:
                d = self.override(d)
            out = out * d.view(len(d), -1, 1, 1)
        return out


class Blur(nn.Module):
    def __init__(self, pad, upsample_factor=1):
        super().__init__()
        self.register_buffer("kernel", blur_kernel(upsample_factor))
        self.pad = pad

    def forward(self, x):
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("kernel", blur_kernel(2))

    def forward(self, x):
        return upfirdn2d(x, self.kernel, up=2, pad=(2, 1))


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x, noise):
        return x + self.weight * noise


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        return F.leaky_relu(x + self.bias.view(1, -1, 1, 1), 0.2) * SQRT2


class StyledConv(nn.Module):
    def __init__(self, in_channel, out_channel, style_dim, upsample=False):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x, w, noise):
        return self.activate(self.noise(self.conv(x, w), noise))


class ToRGB(nn.Module):
    def __init__(self, in_channel, style_dim, upsample=True):
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x, w, skip=None):
        out = self.conv(x, w) + self.bias
        return out if skip is None else out + self.upsample(skip)


class ConstantInput(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.input = nn.Parameter(torch.zeros(1, channels, 4, 4))


class Noises(nn.Module):
    def __init__(self, log_size):
        super().__init__()
        for i in range((log_size - 2) * 2 + 1):
            r = 2 ** ((i + 5) // 2)
            self.register_buffer(f"noise_{i}", torch.zeros(1, 1, r, r))


class StyleGAN2Generator(nn.Module):
    """rosinality's Generator, CPU-only and deterministic, behind gandid's Generator protocol.

    ``channels``: depth at 4, 8, ..., size (read from a checkpoint). ``truncation`` < 1 pulls w toward
    ``latent_avg``.
    """

    def __init__(self, size, style_dim, n_mlp, channels, lr_mlp=0.01, truncation=1.0):
        super().__init__()
        self.size, self.style_dim, self.n_mlp = size, style_dim, n_mlp
        self.log_size = int(math.log2(size))
        self.style = nn.Sequential(PixelNorm(), *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True)
                                                  for _ in range(n_mlp)])
        self.input = ConstantInput(channels[0])
        self.conv1 = StyledConv(channels[0], channels[0], style_dim)
        self.to_rgb1 = ToRGB(channels[0], style_dim, upsample=False)
        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        for cin, cout in zip(channels[:-1], channels[1:]):
            self.convs.append(StyledConv(cin, cout, style_dim, upsample=True))
            self.convs.append(StyledConv(cout, cout, style_dim))
            self.to_rgbs.append(ToRGB(cout, style_dim))
        self.noises = Noises(self.log_size)
        self.register_buffer("latent_avg", torch.zeros(style_dim))
        self.truncation = truncation

        names = ["conv1"] + [f"convs.{j}" for j in range(len(self.convs))]
        sizes = [4] + [4 * 2 ** (j // 2 + 1) for j in range(len(self.convs))]
        self.layers = [LayerInfo(n, c, (s, s)) for n, c, s in zip(names, [channels[0]] + [
            conv.conv.weight.shape[1] for conv in self.convs], sizes)]
        self.norm_sites = [NormSite("style.0", "pixelnorm", None)] + [
            NormSite(f"{n}.conv", "demod", prev) for prev, n in zip([None] + names[:-1], names)]
        self.default_layer = names[min(len(names) - 1, 4)]
        self.z_dim, self.resolution = style_dim, size

    # -- Generator protocol ----------------------------------------------------------------
    def sample_z(self, n, seed, start=0):
        from gandid.model import normal_rows

        return normal_rows(seed, start, n, self.z_dim).to(self.input.input.device)

    def mapping(self, z):
        w = self.style(z)
        if self.truncation < 1:
            w = self.latent_avg + self.truncation * (w - self.latent_avg)
        return w

    def layer_module(self, name):
        names = [l.name for l in self.layers]
        if name not in names:
            from gandid.errors import UnknownNameError

            raise UnknownNameError("layer", name, names)
        return self.conv1 if name == "conv1" else self.convs[int(name.split(".")[1])]

    def norm_module(self, site):
        if site == "style.0":
            return self.style[0]
        if site.endswith(".conv"):
            return self.layer_module(site[: -len(".conv")]).conv
        from gandid.errors import UnknownNameError

        raise UnknownNameError("norm site", site, [s.name for s in self.norm_sites])

    def forward(self, z):
        w = self.mapping(z)
        noise = [getattr(self.noises, f"noise_{i}") for i in range((self.log_size - 2) * 2 + 1)]
        out = self.conv1(self.input.input.repeat(len(z), 1, 1, 1), w, noise[0])
        skip = self.to_rgb1(out, w)
        for k, to_rgb in enumerate(self.to_rgbs):
            out = self.convs[2 * k](out, w, noise[2 * k + 1])
            out = self.convs[2 * k + 1](out, w, noise[2 * k + 2])
            skip = to_rgb(out, w, skip)
        return skip.clamp(-1, 1)

    @contextlib.contextmanager
    def noise_draws(self, draw: int):
        """Within the block every noise input is a fresh standard normal map determined by ``draw`` (the
        checkpoint's fixed noise otherwise): what the ``noise`` analysis varies."""
        saved = {name: buffer.clone() for name, buffer in self.noises.named_buffers()}
        g = torch.Generator().manual_seed(int(draw))
        try:
            for name, buffer in self.noises.named_buffers():
                buffer.copy_(torch.randn(buffer.shape, generator=g))
            yield
        finally:
            for name, buffer in self.noises.named_buffers():
                buffer.copy_(saved[name])

    def forward_from(self, layer, features, z):
        """The RGB skip path carries state past every layer, so the prefix runs again (for these rows)
        with ``layer``'s output replaced by ``features``."""
        from gandid.hooks import Trace

        with Trace(self, edit={layer: lambda output: features}):
            return self.forward(z)

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, state: dict, latent_avg=None, truncation=1.0, source="state dict"):
        if "style.1.weight" not in state or "input.input" not in state:
            raise CheckpointError(f"{source}: not a rosinality StyleGAN2 generator (no 'style.1.weight' / "
                                  f"'input.input'); its first keys are {sorted(state)[:8]}")
        style_dim = state["style.1.weight"].shape[1]
        n_mlp = len([k for k in state if re.fullmatch(r"style\.\d+\.weight", k)])
        n_rgbs = len([k for k in state if re.fullmatch(r"to_rgbs\.\d+\.bias", k)])
        size = 4 * 2 ** n_rgbs
        channels = [state["input.input"].shape[1]] + [
            state[f"convs.{2 * k}.conv.weight"].shape[1] if f"convs.{2 * k}.conv.weight" in state else 0
            for k in range(n_rgbs)]
        gen = cls(size, style_dim, n_mlp, channels, truncation=truncation)
        expected = {k: tuple(v.shape) for k, v in gen.state_dict().items() if k != "latent_avg"}
        check_state_dict(state, expected, f"StyleGAN2 generator ({source})")
        state, dtypes = to_float(state)
        gen.load_state_dict(state, strict=False)
        gen.weights_info = {"file": source, **dtypes}
        if latent_avg is not None:
            latent_avg = torch.as_tensor(latent_avg)
            if latent_avg.numel() != style_dim:
                raise CheckpointError(f"{source}: latent_avg has shape {tuple(latent_avg.shape)}, but the mapping "
                                      f"network's w has {style_dim} values: a latent_avg from another model?")
            gen.latent_avg.copy_(latent_avg.reshape(-1))
        else:  # the mean w over a fixed set of latents, as rosinality's mean_latent does
            with torch.no_grad():
                g = torch.Generator().manual_seed(0)
                gen.latent_avg.copy_(gen.style(torch.randn(4096, style_dim, generator=g)).mean(0))
        return gen.eval()


def stylegan2(weights: str | None = None, truncation: float = 1.0) -> StyleGAN2Generator:
    """Factory for ``--generator stylegan2 --weights FILE``: a checkpoint with ``g_ema`` (and optionally
    ``latent_avg``), or a bare generator state dict; .pt/.pth or .safetensors."""
    if weights is None:
        raise CheckpointError("generator 'stylegan2' needs a weights file: --weights stylegan2-ffhq-config-f.pt")
    if not 0 < truncation <= 1:
        raise CheckpointError(f"stylegan2: truncation must be in (0, 1], got {truncation}")
    # rosinality's training checkpoints also pickle their argparse options: allow exactly that class,
    # a plain attribute container (weights_only loading still refuses anything else).
    torch.serialization.add_safe_globals([argparse.Namespace])
    data = load_state_dict_file(Path(weights))
    if "g_ema" not in data and "style.1.weight" not in data:
        trained = [k for k in ("g", "generator", "G") if isinstance(data.get(k), dict) and "style.1.weight" in data[k]]
        if trained:  # a training checkpoint without the moving average: say which generator it does have
            raise CheckpointError(f"{weights}: no 'g_ema' (the moving-average generator rosinality's scripts sample "
                                  f"from) in this checkpoint, but it has {trained[0]!r}, the trained generator. "
                                  f"Extract it in an environment you trust: torch.save(torch.load(FILE)"
                                  f"[{trained[0]!r}], 'g.pt'), and give g.pt (its images are not g_ema's)")
    state = data.get("g_ema", data)
    if not isinstance(state, dict):
        raise CheckpointError(f"{weights}: 'g_ema' is not a state dict")
    latent_avg = data.get("latent_avg")
    if state is data and "latent_avg" in state:  # a flat file (e.g. a .safetensors) carrying the average w
        state = {k: v for k, v in state.items() if k != "latent_avg"}
    return StyleGAN2Generator.from_state_dict(state, latent_avg, truncation, source=str(weights))


def recognise(peek) -> str | None:
    """rosinality's checkpoints: {'g_ema', 'latent_avg', ...} or a flat generator state dict (not SWAGAN's,
    which has the same mapping and input but wavelet transforms, keys ending in 'iwt.ll')."""
    if any(key.endswith("iwt.ll") for key in peek.keys()):
        return None
    if peek.has("style.1.weight", "input.input", inside="g_ema"):
        return "a rosinality StyleGAN2 checkpoint (g_ema)"
    if peek.has("style.1.weight", "input.input"):
        return "a rosinality StyleGAN2 generator state dict"
    return None


@hookimpl
def gandid_register_generators(register):
    register("stylegan2", stylegan2, description="StyleGAN2 (rosinality/stylegan2-pytorch g_ema checkpoints)",
             recognise=recognise)
