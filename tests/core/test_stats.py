"""Mergeable statistics: two halves merged equal the whole (what multi-process runs rely on)."""

import pytest
import torch
from order_statistics import inverse_cdf

from gandid.stats import Histogram, Moments, TopK, bootstrap_ci


def test_histogram_merge_and_quantile():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(3, 10000, generator=g) * torch.tensor([[1.0], [2.0], [0.5]])
    lo, hi = torch.full((3,), -8.0), torch.full((3,), 8.0)
    whole, a, b = Histogram(lo, hi, 1024), Histogram(lo, hi, 1024), Histogram(lo, hi, 1024)
    whole.update(data)
    a.update(data[:, :3000])
    b.update(data[:, 3000:])
    a.merge(b)
    assert torch.equal(a.counts, whole.counts)
    q = whole.quantile(0.99)
    exact = torch.quantile(data, 0.99, dim=1).double()
    assert torch.allclose(q, exact, atol=16 / 1024)  # within one bin
    restored = Histogram.from_state(whole.state_dict())
    assert torch.equal(restored.quantile(0.5), whole.quantile(0.5))


def test_histogram_quantiles_within_one_bin_on_atoms_and_heavy_tails():
    """Over each row's exact range (what dissect's IQR levels use) every q-quantile is within one bin width
    of the exact one, the order statistic of rank ceil(q N) (the smallest value with a fraction q of
    the values at or below it), for rows with atoms (a ReLU's zeros, a saturated maximum) and heavy
    tails."""
    g = torch.Generator().manual_seed(3)
    n = 20000
    relu = torch.randn(n, generator=g, dtype=torch.float64).clamp_min(0)  # half of it an atom at 0
    saturated = torch.randn(n, generator=g, dtype=torch.float64).clamp(max=0.3)  # an atom at the top
    cauchy = torch.tan(torch.pi * (torch.rand(n, generator=g, dtype=torch.float64) - 0.5))  # no mean
    pareto = torch.rand(n, generator=g, dtype=torch.float64) ** (-1 / 1.5)  # tail index 1.5
    data = torch.stack([relu, saturated, cauchy, pareto])
    lo, hi = data.min(1).values, data.max(1).values
    hist = Histogram(lo, hi, 2048)
    hist.update(data)
    width = (hi - lo) / 2048
    for q in 1 - torch.logspace(-3, 0, 100, dtype=torch.float64):
        exact = inverse_cdf(data, float(q))
        assert ((hist.quantile(float(q)) - exact).abs() <= width * (1 + 1e-9)).all(), float(q)


def test_topk_merge_is_order_independent():
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 5, (4, 50), generator=g).double()  # many ties
    ids = torch.arange(50)
    whole = TopK(4, 6)
    whole.update(scores, ids)
    a, b = TopK(4, 6), TopK(4, 6)
    b.update(scores[:, 20:], ids[20:])
    a.update(scores[:, :20], ids[:20])
    merged = b.merge(a)
    assert torch.equal(merged.ids, whole.ids) and torch.equal(merged.values, whole.values)


def test_moments_merge_and_bootstrap():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(400, 3, generator=g) + 1
    whole, a, b = Moments((3,)), Moments((3,)), Moments((3,))
    whole.update(x)
    a.update(x[:100])
    b.update(x[100:])
    a.merge(b)
    assert torch.allclose(a.mean, whole.mean) and torch.allclose(a.var, whole.var)
    assert torch.allclose(whole.mean, x.double().mean(0))
    lo, hi = bootstrap_ci(x[:, 0], seed=0)
    assert lo < float(x[:, 0].mean()) < hi and hi - lo < 0.4


def _fresh(kind, device):
    """One instance of each Stat, on ``device``, and a function giving it a batch of random data."""
    from gandid.stats import Maximum, PerSample, Sum

    g = torch.Generator().manual_seed(3)

    def data(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device)

    if kind == "Sum":
        return Sum((3, 4), device=device), lambda i: ((data(3, 4),), {})
    if kind == "Maximum":
        return Maximum((5,), device=device), lambda i: ((data(5),), {})
    if kind == "PerSample":
        return PerSample(2, device=device), lambda i: ((data(4, 2), torch.arange(4 * i, 4 * i + 4)), {})
    if kind == "Histogram":
        lo = torch.full((3,), -4.0, dtype=torch.float64, device=device)
        return Histogram(lo, lo + 8, 64), lambda i: ((data(3, 50),), {})
    if kind == "TopK":
        return TopK(3, 4, device=device), lambda i: ((data(3, 6), torch.arange(6 * i, 6 * i + 6)), {})
    if kind == "Moments":
        return Moments((2,), device=device), lambda i: ((data(7, 2),), {})
    raise KeyError(kind)


