"""Which backend runs the fused ops on a device: the JIT-built extension when it loads, else the
PyTorch reference; ``GANDID_OP_BACKEND=reference|ext|auto`` overrides."""
from __future__ import annotations

import os

import torch

from . import build

BACKENDS = ("reference", "ext")


def choose_backend(device) -> str:
    """'ext' or 'reference' for tensors on ``device``."""
    forced = os.environ.get("GANDID_OP_BACKEND", "").strip().lower()
    if forced and forced != "auto":
        if forced not in BACKENDS:
            raise ValueError(f"GANDID_OP_BACKEND={forced!r}: use one of reference, ext, auto")
        if forced == "ext":
            ext = build.load()  # asked for explicitly: a build failure is an error, not a fallback
            if torch.device(device).type == "cuda" and not ext.with_cuda():
                raise RuntimeError("GANDID_OP_BACKEND=ext but the extension was built without CUDA")
        return forced
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda"):
        return "reference"
    ext = build.try_load()
    if ext is None or (kind == "cuda" and not ext.with_cuda()):
        return "reference"
    return "ext"


def backend_name(device="cpu") -> str:
    """What runs the fused ops (this one and :func:`instance_norm`, one extension) on ``device``: 'ext-cpu',
    'ext-cuda' or 'reference' (recorded in run.json as ``op_backend``)."""
    backend = choose_backend(device)
    return f"ext-{torch.device(device).type}" if backend == "ext" else "reference"
