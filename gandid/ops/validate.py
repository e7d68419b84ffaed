"""Argument checks of intervene_pixelnorm, shared by every backend. Errors name the argument."""
from __future__ import annotations

from dataclasses import dataclass

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@dataclass
class Args:
    """Checked arguments: x contiguous (NCHW or channels_last); aux tensors contiguous on x's device,
    in the accumulation dtype (float64 for float64 x, else float32); rows bool; beta_src int64."""

    x: torch.Tensor
    alpha: torch.Tensor | None
    region: torch.Tensor | None
    value: torch.Tensor | None
    rows: torch.Tensor | None
    beta_src: torch.Tensor | None
    beta_in: torch.Tensor | None
    normalize: bool
    eps: float

    @property
    def channels_last(self) -> bool:
        return not self.x.is_contiguous() and self.x.is_contiguous(memory_format=torch.channels_last)


def _shape(t):
    return tuple(t.shape)


def _aux(name, t, shapes, x, dtype, allow_bool=False):
    if t is None:
        return None
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"intervene_pixelnorm: {name} must be a tensor or None, got {type(t).__name__}")
    if _shape(t) not in shapes:
        want = " or ".join(str(s) for s in dict.fromkeys(shapes))
        raise ValueError(f"intervene_pixelnorm: {name} must have shape {want} for x of shape {_shape(x)}, "
                         f"got {_shape(t)}")
    if t.device != x.device:
        raise ValueError(f"intervene_pixelnorm: {name} is on {t.device} but x is on {x.device}")
    if not (t.is_floating_point() or (allow_bool and t.dtype == torch.bool)):
        raise TypeError(f"intervene_pixelnorm: {name} must be a floating-point tensor, got {t.dtype}")
    return t.to(dtype).contiguous()


def check_args(x, alpha=None, region=None, value=None, rows=None, beta_src=None, beta_in=None, normalize=True,
               eps=1e-8) -> Args:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"intervene_pixelnorm: x must be a tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"intervene_pixelnorm: x must be (N, C, H, W), got shape {_shape(x)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"intervene_pixelnorm: x must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        x = x.contiguous()  # strided views are copied once; the kernels read dense NCHW or NHWC
    n, c, h, w = x.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    alpha = _aux("alpha", alpha, [(c,)], x, acc)
    value = _aux("value", value, [(c,)], x, acc)
    region = _aux("region", region, [(n, h, w), (1, h, w)], x, acc, allow_bool=True)
    beta_in = _aux("beta_in", beta_in, [(n, 1, h, w)], x, acc)
    if alpha is None and (value is not None or region is not None or rows is not None):
        given = [k for k, v in (("value", value), ("region", region), ("rows", rows)) if v is not None]
        raise ValueError(f"intervene_pixelnorm: {', '.join(given)} given without alpha: nothing would be intervened "
                         "(alpha is the per-unit strength, zero for untouched units)")
    if rows is not None:
        if _shape(rows) != (n,):
            raise ValueError(f"intervene_pixelnorm: rows must have shape ({n},), got {_shape(rows)}")
        if rows.device != x.device:
            raise ValueError(f"intervene_pixelnorm: rows is on {rows.device} but x is on {x.device}")
        if rows.is_floating_point():
            raise TypeError(f"intervene_pixelnorm: rows must be bool (which rows are intervened), got {rows.dtype}")
        rows = rows.to(torch.bool).contiguous()
    if beta_src is not None:
        if _shape(beta_src) != (n,):
            raise ValueError(f"intervene_pixelnorm: beta_src must have shape ({n},), got {_shape(beta_src)}")
        if beta_src.device != x.device:
            raise ValueError(f"intervene_pixelnorm: beta_src is on {beta_src.device} but x is on {x.device}")
        if beta_src.is_floating_point() or beta_src.dtype == torch.bool:
            raise TypeError(f"intervene_pixelnorm: beta_src must be an integer tensor of row indices, "
                            f"got {beta_src.dtype}")
        beta_src = beta_src.to(torch.int64).contiguous()
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"intervene_pixelnorm: eps must be a positive number, got {eps!r}")
    return Args(x, alpha, region, value, rows, beta_src, beta_in, bool(normalize), float(eps))


def check_beta_src_values(beta_src: torch.Tensor | None) -> None:
    """Every entry is a row index, and a row that lends its β does not itself borrow (no chains)."""
    if beta_src is None or beta_src.numel() == 0:
        return
    n = beta_src.numel()
    bad = ((beta_src < 0) | (beta_src >= n)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise ValueError(f"intervene_pixelnorm: beta_src[{i}] = {int(beta_src[i])} is not a row in [0, {n})")
    chained = (beta_src[beta_src] != beta_src).nonzero()
    if len(chained):
        i = int(chained[0])
        j = int(beta_src[i])
        raise ValueError(f"intervene_pixelnorm: beta_src chains are refused: row {i} borrows from row {j}, which "
                         f"itself borrows from row {int(beta_src[j])}")


def check_outputs(x: torch.Tensor, out, beta_out, channels_last: bool):
    n, _, h, w = x.shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    if out is not None:
        if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
            raise ValueError(f"intervene_pixelnorm: out must be {tuple(x.shape)} {x.dtype} on {x.device}, got "
                             f"{tuple(out.shape)} {out.dtype} on {out.device}")
        if not out.is_contiguous(memory_format=fmt):
            raise ValueError("intervene_pixelnorm: out must have x's memory format "
                             f"({'channels_last' if channels_last else 'contiguous NCHW'})")
    if beta_out is not None:
        if tuple(beta_out.shape) != (n, 1, h, w) or beta_out.dtype != x.dtype or beta_out.device != x.device:
            raise ValueError(f"intervene_pixelnorm: beta_out must be {(n, 1, h, w)} {x.dtype} on {x.device}, got "
                             f"{tuple(beta_out.shape)} {beta_out.dtype} on {beta_out.device}")
        if not beta_out.is_contiguous():
            raise ValueError("intervene_pixelnorm: beta_out must be contiguous")
