"""The network modules of rosinality's StyleGAN (style-based-gan-pytorch ``model.py``), with its attribute
names, so that their ``state_dict()`` keys are the checkpoint's.

Facts read from rosinality/style-based-gan-pytorch, ``model.py``
(``StyledGenerator``, ``Generator``, ``StyledConvBlock``, ``AdaptiveInstanceNorm``, ``EqualLR``,
``FusedUpsample``, ``Blur``):

- equalised learning rate stores ``<name>_orig`` and multiplies it by ``sqrt(2 / fan_in)`` with
  ``fan_in = weight.size(1) * weight[0][0].numel()``: in * k * k for convs, ``in`` for linears and
  ``C`` for the noise weights (1, C, 1, 1);
- mapping ``style.{1,3,..,2n-1}.linear.weight_orig`` (D, D) / ``.bias`` after a PixelNorm on z, each
  followed by LeakyReLU(0.2) (no gain, no lr multiplier);
- ``generator.progression.{i}`` for resolution 4 * 2**i: ``conv1.input`` (1, C, 4, 4) at i = 0;
  else nearest 2x upsampling, ``conv1.1.conv.weight_orig`` (out, in, 3, 3) / ``.bias``, then a 3x3
  blur ``conv1.2.weight`` / ``.weight_flip`` (C, 1, 3, 3) buffers; or, in the "fused" blocks
  (128 px and up in rosinality's model), ``conv1.0.weight`` (in, out, 3, 3) / ``.bias`` (a stride-2
  transposed conv whose kernel is padded to 4x4 and averaged over the four shifts, multiplier
  sqrt(2 / (in * 9)), padding 1) and blur ``conv1.1.*``; then per half j in (1, 2): ``noise{j}.weight_orig``
  (1, C, 1, 1), LeakyReLU(0.2), ``adain{j}``: ``nn.InstanceNorm2d`` (eps 1e-5, no affine) then
  ``gamma * x + beta`` with ``(gamma, beta) = adain{j}.style.linear`` (2C, D) applied to w;
  ``conv2.conv.weight_orig`` (C, C, 3, 3) between the halves; the two halves of a block add the same
  noise map (N, 1, r, r);
- ``generator.to_rgb.{i}.conv.weight_orig`` (3, C, 1, 1) / ``.bias``; the image at step s is
  ``to_rgb[s]`` of block s's output (``alpha = 1``, no fade-in).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from gandid.model import InstanceNorm


class _Weights(nn.Module):
    """Holds an equal-lr weight as rosinality stores it (``weight_orig``) and its bias."""

    def __init__(self, *shape):
        super().__init__()
        self.weight_orig = nn.Parameter(torch.zeros(*shape))
        self.bias = nn.Parameter(torch.zeros(shape[0]))

    def weight(self):
        w = self.weight_orig
        return w * math.sqrt(2 / (w.shape[1] * w[0][0].numel()))  # EqualLR.compute_weight's fan-in


class EqualLinear(nn.Module):
    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.linear = _Weights(out_dim, in_dim)

    def forward(self, x):
        return F.linear(x, self.linear.weight(), self.linear.bias)


class EqualConv2d(nn.Module):
    def __init__(self, in_channel, out_channel, kernel_size, padding=0):
        super().__init__()
        self.conv = _Weights(out_channel, in_channel, kernel_size, kernel_size)
        self.padding = padding

    def forward(self, x):
        return F.conv2d(x, self.conv.weight(), self.conv.bias, padding=self.padding)


class Blur(nn.Module):
    """The checkpoint's 3x3 [1 2 1]^2 / 16 kernel (a buffer), depthwise, padding 1."""

    def __init__(self, channels):
        super().__init__()
        self.register_buffer("weight", torch.zeros(channels, 1, 3, 3))
        self.register_buffer("weight_flip", torch.zeros(channels, 1, 3, 3))  # used by rosinality's backward only

    def forward(self, x):
        return F.conv2d(x, self.weight.to(x.dtype), padding=1, groups=x.shape[1])


class FusedUpsample(nn.Module):
    def __init__(self, in_channel, out_channel, kernel_size, padding=1):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(in_channel, out_channel, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channel))
        self.multiplier = math.sqrt(2 / (in_channel * kernel_size * kernel_size))
        self.pad = padding

    def forward(self, x):
        w = F.pad(self.weight * self.multiplier, [1, 1, 1, 1])
        # the k x k kernel becomes (k+1) x (k+1): the mean of its four one-pixel shifts
        w = (w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]) / 4
        return F.conv_transpose2d(x, w, self.bias, stride=2, padding=self.pad)


class Upsample(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="nearest")


class ConstantInput(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.input = nn.Parameter(torch.zeros(1, channels, 4, 4))

    def forward(self, n):
        return self.input.repeat(n, 1, 1, 1)


class NoiseInjection(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.weight_orig = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x, noise):
        # equal lr: fan_in = weight.size(1) * weight[0][0].numel() = C for a (1, C, 1, 1) weight
        return x + self.weight_orig * math.sqrt(2 / self.weight_orig.shape[1]) * noise


class AdaIN(nn.Module):
    """Instance norm (a gandid norm site) then the style's per-channel scale and bias."""

    def __init__(self, channels, style_dim):
        super().__init__()
        self.norm = InstanceNorm(eps=1e-5)  # nn.InstanceNorm2d's default, as rosinality uses it
        self.style = EqualLinear(style_dim, 2 * channels)

    def forward(self, x, w):
        gamma, beta = self.style(w)[:, :, None, None].chunk(2, 1)
        return gamma * self.norm(x) + beta


class StyledConvBlock(nn.Module):
    """One resolution: (upsample) conv, noise, LeakyReLU, AdaIN; conv, noise, LeakyReLU, AdaIN."""

    def __init__(self, in_channel, out_channel, style_dim, initial=False, fused=False):
        super().__init__()
        if initial:
            self.conv1 = ConstantInput(in_channel)
        elif fused:
            self.conv1 = nn.Sequential(FusedUpsample(in_channel, out_channel, 3, padding=1), Blur(out_channel))
        else:
            self.conv1 = nn.Sequential(Upsample(), EqualConv2d(in_channel, out_channel, 3, padding=1),
                                       Blur(out_channel))
        self.initial = initial
        self.noise1, self.adain1 = NoiseInjection(out_channel), AdaIN(out_channel, style_dim)
        self.lrelu1 = nn.LeakyReLU(0.2)
        self.conv2 = EqualConv2d(out_channel, out_channel, 3, padding=1)
        self.noise2, self.adain2 = NoiseInjection(out_channel), AdaIN(out_channel, style_dim)
        self.lrelu2 = nn.LeakyReLU(0.2)

    def forward(self, x, w, noise, resume_at=0):
        """``resume_at`` 0: from the previous block's output x (for the first block, x is the batch
        size); 1: x is this block's ``conv1`` layer (the LeakyReLU output before adain1); 2: ``conv2``."""
        if resume_at == 0:
            out = self.conv1(x)
            x = self.lrelu1(self.noise1(out, noise))
        if resume_at <= 1:
            x = self.lrelu2(self.noise2(self.conv2(self.adain1(x, w)), noise))
        return self.adain2(x, w)


class Synthesis(nn.Module):
    def __init__(self, channels, fused, style_dim):
        super().__init__()
        self.progression = nn.ModuleList()
        self.to_rgb = nn.ModuleList()
        for i, c in enumerate(channels):
            self.progression.append(StyledConvBlock(channels[i - 1] if i else c, c, style_dim, initial=i == 0,
                                                    fused=fused[i]))
            self.to_rgb.append(EqualConv2d(c, 3, 1))
