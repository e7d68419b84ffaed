"""Measurements on segmentations that several analyses share.

A segmentation is (B, H, W) integer labels, or (B, K, H, W) for a multi-label segmenter (e.g. object,
part and material planes, as GAN Dissection's unified parsing model gives them): a pixel shows label c
when any plane holds c there; a negative value means "no label in this plane".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def label_planes(labels: torch.Tensor) -> torch.Tensor:
    """(B, H, W) or (B, K, H, W) labels -> (B, K, H, W) long, K = 1 for a single-label segmentation."""
    if labels.dim() not in (3, 4):
        raise ValueError(f"a segmentation is (B, H, W) or (B, K, H, W) labels, got shape {tuple(labels.shape)}")
    return (labels.unsqueeze(1) if labels.dim() == 3 else labels).long()


def presence(labels: torch.Tensor, classes: int, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """(B, [K,] H, W) labels -> (B, C, H, W): 1 where the pixel shows class c (in any plane)."""
    planes = label_planes(labels)
    if planes.shape[1] == 1 and bool((planes >= 0).all()):
        return F.one_hot(planes[:, 0], classes).permute(0, 3, 1, 2).to(dtype)
    out = torch.zeros(planes.shape[0], classes, *planes.shape[2:], dtype=torch.bool, device=planes.device)
    for k in range(planes.shape[1]):
        plane = planes[:, k]
        out |= F.one_hot(plane.clamp_min(0), classes).permute(0, 3, 1, 2).bool() & (plane >= 0).unsqueeze(1)
    return out.to(dtype)


def distinct_planes(labels: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) labels with a label repeated at a pixel in a later plane set to -1, so that counting
    every plane's (pixel, label) pairs counts each label shown at a pixel once."""
    planes = label_planes(labels).clone()
    for k in range(1, planes.shape[1]):
        repeated = (planes[:, k:k + 1] == planes[:, :k]).any(1)
        planes[:, k][repeated] = -1
    return planes


def class_fractions(labels: torch.Tensor, classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, [K,] H, W) int labels -> (B, C) fraction of each image's pixels that show each class, in ``dtype``
    (for a single-label segmentation the fractions of an image sum to 1)."""
    return presence(labels, classes, dtype).flatten(2).mean(2)
