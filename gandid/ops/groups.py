"""Row groups of ``beta_src`` for the kernels: each lender row followed by the rows that borrow its β.

Computed on the host once per ``beta_src`` tensor (and per in-place change of it) and kept on its
device, so a loop that reuses one ``beta_src`` (the DID arms) pays no host-device copy per call.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

from .validate import check_beta_src_values

_CACHE_SIZE = 32
# id(beta_src) -> (beta_src, its version, groups). Holding the tensor keeps its id from being reused.
_cache: OrderedDict[int, tuple[torch.Tensor, int, tuple[torch.Tensor, torch.Tensor] | None]] = OrderedDict()


def row_groups(beta_src: torch.Tensor | None, borrow: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(offsets (G + 1,), rows (N,))`` int64 on beta_src's device, lender first in each group, or
    None when every row is its own group (no beta_src, nothing borrowed, or ``borrow`` False).
    Checks beta_src (row range, no chains) whether or not it is used."""
    if beta_src is None:
        return None
    if beta_src.is_inference():  # made under torch.inference_mode: no version counter to trust
        check_beta_src_values(beta_src)
        return _compute(beta_src) if borrow else None
    key = id(beta_src)
    hit = _cache.get(key)
    if hit is not None and hit[0] is beta_src and hit[1] == beta_src._version:
        _cache.move_to_end(key)
        groups = hit[2]
    else:
        check_beta_src_values(beta_src)
        groups = _compute(beta_src)
        _cache[key] = (beta_src, beta_src._version, groups)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return groups if borrow else None


def _compute(beta_src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    src = beta_src.detach().to("cpu", torch.int64)
    rows = torch.arange(len(src))
    lends = src == rows
    if bool(lends.all()):
        return None
    # Sorting by 2 * lender + (is a borrower) puts each lender before its borrowers, groups in
    # lender order, borrowers in row order (stable sort).
    order = torch.sort(2 * src + (~lends).long(), stable=True).indices
    sizes = torch.bincount(src, minlength=len(src))[lends]
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(sizes, 0)])
    return offsets.to(beta_src.device), order.to(beta_src.device)
