"""Random arguments for intervene_pixelnorm, and a float64 naive loop to compare every backend with."""
import numpy as np
import torch


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
