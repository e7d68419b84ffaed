"""Fixed-size, mergeable statistics: what analyses keep instead of per-sample tensors, and the unit
of resume (a stage's saved state is its statistics' ``state_dict``s).

Every statistic is a :class:`Stat`: ``update`` (one batch), ``merge`` (another instance over other
samples, as from a second process or shard), ``state_dict``/``load_state_dict`` (tensors only, so
``torch.load(weights_only=True)`` reads them back) and ``to(device)``. A stat allocates on the device
of what it is given and never assumes the CPU.
"""
from __future__ import annotations

import torch


class Stat:
    """Base of every statistic. Subclasses name their tensors in ``_state``; ``update`` and ``merge``
    are theirs. ``state_dict``/``load_state_dict``/``to`` work from ``_state``."""

    _state: tuple[str, ...] = ()

    def update(self, *args, **kwargs) -> None:
        raise NotImplementedError

    def merge(self, other: "Stat") -> "Stat":
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {name: getattr(self, name) for name in self._state}

    def load_state_dict(self, state: dict) -> "Stat":
        missing = [name for name in self._state if name not in state]
        if missing:
            raise ValueError(f"{type(self).__name__}: saved state lacks {missing}")
        for name in self._state:
            setattr(self, name, state[name].clone())
        return self

    def to(self, device) -> "Stat":
        for name in self._state:
            setattr(self, name, getattr(self, name).to(device))
        return self

    @classmethod
    def from_state(cls, state: dict) -> "Stat":
        """A stat rebuilt from ``state_dict()`` alone."""
        stat = cls.__new__(cls)
        return stat.load_state_dict(state)


class Sum(Stat):
    """A float64 running sum of any shape (pixel counts, intersections, activation sums).

    ``update(values)`` adds ``values``; ``update(values, index)`` adds into ``total[index]``."""

    _state = ("total",)

    def __init__(self, shape, device=None):
        self.total = torch.zeros(shape, dtype=torch.float64, device=device)

    def update(self, values, index=None) -> None:
        values = values.double() if isinstance(values, torch.Tensor) else float(values)
        if index is None:
            self.total += values
        else:
            self.total[index] += values

    def merge(self, other: "Sum") -> "Sum":
        self.total += other.total
        return self


class Maximum(Stat):
    """The running element-wise maximum of any shape."""

    _state = ("value",)

    def __init__(self, shape, device=None):
        self.value = torch.full(shape, -torch.inf, dtype=torch.float64, device=device)

    def update(self, values: torch.Tensor) -> None:
        self.value = torch.maximum(self.value, values.double())

    def merge(self, other: "Maximum") -> "Maximum":
        self.update(other.value)
        return self


