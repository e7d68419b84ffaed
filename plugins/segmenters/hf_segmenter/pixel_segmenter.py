"""What the ``transformers`` and ``onnx`` segmenters share: :class:`PixelSegmenter`, a segmenter on a network
that gives per-pixel class logits, and the helpers for its options (sizes, label names, background classes).

Like transformers' ``post_process_semantic_segmentation``, logits are upsampled bilinearly
(``align_corners=False``) to the image size (or the ``resolution`` option) before the argmax.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from gandid.errors import CheckpointError, GandidError, UnknownNameError

# Classes an ablated object uncovers rather than objects of its own: what a scene is made of behind the
# things in it (ADE20K's, Cityscapes', COCO-Stuff's and PASCAL's names for them). Matched against a label's
# first name, lower case: ADE20K's full names read "floor, flooring", "earth, ground".
SCENE_BACKGROUND = (
    "background", "wall", "floor", "flooring", "ceiling", "sky", "ground", "earth", "road", "sidewalk",
    "pavement", "path", "grass", "field", "land", "terrain", "sand", "snow", "dirt", "dirt track", "gravel",
    "water", "sea", "river", "lake", "mountain", "hill", "rock", "stone", "floor-other", "wall-other",
    "ceiling-other", "sky-other", "ground-other",
)

# Class-score elements upsampled at once (128 MiB in float32): see PixelSegmenter._per_group
PIXEL_BUDGET = 2**25


class NotDifferentiableError(GandidError, NotImplementedError):
    """A segmenter whose backend gives no gradients was asked for differentiable class scores."""


def parse_size(value, what: str) -> tuple[int, int] | None:
    """An option giving a size: None, an int (square) or "HxW" -> (H, W); ValueError naming ``what``."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{what} must be an int or 'HxW', got {value!r}")
    if isinstance(value, int):
        size = (value, value)
    elif isinstance(value, str) and value.lower().count("x") == 1:
        try:
            size = tuple(int(part) for part in value.lower().split("x"))
        except ValueError:
            raise ValueError(f"{what} must be an int or 'HxW' such as '256x384', got {value!r}") from None
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        size = tuple(value)
    else:
        raise ValueError(f"{what} must be an int or 'HxW' such as '256x384', got {value!r}")
    if min(size) < 1:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return size


def unique_labels(names: list[str], source: str) -> list[str]:
    """Label names as gandid shows and looks them up: stripped of surrounding spaces (ADE20K's "bed "),
    made unique by appending the class index to repeats (a name must find one class)."""
    out, seen = [], set()
    for i, name in enumerate(names):
        name = str(name).strip()
        if not name:
            raise CheckpointError(f"{source}: class {i} has an empty name; name every class")
        if name in seen:
            name = f"{name} ({i})"
        seen.add(name)
        out.append(name)
    return out


def scene_background(labels: list[str], chosen: list[str] | None = None) -> tuple[str, ...]:
    """The labels that are scene background (:data:`SCENE_BACKGROUND`), or the ``chosen`` ones, which must
    all be labels of the model."""
    if chosen is not None:
        for name in chosen:
            if name not in labels:
                raise UnknownNameError("background class", name, labels)
        return tuple(chosen)
    return tuple(name for name in labels if name.lower().replace(";", ",").split(",")[0].strip() in SCENE_BACKGROUND)


