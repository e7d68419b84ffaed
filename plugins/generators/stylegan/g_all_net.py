"""The network modules of the official StyleGAN's PyTorch port, with the port's attribute names, so that
their ``state_dict()`` keys are the file's.

The official network's ``g_all`` layout (GANSpace's ``stylegan_<class>_<res>.pt``, lernapparat's
``karras2019stylegan-ffhq-1024x1024.for_g_all.pt``). Facts read from harskish/ganspace,
``models/stylegan/model.py`` (``StyleGAN_G``: ``g_mapping`` + ``g_synthesis`` in an ``nn.Sequential``,
``MyLinear``, ``MyConv2d``, ``NoiseLayer``, ``StyleMod``, ``BlurLayer``, ``LayerEpilogue``,
``InputBlock``, ``GSynthesisBlock``, ``Truncation``, ``export_from_tf``) and ``models/wrappers.py``
(``StyleGAN.load_model``, ``set_noise_seed``), checked against NVlabs/stylegan,
``training/networks_stylegan.py`` (``G_style``, ``G_mapping``, ``G_synthesis``, ``instance_norm``):

- the file is ``StyleGAN_G.state_dict()``: the official TensorFlow ``Gs`` trainables renamed, dense
  weights transposed to (out, in), conv weights to (out, in, k, k), plus the blur kernels (buffers);
  the ``ToRGB_lod{1..}`` layers of progressive growing are dropped, so a file runs at one resolution;
- equalised learning rate: a weight is multiplied by ``gain / sqrt(fan_in) * lrmul`` and a bias by
  ``lrmul``; mapping ``g_mapping.dense{0..7}.weight`` (512, 512) / ``.bias``: gain sqrt(2), lrmul 0.01,
  after a pixel norm (eps 1e-8) on z, each followed by LeakyReLU(0.2); the output w is broadcast to
  the synthesis's 2 * blocks layers;
- ``g_synthesis.blocks.4x4``: ``const`` (1, C, 4, 4) + ``bias`` (C), epilogue ``epi1``, ``conv``
  (C, C, 3, 3) / ``.bias``, epilogue ``epi2``; ``g_synthesis.blocks.RxR`` (R = 8 .. resolution):
  ``conv0_up``: nearest 2x upsampling then a 3x3 conv without bias or, where R >= 128 (``fused_scale
  = 'auto'``), a stride-2 transposed conv (padding 1) whose 3x3 kernel is padded to 4x4 and *summed*
  over the four shifts; then the blur ``conv0_up.intermediate.kernel`` (1, 1, 3, 3) = [1 2 1]^2 / 16,
  depthwise, padding 1, *then* the bias; ``epi1``; ``conv1`` (C, C, 3, 3) / ``.bias``; ``epi2``; conv
  gain sqrt(2), lrmul 1;
- ``LayerEpilogue`` (``epi1`` reads w_{2b}, ``epi2`` w_{2b+1}): ``top_epi.noise.weight`` (C,) times a
  noise map (N, 1, R, R) added (no weight scaling), LeakyReLU(0.2), instance norm, then ``style_mod``:
  ``style = style_mod.lin(w_l)`` (2C, D; gain 1, lrmul 1), ``x * (style[:C] + 1) + style[C:]``; no
  pixel norm. Official StyleGAN's instance norm has eps 1e-8; the port's ``nn.InstanceNorm2d`` has
  1e-5 (``instance_eps`` chooses);
- ``g_synthesis.torgb.weight`` (3, C, 1, 1) / ``.bias``, gain 1; images in about [-1, 1].
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from gandid.model import InstanceNorm, PixelNorm

SQRT2 = math.sqrt(2)
G_ALL_FUSED_FROM = 128  # fused_scale='auto': upscale2d_conv2d fuses where the output is 128 px or more


class _ScaledDense(nn.Module):
    """The port's ``MyLinear`` with use_wscale: weight (out, in) times gain / sqrt(in) * lrmul, bias
    times lrmul."""

    def __init__(self, in_dim, out_dim, gain, lrmul=1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.w_mul, self.b_mul = gain / math.sqrt(in_dim) * lrmul, lrmul

    def forward(self, x):
        return F.linear(x, self.weight * self.w_mul, self.bias * self.b_mul if self.b_mul != 1 else self.bias)


class _BlurKernel(nn.Module):
    """The port's ``BlurLayer``: the stored (1, 1, 3, 3) kernel, depthwise, padding 1."""

    def __init__(self):
        super().__init__()
        self.register_buffer("kernel", torch.zeros(1, 1, 3, 3))

    def forward(self, x):
        c = x.shape[1]
        return F.conv2d(x, self.kernel.to(x.dtype).expand(c, -1, -1, -1), padding=1, groups=c)