class PerSample(Stat):
    """One row of ``width`` float64 values per sample, kept with the sample index: the scalars a
    bootstrap resamples. ``rows()`` are in sample order whatever the order of updates and merges.
    Its size grows with the samples (width x 8 bytes each), so it is for per-sample scalars only."""

    _state = ("ids", "values")

    def __init__(self, width: int, device=None):
        self.ids = torch.zeros(0, dtype=torch.long, device=device)
        self.values = torch.zeros(0, width, dtype=torch.float64, device=device)

    def update(self, values: torch.Tensor, ids) -> None:
        """values (B, width) of samples ids (B,)."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.ids.device)
        self.ids = torch.cat([self.ids, ids])
        self.values = torch.cat([self.values, values.double().to(self.values.device)])

    def merge(self, other: "PerSample") -> "PerSample":
        self.update(other.values, other.ids)
        return self

    def rows(self) -> torch.Tensor:
        """(N, width) in sample order; a sample counted twice is an error (overlapping shards)."""
        order = self.ids.argsort(stable=True)
        if len(order) > 1 and bool((self.ids[order][1:] == self.ids[order][:-1]).any()):
            raise ValueError("PerSample: some samples were counted twice")
        return self.values[order]


class Histogram(Stat):
    """Per-row histograms over fixed edges (R rows x B bins, plus under/overflow clamped into the end bins).

    ``edges_lo``/``edges_hi`` (R,): each row's range. Quantiles interpolate inside a bin.
    """

    _state = ("lo", "hi", "counts")

    def __init__(self, lo: torch.Tensor, hi: torch.Tensor, bins: int = 512):
        self.lo, self.hi = lo.double().clone(), hi.double().clone()
        span = (self.hi - self.lo).clamp_min(1e-12)
        self.hi = self.lo + span
        self.counts = torch.zeros(len(lo), bins, dtype=torch.float64, device=self.lo.device)

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
        same_shape = self.counts.shape == other.counts.shape
        has_values = self.lo.device.type != "meta"  # meta tensors (shape checks) carry no values to compare
        if not same_shape or (has_values and not (torch.equal(self.lo, other.lo) and torch.equal(self.hi, other.hi))):
            raise ValueError("histograms with different edges cannot be merged")
        self.counts += other.counts
        return self

    def edges(self) -> torch.Tensor:
        """(R, B + 1) bin edges."""
        steps = torch.linspace(0, 1, self.bins + 1, dtype=torch.float64, device=self.lo.device)
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



class TopK(Stat):
    """The k largest scores per row, with their sample ids; merge keeps the k largest of both."""

    _state = ("values", "ids")

    def __init__(self, rows: int, k: int, device=None):
        self.values = torch.full((rows, k), -torch.inf, dtype=torch.float64, device=device)
        self.ids = torch.full((rows, k), -1, dtype=torch.long, device=device)

    def _keep(self, values: torch.Tensor, ids: torch.Tensor) -> None:
        # ties go to the lower sample id, so the result does not depend on the order of updates
        by_id = ids.argsort(dim=1, stable=True)
        values, ids = values.gather(1, by_id), ids.gather(1, by_id)
        order = values.argsort(dim=1, descending=True, stable=True)[:, : self.values.shape[1]]
        self.values, self.ids = values.gather(1, order), ids.gather(1, order)

    def update(self, scores: torch.Tensor, ids: torch.Tensor) -> None:
        """scores (R, B) for samples ids (B,)."""
        fresh = ids.to(self.ids.device).view(1, -1).expand(len(scores), -1)
        self._keep(torch.cat([self.values, scores.double()], 1), torch.cat([self.ids, fresh], 1))

    def merge(self, other: "TopK") -> "TopK":
        self._keep(torch.cat([self.values, other.values], 1), torch.cat([self.ids, other.ids], 1))
        return self



class Moments(Stat):
    """Count, sum and sum of squares per entry (any shape): mean and variance."""

    _state = ("n", "sum", "sumsq")

    def __init__(self, shape, device=None):
        self.n = torch.zeros(shape, dtype=torch.float64, device=device)
        self.sum = torch.zeros(shape, dtype=torch.float64, device=device)
        self.sumsq = torch.zeros(shape, dtype=torch.float64, device=device)

    def update(self, values: torch.Tensor, weight: torch.Tensor | float = 1.0) -> None:
        """values (B, *shape): B observations."""
        v = values.double()
        w = torch.as_tensor(weight, dtype=torch.float64, device=v.device)
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


def bootstrap_bca(values, seed: int = 0, resamples: int = 2000, level: float = 0.95):
    """BCa bootstrap intervals of the mean of every column of ``values`` (N, K) at once, and a two-sided
    bootstrap p-value per column for "the mean is 0" (twice the smaller tail of the bootstrap
    distribution at 0, at least 1 / (resamples + 1)). Returns numpy arrays (lo, hi, p), each (K,).
    A constant column gets the interval [v, v] and p = 1 when v = 0 (else 1 / (resamples + 1)).
    Uses ``scipy.stats.bootstrap`` (method BCa)."""
    import numpy as np
    from scipy.stats import bootstrap

    x = np.asarray(values.cpu().double() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    k = x.shape[1]
    mean = x.mean(0) if len(x) else np.full(k, np.nan)
    lo, hi = mean.copy(), mean.copy()
    p = np.ones(k)
    floor = 1.0 / (resamples + 1)
    varying = (x.max(0) > x.min(0)) if len(x) >= 2 else np.zeros(k, dtype=bool)
    p[~varying & (np.abs(lo) > 0)] = floor
    if varying.any():
        res = bootstrap((x[:, varying],), np.mean, axis=0, vectorized=True, n_resamples=resamples,
                        confidence_level=level, method="BCa", random_state=np.random.default_rng(seed))
        lo[varying], hi[varying] = res.confidence_interval.low, res.confidence_interval.high
        dist = np.asarray(res.bootstrap_distribution).reshape(int(varying.sum()), -1)
        tails = np.minimum((dist <= 0).mean(1), (dist >= 0).mean(1))
        p[varying] = np.clip(2 * tails, floor, 1.0)
    return lo, hi, p


def false_discovery(p):
    """Benjamini-Hochberg adjusted p-values (q) of a family of tests (``scipy.stats.false_discovery_control``)."""
    import numpy as np
    from scipy.stats import false_discovery_control

    p = np.asarray(p, dtype=np.float64)
    return false_discovery_control(p, method="bh") if len(p) else p
