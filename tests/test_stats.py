"""Mergeable statistics: two halves merged equal the whole (what multi-process runs rely on)."""
import torch

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
