"""`dissect`: which units draw which classes (GAN Dissection, Bau et al. 2019).

Per unit u a threshold t_u is fitted on a separate sample set (its own seed), then over the run's
samples IoU_{u,c} = |(r_u^ > t_u) & s_c| / |(r_u^ > t_u) | s_c|, with r_u^ the activation upsampled
bilinearly to the segmentation's size (strictly above, as in the authors' ``collect_bincounts``; in
quantile mode values tied at t_u count as well: the same for continuous activations, but a unit whose
top quantile is an atom, e.g. a saturated one, would otherwise never be active). Two ways to fit t_u:

- ``quantile`` (default 0.99; GAN Dissection's code uses 0.995): the unit's exact q-quantile over the
  fit set's raw feature-map pixels, as the authors' ``collect_quantiles_and_topk`` takes it (there from
  a quantile sketch; here the order statistic ``torch.quantile(..., interpolation="lower")`` gives:
  a histogram finds the bin that holds that rank, a second pass selects it among that bin's values);
  the label is the class of highest IoU.
- ``iqr``: GAN Dissection's information-quality-ratio selection, as its authors' code does it
  (CSAILVision/gandissect ``netdissect/dissection.py``: ``collect_iqr``, ``mutual_information``,
  ``joint_entropy``, and the label choice in ``dissect``/``generate_report``). Candidate thresholds are
  the unit's unconditional quantiles at 100 log-spaced top fractions from 1e-3 to 1 (from a 2048-bin
  histogram over the unit's exact range on the fit set, linear inside the bin: each within one bin
  width, 1/2048 of that range, of the exact q-quantile, the smallest value with a fraction q of the
  values at or below it, whatever the distribution). For each unit,
  label and candidate the 2x2 table of pixel fractions (unit above / not above x label / not label) is
  counted exactly on the fit set; IQR = I / H of that table (natural log). Excluded (IQR 0): the last
  candidate (fraction 1), labels covering less than 1e-3 of the pixels, candidates whose pixel
  agreement (both on + both off) is at most 0.8, and candidates at or below 0. Each (label, unit) keeps
  its best candidate; the unit's label is the label with the highest IQR and its threshold that
  label's candidate. The IoU and IQR reported are counted on the run's samples at that threshold
  (strictly above it, as there); a unit is interpretable when IQR > ``iqr_threshold`` (0.01) and IoU >
  ``iou_threshold``. As in that code, the table's "unit on" fraction is counted within the images that
  contain the label's category while the label's own fractions are over all pixels. Each unit also
  carries ``iqr_label``: the label, fit IQR, threshold and top fraction that the authors' report
  records (``iqr_label``, ``iqr_level``, ``iqr_quantile`` in ``generate_report``) give, where (unit,
  label) pairs whose best level leaves more than half of the pixels on are ignored; the authors' code
  does not apply that rule to the label and threshold it scores (the line is commented out in
  ``dissect``), and neither does gandid.

With a segmenter that names categories (object, part, material, ...), the IoU is GAN Dissection's
category-conditioned IoU (``category_conditioned``): a unit's active pixels are counted only in the
images that contain the label's category. Each IoU comes with the IoU a map independent of the class
would get with the same active area (``chance_iou``) and their ratio (``iou_lift``). Only sums are
kept (mergeable, resumable).
"""
from __future__ import annotations

import csv

import torch
import torch.nn.functional as F

from gandid.hooks import Trace
from gandid.segmentation import distinct_planes, presence
from gandid.stats import Histogram, Maximum, Sum, TopK

from . import report
from .measures import IQR_FRACTIONS, chance_iou, choose_by_iqr, iqr_table, lift, table_iqr

FIT_SEED_OFFSET = 1_000_003  # the fit set's seed: config seed + this, so fit and test samples differ
MODES = ("quantile", "iqr")
NO_LABEL = ("unlabelled", "unlabeled")  # GAN Dissection's label 0: never an interpretable unit's label
# gandissect's report records (generate_report: iqr_label, iqr_level, iqr_quantile) skip (unit, label)
# pairs whose best level leaves more than half of the pixels on
REPORT_MAX_FRACTION = 0.5


