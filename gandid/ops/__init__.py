"""The fused op ``intervene_pixelnorm``: reference (PyTorch) and JIT-built C++/CUDA backends.

Backend choice: the extension for CPU and CUDA tensors, the reference when the extension cannot
be built (one warning with the compiler's error), overridden by ``GANDID_OP_BACKEND=reference|ext``.
"""
from __future__ import annotations

from . import build
from .backends import BACKENDS, backend_name, choose_backend
from .instnorm import instance_norm, instance_norm_reference
from .pixelnorm import intervene_pixelnorm
from .reference import intervene_pixelnorm_reference

__all__ = ["intervene_pixelnorm", "intervene_pixelnorm_reference", "instance_norm", "instance_norm_reference",
           "backend_name", "choose_backend", "BACKENDS", "REFERENCE_COST", "build"]
# What a run loses without the extension, measured (benchmarks/RESULTS.md, "The reference fallback").
REFERENCE_COST = ("slower: the op itself ran 14-24x slower than the fused op in `gandid bench`, and the default "
                  "toyroom run took 1.06x as long (179 s against 169 s; 2-core AMD EPYC, 2026-12-08); runs that "
                  "spend more of their time in the op (wide layers, DID on many samples) lose more")
