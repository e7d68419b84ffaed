"""Fixed-size, mergeable statistics: every analysis keeps these, never per-sample tensors.

Each class has ``update`` (one batch), ``merge`` (another instance over other samples, as from a
second process) and ``state_dict``/``from_state`` (tensors only, for resumable runs).
"""
from __future__ import annotations

import torch


class Histogram:
    """Per-row histograms over fixed edges (R rows x B bins, plus under/overflow clamped into the end bins).

    ``edges_lo``/``edges_hi`` (R,): each row's range. Quantiles interpolate inside a bin.
    """

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor, bins: int = 512):
        self.lo, self.hi = lo.double().clone(), hi.double().clone()
        span = (self.hi - self.lo).clamp_min(1e-12)
        self.hi = self.lo + span
        self.counts = torch.zeros(len(lo), bins, dtype=torch.float64)

    @property
    def bins(self) -> int:
        return self.counts.shape[1]

    def bin_index(self, values: torch.Tensor) -> torch.Tensor:
        """values (R, P) -> bin indices (R, P)."""
        pos = (values.double() - self.lo[:, None]) / (self.hi - self.lo)[:, None] * self.bins
        return pos.floor().clamp(0, self.bins - 1).long()

    def update(self, values: torch.Tensor) -> None:
        """values (R, P): P observations of each row."""
        idx = self.bin_index(values)
        self.counts.scatter_add_(1, idx, torch.ones_like(idx, dtype=torch.float64))

    def merge(self, other: "Histogram") -> "Histogram":
        if not (torch.equal(self.lo, other.lo) and torch.equal(self.hi, other.hi)):
            raise ValueError("histograms with different edges cannot be merged")
        self.counts += other.counts
        return self

    def edges(self) -> torch.Tensor:
        """(R, B + 1) bin edges."""
        steps = torch.linspace(0, 1, self.bins + 1, dtype=torch.float64)
        return self.lo[:, None] + (self.hi - self.lo)[:, None] * steps[None]

    def quantile(self, q: float, interpolate: bool = True) -> torch.Tensor:
        """(R,) the q-quantile of each row, linear inside its bin (or the bin's lower edge, so that values
        tied at the quantile count as above it: activations often have such atoms)."""
        cdf = self.counts.cumsum(1)
        total = cdf[:, -1:].clamp_min(1)
        target = q * total
        b = (cdf < target).sum(1).clamp(max=self.bins - 1)
        before = torch.where(b > 0, cdf.gather(1, (b - 1).clamp_min(0)[:, None])[:, 0], torch.zeros_like(b,
                                                                                                    dtype=cdf.dtype))
        inside = self.counts.gather(1, b[:, None])[:, 0].clamp_min(1e-12)
        frac = ((target[:, 0] - before) / inside).clamp(0, 1) if interpolate else torch.zeros_like(inside)
        width = (self.hi - self.lo) / self.bins
        return self.lo + (b.double() + frac) * width

    def state_dict(self) -> dict:
        return {"lo": self.lo, "hi": self.hi, "counts": self.counts}

    @classmethod
    def from_state(cls, state: dict) -> "Histogram":
        h = cls(state["lo"], state["hi"], state["counts"].shape[1])
        h.counts = state["counts"].clone()
        return h


class TopK:
    """The k largest scores per row, with their sample ids; merge keeps the k largest of both."""

    def __init__(self, rows: int, k: int):
        self.values = torch.full((rows, k), -torch.inf, dtype=torch.float64)
        self.ids = torch.full((rows, k), -1, dtype=torch.long)

    def _keep(self, values: torch.Tensor, ids: torch.Tensor) -> None:
        # ties go to the lower sample id, so the result does not depend on the order of updates
        by_id = ids.argsort(dim=1, stable=True)
        values, ids = values.gather(1, by_id), ids.gather(1, by_id)
        order = values.argsort(dim=1, descending=True, stable=True)[:, : self.values.shape[1]]
        self.values, self.ids = values.gather(1, order), ids.gather(1, order)

    def update(self, scores: torch.Tensor, ids: torch.Tensor) -> None:
        """scores (R, B) for samples ids (B,)."""
        fresh = ids.view(1, -1).expand(len(scores), -1)
        self._keep(torch.cat([self.values, scores.double()], 1), torch.cat([self.ids, fresh], 1))

    def merge(self, other: "TopK") -> "TopK":
        self._keep(torch.cat([self.values, other.values], 1), torch.cat([self.ids, other.ids], 1))
        return self

    def state_dict(self) -> dict:
        return {"values": self.values, "ids": self.ids}

    @classmethod
    def from_state(cls, state: dict) -> "TopK":
        t = cls(*state["values"].shape)
        t.values, t.ids = state["values"].clone(), state["ids"].clone()
        return t


class Moments:
    """Count, sum and sum of squares per entry (any shape): mean, variance and a normal 95% interval."""

    def __init__(self, shape):
        self.n = torch.zeros(shape, dtype=torch.float64)
        self.sum = torch.zeros(shape, dtype=torch.float64)
        self.sumsq = torch.zeros(shape, dtype=torch.float64)

    def update(self, values: torch.Tensor, weight: torch.Tensor | float = 1.0) -> None:
        """values (B, *shape): B observations."""
        v = values.double()
        w = torch.as_tensor(weight, dtype=torch.float64)
        self.n += (w * torch.ones_like(v)).sum(0)
        self.sum += (w * v).sum(0)
        self.sumsq += (w * v * v).sum(0)

    def merge(self, other: "Moments") -> "Moments":
        self.n += other.n
        self.sum += other.sum
        self.sumsq += other.sumsq
        return self

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.n.clamp_min(1)

    @property
    def var(self) -> torch.Tensor:
        return (self.sumsq / self.n.clamp_min(1) - self.mean ** 2).clamp_min(0)

    def state_dict(self) -> dict:
        return {"n": self.n, "sum": self.sum, "sumsq": self.sumsq}

    @classmethod
    def from_state(cls, state: dict) -> "Moments":
        m = cls(state["n"].shape)
        m.n, m.sum, m.sumsq = (state[k].clone() for k in ("n", "sum", "sumsq"))
        return m


def bootstrap_ci(values: torch.Tensor, seed: int = 0, resamples: int = 2000, level: float = 0.95):
    """Percentile bootstrap interval of the mean of ``values`` (N,) -> (lo, hi)."""
    values = values.double().flatten()
    if len(values) < 2:
        v = float(values.mean()) if len(values) else float("nan")
        return v, v
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(values), (resamples, len(values)), generator=g)
    means = values[idx].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, 1 - (1 - level) / 2], dtype=torch.float64))
    return float(lo), float(hi)
