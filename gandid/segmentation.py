"""Measurements on segmentations that several analyses share."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def class_fractions(labels: torch.Tensor, classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, H, W) int labels -> (B, C) fraction of each image's pixels in each class, in ``dtype``."""
    return F.one_hot(labels.reshape(len(labels), -1).long(), classes).to(dtype).mean(1)
