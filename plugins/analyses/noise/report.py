"""noise's part of report.html: the findings, the section's table, and the figure (``noise.png``,
drawn during the run).

gandid.report and matplotlib are imported inside the functions: loading the plugin imports neither.
"""
from __future__ import annotations


def plot(ctx, result):
    """``noise.png``: each layer's variation across noise draws against the share of units ablated."""
    from gandid.plotting import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for i, (layer, entry) in enumerate(result["layers"].items()):
        x = [100 * f for f in entry["fractions"]]
        ax.errorbar(x, entry["variation"], yerr=[1.96 * s for s in entry["variation_se"]], fmt="o-", ms=3,
                    capsize=2, color=f"C{i % 10}", label=layer)
    ax.set(xlabel=f"units ablated (% of the layer, by {result['order']})",
           ylabel="std across noise draws", title="image variation from noise")
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(ctx.path("noise.png"), dpi=100)
    plt.close(fig)


def findings(result) -> list:
    from gandid.report import Finding, esc

    if not result.get("applicable"):
        return []
    found = []
    for layer, e in result["layers"].items():
        if e["ratio_to_none"] is not None and len(e["variation"]) > 1:
            share, ratio = 100 * e["fractions"][-1], e["ratio_to_none"][-1]
            found.append(Finding(f"Noise at <b>{esc(layer)}</b>: ablating {share:.0f}% of its units multiplies "
                                 f"the images' variation across noise draws by {ratio:.2f}.", "noise"))
    return found


def section(result, out_dir) -> str:
    from gandid.report import esc, image, table

    if not result.get("applicable"):
        return f"<p>Not applicable: {esc(result.get('why', ''))}.</p>"
    rows = []
    for layer, e in result["layers"].items():
        for f, k, v, s in zip(e["fractions"], e["units_ablated"], e["variation"], e["variation_se"]):
            rows.append((layer, f"{100 * f:.1f}%", str(k), f"{v:.4f} ± {1.96 * s:.4f}"))
    return (f"<p>Each of {result['samples']} latents generated under {result['draws']} noise draws; the standard "
            "deviation across draws of every pixel (image values in [-1, 1]), averaged over pixels, channels and "
            f"latents (± 95% normal interval over latents), as more units are ablated (by {esc(result['order'])}).</p>"
            + table(["layer", "units ablated", "count", "variation"], rows)
            + image("noise.png", "image variation from noise as units are ablated"))
