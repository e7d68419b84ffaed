"""The fused op ``instance_norm``: per-(row, channel) statistics over the feature map and
``(x - mean) / std``, with own, borrowed (``stats_src``) or given (``stats_in``) statistics.

What :class:`gandid.model.InstanceNorm` (StyleGAN's AdaIN, pix2pix's instance norms) computes. The
reference below is the executable specification and the fallback; the extension's kernels
(csrc/cpu/instnorm_cpu.cpp, csrc/cuda/instnorm_kernels.cuh) compute the statistics in one pass with
float64 sums around a shift and normalise in the same task, while the plane is still in cache.
Backend choice as for :func:`gandid.ops.intervene_pixelnorm` (``GANDID_OP_BACKEND``, ``backend=``).
Inputs that need gradients (x or stats_in with ``requires_grad`` under grad mode) run the reference,
which autograd differentiates.
"""
from __future__ import annotations

import torch

from . import build
from .backends import choose_backend

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
BACKENDS = ("reference", "ext")


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def instance_norm_reference(x, eps=1e-5, stats_in=None, stats_src=None, normalize=True):
    """See :func:`instance_norm`. Plain PyTorch, float32 accumulation for half inputs."""
    acc = _acc(x.dtype)
    xa = x.to(acc)
    var, mean = torch.var_mean(xa, dim=(2, 3), correction=0)
    stats = torch.stack([mean, torch.sqrt(var + eps)], 1)  # (N, 2, C): each row's own statistics
    if not normalize:
        return None, stats
    if stats_in is not None:
        d = stats_in.to(acc)
    elif stats_src is not None:
        d = stats[stats_src]
    else:
        d = stats
    y = ((xa - d[:, 0, :, None, None]) / d[:, 1, :, None, None]).to(x.dtype)
    return y, stats


def _channels_last(x: torch.Tensor) -> bool:
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _check(x, eps, stats_in, stats_src, out):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"instance_norm: x must be a tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"instance_norm: x must be (N, C, H, W), got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"instance_norm: x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"instance_norm: eps must be a positive number, got {eps!r}")
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()  # strided views are copied once; the kernels read dense NCHW or NHWC
    n, c = x.shape[:2]
    if stats_in is not None:
        if not isinstance(stats_in, torch.Tensor) or tuple(stats_in.shape) != (n, 2, c):
            got = tuple(stats_in.shape) if isinstance(stats_in, torch.Tensor) else type(stats_in).__name__
            raise ValueError(f"instance_norm: stats_in must be (N, 2, C) = {(n, 2, c)} for x of shape "
                             f"{tuple(x.shape)}, got {got}")
        if stats_in.device != x.device:
            raise ValueError(f"instance_norm: stats_in is on {stats_in.device} but x is on {x.device}")
        if not stats_in.is_floating_point():
            raise TypeError(f"instance_norm: stats_in must be floating point, got {stats_in.dtype}")
    if stats_src is not None:
        if not isinstance(stats_src, torch.Tensor) or tuple(stats_src.shape) != (n,):
            raise ValueError(f"instance_norm: stats_src must have shape ({n},)")
        if stats_src.device != x.device:
            raise ValueError(f"instance_norm: stats_src is on {stats_src.device} but x is on {x.device}")
        if stats_src.is_floating_point() or stats_src.dtype == torch.bool:
            raise TypeError(f"instance_norm: stats_src must be an integer tensor of row indices, got {stats_src.dtype}")
        stats_src = stats_src.to(torch.int64).contiguous()
        if n:
            bad = ((stats_src < 0) | (stats_src >= n)).nonzero()
            if len(bad):
                i = int(bad[0])
                raise ValueError(f"instance_norm: stats_src[{i}] = {int(stats_src[i])} is not a row in [0, {n})")
            chained = (stats_src[stats_src] != stats_src).nonzero()
            if len(chained):
                i = int(chained[0])
                j = int(stats_src[i])
                raise ValueError(f"instance_norm: stats_src chains are refused: row {i} borrows from row {j}, "
                                 f"which itself borrows from row {int(stats_src[j])}")
    if out is not None:
        fmt = torch.channels_last if _channels_last(x) else torch.contiguous_format
        if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device or not out.is_contiguous(
                memory_format=fmt):
            raise ValueError(f"instance_norm: out must be {tuple(x.shape)} {x.dtype} on {x.device} in x's memory "
                             f"format, got {tuple(out.shape)} {out.dtype} on {out.device}")
    return x, stats_src


def instance_norm(x, eps=1e-5, *, stats_in=None, stats_src=None, normalize=True, return_stats=True, out=None,
                  backend=None):
    """Instance normalisation with own, borrowed or given statistics. Returns ``(y, stats)``.

    x (N, C, H, W) float32/float64/float16/bfloat16, NCHW or channels_last (other strides are
    copied); statistics are (N, 2, C) in the accumulation dtype (float64 for float64 x, else float32)::

        stats[n, 0, c] = mean_p x[n, c, p]
        stats[n, 1, c] = sqrt(mean_p (x[n, c, p] - stats[n, 0, c])^2 + eps)    (biased variance)
        y[n, c, p]     = (x[n, c, p] - s[n, 0, c]) / s[n, 1, c]

    where s is ``stats_in`` if given (e.g. a recording, or what an override returned), else
    ``stats[stats_src]`` (row n normalises with row ``stats_src[n]``'s own statistics; a lender
    must not itself borrow), else the row's own. ``stats`` returned are always each row's *own*
    statistics (None with ``return_stats=False``, which lets the kernels skip computing them when
    stats_in is given); y is None with ``normalize=False`` (statistics only). y keeps x's memory
    format and dtype; ``out`` is an optional preallocated y (no autograd).
    """
    x, stats_src = _check(x, eps, stats_in, stats_src, out)
    if not normalize and not return_stats:
        raise ValueError("instance_norm: normalize=False and return_stats=False ask for nothing")
    backend = backend or choose_backend(x.device)
    if backend not in BACKENDS:
        raise ValueError(f"instance_norm: unknown backend {backend!r} (use one of {BACKENDS})")
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or (stats_in is not None and stats_in.requires_grad))
    if needs_grad and out is not None:
        raise RuntimeError("instance_norm: out= does not support autograd; call without it (or under torch.no_grad())")
    if backend == "reference" or needs_grad or torch.compiler.is_compiling():
        y, stats = instance_norm_reference(x, eps, stats_in, stats_src, normalize)
        if y is not None and _channels_last(x):
            y = y.contiguous(memory_format=torch.channels_last)
        if out is not None and y is not None:
            y = out.copy_(y)
        return y, (stats if return_stats else None)
    ext = build.load()
    acc = _acc(x.dtype)
    n, c = x.shape[:2]
    if stats_in is not None:
        stats_in = stats_in.detach().to(acc).contiguous()
    groups = None
    if normalize and stats_in is None and stats_src is not None:
        from .groups import row_groups

        groups = row_groups(stats_src, borrow=True)
    offsets, grouped = groups if groups is not None else (None, None)
    y = None
    if normalize:
        # torch's allocator, not ext.empty_like's huge pages: inside a generator pass (memory fragmented,
        # THP defrag "madvise") the huge-page faults stalled in compaction, 4x the op's own time here.
        y = out if out is not None else torch.empty_like(x, memory_format=torch.preserve_format)
    stats = torch.empty((n, 2, c), dtype=acc, device=x.device) if return_stats else None
    ext.instance_norm_forward_out(x, stats_in, offsets, grouped, bool(normalize), float(eps), y, stats)
    return y, stats