def upsampled(features: torch.Tensor, size) -> torch.Tensor:
    """(B, U, h, w) -> (U, B*H*W) activations upsampled bilinearly to the segmentation size."""
    up = F.interpolate(features.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return up.transpose(0, 1).reshape(features.shape[1], -1)


def raw_pixels(features: torch.Tensor) -> torch.Tensor:
    """(B, U, h, w) -> (U, B*h*w): the feature map's own pixels, no upsampling."""
    return features.float().transpose(0, 1).reshape(features.shape[1], -1)


def one_hot_pixels(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """(B, [K,] H, W) int labels -> (B*H*W, C) float, 1 where the pixel shows the class (multi-hot for a
    multi-label segmentation)."""
    return presence(labels, classes, torch.float32).permute(0, 2, 3, 1).reshape(-1, classes)


def labels_shown(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, [K,] H, W) int labels (-1: none) -> (shown (C',) the labels present, ascending; the labels
    renumbered 0..C'-1 in that order, -1 kept)."""
    shown = torch.unique(labels)
    shown = shown[shown >= 0]
    if not len(shown):  # nothing labelled: one column, never on
        shown = torch.zeros(1, dtype=torch.long, device=labels.device)
    number = torch.full((int(shown[-1]) + 1,), -1, dtype=torch.long, device=labels.device)
    number[shown] = torch.arange(len(shown), device=labels.device)
    return shown, torch.where(labels >= 0, number[labels.clamp_min(0)], labels)


class Categories:
    """Which category each label belongs to (the segmenter's ``categories``, else every label an
    object), and which categories each image contains (any of its labels in that category)."""

    def __init__(self, segmenter, conditioned: bool = True):
        labels = list(segmenter.labels)
        named = (getattr(segmenter, "categories", None) or {}) if conditioned else {}
        self.names = sorted({named.get(label, "object") for label in labels})
        self.of_label = torch.tensor([self.names.index(named.get(label, "object")) for label in labels])

    def in_images(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, [K,] H, W) labels -> (B, K) float: 1 where the image contains a label of category k."""
        present = presence(labels, len(self.of_label), torch.long).flatten(2).amax(2)  # (B, L)
        of_label = F.one_hot(self.of_label.to(labels.device), len(self.names))  # (L, K)
        return (present @ of_label).clamp_max(1).double()


class Dissect:
    """Options: threshold_mode 'quantile' | 'iqr', quantile, iou_threshold and iqr_threshold
    (interpretable above them), fit_samples (threshold fitting set size), bins (histogram of the
    quantile fit), top_seeds (kept per unit), unit_chunk, category_conditioned."""

    def __init__(self, threshold_mode: str = "quantile", quantile: float = 0.99, iou_threshold: float = 0.04,
                 iqr_threshold: float = 0.01, fit_samples: int = 200, bins: int = 256, top_seeds: int = 8,
                 unit_chunk: int = 64, category_conditioned: bool = True):
        if threshold_mode not in MODES:
            from gandid.errors import UnknownNameError

            raise UnknownNameError("dissect threshold_mode", threshold_mode, MODES)
        if not 0 < quantile < 1:
            raise ValueError(f"dissect: quantile must be in (0, 1), got {quantile}")
        if fit_samples < 1 or bins < 2 or top_seeds < 0 or unit_chunk < 1:
            raise ValueError("dissect: fit_samples and unit_chunk must be at least 1, bins at least 2, top_seeds >= 0")
        self.mode, self.quantile, self.iou_threshold = threshold_mode, quantile, iou_threshold
        self.iqr_threshold, self.category_conditioned = iqr_threshold, category_conditioned
        self.fit_samples, self.bins, self.top_seeds, self.unit_chunk = fit_samples, bins, top_seeds, unit_chunk

    # -- thresholds ------------------------------------------------------------------------
    def fit_batches(self, ctx, layer, key, **options):
        """The fit set's batches (its own seed), this process's share, into ``options["stats"]``; the
        thresholds decide the rest of the run, so a shard fits them on the whole fit set."""
        stats = options.pop("stats")
        return ctx.tally(stats, key=f"{layer}/{key}", samples=self.fit_samples, seed=ctx.config.seed + FIT_SEED_OFFSET,
                         layers=[layer], decides=True, **options)

    def fit_range(self, ctx, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(lo, hi), each (U,): every unit's smallest and largest activation over the whole fit set. A
        prefix-only pass over the raw map suffices: bilinear upsampling only averages its pixels."""
        channels = next(info.channels for info in ctx.generator.layers if info.name == layer)
        top, negated_bottom = Maximum((channels,), device=ctx.device), Maximum((channels,), device=ctx.device)
        for batch in self.fit_batches(ctx, layer, "range", stats={"max": top, "negated_min": negated_bottom},
                                      segment=False, features_only=True, description=f"dissect {layer}: fit range"):
            pixels = raw_pixels(batch.features[layer])
            top.update(pixels.amax(1))
            negated_bottom.update(-pixels.amin(1))
        return -negated_bottom.value, top.value

    def fit_histogram(self, ctx, layer: str, bins: int, raw: bool = False) -> Histogram:
        """Histogram of each unit's activations over the fit set: upsampled to the segmentation's size,
        over each unit's exact range (so every quantile it gives is within one bin width of the exact
        one), or the raw feature map (``raw``: only a first guess for :meth:`exact_quantile`)."""
        if raw:
            # the range from the fit set's first batch (every process reads it), widened: later values
            # clamp into the end bins, and the exact quantile's second pass does not depend on it
            first = next(iter(ctx.batches(samples=min(ctx.config.batch_size, self.fit_samples),
                                          seed=ctx.config.seed + FIT_SEED_OFFSET, layers=[layer], segment=False,
                                          features_only=True, description=f"dissect {layer}: fit range")))
            flat = raw_pixels(first.features[layer]).double()
            lo, hi = flat.min(1).values, flat.max(1).values
            span = (hi - lo).clamp_min(1e-6)
            lo, hi = lo - 0.5 * span, hi + 0.5 * span
        else:
            lo, hi = self.fit_range(ctx, layer)
        hist = Histogram(lo, hi, bins)
        for batch in self.fit_batches(ctx, layer, "raw histogram" if raw else "histogram", stats={"hist": hist},
                                      segment=False, features_only=raw,
                                      description=f"dissect {layer}: fit thresholds"):
            feats = batch.features[layer]
            hist.update(raw_pixels(feats) if raw else upsampled(feats, batch.images.shape[-2:]))
        return hist

    def fit_thresholds(self, ctx, layer: str, categories: Categories) -> dict:
        """{"thresholds": (U,)} fitted on the separate sample set; in iqr mode also the fit's label, IQR
        and top fraction per unit."""
        if self.mode == "quantile":
            # over the raw feature map, as GAN Dissection's collect_quantiles_and_topk (64x fewer values at 8x)
            hist = self.fit_histogram(ctx, layer, self.bins, raw=True)
            return {"thresholds": self.exact_quantile(ctx, layer, hist, self.quantile)}
        hist = self.fit_histogram(ctx, layer, max(self.bins, 2048))
        fractions = IQR_FRACTIONS.to(hist.lo.device)
        levels = torch.stack([hist.quantile(1 - float(f)) for f in fractions], 1)  # (U, V), descending
        counts = self.count_above_levels(ctx, layer, levels, categories)
        iqr, _ = iqr_table(levels, counts["above_label"], counts["above_category"], counts["label_pixels"],
                           counts["category_pixels"], counts["all_pixels"], categories.of_label.to(levels.device))
        label, threshold, fit_iqr, bucket = choose_by_iqr(iqr, levels)
        report_label, report_threshold, report_iqr, report_bucket = choose_by_iqr(iqr, levels, REPORT_MAX_FRACTION)
        return {"thresholds": threshold.float(), "fit_label": label, "fit_iqr": fit_iqr,
                "fit_fraction": fractions[bucket], "levels": levels,
                "report_label": report_label, "report_iqr": report_iqr, "report_threshold": report_threshold,
                "report_fraction": fractions[report_bucket]}

    def exact_quantile(self, ctx, layer, hist: Histogram, q: float) -> torch.Tensor:
        """(U,) each unit's exact q-quantile over the fit set's raw feature-map pixels: the order statistic
        ``torch.quantile(values, q, interpolation="lower")`` picks. The histogram says which bin holds that
        rank; a second pass keeps only the values falling in that bin and selects the rank among them."""
        total = int(hist.counts[0].sum())
        rank = int(q * (total - 1))  # 0-based, as torch.quantile's "lower"
        below = hist.counts.cumsum(1)
        target_bin = (below <= rank).sum(1)  # (U,): first bin whose cumulative count exceeds the rank
        before = torch.where(target_bin > 0, below.gather(1, (target_bin - 1).clamp_min(0)[:, None])[:, 0],
                             torch.zeros_like(target_bin, dtype=below.dtype))
        inside = [[] for _ in range(len(target_bin))]
        part = ctx.share(self.fit_samples, block=ctx.config.batch_size, what=f"{layer}/exact thresholds", decides=True)
        for batch in ctx.batches(samples=part.stop, start=part.start, origin=part.start,
                                 seed=ctx.config.seed + FIT_SEED_OFFSET, layers=[layer], segment=False,
                                 features_only=True, description=f"dissect {layer}: exact thresholds"):
            up = raw_pixels(batch.features[layer])
            keep = hist.bin_index(up) == target_bin[:, None]
            for u in range(len(up)):
                inside[u].append(up[u][keep[u]])
        # the order statistic of every process's values (their order does not matter)
        everyone = ctx.all_gather([torch.cat(v) for v in inside], decides=True)
        inside = [[theirs[u].to(before.device) for theirs in everyone] for u in range(len(inside))]
        return torch.stack([torch.cat(v).kthvalue(rank - int(b) + 1).values for v, b in zip(inside, before)])

    def count_above_levels(self, ctx, layer, levels, categories: Categories) -> dict:
        """Exact counts on the fit set, for every unit and candidate level v (levels (U, V), descending):
        label pixels above it, pixels above it in images of each category, and the pixel totals."""
        units, n_levels = levels.shape
        n_labels, n_cats = len(categories.of_label), len(categories.names)
        ascending = levels.flip(1).contiguous()
        dev = levels.device
        stats = {"by_label": Sum((units, n_labels * (n_levels + 1)), dev),
                 "by_cat": Sum((units, n_cats, n_levels + 1), dev), "label_pixels": Sum(n_labels, dev),
                 "category_pixels": Sum(n_cats, dev), "all_pixels": Sum((), dev)}
        for batch in self.fit_batches(ctx, layer, "iqr tables", stats=stats, description=f"dissect {layer}: IQR tables"):
            # the tensors of the statistics (a resume or a merge replaces them: look them up each batch)
            by_label, by_cat = stats["by_label"].total, stats["by_cat"].total
            feats, labels = batch.features[layer], batch.labels
            b, pixels = len(labels), labels.shape[-2] * labels.shape[-1]
            # one (pixel, label) pair per label a pixel shows: a plane of labels, then the pairs of the next
            planes = [plane.reshape(-1) for plane in distinct_planes(labels).unbind(1)]  # K x (P,)
            in_cat = categories.in_images(labels)  # (B, K)
            for lab in planes:
                stats["label_pixels"].update(torch.bincount(lab[lab >= 0], minlength=n_labels))
            stats["category_pixels"].update(in_cat.sum(0) * pixels)
            stats["all_pixels"].update(b * pixels)
            image = torch.arange(b, device=dev).repeat_interleave(pixels)  # (P,): which image each pixel is in
            for lo in range(0, units, self.unit_chunk):
                up = upsampled(feats[:, lo:lo + self.unit_chunk], labels.shape[-2:]).double()  # (u, P)
                # below[u, p]: how many levels lie strictly below the activation, i.e. it is above
                # levels[v] exactly when v >= V - below.
                below = torch.searchsorted(ascending[lo:lo + len(up)], up.contiguous(), side="left")
                ones = torch.ones_like(below, dtype=torch.float64)
                for lab in planes:
                    shown = lab >= 0
                    if bool(shown.all()):
                        by_label[lo:lo + len(up)].scatter_add_(1, lab[None, :] * (n_levels + 1) + below, ones)
                    else:
                        by_label[lo:lo + len(up)].scatter_add_(1, lab[None, shown] * (n_levels + 1) + below[:, shown],
                                                               ones[:, shown])
                per_image = torch.zeros(len(up), b * (n_levels + 1), dtype=torch.float64, device=dev)
                per_image.scatter_add_(1, image[None, :] * (n_levels + 1) + below, ones)
                by_cat[lo:lo + len(up)] += torch.einsum("ubv,bk->ukv", per_image.view(len(up), b, n_levels + 1),
                                                        in_cat)
        by_label, by_cat = stats["by_label"].total, stats["by_cat"].total

        def above(counts):  # (..., V + 1) by "levels below" -> (..., V): pixels above levels[v]
            at_least = counts.flip(-1).cumsum(-1).flip(-1)  # [..., j]: pixels with below >= j
            return at_least[..., 1:].flip(-1)  # level v (descending) needs below >= V - v

        return {"above_label": above(by_label.view(units, n_labels, n_levels + 1)), "above_category": above(by_cat),
                "label_pixels": stats["label_pixels"].total, "category_pixels": stats["category_pixels"].total,
                "all_pixels": stats["all_pixels"].total}

    # -- the run ---------------------------------------------------------------------------
    def run(self, ctx):
        labels = list(ctx.segmenter.labels)
        categories = Categories(ctx.segmenter, self.category_conditioned)
        result = {"threshold_mode": self.mode, "iou_threshold": self.iou_threshold, "layers": {},
                  "categories": categories.names, "category_conditioned": len(categories.names) > 1}
        if self.mode == "iqr":
            result["iqr_threshold"] = self.iqr_threshold
        fits = ctx.state.setdefault("fits", {})
        for layer in ctx.layers:
            if layer not in fits:
                fits[layer] = self.fit_thresholds(ctx, layer, categories)
                ctx.save_state()
            result["layers"][layer] = self.dissect_layer(ctx, layer, labels, fits[layer], categories)
        return result

    def dissect_layer(self, ctx, layer, labels, fit, categories: Categories):
        """IoU (and in iqr mode IQR) of every unit's thresholded map with every class, over the run's samples."""
        t = fit["thresholds"]  # (U,)
        classes, units, n_cats = len(labels), t.shape[0], len(categories.names)
        dev = t.device  # statistics live where the features are
        stats = {"inter": Sum((units, classes), dev), "active": Sum((units, n_cats), dev), "cls": Sum(classes, dev),
                 "category_pixels": Sum(n_cats, dev), "top": TopK(units, self.top_seeds, dev)}
        inter, active, cls, category_pixels, top = stats.values()
        for batch in ctx.tally(stats, key=layer, layers=[layer], description=f"dissect {layer}"):
            feats = batch.features[layer]
            # only the labels this batch shows (a few dozen of ADE20K's 150): the one-hot and the
            # intersection matmul below scale with their number, counted into their columns
            shown, compact = labels_shown(batch.labels)
            onehot = one_hot_pixels(compact, len(shown))  # (P, C')
            in_cat = categories.in_images(batch.labels).float()  # (B, K)
            b, pixels = len(batch.labels), batch.labels.shape[-2] * batch.labels.shape[-1]
            cls.update(onehot.sum(0), shown)
            category_pixels.update(in_cat.sum(0) * pixels)
            top.update(feats.flatten(2).amax(2).transpose(0, 1), torch.as_tensor(list(batch.seeds)))
            per_image = onehot.view(b, pixels, len(shown))
            for lo in range(0, units, self.unit_chunk):
                # (B, u, H, W) as interpolate gives it: no transposed copy of the largest tensor here
                up = F.interpolate(feats[:, lo:lo + self.unit_chunk].float(), size=tuple(batch.labels.shape[-2:]),
                                   mode="bilinear", align_corners=False)
                tc = t[None, lo:lo + self.unit_chunk, None, None]
                # iqr: strictly above, as gandissect; quantile: ties at the threshold count too (the same for
                # continuous activations, but a unit whose top quantile is an atom would otherwise never fire)
                # 1.0 where on, in place: sign(up - t) is -1, 0, 1; "+1 then clamp" makes ties on (>=), clamping
                # alone leaves them off (>); twice as fast here as a bool comparison converted to float
                up.sub_(tc).sign_()
                mask = (up.add_(1) if self.mode == "quantile" else up).clamp_(0, 1).view(b, up.shape[1], pixels)
                inter.update(torch.bmm(mask, per_image).sum(0), (slice(lo, lo + up.shape[1]), shown))  # (u, C')
                active.update(mask.sum(2).t() @ in_cat, slice(lo, lo + up.shape[1]))
        of_label = categories.of_label.to(dev)
        active_per_label = active.total[:, of_label]  # (U, C): unit-on pixels in the images of each label's category
        total_per_label = category_pixels.total[of_label][None, :]  # (1, C)
        iou = inter.total / (active_per_label + cls.total[None, :] - inter.total).clamp_min(1)
        chance = chance_iou(active_per_label, cls.total[None, :], total_per_label)
        iqr = table_iqr(inter.total, active_per_label, cls.total[None, :], total_per_label)
        summary = self.summarise(ctx, layer, labels, iou, iqr, chance, fit, top)
        if ctx.is_writer:  # pictures: only the process that writes the output folder draws them
            self.draw_strips(ctx, layer, summary)
        return summary

    def draw_strips(self, ctx, layer, summary, units: int = 8, images: int = 5):
        """For the units with the highest IoU: their top images with the thresholded unit mask outlined."""
        best = sorted(summary["units"], key=lambda e: -e["iou"])[:units]
        if not best:
            return
        report.draw_strips(ctx, layer, len(best), images, self.strip_rows(ctx, layer, best, images))

    @staticmethod
    def strip_rows(ctx, layer, best, images: int):
        """Per unit entry of ``best``, regenerated one unit at a time as the figure draws it: (entry, its top
        seeds, their images, the unit's activation upsampled to the images' size)."""
        for entry in best:
            seeds = entry["top_seeds"][:images]
            with torch.no_grad():
                z = torch.cat([ctx.generator.sample_z(1, ctx.config.seed, start=s) for s in seeds]).to(ctx.device)
                with Trace(ctx.generator, [layer]) as trace:
                    imgs = ctx.generator.forward(z).clamp(-1, 1).float().cpu()
                feat = trace[layer][:, entry["unit"]:entry["unit"] + 1].float().cpu()
                mask = F.interpolate(feat, size=imgs.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            yield entry, seeds, imgs, mask

    def summarise(self, ctx, layer, labels, iou, iqr, chance, fit, top):
        """Per unit: its label (highest IoU in quantile mode; the fit's IQR label in iqr mode), threshold,
        IoU, chance IoU and lift (and IQR); interpretable units per label and category; the CSV."""
        candidates = [c for c, name in enumerate(labels) if name not in NO_LABEL]
        thresholds = fit["thresholds"]
        units = []
        interpretable: dict[str, int] = {}
        for u in range(iou.shape[0]):
            if self.mode == "iqr":
                c = int(fit["fit_label"][u])
            else:
                c = max(candidates, key=lambda k: float(iou[u, k]))
            unit_iou = 0.0 if labels[c] in NO_LABEL else float(iou[u, c])  # gandissect never scores label 0
            entry = {"unit": u, "label": labels[c], "iou": unit_iou, "threshold": float(thresholds[u]),
                     "chance_iou": float(chance[u, c]), "iou_lift": lift(unit_iou, float(chance[u, c])),
                     "top_seeds": [int(s) for s in top.ids[u] if s >= 0],
                     "iou_per_class": {labels[k]: float(iou[u, k]) for k in candidates}}
            passes = unit_iou > self.iou_threshold
            if self.mode == "iqr":
                entry.update(iqr=float(iqr[u, c]), fit_iqr=float(fit["fit_iqr"][u]),
                             fit_top_fraction=float(fit["fit_fraction"][u]))
                if "report_label" in fit:  # (absent from a fit saved by gandid before 2026-11-24)
                    entry["iqr_label"] = {"label": labels[int(fit["report_label"][u])],
                                          "fit_iqr": float(fit["report_iqr"][u]),
                                          "threshold": float(fit["report_threshold"][u]),
                                          "fit_top_fraction": float(fit["report_fraction"][u])}
                passes = passes and entry["iqr"] > self.iqr_threshold
            entry["interpretable"] = bool(passes)
            units.append(entry)
            if passes:
                interpretable[labels[c]] = interpretable.get(labels[c], 0) + 1
        with ctx.path(f"dissect_{layer}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["unit", "label", "iou", "chance_iou", "iou_lift", "iqr", "interpretable", "threshold",
                             "top_seeds"])
            for e in units:
                writer.writerow([e["unit"], e["label"], f"{e['iou']:.6f}", f"{e['chance_iou']:.6f}",
                                 "" if e["iou_lift"] is None else f"{e['iou_lift']:.3f}",
                                 f"{e['iqr']:.6f}" if "iqr" in e else "", int(e["interpretable"]),
                                 f"{e['threshold']:.6g}", " ".join(map(str, e["top_seeds"]))])
        # a segmenter may say which category each label belongs to (object, part, material, ...)
        categories = getattr(ctx.segmenter, "categories", None) or {}
        by_category: dict[str, int] = {}
        for label, count in interpretable.items():
            by_category[categories.get(label, "object")] = by_category.get(categories.get(label, "object"), 0) + count
        return {"threshold_mode": self.mode, "units": units, "interpretable": interpretable,
                "interpretable_by_category": by_category, "interpretable_total": sum(interpretable.values())}

    # -- report.html (drawn by .report; the core calls these) ----------------------------------
    def report_findings(self, result):
        return report.findings(result)

    def report_section(self, result, out_dir):
        return report.section(result, out_dir)

    # -- gandid serve (described by .explore; the explorer calls it) -----------------------------
    def explorer(self, result):
        from .explore import explorer_view

        return explorer_view(result)
