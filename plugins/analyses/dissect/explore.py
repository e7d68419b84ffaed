"""What `gandid serve` shows of a dissection: its Units columns, unit pages and Paint's label sets (the
explorer contract of docs/serve.md, "What an analysis shows"). Imported by ``Dissect.explorer`` only."""
from __future__ import annotations


def explorer_view(result: dict) -> dict:
    """dissect.json -> the explorer's description: per layer, each unit's label, IoU and lift, its facts and
    stored top images; the units of each label for Paint."""
    units, sets = {}, {}
    for layer, entry in (result.get("layers") or {}).items():
        by_unit = _by_unit(entry.get("units") or [])
        interpretable = [e["unit"] for e in by_unit if e and e.get("interpretable")]

        def col(key):
            return [e.get(key) if e else None for e in by_unit]

        units[layer] = {
            "columns": [
                {"key": "label", "label": "label", "format": "text", "sort": "asc", "values": col("label"),
                 "tag": {"text": "interp.", "tip": "IoU above the dissection threshold", "units": interpretable}},
                {"key": "iou", "label": "IoU", "digits": 3, "values": col("iou")},
                {"key": "iou_lift", "label": "lift", "tip": "IoU over the IoU of chance", "format": "times",
                 "digits": 1, "values": col("iou_lift")},
            ],
            "flag": {"label": "interpretable", "units": interpretable, "highlight": True},
            "headline": "label",
            "sections": [
                {"kind": "facts", "rows": [
                    {"label": "label", "format": "text", "values": col("label")},
                    {"label": "IoU", "digits": 4, "values": col("iou")},
                    {"label": "chance IoU", "digits": 4, "values": col("chance_iou")},
                    {"label": "lift over chance", "format": "times", "digits": 2, "values": col("iou_lift")},
                    {"label": "threshold", "digits": 3, "values": col("threshold")},
                    {"label": "interpretable", "format": "yesno", "values": [bool(e and e.get("interpretable"))
                                                                             for e in by_unit]},
                ]},
                {"kind": "images", "title": "Top images", "samples": col("top_seeds"), "thresholds": col("threshold"),
                 "missing": "No stored top images for this unit."},
            ],
        }
        sets[layer] = _label_groups(e for e in by_unit if e)
    return {
        "units": units,
        "absent": "No dissection of this layer.",
        "unit_sets": [{
            "key": "label", "title": "a dissection label's units", "layers": sets,
            "subset": {"label": "interpretable only", "word": "interpretable", "default": True},
            "note": "{subset}units labelled {group}", "none": "no {subset}unit labelled {group}",
            "empty": "this layer has no dissection labels",
        }],
    }


def _by_unit(entries: list) -> list:
    """The unit entries at their unit's index (None where a unit has none)."""
    out = [None] * (max((e["unit"] for e in entries), default=-1) + 1)
    for e in entries:
        out[e["unit"]] = e
    return out


def _label_groups(entries) -> list[dict]:
    """One group per label, most interpretable units first: its units and its interpretable ones."""
    groups: dict[str, dict] = {}
    for e in entries:
        if not e.get("label"):
            continue
        g = groups.setdefault(e["label"], {"name": e["label"], "units": [], "subset": []})
        g["units"].append(e["unit"])
        if e.get("interpretable"):
            g["subset"].append(e["unit"])
    for g in groups.values():
        g["text"] = f"{g['name']} ({len(g['subset'])} interpretable, {len(g['units'])} in all)"
    return sorted(groups.values(), key=lambda g: (-len(g["subset"]), g["name"]))