KINDS = ["Sum", "Maximum", "PerSample", "Histogram", "TopK", "Moments"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_stat_merges_halves_into_the_whole_and_round_trips(kind, tmp_path):
    whole, batch = _fresh(kind, "cpu")
    first, _ = _fresh(kind, "cpu")
    second, _ = _fresh(kind, "cpu")
    batches = [batch(i) for i in range(4)]
    for i, (args, kw) in enumerate(batches):
        whole.update(*args, **kw)
        (first if i < 2 else second).update(*args, **kw)
    merged = second.merge(first)  # the order of merging does not matter
    for name, value in whole.state_dict().items():
        other = merged.state_dict()[name]
        if kind == "PerSample":  # rows are kept in arrival order; rows() puts them in sample order
            break
        assert torch.allclose(value.double(), other.double(), rtol=1e-12, atol=0), name
    if kind == "PerSample":
        assert torch.equal(whole.rows(), merged.rows())
    torch.save(whole.state_dict(), tmp_path / "s.pt")
    restored = type(whole).from_state(torch.load(tmp_path / "s.pt", weights_only=True))
    for name, value in whole.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value)


@pytest.mark.parametrize("kind", KINDS)
def test_stats_never_assume_the_cpu(kind):
    """Updated with meta tensors, a stat that allocated anything on a fixed device would fail."""
    stat, batch = _fresh(kind, "meta")
    for i in range(2):
        args, kw = batch(i)
        stat.update(*args, **kw)
    other, _ = _fresh(kind, "meta")
    stat.merge(other)
    assert all(v.device.type == "meta" for v in stat.state_dict().values())
    moved, _ = _fresh(kind, "cpu")
    assert all(v.device.type == "meta" for v in moved.to("meta").state_dict().values())
    if kind == "Histogram":
        assert stat.quantile(0.5).device.type == "meta" and stat.edges().device.type == "meta"
    if kind == "Moments":
        assert stat.mean.device.type == "meta"


def test_per_sample_refuses_a_sample_counted_twice():
    from gandid.stats import PerSample

    a = PerSample(1)
    a.update(torch.ones(2, 1), [0, 1])
    a.merge(a.from_state(a.state_dict()))
    with pytest.raises(ValueError, match="counted twice"):
        a.rows()


def test_bca_intervals_cover_and_match_a_per_column_percentile_bootstrap_roughly():
    """Vectorised BCa over columns against an independent per-column percentile bootstrap (numpy)."""
    import numpy as np

    from gandid.stats import bootstrap_bca, false_discovery

    rng = np.random.default_rng(1)
    x = np.stack([rng.normal(0, 1, 300), rng.normal(0.3, 1, 300), rng.exponential(1, 300) - 1,
                  np.zeros(300)], 1)
    lo, hi, p = bootstrap_bca(torch.from_numpy(x), seed=0, resamples=4000)
    for j in range(3):
        means = x[rng.integers(0, 300, (4000, 300)), j].mean(1)
        plo, phi = np.quantile(means, [0.025, 0.975])
        assert abs(lo[j] - plo) < 0.03 and abs(hi[j] - phi) < 0.03  # same interval up to BCa's corrections
        assert lo[j] < x[:, j].mean() < hi[j]
    assert lo[3] == hi[3] == 0 and p[3] == 1.0
    from scipy.stats import norm

    for j in range(2):  # the bootstrap p-value is close to the normal-theory one for these means
        z = x[:, j].mean() / (x[:, j].std(ddof=1) / np.sqrt(300))
        assert abs(p[j] - 2 * norm.sf(abs(z))) < 0.02
    q = false_discovery(p)
    assert np.all(q >= p) and q[1] < 0.05
    # Benjamini-Hochberg by hand: q_(i) = min over j >= i of p_(j) m / j
    order = np.argsort(p)
    m = len(p)
    by_hand = np.minimum.accumulate((p[order] * m / np.arange(1, m + 1))[::-1])[::-1]
    assert np.allclose(q[order], np.minimum(by_hand, 1))
