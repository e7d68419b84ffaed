"""`dissect`: which units draw which classes (GAN Dissection, Bau et al. 2019).

Per unit u a threshold t is fitted on a separate sample set (its own seed): the top quantile of the
unit's upsampled activations (default 0.99) or, in ``iqr`` mode, per class the t maximising the
information quality ratio I(r >= t; s_c) / H(r >= t, s_c). Then over the run's samples
IoU_{u,c} = E|(r_u^ >= t) & s_c| / E|(r_u^ >= t) | s_c|, with r_u^ the activation upsampled bilinearly
to the segmentation. Thresholds are histogram bin edges and a unit counts as active at t itself, so
values tied at the quantile (activations often have such atoms) are active. Only sums are kept
(mergeable, resumable).
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch
import torch.nn.functional as F

from gandid import hookimpl
from gandid.stats import Histogram, Sum, TopK

FIT_SEED_OFFSET = 1_000_003  # the fit set's seed: config seed + this, so fit and test samples differ
MODES = ("quantile", "iqr")


def upsampled(features: torch.Tensor, size) -> torch.Tensor:
    """(B, U, h, w) -> (U, B*H*W) activations upsampled bilinearly to the segmentation size."""
    up = F.interpolate(features.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return up.transpose(0, 1).reshape(features.shape[1], -1)


def one_hot_pixels(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """(B, H, W) int labels -> (B*H*W, C) float one-hot."""
    return F.one_hot(labels.reshape(-1).long(), classes).float()


def information_quality_ratio(hist_all: torch.Tensor, hist_class: torch.Tensor):
    """For thresholds at every bin edge: I(r > t; s_c) / H(r > t, s_c).

    hist_all (U, B): pixel counts per activation bin; hist_class (U, C, B): the same for class-c pixels.
    Returns (U, C, B) ratios, edge j meaning "r in bin >= j".
    """
    n = hist_all.sum(1).clamp_min(1)[:, None, None]
    above = hist_all.flip(1).cumsum(1).flip(1)[:, None, :]  # (U, 1, B): pixels with r > t
    inter = hist_class.flip(2).cumsum(2).flip(2)  # (U, C, B)
    cls = hist_class.sum(2, keepdim=True)  # (U, C, 1)
    p11 = inter / n
    p10 = (above - inter) / n
    p01 = (cls - inter) / n
    p00 = (1 - p11 - p10 - p01).clamp_min(0)

    def h(*ps):
        return -sum(torch.where(p > 0, p * torch.log(p), torch.zeros_like(p)) for p in ps)

    joint = h(p11, p10, p01, p00)
    px, py = p11 + p10, p11 + p01
    mutual = h(px, 1 - px) + h(py, 1 - py) - joint
    return torch.where(joint > 0, mutual / joint.clamp_min(1e-12), torch.zeros_like(joint))


class Dissect:
    """Options: threshold_mode 'quantile' | 'iqr', quantile, iou_threshold (interpretable above it),
    fit_samples (threshold fitting set size), bins, top_seeds (kept per unit), unit_chunk."""

    def __init__(self, threshold_mode: str = "quantile", quantile: float = 0.99, iou_threshold: float = 0.04,
                 fit_samples: int = 200, bins: int = 256, top_seeds: int = 8, unit_chunk: int = 64):
        if threshold_mode not in MODES:
            from gandid.errors import UnknownNameError

            raise UnknownNameError("dissect threshold_mode", threshold_mode, MODES)
        if not 0 < quantile < 1:
            raise ValueError(f"dissect: quantile must be in (0, 1), got {quantile}")
        self.mode, self.quantile, self.iou_threshold = threshold_mode, quantile, iou_threshold
        self.fit_samples, self.bins, self.top_seeds, self.unit_chunk = fit_samples, bins, top_seeds, unit_chunk

    # -- thresholds ------------------------------------------------------------------------
    def fit_thresholds(self, ctx, layer: str, classes: int) -> torch.Tensor:
        """(U, C) thresholds fitted on the separate sample set (the same for every class in quantile mode)."""
        seed = ctx.config.seed + FIT_SEED_OFFSET
        hist = hist_class = None
        for batch in ctx.batches(samples=self.fit_samples, seed=seed, layers=[layer],
                                 segment=self.mode == "iqr", description=f"dissect {layer}: fit thresholds"):
            feats = batch.features[layer]
            if hist is None:  # range from the first batch, widened: later values clamp into the end bins
                flat = feats.transpose(0, 1).reshape(feats.shape[1], -1).double()
                lo, hi = flat.min(1).values, flat.max(1).values
                span = (hi - lo).clamp_min(1e-6)
                hist = Histogram(lo - 0.5 * span, hi + 0.5 * span, self.bins)
                if self.mode == "iqr":
                    hist_class = torch.zeros(feats.shape[1], classes, self.bins, dtype=torch.float64,
                                             device=feats.device)
            size = batch.images.shape[-2:]
            up = upsampled(feats, size)
            hist.update(up)
            if self.mode == "iqr":
                idx = hist.bin_index(up)  # (U, P)
                lab = batch.labels.reshape(-1).long()
                flat_index = lab[None, :] * self.bins + idx  # (U, P) into (C * B)
                per_unit = torch.zeros(up.shape[0], classes * self.bins, dtype=torch.float64, device=up.device)
                per_unit.scatter_add_(1, flat_index, torch.ones_like(flat_index, dtype=torch.float64))
                hist_class += per_unit.view(up.shape[0], classes, self.bins)
        if self.mode == "quantile":
            # the lower edge of the quantile's bin: ties at the quantile count as active
            return hist.quantile(self.quantile, interpolate=False)[:, None].expand(-1, classes).float()
        ratio = information_quality_ratio(hist.counts, hist_class)
        best = ratio.argmax(2)  # (U, C) edge index
        return hist.edges().gather(1, best).float()  # edge j of each row, per class

    # -- the run ---------------------------------------------------------------------------
    def run(self, ctx):
        labels = list(ctx.segmenter.labels)
        result = {"threshold_mode": self.mode, "iou_threshold": self.iou_threshold, "layers": {}}
        thresholds = ctx.state.setdefault("thresholds", {})
        for layer in ctx.layers:
            if layer not in thresholds:
                thresholds[layer] = self.fit_thresholds(ctx, layer, len(labels))
                ctx.save_state()
            result["layers"][layer] = self.dissect_layer(ctx, layer, labels, thresholds[layer])
        return result

    def dissect_layer(self, ctx, layer, labels, t):
        """IoU of every unit's thresholded map with every class; ``t`` (U, C) thresholds."""
        classes, units = len(labels), t.shape[0]
        dev = t.device  # statistics live where the features are
        stats = {"inter": Sum((units, classes), dev), "active": Sum((units, classes), dev), "cls": Sum(classes, dev),
                 "top": TopK(units, self.top_seeds, dev)}
        inter, active, cls, top = stats.values()
        for batch in ctx.tally(stats, key=layer, layers=[layer], description=f"dissect {layer}"):
            feats = batch.features[layer]
            onehot = one_hot_pixels(batch.labels, classes)  # (P, C)
            cls.update(onehot.sum(0))
            top.update(feats.flatten(2).amax(2).transpose(0, 1), torch.as_tensor(list(batch.seeds)))
            for lo in range(0, units, self.unit_chunk):
                up = upsampled(feats[:, lo:lo + self.unit_chunk], batch.images.shape[-2:])  # (u, P)
                tc = t[lo:lo + self.unit_chunk]
                rows = slice(lo, lo + len(up))
                if self.mode == "quantile":
                    mask = (up >= tc[:, :1]).float()
                    inter.update(mask @ onehot, rows)
                    active.update(mask.sum(1, keepdim=True), rows)
                else:
                    for c in range(classes):
                        mask = (up >= tc[:, c:c + 1]).float()
                        inter.update(mask @ onehot[:, c], (rows, c))
                        active.update(mask.sum(1), (rows, c))
        iou = inter.total / (active.total + cls.total[None, :] - inter.total).clamp_min(1)
        summary = self.summarise(ctx, layer, labels, iou, t, top)
        self.draw_strips(ctx, layer, summary)
        return summary

    def draw_strips(self, ctx, layer, summary, units: int = 8, images: int = 5):
        """For the units with the highest IoU: their top images with the thresholded unit mask outlined."""
        from gandid.plotting import pyplot

        plt = pyplot()

        best = sorted(summary["units"], key=lambda e: -e["iou"])[:units]
        if not best:
            return
        fig, axes = plt.subplots(len(best), images, figsize=(images * 1.3, len(best) * 1.4), squeeze=False)
        for row, entry in enumerate(best):
            seeds = entry["top_seeds"][:images]
            with torch.no_grad():
                z = torch.cat([ctx.generator.sample_z(1, ctx.config.seed, start=s) for s in seeds]).to(ctx.device)
                from gandid.hooks import Trace

                with Trace(ctx.generator, [layer]) as trace:
                    imgs = ctx.generator.forward(z).clamp(-1, 1).float().cpu()
                feat = trace[layer][:, entry["unit"]:entry["unit"] + 1].float().cpu()
                mask = F.interpolate(feat, size=imgs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
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

    def summarise(self, ctx, layer, labels, iou, thresholds, top):
        candidates = [c for c, name in enumerate(labels) if name not in ("unlabelled", "unlabeled")]
        units = []
        interpretable: dict[str, int] = {}
        for u in range(iou.shape[0]):
            c = max(candidates, key=lambda k: float(iou[u, k]))
            entry = {"unit": u, "label": labels[c], "iou": float(iou[u, c]), "threshold": float(thresholds[u, c]),
                     "top_seeds": [int(s) for s in top.ids[u] if s >= 0],
                     "iou_per_class": {labels[k]: float(iou[u, k]) for k in candidates}}
            units.append(entry)
            if entry["iou"] > self.iou_threshold:
                interpretable[labels[c]] = interpretable.get(labels[c], 0) + 1
        with ctx.path(f"dissect_{layer}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["unit", "label", "iou", "threshold", "top_seeds"])
            for e in units:
                writer.writerow([e["unit"], e["label"], f"{e['iou']:.6f}", f"{e['threshold']:.6g}",
                                 " ".join(map(str, e["top_seeds"]))])
        # a segmenter may say which category each label belongs to (object, part, material, ...)
        categories = getattr(ctx.segmenter, "categories", None) or {}
        by_category: dict[str, int] = {}
        for label, count in interpretable.items():
            by_category[categories.get(label, "object")] = by_category.get(categories.get(label, "object"), 0) + count
        return {"threshold_mode": self.mode, "units": units, "interpretable": interpretable,
                "interpretable_by_category": by_category, "interpretable_total": sum(interpretable.values())}


    def report_findings(self, result):
        from gandid.report import Finding, anchor, esc, fmt

        found = []
        for layer, entry in result["layers"].items():
            counts = sorted(entry["interpretable"].items(), key=lambda kv: (-kv[1], kv[0]))
            classes = list(entry["units"][0]["iou_per_class"]) if entry["units"] else []
            none = [c for c in classes if c not in entry["interpretable"]]
            listed = ", ".join(f"{esc(k)} {v}" for k, v in counts[:12]) + (
                f" and {len(counts) - 12} more" if len(counts) > 12 else "")
            text = (f"<b>{entry['interpretable_total']} of {len(entry['units'])}</b> units of "
                    f"<code>{esc(layer)}</code> are interpretable (best IoU &gt; {esc(fmt(result['iou_threshold']))})"
                    + (f", for {len(counts)} classes: {listed}" if counts else "") + ".")
            if none:
                text += f" No unit for {esc(', '.join(none))}."
            found.append(Finding(text, anchor("dissect", layer)))
            if entry["units"]:
                best = max(entry["units"], key=lambda e: e["iou"])
                found.append(Finding(f"Best unit: unit {best['unit']} draws {esc(best['label'])} "
                                     f"(IoU {esc(fmt(best['iou'], 3))}).", anchor("dissect", layer, "units")))
        return found

    def report_section(self, result, out_dir):
        from gandid.plotting import pyplot
        from gandid.report import anchor, esc, fmt, image, sig, table

        plt = pyplot()

        parts = [f"<p>Thresholds: <code>{esc(result['threshold_mode'])}</code>; a unit is interpretable when "
                 f"its best IoU with a class exceeds {esc(fmt(result['iou_threshold']))}.</p>"]
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
            parts.append(table(["unit", "class", "IoU", "threshold"],
                               [(e["unit"], e["label"], fmt(e["iou"], 3), sig(e["threshold"])) for e in best]))
            if (Path(out_dir) / f"dissect_{layer}_top_units.png").exists():
                parts.append(image(f"dissect_{layer}_top_units.png",
                                   "top units: their highest-activating samples, unit mask outlined"))
        return "\n".join(parts)


@hookimpl
def gandid_register_analyses(register):
    register("dissect", Dissect, description="GAN Dissection: per-unit IoU with each class, thresholds, top images")


