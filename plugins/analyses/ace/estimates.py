"""Per-unit ACE numbers beside the counterfactual passes: the screen's first-order estimate of every unit,
the rank correlation that judges it, and the uncertainty of the exact values over latents."""
from __future__ import annotations

import torch

from gandid.hooks import features_at


def ace_uncertainty(effects: torch.Tensor, top: list[int], seed: int, resamples: int = 1000) -> dict:
    """Uncertainty of per-unit ACE from its per-latent effects (U, N) (inserted minus ablated class
    fraction for the same latent): standard errors and t intervals (95%), and, resampling the latents
    (bootstrap), how often each of the ``top`` units stays in the top len(top) and how often each rank
    beats the next one (a rank is *distinguishable* when that happens in at least 95% of resamples)."""
    from scipy.stats import t as student_t

    units, n = effects.shape
    mean = effects.mean(1)
    se = effects.std(1) / n ** 0.5 if n > 1 else torch.full_like(mean, float("nan"))
    half = float(student_t.ppf(0.975, n - 1)) * se if n > 1 else se
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(n, (resamples, n), generator=g).to(effects.device)
    boot = effects[:, idx].mean(2)  # (U, resamples)
    k = len(top)
    in_top = torch.zeros(units, dtype=torch.float64, device=effects.device)
    if k:
        in_top.scatter_add_(0, boot.topk(k, dim=0).indices.flatten(),
                            torch.ones(k * resamples, dtype=torch.float64, device=effects.device))
    beats = [float((boot[a] > boot[b]).double().mean()) for a, b in zip(top, top[1:])]
    return {"unit_ace_se": se.tolist(), "unit_ace_ci95": torch.stack([mean - half, mean + half], 1).tolist(),
            "topk_stability": {str(u): float(in_top[u]) / resamples for u in top},
            "rank_beats_next": beats, "rank_distinguishable": [b >= 0.95 for b in beats]}


def screen_estimates(gen, seg, z: torch.Tensor, layer: str, values: torch.Tensor, classes: list[int],
                     batch: int) -> torch.Tensor:
    """First-order ACE of every unit on each class, (len(classes), U) float64: k_u(c) times the gradient of
    the segmenter's class score s_c summed over the unit's pixels, averaged over the latents z. One forward
    and one backward per class and latent batch (the forward is shared by the classes)."""
    with torch.no_grad():
        feats = features_at(gen, z, layer)
    grad_sum = torch.zeros(len(classes), feats.shape[1], dtype=torch.float64, device=feats.device)
    for lo in range(0, len(z), batch):
        f = feats[lo:lo + batch].detach().requires_grad_(True)
        images = gen.forward_from(layer, f, z[lo:lo + batch])
        for i, c in enumerate(classes):
            score = seg.class_scores(images, c).sum()
            (grad,) = torch.autograd.grad(score, f, retain_graph=i < len(classes) - 1)
            grad_sum[i] += grad.double().sum((0, 2, 3))
    return grad_sum / len(z) * values[:, classes].T.double().to(grad_sum.device)


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two (n,) tensors (ties broken by position; nan for n < 3)."""
    if len(a) < 3:
        return float("nan")
    ra, rb = (t.argsort().argsort().double() for t in (a, b))
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])
