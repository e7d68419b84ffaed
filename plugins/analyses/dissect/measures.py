"""IoU and GAN Dissection's IQR from pixel counts: the 2x2 table of a unit's thresholded map against a
label, its information quality ratio, the label and threshold it selects, and the IoU chance gives."""
from __future__ import annotations

import torch

# GAN Dissection's IQR candidates: top fractions 1e-3 .. 1, log-spaced (gandissect collect_iqr).
IQR_FRACTIONS = torch.logspace(-3, 0, 100, dtype=torch.float64)


def _entropy_terms(p: torch.Tensor) -> torch.Tensor:
    """-p ln p with 0 for p = 0 (gandissect sets NaN terms to 0)."""
    return torch.where(p > 0, -p * torch.log(p.clamp_min(1e-300)), torch.zeros_like(p))


def iqr_table(levels, above_label, above_category, label_pixels, category_pixels, all_pixels, label_category):
    """GAN Dissection's IQR of every unit, label and candidate level, from exact counts.

    levels (U, V) candidate thresholds; above_label (U, L, V) label-l pixels with activation above level v;
    above_category (U, K, V) pixels above level v in images containing category k; label_pixels (L,);
    category_pixels (K,) pixels of the images containing category k; all_pixels; label_category (L,).
    Returns (iqr, iou), each (U, L, V), with the exclusions described in :mod:`.compute`'s docstring
    applied to iqr.
    """
    truth = (label_pixels / all_pixels)[None, :, None]  # P(label)
    preds = above_category[:, label_category, :] / category_pixels[label_category].clamp_min(1)[None, :, None]
    isects = above_label / all_pixels
    unions = truth + preds - isects
    table = torch.stack([torch.stack([isects, preds - isects]), torch.stack([truth - isects, 1 - unions])]).clamp(0, 1)
    unit_marginal, label_marginal = table.sum(1), table.sum(0)  # (2, U, L, V) each: unit on/off, label on/off
    mutual = torch.zeros_like(isects)
    joint = torch.zeros_like(isects)
    for j in range(2):
        for k in range(2):
            p = table[j, k]
            ratio = p / (unit_marginal[j] * label_marginal[k])
            mutual += torch.where(p > 0, p * torch.log(ratio.clamp_min(1e-300)), torch.zeros_like(p))
            joint += _entropy_terms(p)
    mutual, joint = mutual.clamp_min(0), joint.clamp_min(0)
    mutual[:, :, -1] = 0  # the level at fraction 1: the minimum, every pixel on
    mutual[:, (label_pixels / all_pixels) < 1e-3, :] = 0  # labels too rare to judge
    iqr = torch.where(joint > 0, mutual / joint.clamp_min(1e-300), torch.zeros_like(joint))
    iqr[(isects + table[1, 1]) <= 0.8] = 0  # pixel agreement (both on + both off) at most 0.8
    iqr[(levels <= 0)[:, None, :].expand_as(iqr)] = 0
    iou = torch.where(unions > 0, isects / unions.clamp_min(1e-300), torch.zeros_like(unions))
    return iqr, iou


def choose_by_iqr(iqr: torch.Tensor, levels: torch.Tensor, max_fraction: float | None = None):
    """Per unit: (label (U,), threshold (U,), fit IQR (U,), top fraction index (U,)). Each (unit, label)
    keeps its best level; the unit takes the label whose best IQR is highest (gandissect's argmax).
    ``max_fraction``: ignore (unit, label) pairs whose best level leaves more than that fraction of the
    pixels on (gandissect applies 0.5 to the ``iqr_label`` of its report records, not to the label and
    threshold that ``dissect`` scores: that line is commented out there)."""
    best_iqr, bucket = iqr.max(2)  # (U, L)
    if max_fraction is not None:
        best_iqr = torch.where(IQR_FRACTIONS.to(bucket.device)[bucket] > max_fraction,
                               torch.zeros_like(best_iqr), best_iqr)
    label = best_iqr.argmax(1)  # (U,)
    units = torch.arange(len(label), device=label.device)
    chosen_bucket = bucket[units, label]
    return label, levels[units, chosen_bucket], best_iqr[units, label], chosen_bucket


def table_iqr(inter, active, truth, total):
    """IQR of the 2x2 table at one threshold from counts (any matching shapes): ``inter`` unit-on label
    pixels, ``active`` unit-on pixels and ``truth`` label pixels among ``total`` pixels."""
    cells = [inter, active - inter, truth - inter, total - (active + truth - inter)]
    p = [(c / total.clamp_min(1)).clamp(0, 1) for c in cells]
    rows, cols = (p[0] + p[1], p[2] + p[3]), (p[0] + p[2], p[1] + p[3])
    mutual = sum(torch.where(q > 0, q * torch.log((q / (r * c)).clamp_min(1e-300)), torch.zeros_like(q))
                 for q, r, c in ((p[0], rows[0], cols[0]), (p[1], rows[0], cols[1]),
                                 (p[2], rows[1], cols[0]), (p[3], rows[1], cols[1])))
    joint = sum(_entropy_terms(q) for q in p)
    return torch.where(joint > 0, mutual.clamp_min(0) / joint.clamp_min(1e-300), torch.zeros_like(joint))


def chance_iou(active: torch.Tensor, cls: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """IoU that a map independent of the class would get with the same active area: with a and p the
    unit's active and the class's pixel fractions among ``total`` pixels, E|A & S| = a p and
    E|A | S| = a + p - a p. Any matching shapes (counts)."""
    a, p = active / total.clamp_min(1), cls / total.clamp_min(1)
    return a * p / (a + p - a * p).clamp_min(1e-12)


def lift(iou: float, chance: float) -> float | None:
    """IoU over chance IoU (None when chance is 0: an empty map or an absent class)."""
    return iou / chance if chance > 0 else None
