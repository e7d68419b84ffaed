"""``ace.json``'s published type, as did and entangle read it: the result checked for this version, and
each unit's ACE where the screen measured only some units exactly."""
from __future__ import annotations

from typing import TypedDict

from gandid.analysis import read_result

RESULT_VERSION = 3  # 2: standard errors, intervals and top-k stability; 3: screening, decisive units


class AceClassResult(TypedDict):
    """One class's ACE. Effects are changes in the fraction of image pixels of the class. Per-unit lists
    hold None for units the screen did not send to the exact counterfactuals (see :func:`best_unit_ace`)."""

    unit_ace: list[float | None]  # (U,) per-unit ACE: E[s_c(inserted)] - E[s_c(ablated)], exact
    unit_ace_se: list[float | None]  # (U,) its standard error over latents (paired)
    unit_ace_ci95: list[list[float] | None]  # (U, 2) t interval
    unit_ace_estimate: list[float] | None  # (U,) the screen's first-order estimate (class-score units), or None
    screen: dict  # {"enabled", "measured", "units", "exhaustive", "initial", "widened_to", "edge_rank", "edge",
    #                "fallback" (why every unit was measured, or None), "spearman", "fit"}
    decisive_units: list[dict]  # [{"unit", "removed_fraction"}]: one ablation removes >= DECISIVE of the class
    topk_stability: dict[str, float]  # top-k unit -> share of latent resamples keeping it in the top k
    rank_beats_next: list[float]  # rank r of the top k: share of resamples where it beats rank r + 1
    rank_distinguishable: list[bool]  # rank_beats_next >= 0.95
    ranking: list[int]  # units by ACE, largest first
    insert_value: list[float]  # (U,) each unit's insertion value k_u
    curve_k: list[int]  # k of the top-k curves (0 first)
    topk_removed_fraction: list[float]  # share of the class removed by ablating the top k
    topk_ace: list[float]  # ACE of the top-k set, per k after 0
    base_area: float  # the class's mean area without intervention
    context_gain: dict  # {context class: {"mean_gain", "count"}}: insertion at one pixel, by what was there
    alpha_opt: dict  # GAN Dissection's continuous alpha: {"alpha", "delta_history", "final_delta", ...}


class AceResult(TypedDict):
    """``ace.json``, as did and entangle read it (:func:`read_ace_result`)."""

    version: int
    layer: str
    samples: int
    class_area: dict[str, float]  # mean fraction of image pixels per class
    classes: dict[str, AceClassResult]


def read_ace_result(data: dict) -> AceResult:
    """``ace``'s result checked for the version and keys this module writes."""
    return read_result(data, "ace", RESULT_VERSION, AceResult)


def best_unit_ace(entry: AceClassResult) -> list[float]:
    """(U,) each unit's ACE: the exact value where it was measured, else the screen's estimate mapped onto
    the exact scale by the straight line fitted over the measured units (``screen["fit"]``)."""
    fit = entry.get("screen", {}).get("fit") or {"intercept": 0.0, "slope": 0.0}
    estimate = entry.get("unit_ace_estimate") or [0.0] * len(entry["unit_ace"])
    return [a if a is not None else fit["intercept"] + fit["slope"] * e for a, e in zip(entry["unit_ace"], estimate)]
