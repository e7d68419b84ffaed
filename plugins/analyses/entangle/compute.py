"""`entangle`: the DID paper's taxonomy of entanglement under ablation, automated (its sec. 4.2, 5.2).

For each class c, from the ACE and DID results:
- the distribution of per-unit ACE: share of the total positive ACE held by the top 20 units and
  its normalised entropy (1 = flat);
- the ranking of classes by the summed ACE of c's ablated units (top class vs second, the ratio:
  overwhelming or marginal);
- after ablating c's top-k units (the DID's natural ablated arm): the fraction of c that remains and
  the classes that emerge (area gained relative to c's original area; background classes excluded).
Calls: ``type1_deactivating`` when c survives the ablation (its effect is spread over many units),
``type2_misablation`` when c is removed but other classes emerge in its place, ``disentangled``
when c is removed and nothing emerges. Thresholds are options; the evidence goes with every call.
Where ace screened its units, per-unit ACE is the exact value where measured and ace's calibrated
estimate elsewhere (:func:`gandid_plugins.analyses.ace.best_unit_ace`).
"""
from __future__ import annotations

import math

import torch

from ..ace import best_unit_ace, check_class_names, read_ace_result
from ..did import read_did_result
from . import report

BACKGROUND = ("unlabelled", "unlabeled", "background")


