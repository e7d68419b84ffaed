"""The resampling and activation ops of NVlabs/stylegan2-ada-pytorch's ``torch_utils/ops`` that the generator
uses (``bias_act.py``, ``upfirdn2d.py``, ``conv2d_resample.py``), with their reference semantics in plain
PyTorch (no custom kernels).
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

SQRT2 = math.sqrt(2)

# bias_act.py's activation_funcs: (function, def_gain); the ones NVlabs's generator configs use.
ACTIVATIONS = {
    "linear": (lambda x: x, 1.0),
    "relu": (F.relu, SQRT2),
    "lrelu": (lambda x: F.leaky_relu(x, 0.2), SQRT2),
}


def bias_act(x, b=None, act="linear", gain=None, clamp=None):
    """bias_act.py's reference semantics: add bias along dim 1, activation, times gain, clamp to ±clamp."""
    fn, def_gain = ACTIVATIONS[act]
    if b is not None:
        x = x + b.reshape([-1 if i == 1 else 1 for i in range(x.ndim)])
    x = fn(x)
    gain = def_gain if gain is None else gain
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


def setup_filter(taps):
    """upfirdn2d.setup_filter: a 1-D tap list becomes its normalised outer product (separable 1-D from 8 taps)."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    if f.ndim == 0:
        f = f[None]
    if f.ndim == 1 and f.numel() < 8:
        f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d(x, f, up=1, pad=(0, 0), gain=1.0):
    """Zero-insertion upsampling, padding (negative crops), FIR filtering with ``f`` (2-D, or 1-D
    separable) scaled by ``gain`` over both axes; upfirdn2d.py's semantics (convolution, not correlation)."""
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    p0, p1 = pad
    x = F.pad(x, [max(p0, 0), max(p1, 0), max(p0, 0), max(p1, 0)])
    x = x[:, :, max(-p0, 0):x.shape[2] - max(-p1, 0), max(-p0, 0):x.shape[3] - max(-p1, 0)]
    f = (f * gain ** (f.ndim / 2)).to(x.dtype).flip(list(range(f.ndim)))
    if f.ndim == 2:
        return F.conv2d(x, f[None, None].repeat(c, 1, 1, 1), groups=c)
    x = F.conv2d(x, f[None, None, None, :].repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, f[None, None, :, None].repeat(c, 1, 1, 1), groups=c)


def upsample2d(x, f, up=2):
    """upfirdn2d.upsample2d: output ``up`` times the input's size, DC gain kept (filter gain up^2)."""
    fw = f.shape[-1]
    return upfirdn2d(x, f, up=up, pad=((fw + up - 1) // 2, (fw - up) // 2), gain=up * up)


def conv2d_resample(x, w, f=None, up=1, padding=0):
    """conv2d_resample.py for what the generator uses: a plain convolution (up=1, correlation as
    F.conv2d), a 1x1 convolution then upsampling, or a transposed strided convolution then the
    low-pass filter (k x k, up=2); padding is "with respect to the upsampled image", as there."""
    if up == 1:
        return F.conv2d(x, w, padding=padding)
    k, fw = w.shape[-1], f.shape[-1]
    if k == 1 and padding == 0:  # the resnet shortcut: a 1x1 convolution commutes with upsampling
        return upsample2d(F.conv2d(x, w), f, up)
    p0 = padding + (fw + up - 1) // 2 - (k - 1)
    p1 = padding + (fw - up) // 2 - (k - up)
    pt = max(min(-p0, -p1), 0)
    x = F.conv_transpose2d(x, w.transpose(0, 1), stride=up, padding=pt)
    return upfirdn2d(x, f, pad=(p0 + pt, p1 + pt), gain=up * up)


def normalize_2nd_moment(x, eps=1e-8):
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()
