"""``did.json``'s published type, as entangle reads it, the four arms' names, and the controlled
normalisation in words."""
from __future__ import annotations

from typing import TypedDict

from gandid.analysis import read_result
from gandid.intervene import ARM_TITLES

ARMS = tuple(ARM_TITLES)  # gandid.intervene.Arms's four images, by field name; results are keyed by them
RESULT_VERSION = 3  # 2: BCa intervals, p and q per area DID; 3: ablation effect with intervals


class AreaDid(TypedDict):
    mean: float  # DID of the class's area, as a fraction of image pixels
    ci95: list[float]  # BCa bootstrap 95% interval over samples
    p: float  # bootstrap p-value of "no effect"
    q: float  # Benjamini-Hochberg adjusted across the classes of this ablation
    significant: bool  # q below the false discovery rate (option fdr, 0.05)


class DidClassResult(TypedDict):
    """One ablated class's DID."""

    units: list[int]  # the class's top-k ACE units, ablated
    samples: int
    area_did: dict[str, AreaDid]  # per class j: [A_j(β',u') - A_j(β',u)] - [A_j(β,u') - A_j(β,u)]
    arm_mean_area: dict[str, dict[str, float]]  # arm name (ARMS) -> class -> mean fraction of image pixels
    pixel_did_mean_abs: float  # mean |ΔY| over pixels, channels and samples (image values in [-1, 1])
    ablation: dict  # what the ablation itself did, with bootstrap 95% intervals (see ablation_effect)


class DidResult(TypedDict):
    """``did.json``, as entangle reads it (:func:`read_did_result`)."""

    version: int
    layer: str
    sites: list[str]
    # also "site_kinds": list[str], the sites' norm kinds (not required: results written before it lack it)
    # also "uncontrolled": {"sites", "kinds", "why"} when norm sites after the layer are of kinds the engine
    # cannot control (batch norm in eval mode), else absent
    top_k: int
    arm_titles: dict[str, str]  # arm name -> Y(β,u)-style title
    classes: dict[str, DidClassResult]


NORM_NAMES = {"pixelnorm": "pixel norm", "instancenorm": "instance norm", "demod": "weight demodulation",
              "batchnorm": "batch norm (eval mode)"}


def norm_name(kinds) -> str:
    """The controlled normalisation in words; results written before ``site_kinds`` existed are pixel norm's."""
    if kinds is None:
        return "pixel norm"
    return " and ".join(NORM_NAMES.get(k, k) for k in kinds) or "normalisation"


def read_did_result(data: dict) -> DidResult:
    """``did``'s result checked for the version and keys this module writes."""
    return read_result(data, "did", RESULT_VERSION, DidResult)
