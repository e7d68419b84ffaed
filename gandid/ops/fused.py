"""The extension-backed op, registered with torch.library (fake impl for torch.compile, autograd)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import build
from .groups import row_groups
from .reference import intervene


def _ext():
    return build.load()


def _beta_shape(x: Tensor):
    return (x.shape[0], 1, x.shape[2], x.shape[3])


def run_direct(x, alpha, region, value, rows, beta_src, beta_in, normalize, eps, out=None, beta_out=None):
    """The extension without the dispatcher, for eager calls that need no autograd."""
    groups = row_groups(beta_src, borrow=normalize and beta_in is None)
    offsets, grouped = groups if groups is not None else (None, None)
    out = _ext().empty_like(x) if out is None else out
    beta_out = x.new_empty(_beta_shape(x)) if beta_out is None else beta_out
    _ext().forward_out(x, alpha, region, value, rows, offsets, grouped, beta_in, normalize, eps, out, beta_out)
    return out, beta_out


@torch.library.custom_op("gandid::intervene_pixelnorm", mutates_args=())
def fused(x: Tensor, alpha: Optional[Tensor], region: Optional[Tensor], value: Optional[Tensor],
          rows: Optional[Tensor], beta_src: Optional[Tensor], beta_in: Optional[Tensor], normalize: bool,
          eps: float) -> tuple[Tensor, Tensor]:
    return run_direct(x, alpha, region, value, rows, beta_src, beta_in, normalize, eps)


@fused.register_fake
def _fused_fake(x, alpha, region, value, rows, beta_src, beta_in, normalize, eps):
    return torch.empty_like(x), x.new_empty(_beta_shape(x))


@torch.library.custom_op("gandid::intervene_pixelnorm_out", mutates_args=("out", "beta_out"))
def fused_out(x: Tensor, alpha: Optional[Tensor], region: Optional[Tensor], value: Optional[Tensor],
              rows: Optional[Tensor], beta_src: Optional[Tensor], beta_in: Optional[Tensor], normalize: bool,
              eps: float, out: Tensor, beta_out: Tensor) -> None:
    run_direct(x, alpha, region, value, rows, beta_src, beta_in, normalize, eps, out, beta_out)


@fused_out.register_fake
def _fused_out_fake(x, alpha, region, value, rows, beta_src, beta_in, normalize, eps, out, beta_out):
    return None


def backward_formula(x, alpha, region, value, rows, beta_src, beta_in, normalize, eps, grad_y, grad_beta):
    """Gradients of (y, beta) w.r.t. (x, alpha, region, value, beta_in), by hand.

    With x' = x - s (x - k), s = α_c m_np, β_n = sqrt(mean_c x'^2 + eps) and y = x' / d, where d is the
    row's own β, its lender's β (beta_src) or beta_in:
      dL/dx'  = g_y / d  +  (dL/dβ) x' / (C β),   dL/dd = -Σ_c g_y x' / d²,
      dL/dβ_j = g_β_j + Σ_{n borrows from j} dL/dd_n   (no term through d when beta_in is given).
    Computed in float32 (float64 for float64 x), returned in each input's dtype.
    """
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xa = x.to(acc)
    strength = None
    if alpha is not None:
        mask = torch.ones(1, 1, 1, 1, dtype=acc, device=x.device) if region is None else region.to(acc).unsqueeze(1)
        if rows is not None:
            mask = mask * rows.view(-1, 1, 1, 1).to(acc)
        strength = alpha.to(acc).view(1, -1, 1, 1) * mask
    xi = intervene(xa, None if alpha is None else alpha.to(acc), None if region is None else region.to(acc),
                   None if value is None else value.to(acc), rows)
    channels = x.shape[1]
    beta = (xi.pow(2).mean(dim=1, keepdim=True) + eps).sqrt()
    g_beta = torch.zeros_like(beta) if grad_beta is None else grad_beta.to(acc)
    g_beta_in = None
    if grad_y is None:
        grad_y = torch.zeros_like(xi)
    gy = grad_y.to(acc)
    if normalize:
        if beta_in is not None:
            d = beta_in.to(acc)
        elif beta_src is not None:
            d = beta[beta_src]
        else:
            d = beta
        g_xi = gy / d
        g_d = -(gy * xi).sum(dim=1, keepdim=True) / (d * d)
        if beta_in is not None:
            g_beta_in = g_d
        elif beta_src is not None:
            g_beta = g_beta.index_add(0, beta_src, g_d)
        else:
            g_beta = g_beta + g_d
    else:
        g_xi = gy
    g_xi = g_xi + g_beta * xi / (channels * beta)

    g_x = g_xi if strength is None else g_xi * (1 - strength)
    g_alpha = g_region = g_value = None
    if strength is not None:
        target = 0 if value is None else value.to(acc).view(1, -1, 1, 1)
        g_s = -g_xi * (xa - target)  # dL/ds, (N, C, H, W)
        m = mask.expand(x.shape[0], 1, x.shape[2], x.shape[3])
        g_alpha = (g_s * m).sum(dim=(0, 2, 3))
        if value is not None:
            g_value = (g_xi * strength).sum(dim=(0, 2, 3))
        if region is not None:
            g_m = (g_s * alpha.to(acc).view(1, -1, 1, 1)).sum(dim=1)  # (N, H, W)
            if rows is not None:
                g_m = g_m * rows.view(-1, 1, 1).to(acc)
            g_region = g_m.sum(dim=0, keepdim=True) if region.shape[0] == 1 else g_m

    def cast(g, like):
        return None if g is None or like is None else g.to(like.dtype)

    return (cast(g_x, x), cast(g_alpha, alpha), cast(g_region, region), cast(g_value, value),
            cast(g_beta_in, beta_in))


def _setup_context(ctx, inputs, output):
    x, alpha, region, value, rows, beta_src, beta_in, normalize, eps = inputs
    ctx.save_for_backward(x, alpha, region, value, rows, beta_src, beta_in)
    ctx.normalize, ctx.eps = normalize, eps


def _backward(ctx, grad_y, grad_beta):
    x, alpha, region, value, rows, beta_src, beta_in = ctx.saved_tensors
    g_x, g_alpha, g_region, g_value, g_beta_in = backward_formula(
        x, alpha, region, value, rows, beta_src, beta_in, ctx.normalize, ctx.eps, grad_y, grad_beta)
    return g_x, g_alpha, g_region, g_value, None, None, g_beta_in, None, None


fused.register_autograd(_backward, setup_context=_setup_context)
