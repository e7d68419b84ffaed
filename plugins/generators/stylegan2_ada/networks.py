"""The StyleGAN2-ADA network modules, in NVlabs/stylegan2-ada-pytorch's key layout.

Our own implementation of the math of NVlabs's ``training/networks.py`` (``Generator``: ``MappingNetwork``
+ ``SynthesisNetwork`` of ``SynthesisBlock`` s of ``SynthesisLayer`` / ``ToRGBLayer``), with the
resampling of ``torch_utils/ops/upfirdn2d.py`` and ``conv2d_resample.py`` and the activations of
``torch_utils/ops/bias_act.py``; the module tree has NVlabs's attribute names, so its ``state_dict()``
keys are those of ``G_ema.state_dict()``: ``mapping.fc{i}.weight`` / ``.bias``, ``mapping.w_avg``,
``synthesis.b4.const``, ``synthesis.b{R}.conv{0,1}.{weight, bias, affine.weight, affine.bias,
noise_const, noise_strength, resample_filter}``, ``synthesis.b{R}.torgb.{weight, bias, affine.*}``,
``synthesis.b{R}.resample_filter`` (and ``synthesis.b{R}.skip.*`` for the 'resnet' architecture).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .config import Config
from .ops import ACTIVATIONS, bias_act, conv2d_resample, normalize_2nd_moment, upsample2d


class FullyConnectedLayer(nn.Module):
    """Equalized-learning-rate linear layer: weight stored divided by lr_multiplier, scaled at run time."""

    def __init__(self, in_features, out_features, activation="linear", lr_multiplier=1.0):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.zeros(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        return bias_act(x @ (self.weight * self.weight_gain).t(), self.bias * self.bias_gain, self.activation)


class MappingNetwork(nn.Module):
    def __init__(self, cfg: "Config"):
        super().__init__()
        features = [cfg.z_dim] + [cfg.mapping_features] * (cfg.mapping_layers - 1) + [cfg.w_dim]
        self.num_layers = cfg.mapping_layers
        for idx in range(cfg.mapping_layers):
            setattr(self, f"fc{idx}", FullyConnectedLayer(features[idx], features[idx + 1], cfg.mapping_activation,
                                                          cfg.mapping_lr_multiplier))
        if cfg.w_avg:
            self.register_buffer("w_avg", torch.zeros(cfg.w_dim))

    def forward(self, z):
        x = normalize_2nd_moment(z)
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        return x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (upsampling in ``conv0``), fixed noise, bias, activation, clamp.

    Its demodulation coefficients d (N, out) are a 'demod' norm site: ``override`` is None or a
    callable d -> d' used instead of the computed ones (set only through gandid.hooks.norm_overrides).
    """

    def __init__(self, in_channels, out_channels, cfg: "Config", resolution, up=1):
        super().__init__()
        self.resolution, self.up = resolution, up
        self.activation, self.conv_clamp = cfg.activation, cfg.conv_clamp
        self.act_gain = ACTIVATIONS[cfg.activation][1]
        self.padding = cfg.kernel_size // 2
        self.register_buffer("resample_filter", torch.zeros(cfg.filter_shape))
        self.affine = FullyConnectedLayer(cfg.w_dim, in_channels)
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, cfg.kernel_size, cfg.kernel_size))
        self.use_noise = cfg.use_noise
        if cfg.use_noise:
            self.register_buffer("noise_const", torch.zeros(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_mode = "const"
        self.override = None

    def demod_coefficients(self, styles):
        """networks.py's dcoefs: 1 / sqrt(sum over (in, k, k) of (weight * style)^2 + 1e-8), (N, out)."""
        w = self.weight.unsqueeze(0) * styles.reshape(len(styles), 1, -1, 1, 1)
        return (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()

    def forward(self, x, w, gain=1.0):
        styles = self.affine(w)  # (N, in)
        d = self.demod_coefficients(styles)
        if self.override is not None:
            d = self.override(d)
        x = conv2d_resample(x * styles.reshape(len(styles), -1, 1, 1), self.weight, self.resample_filter,
                            up=self.up, padding=self.padding)
        x = x * d.reshape(len(d), -1, 1, 1)
        if self.use_noise and self.noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, self.activation, gain=self.act_gain * gain, clamp=clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution without demodulation, bias, clamp."""

    def __init__(self, in_channels, out_channels, cfg: "Config"):
        super().__init__()
        self.conv_clamp = cfg.conv_clamp
        self.affine = FullyConnectedLayer(cfg.w_dim, in_channels)
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x, w):
        styles = self.affine(w) * self.weight_gain
        x = F.conv2d(x * styles.reshape(len(styles), -1, 1, 1), self.weight)
        return bias_act(x, self.bias, "linear", clamp=self.conv_clamp)


class SkipLayer(nn.Module):
    """The 'resnet' architecture's shortcut: networks.py's Conv2dLayer(in, out, 1, bias=False, up=2)."""

    def __init__(self, in_channels, out_channels, cfg: "Config"):
        super().__init__()
        self.register_buffer("resample_filter", torch.zeros(cfg.filter_shape))
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, 1, 1))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x, gain=1.0):
        return conv2d_resample(x, self.weight * self.weight_gain, self.resample_filter, up=2) * gain


class SynthesisBlock(nn.Module):
    def __init__(self, in_channels, out_channels, cfg: "Config", resolution, is_last):
        super().__init__()
        self.in_channels, self.resolution, self.is_last = in_channels, resolution, is_last
        self.architecture = cfg.architecture
        self.register_buffer("resample_filter", torch.zeros(cfg.filter_shape))
        if in_channels == 0:
            self.const = nn.Parameter(torch.zeros(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, cfg, resolution, up=2)
        self.conv1 = SynthesisLayer(out_channels, out_channels, cfg, resolution)
        if is_last or cfg.architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, cfg.img_channels, cfg)
        if in_channels != 0 and cfg.architecture == "resnet":
            self.skip = SkipLayer(in_channels, out_channels, cfg)

    def forward(self, x, img, w, start: str | None = None, features=None):
        """One block (networks.py's SynthesisBlock.forward with every ws row equal to w). ``start`` =
        'conv0' or 'conv1' continues from that layer's output ``features`` (x is then the block's input,
        needed only by the resnet shortcut)."""
        resnet = self.in_channels != 0 and self.architecture == "resnet"
        y = self.skip(x, gain=math.sqrt(0.5)) if resnet else None
        if start is None:
            if self.in_channels == 0:
                x = self.const.unsqueeze(0).repeat(len(w), 1, 1, 1)
            else:
                x = self.conv0(x, w)
        elif start == "conv0":
            x = features
        if start != "conv1":
            x = self.conv1(x, w, gain=math.sqrt(0.5)) if resnet else self.conv1(x, w)
        else:
            x = features
        if resnet:
            x = y + x
        if img is not None:
            img = upsample2d(img, self.resample_filter)
        if hasattr(self, "torgb"):
            rgb = self.torgb(x, w)
            img = rgb if img is None else img + rgb
        return x, img


class SynthesisNetwork(nn.Module):
    def __init__(self, cfg: "Config"):
        super().__init__()
        self.resolutions = sorted(cfg.channels)
        for res in self.resolutions:
            in_channels = cfg.channels[res // 2] if res > 4 else 0
            setattr(self, f"b{res}", SynthesisBlock(in_channels, cfg.channels[res], cfg, res, res == cfg.resolution))

    def blocks(self):
        return [(res, getattr(self, f"b{res}")) for res in self.resolutions]
