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

from gandid import hookimpl

from .ace import best_unit_ace, check_class_names, read_ace_result
from .did import read_did_result

BACKGROUND = ("unlabelled", "unlabeled", "background")
CALLS = {"disentangled": "disentangled", "type2_misablation": "type 2: mis-ablation",
         "type1_deactivating": "type 1: deactivating",
         "uncertain": "uncertain (an interval contains a threshold)"}  # how the report names each call


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
        self.plot(ctx, ace, result)
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

    def plot(self, ctx, ace, result):
        from gandid.plotting import pyplot

        plt = pyplot()

        names = list(result["classes"])
        if not names:
            return
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
        for i, name in enumerate(names):  # Figure 5: how concentrated each class's ACE is
            pos = sorted((a for a in best_unit_ace(ace["classes"][name]) if a > 0), reverse=True)
            total = sum(pos) or 1.0
            ax1.plot(range(1, len(pos) + 1), [100 * sum(pos[:k]) / total for k in range(1, len(pos) + 1)], "o-",
                     ms=3, color=f"C{i % 10}", label=f"{name} ({CALLS.get(result['classes'][name]['call'])})")
        ax1.set(title="cumulative share of positive ACE", xlabel="top-k units", ylabel="% of positive ACE",
                xscale="log", ylim=(0, 105))
        width = 0.8 / max(1, len(names))  # Figure 6: what replaces the ablated class
        others = sorted({k for n in names for k in result["classes"][n]["area_gain"]})
        for i, name in enumerate(names):
            gains = [100 * result["classes"][name]["area_gain"].get(k, 0.0) for k in others]
            ax2.bar([x + i * width for x in range(len(others))], gains, width=width, color=f"C{i % 10}")
        ax2.set_xticks([x + 0.4 - width / 2 for x in range(len(others))], others, rotation=45, fontsize=7)
        ax2.axhline(0, color="black", lw=0.5)
        ax2.set(title="area gained after ablation", ylabel="% of the ablated class's area")
        # one legend for both panels (same colours), outside the axes so it covers no bar or line
        fig.legend(*ax1.get_legend_handles_labels(), loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=7,
                   title="ablated class (call)", title_fontsize=7, frameon=False)
        fig.tight_layout()
        fig.savefig(ctx.path("entangle.png"), dpi=100, bbox_inches="tight")
        plt.close(fig)

    def evidence(self, name, e, thresholds):
        """The call's evidence as a sentence, from the numbers (formatted by the report's helpers)."""
        from gandid.report import pct

        dist = e["ace_distribution"]
        if e["call"] == "uncertain":
            return "the evidence cannot decide: " + "; ".join(e.get("uncertain_because", []))
        if e["call"] == "type1_deactivating":
            return (f"{pct(e['remaining_fraction'])} of {name} remains after ablating its top {e['units_ablated']} "
                    f"units; the top {thresholds.get('top_share_units', 20)} units hold {pct(dist['top_share'])} "
                    f"of its positive ACE (flatness {dist['flatness']:.2f})")
        if e["call"] == "type2_misablation":
            return (f"{name} is removed ({pct(e['remaining_fraction'])} remains) but "
                    + ", ".join(f"{k} gains {pct(v)} of its area" for k, v in e["emerging"].items()))
        return (f"{name} is removed ({pct(e['remaining_fraction'])} remains) and no other class gains "
                f"{pct(thresholds.get('emerge_threshold', 0.2))} of its area")

    def report_findings(self, result):
        from gandid.report import Finding, anchor, esc, link, pct

        groups = {call: [(n, e) for n, e in result["classes"].items() if e["call"] == call] for call in CALLS}
        found = []
        if groups["disentangled"]:
            found.append(Finding("<b>Disentangled</b> (removed by ablation, nothing emerges): " + ", ".join(
                f"{link(anchor('entangle', n), n)} ({esc(pct(e['remaining_fraction']))} remains)"
                for n, e in groups["disentangled"]) + ".", "entangle"))
        if groups["type2_misablation"]:
            found.append(Finding("<b>Type 2, mis-ablation</b> (removed, another class emerges in its place; its "
                                 "gain as a share of the ablated class's area): "
                                 + "; ".join(f"{link(anchor('entangle', n), n)} → " + ", ".join(
                                     f"{esc(k)} +{esc(pct(v))}" for k, v in e["emerging"].items())
                                     for n, e in groups["type2_misablation"]) + ".", "entangle"))
        if groups["type1_deactivating"]:
            top = result["thresholds"].get("top_share_units", 20)
            found.append(Finding("<b>Type 1, deactivating</b> (survives the ablation of its top units; share that "
                                 f"remains, and the top {top} units' share of its positive ACE): " + ", ".join(
                f"{link(anchor('entangle', n), n)} {esc(pct(e['remaining_fraction']))} remains "
                f"(ACE share {esc(pct(e['ace_distribution']['top_share']))})"
                for n, e in groups["type1_deactivating"]) + ".", "entangle"))
        if groups["uncertain"]:
            found.append(Finding("<b>Uncertain</b> (a 95% interval of the evidence contains its threshold, so no type "
                                 "is called): " + "; ".join(f"{link(anchor('entangle', n), n)}: "
                                                            + esc("; ".join(e["uncertain_because"]))
                                                            for n, e in groups["uncertain"]) + ".", "entangle"))
        return found

    def report_section(self, result, out_dir):
        from gandid.report import anchor, esc, image, pct, table

        th = result["thresholds"]
        rows = [(name, CALLS.get(e["call"], e["call"]),
                 pct(e["remaining_fraction"]) + (f" [{pct(e['remaining_ci95'][0])}, {pct(e['remaining_ci95'][1])}]"
                                                 if e.get("remaining_ci95") else ""),
                 pct(e["ace_distribution"]["top_share"]),
                 f"{e['top_vs_second']['top']}" + (" (overwhelming)" if e["top_vs_second"]["overwhelming"] else ""),
                 self.evidence(name, e, th)) for name, e in result["classes"].items()]
        return (f"<p>A class <b>survives</b> when more than {esc(pct(th['survive_threshold']))} of its area remains "
                f"after ablating its top units (type 1); a removed class is <b>mis-ablated</b> (type 2) when another "
                f"class gains at least {esc(pct(th['emerge_threshold']))} of its area, else <b>disentangled</b>. "
                f"Background classes ({esc(', '.join(th.get('background', [])))}) never count as emerging. A call "
                "whose evidence has a 95% interval (bootstrap over samples) containing its threshold is reported as "
                "<b>uncertain</b> instead.</p>"
                + table(["class", "call", "remains", f"top-{th.get('top_share_units', 20)} ACE share",
                         "top summed-ACE class", "evidence"], rows,
                        row_ids=[anchor("entangle", n) for n in result["classes"]])
                + image("entangle.png", "ACE concentration and what replaces each ablated class"))


@hookimpl
def gandid_register_analyses(register):
    register("entangle", Entangle, description="entanglement taxonomy: disentangled / type 1 / type 2, with evidence")
