"""The pools of UPerNet's pyramid pooling: precise RoI pooling (PrRoIPool) over whole-image RoIs in plain
PyTorch, as UPP calls it, and adaptive average pooling, as mit_semseg does.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F


def tent_integrals(size: int, bins: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """(bins, size): entry [k, i] = the integral over bin k = [k*size/bins, (k+1)*size/bins] of pixel
    i's bilinear-interpolation weight ``max(0, 1 - |t - i|)``.

    PrRoIPool (netdissect/upsegmodel/prroi_pool/src/prroi_pooling_gpu_impl.cu) treats the feature map
    as the bilinear interpolation of its pixels placed at integer coordinates, zero outside the map
    (``PrRoIPoolingGetData`` returns 0 for an index outside [0, size)); each output is the exact
    integral of that surface over its bin divided by the bin's area. The interpolation is a sum of
    separable tents, so the 2-D integral is a product of these 1-D ones. With ``T(u)`` the integral of
    the tent up to ``u`` (0 below -1, (u+1)^2/2 up to 0, 1 - (1-u)^2/2 up to 1, then 1), the entry is
    ``T(end - i) - T(start - i)``.
    """
    edges = torch.arange(bins + 1, dtype=torch.float64, device=device) * (size / bins)
    u = edges[:, None] - torch.arange(size, dtype=torch.float64, device=device)[None, :]  # (bins+1, size)
    t = torch.where(u <= -1, torch.zeros_like(u),
                    torch.where(u <= 0, (u + 1) ** 2 / 2, torch.where(u <= 1, 1 - (1 - u) ** 2 / 2, torch.ones_like(u))))
    return (t[1:] - t[:-1]).to(dtype)


def prroi_pool_whole(x: torch.Tensor, bins: int) -> torch.Tensor:
    """``PrRoIPool2D(bins, bins, 1.0)(x, rois)`` with every image's RoI the whole map, as UPP's UPerNet
    calls it (netdissect/upsegmodel/models.py: ``roi = [i, 0, 0, W, H]``, x0, y0, x1, y1 in feature
    pixels, spatial scale 1): (N, C, H, W) -> (N, C, bins, bins).

    Not adaptive average pooling: the RoI's edges are at 0 and W with pixel centres at integers, so
    half of the first row's and column's interpolation tents lies outside it while the last ones lie
    wholly inside; for bins = 1 the result is ``(sum of all pixels - half the first row and column +
    a quarter of the corner) / (H W)``. Differentiable (a linear map), any device and dtype.
    """
    h, w = x.shape[-2:]
    rows = tent_integrals(h, bins, x.dtype, x.device)  # (bins, H)
    cols = tent_integrals(w, bins, x.dtype, x.device)  # (bins, W)
    area = (h / bins) * (w / bins)
    return torch.einsum("ih,nchw,jw->ncij", rows, x, cols) / area


def adaptive_pool(x: torch.Tensor, bins: int) -> torch.Tensor:
    return F.adaptive_avg_pool2d(x, bins)
