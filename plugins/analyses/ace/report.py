"""ace's part of report.html: the findings, the section per class, and the figure per class
(``ace_<class>.png``, drawn at the end of the run).

gandid.report and matplotlib are imported inside the functions: loading the plugin imports neither.
"""
from __future__ import annotations

from .results import best_unit_ace

REMOVES = 0.5  # the findings say ablation removes a class when the top-k units take at least this much of it


def plot(ctx, result):
    """Per class: each unit's ACE by rank (grey where the screen's estimate stands in) and the top-k
    ablation curve."""
    from gandid.plotting import pyplot

    plt = pyplot()

    for name, entry in result["classes"].items():
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
        best = best_unit_ace(entry)  # exact where measured, else the screen's calibrated estimate
        ranked = sorted(range(len(best)), key=lambda u: -best[u])
        exact = [entry["unit_ace"][u] is not None for u in ranked]
        colours = ["#4c72b0" if e else "#c7c7c7" for e in exact]
        ax1.bar(range(len(ranked)), [100 * best[u] for u in ranked], width=1.0, color=colours)
        ax1.axhline(0, color="black", lw=0.5)
        screened = "" if all(exact) else f"\nblue: {sum(exact)} measured exactly; grey: estimated by the screen"
        ax1.set_title(f"ACE of each unit on {name}{screened}", fontsize=9)
        ax1.set(xlabel="unit rank", ylabel="ACE (pp of image pixels)")
        removed = [100 * r for r in entry["topk_removed_fraction"]]
        ax2.plot(entry["curve_k"], removed, "o-", color="#c44e52")
        ax2.set_title(f"ablating the top-k units: {name} removed", fontsize=9)
        ax2.set(xlabel="k",
                ylabel=f"% of {name} removed", ylim=(min(-5, min(removed)), 105))
        fig.tight_layout()
        fig.savefig(ctx.path(f"ace_{name}.png"), dpi=100)
        plt.close(fig)


def findings(result, decisive_share: float) -> list:
    """``decisive_share``: the share of a class one ablation removes for its unit to count as decisive."""
    from gandid.report import Finding, anchor, esc, interval, link, pct, pp

    classes = result["classes"]
    if not classes:
        return ["No class was large enough to measure (see <code>min_area</code>)."]
    ks = {e["curve_k"][-1] for e in classes.values()}
    k = f"{ks.pop()} " if len(ks) == 1 else ""
    order = sorted(classes.items(), key=lambda kv: -kv[1]["topk_removed_fraction"][-1])

    def item(name, e):
        removed = e["topk_removed_fraction"][-1]
        grows = " (it grows)" if removed < 0 and pct(removed) != "0%" else ""
        return f"{link(anchor('ace', name), name)} {esc(pct(removed))}{grows}"

    removed = [item(n, e) for n, e in order if e["topk_removed_fraction"][-1] >= REMOVES]
    kept = [item(n, e) for n, e in order if e["topk_removed_fraction"][-1] < REMOVES]
    found = []
    lead = f"Ablating each class's top {k}units (by ACE, layer <code>{esc(result['layer'])}</code>)"
    if removed:
        found.append(f"{lead} removes most of {len(removed)} of {len(classes)} classes (share of the class's "
                     "pixels removed): " + ", ".join(removed) + ".")
    if kept:
        noun = "class" if len(kept) == 1 else "classes"
        found.append(("It" if removed else lead) + f" cannot remove {len(kept)} {noun} (less than "
                     f"{esc(pct(REMOVES))} removed): " + ", ".join(kept) + ".")
    best = max(((n, u, e["unit_ace"][u]) for n, e in classes.items() for u in e["ranking"][:1]),
               key=lambda t: t[2], default=None)
    if best is not None:
        entry = classes[best[0]]
        ci = (f" {esc(interval(*entry['unit_ace_ci95'][best[1]]))}" if "unit_ace_ci95" in entry else "")
        found.append(Finding(f"Strongest single unit: unit {best[1]} on {esc(best[0])}, ACE "
                             f"<b>{esc(pp(best[2]))}</b>{ci} of image pixels (inserted minus ablated, 95% interval "
                             "over latents).", anchor("ace", best[0])))
    decisive = [f"{link(anchor('ace', n), n)}: unit{'s' if len(d) > 1 else ''} "
                + ", ".join(f"{x['unit']} ({esc(pct(x['removed_fraction']))})" for x in d)
                for n, e in classes.items() for d in [e.get("decisive_units") or []] if d]
    if decisive:
        found.append(f"<b>Decisive units</b>, whose ablation alone removes at least {esc(pct(decisive_share))} of a "
                     "class (share removed): " + "; ".join(decisive) + ".")
    unstable = [f"{esc(n)} (rank {beats.index(False) + 1})" for n, e in classes.items()
                for beats in [e.get("rank_distinguishable", [])] if False in beats]
    if unstable:
        found.append("Ranks that resampling the latents cannot tell from the next one (first such rank): "
                     + ", ".join(unstable) + ".")
    return found