class PixelSegmenter:
    """A segmenter on a network that maps a batch of images to per-pixel class logits (N, K, h, w).

    Subclasses set ``labels`` and implement :meth:`logits`; this class upsamples the logits bilinearly to
    the output size (the image's, or ``resolution``), splits batches into ``batch_size`` chunks, and gives
    ``segment`` (argmax, (N, H, W) int64) and ``class_scores`` (mean softmax probability of class c, (N,)).
    Inputs and outputs stay on the caller's device; the network runs on ``self.device``."""

    differentiable = True
    device = torch.device("cpu")

    def __init__(self, labels: list[str], resolution, batch_size: int, background: list[str] | None,
                 categories: dict[str, str] | None = None):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.labels = list(labels)
        self.resolution = parse_size(resolution, "resolution")
        self.batch_size = batch_size
        self.background = scene_background(self.labels, background)
        # gandid's categories group dissection counts (object, part, material): these models name objects
        # and stuff in one flat list, so every label is an object unless the model's files say otherwise
        for name in categories or {}:
            if name not in self.labels:
                raise UnknownNameError("label in categories", name, self.labels)
        self.categories = {name: str((categories or {}).get(name, "object")) for name in self.labels}

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Images (n, 3, H, W) in [-1, 1] on ``self.device`` -> class logits (n, K, h, w) at the network's
        own output size."""
        raise NotImplementedError

    def output_size(self, images: torch.Tensor) -> tuple[int, int]:
        return self.resolution or tuple(images.shape[-2:])

    def _check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a (N, 3, H, W) tensor in [-1, 1], got {shape}")

    def _chunks(self, images: torch.Tensor):
        for lo in range(0, len(images), self.batch_size):
            yield images[lo:lo + self.batch_size].to(self.device, torch.float32)

    def _checked_logits(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.logits(images)
        if logits.shape[1] != len(self.labels):
            raise CheckpointError(f"the model gave {logits.shape[1]} class scores per pixel but has "
                                  f"{len(self.labels)} labels")
        return logits.float()

    @staticmethod
    def _upsample(logits: torch.Tensor, size: tuple[int, int], channels_last: bool = False) -> torch.Tensor:
        if tuple(logits.shape[-2:]) == tuple(size):
            return logits
        if channels_last:
            # for the argmax, which reads each pixel's class scores: contiguous in this layout, upsampling and
            # argmax of NCHW logits (150 classes, 64 -> 256 px) ran 2.2x faster on a 2-core CPU (SegFormer's
            # logits already come in it); softmax is faster in the default layout
            logits = logits.contiguous(memory_format=torch.channels_last)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def _per_group(self, logits: torch.Tensor, size: tuple[int, int], fn) -> torch.Tensor:
        """``fn(upsampled logits of a few images)`` over groups of images, concatenated.

        Upsampled logits are the largest tensors here (150 ADE20K classes at 256 x 256 are 39 MB per
        image): groups keep them within :data:`PIXEL_BUDGET` elements, and under autograd each group is
        checkpointed, so the backward pass keeps only the network's own logits and recomputes the rest."""
        per = max(1, PIXEL_BUDGET // (logits.shape[1] * size[0] * size[1]))
        grad = torch.is_grad_enabled() and logits.requires_grad
        outs = [checkpoint(fn, logits[lo:lo + per], use_reentrant=False) if grad else fn(logits[lo:lo + per])
                for lo in range(0, len(logits), per)]
        return torch.cat(outs)

    def upsampled_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(n, K, H', W') logits at the output size, as transformers' post-processing upsamples them."""
        return self._upsample(self._checked_logits(images), self.output_size(images))

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [-1, 1] -> labels (N, H, W) int64 (or (N, *resolution))."""
        self._check_images(images)
        size = self.output_size(images)
        with torch.no_grad():
            out = [self._per_group(self._checked_logits(chunk), size, lambda l: self._upsample(l, size, True).argmax(1))
                   for chunk in self._chunks(images)]
        return torch.cat(out).to(images.device)

    def class_scores(self, images: torch.Tensor, c: int) -> torch.Tensor:
        """Differentiable (N,) mean softmax probability of class ``c`` over the output pixels."""
        self._check_images(images)
        if isinstance(c, bool) or not 0 <= int(c) < len(self.labels):
            raise ValueError(f"class index {c!r} out of range: this segmenter has {len(self.labels)} labels")
        size, c = self.output_size(images), int(c)

        def score(logits):
            return self._upsample(logits, size).softmax(1)[:, c].flatten(1).mean(1)

        out = [self._per_group(self._checked_logits(chunk), size, score) for chunk in self._chunks(images)]
        return torch.cat(out).to(images.device)
