"""What `gandid serve` shows of DID: each ablated class's table of area DIDs on its class card (the explorer
contract of docs/serve.md, "What an analysis shows"). Imported by ``DID.explorer`` only."""
from __future__ import annotations

FACT = {"format": "pct", "digits": 0}


def explorer_view(result: dict) -> dict:
    """did.json -> the explorer's description; the sites it controlled are the ones the explorer's DID arms
    control for an edit at the same layer."""
    view = {"classes": {"missing": "No DID for this class.",
                        "entries": {cls: {"blocks": [_table(cls, d)]} for cls, d in (result.get("classes") or {}).items()}}}
    if result.get("layer") and result.get("sites") is not None:
        view["controlled_sites"] = {"layer": result["layer"], "sites": list(result["sites"])}
    return view


def _table(cls: str, d: dict) -> dict:
    units = d.get("units") or []
    summary = [{"text": f"ablating {len(units)} units ({', '.join(map(str, units))}) on {d.get('samples')} samples"},
               {"text": "mean |ΔY|", "value": d.get("pixel_did_mean_abs"), "digits": 4}]
    remaining = (d.get("ablation") or {}).get("remaining")
    if remaining:
        summary.append({"text": f"{cls} remaining", "value": remaining.get("mean"), "interval": remaining.get("ci95"),
                        **FACT})
    rows = []
    for label, a in (d.get("area_did") or {}).items():
        ablated, significant = label == cls, bool(a.get("significant"))
        rows.append({"highlight": ablated, "cells": [
            {"label": label, "tag": {"text": "ablated"} if ablated else None},
            {"value": a.get("mean"), "format": "pp", "sign": True, "strong": significant},
            {"value": a.get("ci95"), "format": "pp"},
            {"value": a.get("q"), "format": "p"},
            {"tag": {"text": "significant", "tip": "q below the false discovery rate"} if significant else None},
        ]})
    return {"kind": "table", "title": "Difference in differences", "summary": summary, "rows": rows, "columns": [
        {"label": "class"}, {"label": "DID of area", "num": True}, {"label": "95% interval", "num": True},
        {"label": "q", "num": True}, {"label": ""}]}
