"""What `gandid serve` shows of entangle: each class's call as a badge on its card, with the evidence (the
explorer contract of docs/serve.md, "What an analysis shows"); calls are named as report.html names them.
Imported by ``Entangle.explorer`` only: loading the plugin does not import gandid.report."""
from __future__ import annotations

import math

from gandid.report import fmt, pct

from .report import CALLS

TONES = {"disentangled": "good", "type2_misablation": "bad", "type1_deactivating": "warn", "uncertain": "neutral"}


def explorer_view(result: dict) -> dict:
    """entangle.json -> the explorer's description."""
    return {"classes": {"entries": {cls: _entry(cls, e) for cls, e in (result.get("classes") or {}).items()}}}


def _show(x, format_=None) -> str:
    """``format_(x)`` (the report's percentage by default), or "—" for a missing or infinite number."""
    format_ = format_ or pct
    return format_(x) if isinstance(x, (int, float)) and math.isfinite(x) else "—"


def _entry(cls: str, e: dict) -> dict:
    call = CALLS.get(e.get("call"), e.get("call"))
    ci = e.get("remaining_ci95")
    dist, tvs = e.get("ace_distribution"), e.get("top_vs_second") or {}
    rows = [
        ("call", call),
        ("evidence", e.get("why") or "—"),
        ("remains after ablation", _show(e.get("remaining_fraction"))
         + (f" [{_show(ci[0])}, {_show(ci[1])}]" if isinstance(ci, list) and len(ci) == 2 else "")),
        ("emerging", ", ".join(f"{k} +{_show(v)} of {cls}'s area" for k, v in (e.get("emerging") or {}).items())
         or "none"),
        ("top-share of positive ACE", f"{_show(dist.get('top_share'))} (flatness "
                                      f"{_show(dist.get('flatness'), lambda x: fmt(x, 2))})" if dist else "—"),
        ("summed ACE of its units", f"{tvs['top']} first, {tvs.get('second') or '—'} second, ratio "
                                    f"{_show(tvs.get('ratio'), lambda x: fmt(x, 1))}"
                                    + (" (overwhelming)" if tvs.get("overwhelming") else "") if tvs.get("top") else "—"),
    ]
    return {"badge": {"text": call, "tone": TONES.get(e.get("call"), "neutral")},
            "blocks": [{"kind": "facts", "title": "Entanglement", "rows": [{"label": k, "value": v} for k, v in rows]}]}
