"""entangle's part of report.html: the calls by name, the findings, the section's table with each
call's evidence, and the figure (``entangle.png``, drawn during the run).

gandid.report and matplotlib are imported inside the functions: loading the plugin imports neither.
"""
from __future__ import annotations

from ..ace import best_unit_ace

CALLS = {"disentangled": "disentangled", "type2_misablation": "type 2: mis-ablation",
         "type1_deactivating": "type 1: deactivating",
         "uncertain": "uncertain (an interval contains a threshold)"}  # how the report names each call


def plot(ctx, ace, result):
    """``entangle.png``: how concentrated each class's ACE is, and what replaces it when ablated."""
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


def evidence(name, e, thresholds) -> str:
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


def findings(result) -> list:
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


def section(result, out_dir) -> str:
    from gandid.report import anchor, esc, image, pct, table

    th = result["thresholds"]
    rows = [(name, CALLS.get(e["call"], e["call"]),
             pct(e["remaining_fraction"]) + (f" [{pct(e['remaining_ci95'][0])}, {pct(e['remaining_ci95'][1])}]"
                                             if e.get("remaining_ci95") else ""),
             pct(e["ace_distribution"]["top_share"]),
             f"{e['top_vs_second']['top']}" + (" (overwhelming)" if e["top_vs_second"]["overwhelming"] else ""),
             evidence(name, e, th)) for name, e in result["classes"].items()]
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
