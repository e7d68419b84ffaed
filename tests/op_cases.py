"""Random arguments for intervene_pixelnorm, a float64 naive loop to compare every backend with, and the
comparison itself.

Tolerances are per element and follow the conditioning (see assert_matches): an error in x' is
bounded by TOL * max(|x|, |k|) at that pixel, y = x' / d divides it by the divisor d, and
the divisor's own error (from its row's magnitudes) scales y. TOL:
float32 2e-6 (a few roundings of x', 1/β and a float32 sum over up to 600 channels), float64 1e-12,
float16 2e-3 and bfloat16 1.6e-2 (one rounding of the output, 2^-10 and 2^-7 relative; the naive
loop sees the same rounded input).
"""
import numpy as np
import torch
from hypothesis import strategies as st

# Keyword arguments of random_case, every option combined with every other.
case_args = st.fixed_dictionaries({
    "seed": st.integers(0, 2**31 - 1),
    "n": st.integers(1, 9), "c": st.one_of(st.integers(1, 40), st.integers(41, 600)),
    "h": st.integers(1, 33), "w": st.integers(1, 33),
    "channels_last": st.booleans(), "alpha": st.booleans(), "value": st.booleans(),
    "region": st.sampled_from(["none", "shared", "per_row"]), "rows": st.booleans(),
    "beta_src": st.sampled_from(["none", "random", "did"]), "beta_in": st.booleans(), "normalize": st.booleans(),
})


def affordable(case: dict, pixels: int = 3000) -> dict:
    """The case with H cut so the pure-Python naive loop (N*H*W pixels) stays quick."""
    if case["n"] * case["h"] * case["w"] > pixels:
        case = {**case, "h": max(1, pixels // (case["n"] * case["w"]))}
    return case


def random_case(seed, n, c, h, w, *, dtype=torch.float32, channels_last=False, alpha=True, value=False,
                region="none", rows=False, beta_src="none", beta_in=False, normalize=True):
    """Fresh random inputs (never zeros); ``seed`` makes a failing case reproducible."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * 2 + 0.3).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    kw = {"normalize": normalize}
    if alpha:
        a = torch.rand(c, generator=g, dtype=torch.float64)
        a[torch.rand(c, generator=g) < 0.3] = 0  # untouched units
        kw["alpha"] = a.float()
        if value:
            kw["value"] = (torch.randn(c, generator=g) * 3).float()
        if region != "none":
            r = torch.rand(n if region == "per_row" else 1, h, w, generator=g)
            r[r < 0.2] = 0
            kw["region"] = r
        if rows:
            kw["rows"] = torch.rand(n, generator=g) < 0.6
    if beta_src == "random":
        lenders = torch.nonzero(torch.rand(n, generator=g) < 0.5).flatten()
        if len(lenders) == 0:
            lenders = torch.tensor([0])
        src = lenders[torch.randint(len(lenders), (n,), generator=g)]
        src[lenders] = lenders
        kw["beta_src"] = src
    elif beta_src == "did" and n % 4 == 0:
        q = n // 4  # arms: own, own, borrow arm 1, borrow arm 2
        kw["beta_src"] = torch.cat([torch.arange(2 * q), torch.arange(q), torch.arange(q, 2 * q)])
    if beta_in:
        kw["beta_in"] = torch.rand(n, 1, h, w, generator=g) + 0.5
    return x, kw


def naive(x, alpha=None, region=None, value=None, rows=None, beta_src=None, beta_in=None, normalize=True, eps=1e-8):
    """float64 loop over rows and pixels, transcribing the definition (vectorised over channels only)."""
    xs = x.double().numpy()
    n, c, h, w = xs.shape
    xs = xs.reshape(n, c, h * w)
    xi = np.empty_like(xs)
    beta = np.empty((n, h * w))
    for i in range(n):
        for p in range(h * w):
            v = xs[i, :, p].copy()
            if alpha is not None and (rows is None or bool(rows[i])):
                m = 1.0 if region is None else float(region[0 if region.shape[0] == 1 else i].flatten()[p])
                s = alpha.double().numpy() * m
                k = np.zeros(c) if value is None else value.double().numpy()
                v = v - s * (v - k)
            xi[i, :, p] = v
            beta[i, p] = np.sqrt(np.mean(v * v) + eps)
    y = xi.copy()
    if normalize:
        for i in range(n):
            for p in range(h * w):
                if beta_in is not None:
                    d = float(beta_in[i].flatten()[p])
                elif beta_src is not None:
                    d = beta[int(beta_src[i]), p]
                else:
                    d = beta[i, p]
                y[i, :, p] = xi[i, :, p] / d
    return torch.from_numpy(y.reshape(n, c, h, w)), torch.from_numpy(beta.reshape(n, 1, h, w))


TOL = {torch.float32: 2e-6, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def assert_matches(x, kw, y, beta, y_ref, beta_ref, dtype):
    """Per-element bounds that follow the conditioning: rounding errors in x' scale with the
    magnitudes at that pixel (|x|, |k|), and y = x' / d amplifies them by 1 / d."""
    xa = x.double().abs()
    mag = xa.amax(dim=1, keepdim=True)
    if kw.get("value") is not None:
        mag = torch.maximum(mag, kw["value"].double().abs().max().expand_as(mag))
    tol = TOL[dtype]
    if not kw.get("normalize", True):
        divisor, divisor_rel = torch.ones_like(beta_ref), 0
    elif kw.get("beta_in") is not None:
        divisor, divisor_rel = kw["beta_in"].double(), 0
    else:
        src = kw["beta_src"] if kw.get("beta_src") is not None else torch.arange(len(x))
        divisor = beta_ref[src]
        divisor_rel = tol * (mag[src] / divisor)  # the divisor's own relative error, from its row
    y_bound = tol * (y_ref.abs() + mag / divisor) + y_ref.abs() * divisor_rel + 1e-30
    y_err = ((y.double() - y_ref).abs() / y_bound).max()
    assert y_err <= 1, f"y: error {float(y_err):.3g} x the bound ({tol} relative)"
    b_err = ((beta.double() - beta_ref).abs() / (tol * (beta_ref + mag))).max()
    assert b_err <= 1, f"beta: error {float(b_err):.3g} x the bound ({tol} relative)"
