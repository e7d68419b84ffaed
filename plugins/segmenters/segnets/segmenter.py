"""What the ``upp`` and ``semseg`` segmenters share around the networks: netdissect's input resize, option
checks, background classes, and moving (and casting) the network.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F


def netdissect_resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize as netdissect's segmenters do before the network (segmenter.py ``raw_seg_prediction``):
    ``AdaptiveAvgPool2d((size, size))``, skipped when the image already has that size (also for
    upsizing, where adaptive pooling repeats pixels)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.adaptive_avg_pool2d(x, (size, size))


def check_sizes(sizes, what: str) -> list[int]:
    sizes = [256] if sizes is None else list(sizes)
    if not sizes or any(not isinstance(s, int) or s < 32 for s in sizes):
        raise ValueError(f"{what}: sizes must be a non-empty list of whole numbers >= 32 (the network's input "
                         f"sizes, e.g. [256]), got {sizes!r}")
    return sizes


DTYPES = {"float32": torch.float32, "float64": torch.float64}


def check_dtype(dtype: str, what: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"{what}: dtype must be one of {sorted(DTYPES)} (float64 is for checking), got {dtype!r}")
    return DTYPES[dtype]


def scene_background(default: tuple, labels: list[str], chosen: list[str] | None, what: str) -> tuple[str, ...]:
    """The segmenter's background classes (what an ablated object uncovers): those of ``default`` that
    are labels, or the ``chosen`` ones (the ``background`` option), each of which must be a label."""
    if chosen is None:
        return tuple(b for b in default if b in labels)
    from gandid.errors import UnknownNameError

    for name in chosen:
        if name not in labels:
            raise UnknownNameError(f"{what} background class", name, labels)
    return tuple(chosen)


def check_positive(value, name: str, what: str) -> int:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{what}: {name} must be a whole number >= 1, got {value!r}")
    return value


class NetSegmenter:
    """What the segmenters built on these networks share: ``self.net`` on ``self.device`` in ``self.dtype``."""

    def to(self, device=None, dtype=None):
        """Move (and cast) the network. A float64 run that must match float64 arithmetic throughout is
        built with the option ``dtype="float64"``: casting a float32 segmenter keeps its rounded weights."""
        if device is not None:
            self.device = torch.device(device)
        if dtype is not None:
            self.dtype = dtype
        self.net.to(device=self.device, dtype=self.dtype)
        return self
