"""Plain-PyTorch ``intervene_pixelnorm``: the executable specification, and the fallback.

Written for clarity, not speed; autograd differentiates it. Arguments are assumed checked
(see :func:`gandid.ops.validate.check_args`).
"""
from __future__ import annotations

import torch


def intervene(x, alpha=None, region=None, value=None, rows=None):
    """``x'[n,c,p] = x[n,c,p] - α_c m_np (x[n,c,p] - k_c)`` with ``k = 0`` (ablation) unless ``value``.

    ``m_np = region[n or 0, p]`` (1 if no region) for intervened rows, 0 for the others.
    """
    if alpha is None:
        return x
    n, c = x.shape[:2]
    strength = alpha.view(1, c, 1, 1).to(x.dtype)
    if region is not None:
        strength = strength * region.unsqueeze(1).to(x.dtype)  # (N or 1, C, H, W)
    if rows is not None:
        strength = strength * rows.view(n, 1, 1, 1).to(x.dtype)
    target = 0 if value is None else value.view(1, c, 1, 1).to(x.dtype)
    return x - strength * (x - target)


def intervene_pixelnorm_reference(x, alpha=None, region=None, value=None, rows=None, beta_src=None, beta_in=None,
                                  normalize=True, eps=1e-8):
    """See :func:`gandid.ops.intervene_pixelnorm`. Accumulates in float32 for half inputs."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xi = intervene(x.to(acc), None if alpha is None else alpha.to(acc), None if region is None else region.to(acc),
                   None if value is None else value.to(acc), rows)
    beta = (xi.pow(2).mean(dim=1, keepdim=True) + eps).sqrt()  # (N, 1, H, W): each row's own β
    if not normalize:
        return xi.to(x.dtype), beta.to(x.dtype)
    if beta_in is not None:
        divisor = beta_in.to(acc)
    elif beta_src is not None:
        divisor = beta[beta_src]  # the lender's β after the lender's own intervention
    else:
        divisor = beta
    return (xi / divisor).to(x.dtype), beta.to(x.dtype)
