"""Memory policy of the engine: how many rows a chunk holds, which layout the suffix runs in, and
the fused op's output buffers reused across batches."""
from __future__ import annotations

import torch

from .model import Generator

DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of activations per chunk, at most
# Rows per chunk are also capped so that the largest activation of a chunk stays near this size:
# on the 2-core CPU this was measured on, a plain forward costs 10-40 % more per row at 128 rows
# than at 16-32, as activations fall out of cache.
CACHE_FRIENDLY_BYTES = 16 << 20


class BufferPool:
    """Preallocated outputs of the fused op, one pair per (site, shape, dtype, layout), reused across
    batches: on CPU a fresh large tensor costs page faults on every call."""

    def __init__(self):
        self._buffers: dict = {}

    def get(self, site: str, x: torch.Tensor):
        cl = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        key = (site, tuple(x.shape), x.dtype, x.device, cl)
        if key not in self._buffers:
            out = torch.empty_like(x, memory_format=torch.channels_last if cl else torch.contiguous_format)
            beta = x.new_empty((x.shape[0], 1, x.shape[2], x.shape[3]))
            self._buffers[key] = (out, beta)
        return self._buffers[key]

    def clear(self):
        self._buffers.clear()


def rows_per_chunk(generator: Generator, memory_budget: int) -> int:
    """Rows per chunk: a few live copies of the largest layer plus the image must fit the budget, and
    the largest activation of the chunk should stay cache-friendly (CACHE_FRIENDLY_BYTES)."""
    largest = max(l.channels * l.size[0] * l.size[1] for l in generator.layers)
    per_row = 4 * (4 * largest + 3 * generator.resolution ** 2)
    return max(1, min(memory_budget // per_row, CACHE_FRIENDLY_BYTES // (4 * largest)))


def preferred_layout(x: torch.Tensor, channels_last: bool | None) -> torch.Tensor:
    """channels_last by default on CPU, where it made the convolutions 1.5-2x faster (benchmarks/RESULTS.md)."""
    if channels_last is None:
        channels_last = x.device.type == "cpu"
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
