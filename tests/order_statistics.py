"""Exact order statistics, the straightforward side of the quantile tests."""
import math

import torch


def inverse_cdf(values: torch.Tensor, q: float) -> torch.Tensor:
    """(R,) the order statistic of rank ceil(q N) (1-based) of each row of values (R, N)."""
    rank = max(1, math.ceil(q * values.shape[1]))
    return values.sort(1).values[:, rank - 1]
