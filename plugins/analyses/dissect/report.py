"""dissect's part of report.html: the findings, the section per layer with its chart of interpretable
units per class (drawn while the report is written), and the strip of top units per layer (drawn during
the run).

gandid.report and matplotlib are imported inside the functions: loading the plugin imports neither.
"""
from __future__ import annotations

from pathlib import Path


def criterion(result) -> str:
    """When a unit counts as interpretable, in words."""
    text = f"its IoU with its label exceeds {result['iou_threshold']:g}"
    if result["threshold_mode"] == "iqr":
        text += f" and its IQR exceeds {result['iqr_threshold']:g}"
    return text


def draw_strips(ctx, layer, units: int, images: int, rows):
    """``dissect_<layer>_top_units.png``: one row per unit, from ``rows`` ((entry, seeds, images,
    activation), :meth:`.compute.Dissect.strip_rows`): its top images, the thresholded map outlined."""
    from gandid.plotting import pyplot

    plt = pyplot()

    fig, axes = plt.subplots(units, images, figsize=(images * 1.3, units * 1.4), squeeze=False)
    for row, (entry, seeds, imgs, mask) in enumerate(rows):
        for k in range(images):
            ax = axes[row][k]
            ax.axis("off")
            if k < len(seeds):
                ax.imshow(((imgs[k] + 1) / 2).permute(1, 2, 0).numpy())
                ax.contour((mask[k] >= entry["threshold"]).numpy(), levels=[0.5], colors="yellow", linewidths=1)
        axes[row][0].set_title(f"unit {entry['unit']}: {entry['label']} {entry['iou']:.2f}", fontsize=7,
                               loc="left")
    fig.tight_layout()
    fig.savefig(ctx.path(f"dissect_{layer}_top_units.png"), dpi=90)
    plt.close(fig)


def findings(result) -> list:
    from gandid.report import Finding, anchor, esc, fmt

    found = []
    for layer, entry in result["layers"].items():
        counts = sorted(entry["interpretable"].items(), key=lambda kv: (-kv[1], kv[0]))
        classes = list(entry["units"][0]["iou_per_class"]) if entry["units"] else []
        none = [c for c in classes if c not in entry["interpretable"]]
        listed = ", ".join(f"{esc(k)} {v}" for k, v in counts[:12]) + (
            f" and {len(counts) - 12} more" if len(counts) > 12 else "")
        text = (f"<b>{entry['interpretable_total']} of {len(entry['units'])}</b> units of "
                f"<code>{esc(layer)}</code> are interpretable ({esc(criterion(result))})"
                + (f", for {len(counts)} classes: {listed}" if counts else "") + ".")
        if none:
            text += f" No unit for {esc(', '.join(none))}."
        found.append(Finding(text, anchor("dissect", layer)))
        if entry["units"]:
            best = max(entry["units"], key=lambda e: e["iou"])
            chance = (f", {esc(fmt(best['iou_lift'], 1))}x the {esc(fmt(best['chance_iou'], 3))} a map of the same "
                      "area would get by chance" if best.get("iou_lift") is not None else "")
            found.append(Finding(f"Best unit: unit {best['unit']} draws {esc(best['label'])} "
                                 f"(IoU {esc(fmt(best['iou'], 3))}{chance}).", anchor("dissect", layer, "units")))
    return found


def section(result, out_dir) -> str:
    from gandid.plotting import pyplot
    from gandid.report import anchor, esc, fmt, image, sig, table

    plt = pyplot()

    conditioned = (" IoU is category-conditioned: a unit's active pixels count only in images that contain the "
                   f"label's category ({esc(', '.join(result.get('categories', [])))})."
                   if result.get("category_conditioned") else "")
    parts = [f"<p>Thresholds: <code>{esc(result['threshold_mode'])}</code>; a unit is interpretable when "
             f"{esc(criterion(result))}. Chance IoU: what a map independent of the class, with the unit's active "
             f"area, would get; lift = IoU / chance IoU.{conditioned}</p>"]
    for layer, entry in result["layers"].items():
        counts = sorted(entry["interpretable"].items(), key=lambda kv: (-kv[1], kv[0]))
        parts.append(f"<h3 id='{esc(anchor('dissect', layer))}'>{esc(layer)}: {entry['interpretable_total']} "
                     f"interpretable units of {len(entry['units'])}</h3>")
        if counts:
            fig, ax = plt.subplots(figsize=(6, 2.6))
            ax.bar([k for k, _ in counts], [v for _, v in counts], color="#4c72b0")
            ax.set(ylabel="units", title=f"interpretable units per class, {layer}")
            ax.tick_params(axis="x", rotation=45, labelsize=8)
            fig.tight_layout()
            fig.savefig(Path(out_dir) / f"dissect_{layer}_counts.png", dpi=90)
            plt.close(fig)
            parts.append(image(f"dissect_{layer}_counts.png", "interpretable units per class"))
        best = sorted(entry["units"], key=lambda e: -e["iou"])[:12]
        parts.append(f"<p id='{esc(anchor('dissect', layer, 'units'))}'>The {len(best)} units with the "
                     "highest IoU (threshold: the unit's activation level that counts as on):</p>")
        iqr = result["threshold_mode"] == "iqr"
        parts.append(table(["unit", "class", "IoU", "chance IoU", "lift"] + (["IQR"] if iqr else []) + ["threshold"],
                           [(e["unit"], e["label"], fmt(e["iou"], 3), fmt(e["chance_iou"], 3),
                             "n/a" if e["iou_lift"] is None else f"{fmt(e['iou_lift'], 1)}x")
                            + ((fmt(e["iqr"], 3),) if iqr else ()) + (sig(e["threshold"]),) for e in best]))
        if (Path(out_dir) / f"dissect_{layer}_top_units.png").exists():
            parts.append(image(f"dissect_{layer}_top_units.png",
                               "top units: their highest-activating samples, unit mask outlined"))
    return "\n".join(parts)