def section(result, out_dir, decisive_share: float) -> str:
    from gandid.report import anchor, esc, fmt, image, interval, pct, pp, table

    parts = [f"<p>Layer <code>{esc(result['layer'])}</code>, {esc(result['samples'])} latents per estimate. "
             "ACE is the change in the fraction of image pixels of the class between inserting and ablating "
             "a unit, in percentage points (pp).</p>"]
    for name, e in result["classes"].items():
        top = e["ranking"][:5]
        decisive = {d["unit"]: d["removed_fraction"] for d in e.get("decisive_units") or []}
        removed, k = e["topk_removed_fraction"][-1], e["curve_k"][-1]
        base = e.get("base_area", result["class_area"].get(name))
        parts.append(f"<h3 id='{esc(anchor('ace', name))}'>{esc(name)}</h3>")
        area = f" (it covers {esc(pct(base, 1))} of the pixels)" if base is not None else ""
        parts.append(f"<p>Ablating the top {k} units removes <b>{esc(pct(removed))}</b> of {esc(name)}{area}; "
                     f"the alpha optimisation turned on {len(e['alpha_opt']['units_above_half'])} units "
                     f"(final soft ACE {esc(pp(e['alpha_opt']['final_delta']))}).</p>")
        screen = e.get("screen") or {}
        if screen.get("enabled"):
            widened = (f", widened from {screen['initial']} because the exact top {len(e.get('topk_stability', {}))} "
                       "reached the screened set's edge" if screen.get("widened_to") else "")
            if screen.get("fallback"):
                widened += f"; then {esc(screen['fallback'])}"
            parts.append(f"<p class='muted'>Screened: {screen['measured']} of {screen['units']} units measured "
                         f"exactly{widened}, the rest ranked by the first-order estimate (rank correlation of "
                         f"estimate and exact ACE over the measured units: {fmt(screen.get('spearman'), 2)}).</p>")
        if decisive:
            parts.append(f"<p><b>Decisive units</b> (one ablation removes at least {esc(pct(decisive_share))} of "
                         f"{esc(name)}): " + ", ".join(f"unit {u} ({esc(pct(r))})" for u, r in decisive.items())
                         + ".</p>")
        stability, beats = e.get("topk_stability", {}), e.get("rank_distinguishable", [])
        k_top = len(stability)
        rows = [(i + 1, u, pp(e["unit_ace"][u]), interval(*e["unit_ace_ci95"][u]) if "unit_ace_ci95" in e else "n/a",
                 pct(stability[str(u)]) if str(u) in stability else "n/a",
                 ("yes" if beats[i] else "no") if i < len(beats) else "",
                 f"decisive ({pct(decisive[u])})" if u in decisive else "")
                for i, u in enumerate(top)]
        tables = [f"<div><p class='muted'>The top {len(top)} units: 95% interval over latents; how often the unit "
                  f"stays in the top {k_top} when the latents are resampled; whether its rank beats the next "
                  "one in 95% of resamples</p>"
                  + table(["rank", "unit", "ACE", "95% interval", f"in top {k_top}", "beats next", "ablated alone"], rows)
                  + "</div>"]
        ctx_rows = sorted(e["context_gain"].items(), key=lambda kv: -kv[1]["mean_gain"])
        if ctx_rows:
            tables.append(f"<div><p class='muted'>Top units inserted at one location: mean gain of {esc(name)} "
                          "by the class found there</p>"
                          + table(["context class", "mean gain", "locations"],
                                  [(c, pp(v["mean_gain"], 3), v["count"]) for c, v in ctx_rows]) + "</div>")
        parts.append("<div class='grid'>" + "".join(tables) + "</div>")
        parts.append(image(f"ace_{name}.png", f"ACE per unit (pp) and ablation curve, {name}"))
    return "\n".join(parts)
