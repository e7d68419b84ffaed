"""What `gandid serve` shows of ACE: a column per class in Units, a unit's ACE per class, each class's
distribution and ablation curve, and Paint's top-k units of a class (the explorer contract of
docs/serve.md, "What an analysis shows"). Imported by ``ACE.explorer`` only: loading the plugin does not
import gandid.report."""
from __future__ import annotations

import math

from gandid.report import pct, pp

PAINT_K = 5  # units a class card's paint button and Paint's k start with (at most)


def explorer_view(result: dict) -> dict:
    """ace.json -> the explorer's description."""
    layer, classes = result["layer"], result.get("classes") or {}
    return {
        "units": {layer: {
            "note": "ACE: inserted minus ablated area of the class; — where the screen did not measure the unit "
                    "exactly (hover for its estimate).",
            "columns": [*(_column(cls, entry) for cls, entry in classes.items()), _decisive_column(classes)],
            "flag": {"label": "decisive", "units": sorted({d["unit"] for e in classes.values()
                                                           for d in e.get("decisive_units") or []})},
            "sections": [_unit_table(classes)],
        }},
        "absent": f"ACE was measured at {layer}.",
        "unit_sets": [{
            "key": "class", "title": "a class's top-k ACE units", "preferred": True, "fixed_layer": True,
            "k": PAINT_K, "values_note": "insertion values from ace.json",
            "note": "top {k} ACE units of {group}", "empty": "no ACE class chosen",
            "layers": {layer: [{"name": cls, "units": list(e["ranking"]),
                                "values": [e["insert_value"][u] for u in e["ranking"]]} for cls, e in classes.items()]},
        }],
        "classes": {
            "note": f"ACE at {layer}, {result.get('samples')} latents:",
            "entries": {cls: _class_entry(cls, entry) for cls, entry in classes.items()},
        },
    }


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _estimate(entry: dict, unit: int):
    """The screen's estimate of a unit's ACE on the exact scale (the fit over the measured units), or None."""
    est = entry.get("unit_ace_estimate")
    if not isinstance(est, list) or not _num(est[unit]):
        return None
    fit = (entry.get("screen") or {}).get("fit") or {"intercept": 0.0, "slope": 0.0}
    return fit["intercept"] + fit["slope"] * est[unit]


def _column(cls: str, entry: dict) -> dict:
    values = entry["unit_ace"]
    tips = []
    for u, v in enumerate(values):
        est = None if _num(v) else _estimate(entry, u)
        tips.append(None if _num(v) else f"not measured exactly; the screen estimates {pp(est)}" if est is not None
                    else "not measured exactly")
    return {"key": f"ace:{cls}", "label": f"ACE {cls}", "format": "pp", "values": values, "tips": tips,
            "tip": f"average causal effect on {cls}: inserted minus ablated area, percentage points of the image"}


def _decisive(classes: dict) -> dict:
    """unit -> [(class, removed fraction)] for the units one ablation of which removes a class."""
    out: dict[int, list] = {}
    for cls, entry in classes.items():
        for d in entry.get("decisive_units") or []:
            out.setdefault(d["unit"], []).append((cls, d["removed_fraction"]))
    return out


def _decisive_column(classes: dict) -> dict:
    n = len(next(iter(classes.values()))["unit_ace"]) if classes else 0
    decisive = _decisive(classes)
    return {"key": "decisive", "label": "decisive", "format": "check", "tip": "one ablation of the unit removes a class",
            "values": [len(decisive.get(u, [])) for u in range(n)],
            "tips": ["; ".join(f"{c}: removes {pct(f)}" for c, f in decisive[u]) if u in decisive else None
                     for u in range(n)]}


def _unit_table(classes: dict) -> dict:
    rows = []
    for cls, e in classes.items():
        n = len(e["unit_ace"])
        rank = {u: i for i, u in enumerate(e.get("ranking") or [])}
        removes = {d["unit"]: d["removed_fraction"] for d in e.get("decisive_units") or []}
        rows.append({"cells": [
            {"class": cls},
            {"values": e["unit_ace"], "format": "pp"},
            {"values": e.get("unit_ace_se") or [None] * n, "format": "pp", "signed": False},
            {"values": e.get("unit_ace_ci95") or [None] * n, "format": "pp"},
            {"values": ["" if _num(v) else _estimate(e, u) for u, v in enumerate(e["unit_ace"])], "format": "pp",
             "muted": True},
            {"values": [f"{rank[u] + 1} of {len(rank)}" if u in rank else None for u in range(n)]},
            {"values": e.get("insert_value") or [None] * n, "digits": 3},
            {"values": [f"removes {pct(removes[u])}" if u in removes else "" for u in range(n)]},
        ]})
    num = {"num": True}
    return {"kind": "table", "title": "Average causal effect", "rows": rows, "columns": [
        {"label": "class"}, {"label": "ACE", **num}, {"label": "± se", **num}, {"label": "95% interval", **num},
        {"label": "screen estimate", **num}, {"label": "rank", **num}, {"label": "insert value", **num},
        {"label": "decisive"}]}


def top_k(entry: dict) -> int:
    """How many top units ace ranked as "the top k" (its top_k option; the last curve k)."""
    stable = len(entry.get("topk_stability") or {})
    curve = max(entry.get("curve_k") or [0])
    return stable or curve or 20


def _class_entry(cls: str, entry: dict) -> dict:
    k = top_k(entry)
    screen = entry.get("screen") or {}
    topk = entry.get("topk_ace") or []
    values = entry["unit_ace"]
    points = [(a, b) for a, b in zip(entry.get("curve_k") or [], entry.get("topk_removed_fraction") or [])
              if _num(a) and _num(b)]
    facts = [
        {"text": "mean area", "value": entry.get("base_area"), "format": "pct", "digits": 2},
        {"text": f"{screen.get('measured')} of {screen.get('units')} units measured exactly" if screen.get("enabled")
         else "every unit measured"},
        {"text": f"ACE of the top {k}:", "value": topk[min(k, len(topk)) - 1] if topk else None, "format": "pp"},
    ]
    if entry.get("decisive_units"):
        facts.append({"text": "decisive units: " + ", ".join(str(d["unit"]) for d in entry["decisive_units"])})
    return {"facts": facts, "blocks": [
        {"kind": "histogram", "values": [v for v in values if _num(v)], "format": "pp", "noun": "unit",
         "marks": [{"value": values[u], "tip": f"unit {u}: {pp(values[u])}"} for u in (entry.get("ranking") or [])[:k]
                   if _num(values[u])],
         "x_label": "ACE (pp of the image)", "y_label": "units", "empty": "no measured unit",
         "caption": f"ACE over units (exact values; ▲ the top {k})"},
        {"kind": "curve", "points": [list(p) for p in points], "tips": [f"top {a}: {pct(b, 1)} removed" for a, b in points],
         "format": "pct", "digits": 0, "y_range": [0, 1], "x_label": "top-k units ablated", "y_label": "removed",
         "caption": "share of the class removed by ablating its top k units"},
        {"kind": "paint", "text": f"paint with the top {min(k, PAINT_K)} units", "set": "class", "group": cls,
         "k": min(k, PAINT_K)},
    ]}