class Entangle:
    """Options: survive_threshold (remaining fraction above which c survives, default 0.5),
    emerge_threshold (gain of another class, relative to c's area, default 0.2), overwhelming_ratio
    (top/second summed ACE, default 2), top_share_units (20), background (classes whose gain is not
    emergence; default: the segmenter's ``background`` attribute plus unlabelled/background)."""

    requires = ("ace", "did")

    def __init__(self, survive_threshold: float = 0.5, emerge_threshold: float = 0.2,
                 overwhelming_ratio: float = 2.0, top_share_units: int = 20, background: list[str] | None = None):
        for name, value in (("survive_threshold", survive_threshold), ("emerge_threshold", emerge_threshold)):
            if not 0 < value < 1:
                raise ValueError(f"entangle: {name} must be in (0, 1) (a fraction of the class's area), got {value}")
        if not overwhelming_ratio >= 1:
            raise ValueError(f"entangle: overwhelming_ratio must be at least 1 (top over second summed ACE), got "
                             f"{overwhelming_ratio}")
        if top_share_units < 1:
            raise ValueError(f"entangle: top_share_units must be at least 1, got {top_share_units}")
        self.survive_threshold, self.emerge_threshold = survive_threshold, emerge_threshold
        self.overwhelming_ratio, self.top_share_units = overwhelming_ratio, top_share_units
        self.background = tuple(background) if background is not None else None

    def check(self, generator, segmenter, layers):
        """Before any work: the background classes given exist in the segmenter's vocabulary."""
        check_class_names("entangle", self.background, segmenter, what="background")

    def run(self, ctx):
        ace, did = read_ace_result(ctx.results["ace"]), read_did_result(ctx.results["did"])
        if self.background is None:  # the segmenter may name its background classes (walls, floor, ...)
            self.background = tuple(getattr(ctx.segmenter, "background", ())) + BACKGROUND
        result = {"thresholds": {"survive_threshold": self.survive_threshold,
                                 "emerge_threshold": self.emerge_threshold,
                                 "overwhelming_ratio": self.overwhelming_ratio,
                                 "top_share_units": self.top_share_units, "background": list(self.background)},
                  "classes": {}}
        for name, d in did["classes"].items():
            result["classes"][name] = self.classify(name, ace, d)
        report.plot(ctx, ace, result)
        return result

    def straddles(self, name, ablation, emerged) -> list[str]:
        """The pieces of evidence whose 95% interval (did's ``ablation``) contains the threshold the call
        compares them with: the share of the class that remains, and each non-background class's gain."""
        if not ablation or ablation.get("remaining") is None:
            return []
        out = []
        lo, hi = ablation["remaining"]["ci95"]
        if lo <= self.survive_threshold <= hi:
            out.append(f"the share of {name} that remains, [{lo:.0%}, {hi:.0%}], contains {self.survive_threshold:.0%}")
        elif hi < self.survive_threshold:  # removed: whether something emerged decides between type 2 and none
            gains = {other: ablation["gain"][other]["ci95"] for other in emerged}
            if any(g_lo > self.emerge_threshold for g_lo, _ in gains.values()):
                return []  # one class clearly emerges: type 2 whatever the borderline others do
            for other, (g_lo, g_hi) in gains.items():
                if g_lo <= self.emerge_threshold <= g_hi:
                    out.append(f"the gain of {other}, [{g_lo:.0%}, {g_hi:.0%}] of {name}'s area, contains "
                               f"{self.emerge_threshold:.0%}")
        return out

    def distribution(self, unit_ace):
        pos = torch.tensor([a for a in unit_ace if a > 0], dtype=torch.float64).sort(descending=True).values
        total = float(pos.sum())
        if total <= 0:
            return {"top_share": 0.0, "flatness": 1.0, "positive_units": 0}
        share = float(pos[: self.top_share_units].sum()) / total
        p = pos / total
        entropy = float(-(p * p.log()).sum())
        flatness = entropy / math.log(len(pos)) if len(pos) > 1 else 0.0
        return {"top_share": share, "flatness": flatness, "positive_units": len(pos)}

    def classify(self, name, ace, d):
        units = d["units"]
        summed = {other: sum(best[u] for u in units) for other, e in ace["classes"].items()
                  for best in [best_unit_ace(e)]}
        ranked = sorted(summed.items(), key=lambda kv: -kv[1])
        top, second = ranked[0], ranked[1] if len(ranked) > 1 else (None, 0.0)
        ratio = top[1] / second[1] if second[1] > 0 else math.inf
        before, after = d["arm_mean_area"]["original"], d["arm_mean_area"]["intervened"]
        base = before[name]
        remaining = after[name] / base if base > 0 else 0.0
        emerged = {other: (after[other] - before[other]) / base for other in before
                   if other != name and other not in self.background and base > 0}
        emerging = sorted(((k, v) for k, v in emerged.items() if v >= self.emerge_threshold), key=lambda kv: -kv[1])
        dist = self.distribution(best_unit_ace(ace["classes"][name]))
        uncertain = self.straddles(name, d.get("ablation"), emerged)
        if uncertain:
            call = "uncertain"
            why = f"the evidence cannot decide: {'; '.join(uncertain)}"
        elif remaining > self.survive_threshold:
            call = "type1_deactivating"
            why = (f"{remaining:.0%} of {name} remains after ablating its top {len(units)} units; "
                   f"the top {self.top_share_units} units hold {dist['top_share']:.0%} of its positive ACE "
                   f"(flatness {dist['flatness']:.2f})")
        elif emerging:
            call = "type2_misablation"
            why = (f"{name} is removed ({remaining:.0%} remains) but "
                   + ", ".join(f"{k} gains {v:.0%} of its area" for k, v in emerging))
        else:
            call = "disentangled"
            why = f"{name} is removed ({remaining:.0%} remains) and no other class gains {self.emerge_threshold:.0%}"
        return {"call": call, "why": why, "uncertain_because": uncertain, "remaining_fraction": remaining,
                "remaining_ci95": ((d.get("ablation") or {}).get("remaining") or {}).get("ci95"),
                "emerging": dict(emerging),
                "area_gain": emerged, "ace_distribution": dist,
                "summed_ace_ranking": [{"class": k, "summed_ace": v} for k, v in ranked],
                "top_vs_second": {"top": top[0], "second": second[0], "ratio": ratio,
                                  "overwhelming": ratio >= self.overwhelming_ratio},
                "units_ablated": len(units)}

    # -- report.html (drawn by .report; the core calls these) ----------------------------------
    def report_findings(self, result):
        return report.findings(result)

    def report_section(self, result, out_dir):
        return report.section(result, out_dir)

    # -- gandid serve (described by .explore; the explorer calls it) -----------------------------
    def explorer(self, result):
        from .explore import explorer_view

        return explorer_view(result)
