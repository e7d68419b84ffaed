"""``intervene_pixelnorm``: unit ablation/insertion fused with pixel normalisation, one signature over
the reference and the extension."""
from __future__ import annotations

import torch

from .backends import BACKENDS, choose_backend
from .reference import intervene_pixelnorm_reference
from .validate import check_args, check_beta_src_values, check_outputs


def intervene_pixelnorm(x, *, alpha=None, region=None, value=None, rows=None, beta_src=None, beta_in=None,
                        normalize=True, eps=1e-8, out=None, beta_out=None, backend=None):
    """Unit ablation/insertion fused with pixel normalisation. Returns ``(y, beta)``.

    Shapes: x (N, C, H, W) float32/float64/float16/bfloat16 (NCHW or channels_last; float32
    accumulation for half types); alpha (C,) per-unit strength, zero for untouched units; value (C,)
    insertion values k (None: ablation, k = 0); region (N or 1, H, W) mask m in [0, 1] (None:
    everywhere); rows (N,) bool, which rows are intervened (None: all); beta_src (N,) int64;
    beta_in (N, 1, H, W).

    For row n, unit c, pixel p (s = α_c m_np, zero for rows not intervened)::

        x'[n,c,p] = x[n,c,p] - s (x[n,c,p] - k_c)
        β[n,p]    = sqrt(mean_c x'[n,c,p]^2 + eps)        (returned: each row's own β)
        y[n,c,p]  = x'[n,c,p] / d[n,p]                    (y = x' when normalize=False)

    where d is ``beta_in[n,0,p]`` if beta_in is given, else ``β[beta_src[n], p]``: a borrowing row
    divides by its lender's β *after the lender's own intervention*, at the same pixel; else ``β[n,p]``.
    A lender must not itself borrow (``beta_src[beta_src[n]] == beta_src[n]``): chains are refused.

    ``out`` / ``beta_out`` are optional preallocated outputs (x's memory format; contiguous
    (N, 1, H, W)), reused across calls to avoid page faults on fresh allocations; they do not
    support autograd. y keeps x's memory format. Backward gives gradients for x, alpha, value,
    region and beta_in.
    """
    a = check_args(x, alpha, region, value, rows, beta_src, beta_in, normalize, eps)
    check_outputs(a.x, out, beta_out, a.channels_last)
    backend = backend or choose_backend(a.x.device)
    if backend not in BACKENDS:
        raise ValueError(f"intervene_pixelnorm: unknown backend {backend!r} (use one of {BACKENDS})")
    wants_out = out is not None or beta_out is not None
    if wants_out and torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (a.x, a.alpha, a.region, a.value, a.beta_in)):
        raise RuntimeError("intervene_pixelnorm: out=/beta_out= do not support autograd; call without them "
                           "(or under torch.no_grad())")
    args = (a.x, a.alpha, a.region, a.value, a.rows, a.beta_src, a.beta_in, a.normalize, a.eps)
    if backend == "reference":
        check_beta_src_values(a.beta_src)
        y, beta = intervene_pixelnorm_reference(*args)
        if a.channels_last:
            y = y.contiguous(memory_format=torch.channels_last)
        if not wants_out:
            return y, beta
        out = y if out is None else out.copy_(y)
        beta_out = beta if beta_out is None else beta_out.copy_(beta)
        return out, beta_out
    from . import fused  # registers the torch ops on first use

    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (a.x, a.alpha, a.region, a.value, a.beta_in))
    if not torch.compiler.is_compiling() and not needs_grad:
        # Eager and no autograd: skip the dispatcher (tens of microseconds per call).
        return fused.run_direct(*args, out=out, beta_out=beta_out)
    if not wants_out:
        return fused.fused(*args)
    if out is None:
        out = torch.empty_like(a.x)
    if beta_out is None:
        beta_out = a.x.new_empty((a.x.shape[0], 1, a.x.shape[2], a.x.shape[3]))
    fused.fused_out(*args, out, beta_out)
    return out, beta_out