class _ScaledConv(nn.Module):
    """The port's ``MyConv2d`` with use_wscale: weight (out, in, k, k) times gain / sqrt(in * k * k).

    ``up`` None: a plain conv with bias; "nearest": 2x nearest upsampling then the conv; "fused": the
    official fused upscale (the kernel padded to (k+1) x (k+1) and summed over its four one-pixel
    shifts, a stride-2 transposed conv). Upsampling convs blur (``intermediate``) and add the bias after.
    """

    def __init__(self, in_channels, out_channels, kernel_size, gain, up=None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.w_mul, self.up = gain / math.sqrt(in_channels * kernel_size ** 2), up
        if up is not None:
            self.intermediate = _BlurKernel()

    def forward(self, x):
        w = self.weight * self.w_mul
        pad = w.shape[-1] // 2
        if self.up is None:
            return F.conv2d(x, w, self.bias, padding=pad)
        if self.up == "fused":
            w = F.pad(w.transpose(0, 1), [1, 1, 1, 1])  # (in, out, k + 2, k + 2) for conv_transpose2d
            w = w[:, :, 1:, 1:] + w[:, :, :-1, 1:] + w[:, :, 1:, :-1] + w[:, :, :-1, :-1]
            x = F.conv_transpose2d(x, w, stride=2, padding=(w.shape[-1] - 1) // 2)
        else:
            x = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, padding=pad)
        return self.intermediate(x) + self.bias.view(1, -1, 1, 1)


class _NoiseStrength(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels))


class _TopEpilogue(nn.Module):
    """``LayerEpilogue.top_epi``: noise, LeakyReLU, instance norm (a gandid norm site). Each epilogue
    has its own LeakyReLU module (the port shares one), so that each layer can be hooked."""

    def __init__(self, channels, eps):
        super().__init__()
        self.noise = _NoiseStrength(channels)
        self.activation = nn.LeakyReLU(0.2)
        self.instance_norm = InstanceNorm(eps=eps)


class _StyleMod(nn.Module):
    def __init__(self, dlatent_size, channels):
        super().__init__()
        self.lin = _ScaledDense(dlatent_size, 2 * channels, gain=1.0)


class _Epilogue(nn.Module):
    def __init__(self, channels, dlatent_size, eps):
        super().__init__()
        self.top_epi = _TopEpilogue(channels, eps)
        self.style_mod = _StyleMod(dlatent_size, channels)

    def layer(self, x, noise):
        """Noise, then LeakyReLU: the features the instance norm reads (gandid's layer)."""
        return self.top_epi.activation(x + self.top_epi.noise.weight.view(1, -1, 1, 1) * noise)

    def adain(self, x, w):
        style = self.style_mod.lin(w)[:, :, None, None]  # (N, 2C, 1, 1): scale - 1, then bias
        c = x.shape[1]
        return self.top_epi.instance_norm(x) * (style[:, :c] + 1) + style[:, c:]


class _OfficialBlock(nn.Module):
    def forward(self, x, ws, noises, resume_at=0):
        """``resume_at`` 0: from the previous block's output x (for the first block, x is the batch
        size); 1: x is this block's ``conv1`` layer (epi1's LeakyReLU output); 2: its ``conv2``.
        ``ws``, ``noises``: this block's two styles and two noise maps (a noise not used may be None)."""
        if resume_at == 0:
            x = self.epi1.layer(self._first(x), noises[0])
        if resume_at <= 1:
            x = self.epi2.layer(self._second(self.epi1.adain(x, ws[0])), noises[1])
        return self.epi2.adain(x, ws[1])


class _InputBlock(_OfficialBlock):
    def __init__(self, channels, dlatent_size, eps):
        super().__init__()
        self.const = nn.Parameter(torch.zeros(1, channels, 4, 4))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.epi1 = _Epilogue(channels, dlatent_size, eps)
        self.conv = _ScaledConv(channels, channels, 3, SQRT2)
        self.epi2 = _Epilogue(channels, dlatent_size, eps)

    def _first(self, n):
        return self.const.expand(n, -1, -1, -1) + self.bias.view(1, -1, 1, 1)

    def _second(self, x):
        return self.conv(x)


class _UpBlock(_OfficialBlock):
    def __init__(self, in_channels, channels, dlatent_size, eps, fused):
        super().__init__()
        self.conv0_up = _ScaledConv(in_channels, channels, 3, SQRT2, up="fused" if fused else "nearest")
        self.epi1 = _Epilogue(channels, dlatent_size, eps)
        self.conv1 = _ScaledConv(channels, channels, 3, SQRT2)
        self.epi2 = _Epilogue(channels, dlatent_size, eps)

    def _first(self, x):
        return self.conv0_up(x)

    def _second(self, x):
        return self.conv1(x)


class _OfficialMapping(nn.Module):
    """``G_mapping``: pixel norm (gandid's site ``style.0``), then ``dense{i}`` (gain sqrt(2), lrmul
    0.01) each followed by LeakyReLU(0.2)."""

    def __init__(self, z_dim, fmaps, dlatent_size, layers):
        super().__init__()
        self.pixel_norm = PixelNorm(eps=1e-8)
        for i in range(layers):
            setattr(self, f"dense{i}", _ScaledDense(z_dim if i == 0 else fmaps,
                                                    dlatent_size if i == layers - 1 else fmaps, SQRT2, lrmul=0.01))
        self.act = nn.LeakyReLU(0.2)
        self.layers = layers

    def forward(self, z):
        x = self.pixel_norm(z)
        for i in range(self.layers):
            x = self.act(getattr(self, f"dense{i}")(x))
        return x


class _OfficialSynthesis(nn.Module):
    def __init__(self, channels, dlatent_size, eps):
        super().__init__()
        blocks = {}
        for i, c in enumerate(channels):
            r = 4 * 2 ** i
            blocks[f"{r}x{r}"] = (_InputBlock(c, dlatent_size, eps) if i == 0 else
                                  _UpBlock(channels[i - 1], c, dlatent_size, eps, fused=r >= G_ALL_FUSED_FROM))
        self.blocks = nn.ModuleDict(blocks)
        self.torgb = _ScaledConv(channels[-1], 3, 1, gain=1.0)
