"""`ace`: the average causal effect of units on a class (Bau et al., "On the Units of GANs").

delta_{u->c} = E_z[s_c(x inserted)] - E_z[s_c(x ablated)], s_c the fraction of class-c pixels, units
inserted at k_u = the unit's mean activation where c is present (or a high quantile). Per class:
the ranking, the ACE of the top-k set, the ablation curve (fraction of the class removed when the
top-k units are ablated everywhere, Figure 6), insertion by context (top units inserted at one
feature-map pixel, gain by the class found there, Figure 8), and GAN Dissection's continuous alpha
optimisation through the segmenter's class scores and the fused op's backward.

Screening (option ``screen``, on by default): one forward and one backward per latent batch give the
gradient of every class score with respect to every unit at every pixel, hence a first-order estimate
of every unit's ACE at once, k_u * sum_p ds_c/dr_{u,p} (inserting at k_u minus ablating to 0). Units
are ranked by it and only the top candidates get the exact counterfactuals; when the exact top k
reaches the last eighth of the screened set, more candidates are measured until it does not. The
reported top-k ranking is exact within the measured units; ``screen = false`` measures every unit.
"""
from __future__ import annotations

from typing import TypedDict

import torch
import torch.nn.functional as F

from gandid import hookimpl
from gandid.analysis import read_result
from gandid.errors import ConfigError
from gandid.hooks import features_at, norm_overrides, norm_site_reading
from gandid.intervene import Intervention, per_unit, units_per_chunk, variants
from gandid.model import find_layer
from gandid.ops import intervene_pixelnorm
from gandid.ops.reference import intervene
from gandid.segmentation import class_fractions, label_planes, presence
from gandid.stats import Histogram, Sum

NOT_OBJECTS = ("unlabelled", "unlabeled", "background")  # never chosen as ACE classes by default
RESULT_VERSION = 3  # 2: standard errors, intervals and top-k stability; 3: screening, decisive units


class AceClassResult(TypedDict):
    """One class's ACE. Effects are changes in the fraction of image pixels of the class. Per-unit lists
    hold None for units the screen did not send to the exact counterfactuals (see :func:`best_unit_ace`)."""

    unit_ace: list[float | None]  # (U,) per-unit ACE: E[s_c(inserted)] - E[s_c(ablated)], exact
    unit_ace_se: list[float | None]  # (U,) its standard error over latents (paired)
    unit_ace_ci95: list[list[float] | None]  # (U, 2) t interval
    unit_ace_estimate: list[float] | None  # (U,) the screen's first-order estimate (class-score units), or None
    screen: dict  # {"enabled", "measured", "units", "exhaustive", "initial", "widened_to", "edge_rank", "edge",
    #                "fallback" (why every unit was measured, or None), "spearman", "fit"}
    decisive_units: list[dict]  # [{"unit", "removed_fraction"}]: one ablation removes >= DECISIVE of the class
    topk_stability: dict[str, float]  # top-k unit -> share of latent resamples keeping it in the top k
    rank_beats_next: list[float]  # rank r of the top k: share of resamples where it beats rank r + 1
    rank_distinguishable: list[bool]  # rank_beats_next >= 0.95
    ranking: list[int]  # units by ACE, largest first
    insert_value: list[float]  # (U,) each unit's insertion value k_u
    curve_k: list[int]  # k of the top-k curves (0 first)
    topk_removed_fraction: list[float]  # share of the class removed by ablating the top k
    topk_ace: list[float]  # ACE of the top-k set, per k after 0
    base_area: float  # the class's mean area without intervention
    context_gain: dict  # {context class: {"mean_gain", "count"}}: insertion at one pixel, by what was there
    alpha_opt: dict  # GAN Dissection's continuous alpha: {"alpha", "delta_history", "final_delta", ...}


class AceResult(TypedDict):
    """``ace.json``, as did and entangle read it (:func:`read_ace_result`)."""

    version: int
    layer: str
    samples: int
    class_area: dict[str, float]  # mean fraction of image pixels per class
    classes: dict[str, AceClassResult]


def read_ace_result(data: dict) -> AceResult:
    """``ace``'s result checked for the version and keys this module writes."""
    return read_result(data, "ace", RESULT_VERSION, AceResult)


def best_unit_ace(entry: AceClassResult) -> list[float]:
    """(U,) each unit's ACE: the exact value where it was measured, else the screen's estimate mapped onto
    the exact scale by the straight line fitted over the measured units (``screen["fit"]``)."""
    fit = entry.get("screen", {}).get("fit") or {"intercept": 0.0, "slope": 0.0}
    estimate = entry.get("unit_ace_estimate") or [0.0] * len(entry["unit_ace"])
    return [a if a is not None else fit["intercept"] + fit["slope"] * e for a, e in zip(entry["unit_ace"], estimate)]


def check_class_names(analysis: str, names, segmenter, what: str = "classes") -> None:
    """Refuse a class the segmenter does not know, naming the closest labels; ``what``: the option."""
    if names is None or segmenter is None:
        return
    labels = list(segmenter.labels)
    for name in names:
        if name not in labels:
            from gandid.errors import UnknownNameError

            raise UnknownNameError(f"class in {analysis}'s {what}", name, labels)


def ace_uncertainty(effects: torch.Tensor, top: list[int], seed: int, resamples: int = 1000) -> dict:
    """Uncertainty of per-unit ACE from its per-latent effects (U, N) (inserted minus ablated class
    fraction for the same latent): standard errors and t intervals (95%), and, resampling the latents
    (bootstrap), how often each of the ``top`` units stays in the top len(top) and how often each rank
    beats the next one (a rank is *distinguishable* when that happens in at least 95% of resamples)."""
    from scipy.stats import t as student_t

    units, n = effects.shape
    mean = effects.mean(1)
    se = effects.std(1) / n ** 0.5 if n > 1 else torch.full_like(mean, float("nan"))
    half = float(student_t.ppf(0.975, n - 1)) * se if n > 1 else se
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(n, (resamples, n), generator=g).to(effects.device)
    boot = effects[:, idx].mean(2)  # (U, resamples)
    k = len(top)
    in_top = torch.zeros(units, dtype=torch.float64, device=effects.device)
    if k:
        in_top.scatter_add_(0, boot.topk(k, dim=0).indices.flatten(),
                            torch.ones(k * resamples, dtype=torch.float64, device=effects.device))
    beats = [float((boot[a] > boot[b]).double().mean()) for a, b in zip(top, top[1:])]
    return {"unit_ace_se": se.tolist(), "unit_ace_ci95": torch.stack([mean - half, mean + half], 1).tolist(),
            "topk_stability": {str(u): float(in_top[u]) / resamples for u in top},
            "rank_beats_next": beats, "rank_distinguishable": [b >= 0.95 for b in beats]}


def screen_estimates(gen, seg, z: torch.Tensor, layer: str, values: torch.Tensor, classes: list[int],
                     batch: int) -> torch.Tensor:
    """First-order ACE of every unit on each class, (len(classes), U) float64: k_u(c) times the gradient of
    the segmenter's class score s_c summed over the unit's pixels, averaged over the latents z. One forward
    and one backward per class and latent batch (the forward is shared by the classes)."""
    with torch.no_grad():
        feats = features_at(gen, z, layer)
    grad_sum = torch.zeros(len(classes), feats.shape[1], dtype=torch.float64, device=feats.device)
    for lo in range(0, len(z), batch):
        f = feats[lo:lo + batch].detach().requires_grad_(True)
        images = gen.forward_from(layer, f, z[lo:lo + batch])
        for i, c in enumerate(classes):
            score = seg.class_scores(images, c).sum()
            (grad,) = torch.autograd.grad(score, f, retain_graph=i < len(classes) - 1)
            grad_sum[i] += grad.double().sum((0, 2, 3))
    return grad_sum / len(z) * values[:, classes].T.double().to(grad_sum.device)


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two (n,) tensors (ties broken by position; nan for n < 3)."""
    if len(a) < 3:
        return float("nan")
    ra, rb = (t.argsort().argsort().double() for t in (a, b))
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def block_fractions(seg, images: torch.Tensor, classes: int) -> torch.Tensor:
    """(B, N, 3, H, W) blocks of images -> (B, N, C) class fractions, segmented in one call (the
    segmenter runs much faster on one large batch than on many small ones)."""
    labels = seg.segment(images.flatten(0, 1))
    return class_fractions(labels, classes).view(images.shape[0], images.shape[1], classes)


class ACE:
    """Options: classes (names; default every class covering at least min_area of the images, less
    the segmenter's ``background`` classes), samples (latents per estimate), top_k, curve_ks (the k
    of the top-k curves; default 1, 2, 3, 5, 8, 13, ... top_k), value ('mean' or 'quantile'),
    value_quantile, context_locations, alpha_steps, alpha_lr, alpha_lambda, alpha_samples, stat_samples,
    screen (rank every unit by a first-order estimate and measure only the top candidates exactly),
    screen_candidates (the first candidate count M; default max(24, 1.2 top_k); widened in steps of M/3),
    screen_min_correlation (below this rank correlation of estimate and exact ACE over the measured
    units, every unit of the class is measured; default 0.3).

    Cost: with ``screen = false``, (1 + classes) x units x samples images from the layer on, each
    segmented; screened, one forward and ``classes`` backward passes of the samples, then the same for
    M (or more, when widened) units per class and the union of the candidates for the ablations; plus per class
    2 x len(curve_ks) x samples, context_locations x samples, and alpha_steps forward and backward
    passes of 2 x alpha_samples images.
    """

    after = ("dissect",)  # pipeline order when both run: correlation (dissect) before causation

    def __init__(self, classes: list[str] | None = None, samples: int = 16, top_k: int = 20, min_area: float = 0.01,
                 curve_ks: list[int] | None = None, value: str = "mean", value_quantile: float = 0.99,
                 context_locations: int = 16, alpha_steps: int = 30, alpha_lr: float = 0.01,
                 alpha_lambda: float = 0.005, alpha_samples: int = 8, stat_samples: int | None = None,
                 screen: bool = True, screen_candidates: int | None = None, screen_min_correlation: float = 0.3):
        if value not in ("mean", "quantile"):
            raise ValueError(f"ace: value must be 'mean' or 'quantile', got {value!r}")
        at_least_one = dict(samples=samples, top_k=top_k, alpha_samples=alpha_samples,
                            **({} if stat_samples is None else {"stat_samples": stat_samples}),
                            **({} if screen_candidates is None else {"screen_candidates": screen_candidates}))
        for name, n in {**at_least_one, "context_locations": context_locations + 1,
                        "alpha_steps": alpha_steps + 1}.items():
            if n < 1:
                raise ValueError(f"ace: {name} must be at least {1 if name in at_least_one else 0}")
        if not 0 <= min_area < 1 or not 0 < value_quantile < 1:
            raise ValueError(f"ace: min_area must be in [0, 1) and value_quantile in (0, 1), got {min_area} and "
                             f"{value_quantile}")
        self.classes, self.samples, self.top_k, self.min_area = classes, samples, top_k, min_area
        self.curve_ks = None if curve_ks is None else [int(k) for k in curve_ks]
        self.value, self.value_quantile = value, value_quantile
        self.context_locations, self.alpha_steps, self.alpha_lr = context_locations, alpha_steps, alpha_lr
        self.alpha_lambda, self.alpha_samples, self.stat_samples = alpha_lambda, alpha_samples, stat_samples
        if not -1 <= screen_min_correlation <= 1:
            raise ValueError(f"ace: screen_min_correlation must be in [-1, 1], got {screen_min_correlation}")
        self.screen, self.screen_candidates, self.screen_min_correlation = (screen, screen_candidates,
                                                                            screen_min_correlation)

    def check(self, generator, segmenter, layers):
        """Before any work: the class names exist in the segmenter's vocabulary, and the screen and the α
        optimisation (both follow gradients of ``class_scores``) have a differentiable segmenter."""
        check_class_names("ace", self.classes, segmenter)
        needing = {name: off for name, on, off in (("screen", self.screen, "false"),
                                                    ("alpha_steps", self.alpha_steps > 0, "0")) if on}
        if needing and getattr(segmenter, "differentiable", True) is False:
            settings = ", ".join(f"{name} = {off}" for name, off in needing.items())
            raise ConfigError(f"ace: the segmenter gives no gradients (its class_scores is not differentiable), and "
                              f"{' and '.join(needing)} follow them: set {settings} under [analysis_options.ace] "
                              "(every unit is then measured exactly, and GAN Dissection's α optimisation is skipped)")

    # -- statistics: class areas and per-unit activation where each class is present ---------------
    def class_statistics(self, ctx, layer, classes):
        """Per class: its mean area (C,), each unit's insertion value where it is present (U, C) and
        the number of feature-map pixels where it is present (C,)."""
        units = find_layer(ctx.generator, layer).channels
        dev = ctx.device  # statistics live where the features are
        stats = {"area": Sum(classes, dev), "act_sum": Sum((units, classes), dev), "count": Sum(classes, dev),
                 "samples": Sum((), dev)}
        if self.value == "quantile":
            # Histogram ranges from the first batch of the same stream (widened; later values clamp into the
            # end bins), fixed before streaming so that a resumed run restores into the same edges.
            first = next(iter(ctx.batches(samples=min(ctx.config.batch_size, self.stat_samples or ctx.config.samples),
                                          layers=[layer], segment=False, description=f"ace {layer}: ranges")))
            flat = first.features[layer].double().permute(1, 0, 2, 3).reshape(units, -1)
            lo, hi = flat.min(1).values, flat.max(1).values
            span = (hi - lo).clamp_min(1e-6)
            stats.update({f"hist_{c}": Histogram(lo - 0.5 * span, hi + 0.5 * span, 256) for c in range(classes)})
        # the insertion values decide what the per-unit passes do: a shard computes them on every sample
        for batch in ctx.tally(stats, key="statistics", samples=self.stat_samples, layers=[layer], decides=True,
                               description=f"ace {layer}: statistics"):
            feats = batch.features[layer].double()
            b, _, h, w = feats.shape
            onehot = presence(batch.labels, classes, torch.float64)  # (B, C, H, W)
            stats["area"].update(onehot.mean((2, 3)).sum(0))
            present = (F.adaptive_avg_pool2d(onehot, (h, w)) > 0.5).double()  # (B, C, h, w)
            stats["act_sum"].update(torch.einsum("buhw,bchw->uc", feats, present))
            stats["count"].update(present.sum((0, 2, 3)))
            if self.value == "quantile":
                flat = feats.permute(1, 0, 2, 3).reshape(units, -1)
                mask = present.permute(1, 0, 2, 3).reshape(classes, -1) > 0
                for c in range(classes):
                    if mask[c].any():
                        stats[f"hist_{c}"].update(flat[:, mask[c]])
            stats["samples"].update(b)
        count = stats["count"].total
        if self.value == "quantile":
            values = torch.stack([stats[f"hist_{c}"].quantile(self.value_quantile) for c in range(classes)], 1)
        else:
            values = stats["act_sum"].total / count.clamp_min(1)[None]
        return stats["area"].total / max(int(stats["samples"].total), 1), values.float(), count

    # -- the run ---------------------------------------------------------------------------------
    DECISIVE = 0.5  # a unit is decisive for a class when ablating it alone removes at least this share of it
    EDGE = 8  # widen the screen when the exact top k reaches the last 1/EDGE of the screened units

    def run(self, ctx):
        gen, seg = ctx.generator, ctx.segmenter
        labels = list(seg.labels)
        layer = ctx.layers[0]
        units = find_layer(gen, layer).channels
        state = ctx.state
        if "area" not in state:
            area, values, count = self.class_statistics(ctx, layer, len(labels))
            state.update(area=area, values=values, count=count)
            ctx.save_state()
        area, values, count = state["area"], state["values"], state["count"]
        if self.classes is not None:
            check_class_names("ace", self.classes, seg)
            chosen = [labels.index(c) for c in self.classes]
        else:  # objects only: what an ablated object uncovers (walls, floor) is not a class to dissect
            skip = set(NOT_OBJECTS) | set(getattr(seg, "background", ()))
            chosen = [c for c in range(len(labels)) if area[c] >= self.min_area and count[c] > 0
                      and labels[c] not in skip]
        z = gen.sample_z(self.samples, ctx.config.seed).to(ctx.device)
        with torch.no_grad():
            original = seg.segment(gen.forward(z))  # (N, [K,] H, W) labels, read by every class's context gain
        base = class_fractions(original, len(labels))  # (N, C)
        order = {c: list(range(units)) for c in chosen}
        if self.screen and chosen:
            if "estimates" not in state:
                # the classes split between processes; the estimates decide the candidates, so a shard
                # computes them all
                part = ctx.share(len(chosen), what="classes' estimates", decides=True)
                mine = (screen_estimates(gen, seg, z, layer, values, chosen[part.start:part.stop], ctx.config.batch_size)
                        if len(part) else None)
                state["estimates"] = torch.cat([e for e in ctx.all_gather(mine, decides=True) if e is not None])
                ctx.save_state()
            order = {c: torch.sort(state["estimates"][i].cpu(), descending=True, stable=True).indices.tolist()
                     for i, c in enumerate(chosen)}
        first = units if not self.screen else min(units, self.screen_candidates or max(24, (6 * self.top_k + 4) // 5))
        # the ablations are shared by the classes: the union of the first candidates, with every class's
        # first insertions (one exchange between processes, or shards, for all of them)
        self.measure(ctx, z, layer, [(None, sorted({u for c in chosen for u in order[c][:first]}), None)]
                     + [(c, order[c][:first], values[:, c]) for c in chosen], labels)
        result = {"version": RESULT_VERSION, "layer": layer, "samples": self.samples, "units": units,
                  "class_area": {labels[c]: float(area[c]) for c in range(len(labels))}, "classes": {}}
        for i, c in enumerate(chosen):
            estimate = state["estimates"][i].cpu() if self.screen else None
            measured, screen = self.screened(ctx, z, layer, values, c, order[c], first, labels, estimate)
            ace = state[f"inserted_{c}_mean"] - state["ablated_mean"][:, c]  # (U,) float64, exact where measured
            exact = sorted(measured, key=lambda u: -float(ace[u]))
            is_measured = set(measured)
            ranking = exact + [u for u in order[c] if u not in is_measured]
            entry = {"unit_ace": [float(ace[u]) if u in is_measured else None for u in range(units)],
                     "ranking": ranking, "insert_value": values[:, c].tolist(),
                     "unit_ace_estimate": None if estimate is None else estimate.tolist(), "screen": screen}
            # per latent, paired: the same z inserted and ablated
            effects = (state[f"inserted_{c}_latents"][measured].double()
                       - state["ablated_latents"][measured][:, :, c].double())  # (M, N)
            row = {u: i for i, u in enumerate(measured)}
            spread = ace_uncertainty(effects, [row[u] for u in exact[: self.top_k]], seed=ctx.config.seed + c)
            entry["unit_ace_se"] = [spread["unit_ace_se"][row[u]] if u in row else None for u in range(units)]
            entry["unit_ace_ci95"] = [spread["unit_ace_ci95"][row[u]] if u in row else None for u in range(units)]
            entry["topk_stability"] = {str(measured[int(r)]): v for r, v in spread["topk_stability"].items()}
            entry["rank_beats_next"], entry["rank_distinguishable"] = (spread["rank_beats_next"],
                                                                       spread["rank_distinguishable"])
            result["classes"][labels[c]] = entry
        # curves, context and α of each class given its ranking: the classes split between processes
        part = ctx.share(len(chosen), what="classes' curves, context and alpha")
        extras = {}
        for c in chosen[part.start:part.stop]:
            ranking = result["classes"][labels[c]]["ranking"]
            top = ranking[0] if ranking else None
            single = (None if top is None else (float(state["ablated_mean"][top, c]),
                                                float(state[f"inserted_{c}_mean"][top])))
            extra = self.top_k_curves(gen, seg, z, layer, ranking, values[:, c], c, base, len(labels), single)
            extra["context_gain"] = self.context_gain(gen, seg, z, layer, ranking[: self.top_k], values[:, c], c,
                                                      labels, original)
            extra["alpha_opt"] = self.optimise_alpha(gen, seg, z[: self.alpha_samples], layer, values[:, c], c)
            extras[c] = extra
        for theirs in ctx.all_gather(extras):
            for c, extra in theirs.items():
                result["classes"][labels[c]].update(extra)
        ablated = state["ablated_done"].nonzero().flatten().tolist() if chosen else []
        for c in chosen:  # after every class: among all the ablations measured, whichever class asked for them
            result["classes"][labels[c]]["decisive_units"] = self.decisive(state, ablated, c, float(base[:, c].mean()))
        if ctx.is_writer:  # pictures: only the process that writes the output folder draws them
            self.plot(ctx, result)
        return result

    def screened(self, ctx, z, layer, values, c, order, first, labels, estimate=None):
        """Measure class c's candidates exactly, widening while the exact top k reaches the screened set's
        last 1/EDGE, and measuring every unit when the estimate ranks the measured ones too poorly (rank
        correlation below ``screen_min_correlation``). Returns (the measured units, screen info)."""
        units = len(order)
        size, widened = first, []
        position = {u: i for i, u in enumerate(order)}
        while True:
            candidates = order[:size]
            # (ablations outside the first union)
            self.measure(ctx, z, layer, [(None, candidates, None), (c, candidates, values[:, c])], labels)
            ace = ctx.state[f"inserted_{c}_mean"] - ctx.state["ablated_mean"][:, c]
            top = sorted(candidates, key=lambda u: -float(ace[u]))[: self.top_k]
            edge_rank = max(position[u] for u in top) if top else 0
            edge = max(1, size // self.EDGE)
            if size >= units or edge_rank < size - edge:
                break
            size = min(units, size + max(1, first // 3))
            widened.append(size)
        info = {"enabled": self.screen, "initial": first, "widened_to": widened, "edge_rank": edge_rank,
                "edge": size - edge, "fallback": None}
        if estimate is not None:
            fit = self.calibration(estimate[candidates], ace[candidates])
            if size < units and fit["spearman"] < self.screen_min_correlation:
                # a class score that disagrees with the segmentation misleads the screen; measure everything
                info["fallback"] = (f"the estimate ranked the {size} measured units with a rank correlation of "
                                    f"{fit['spearman']:.2f} < {self.screen_min_correlation}: every unit measured")
                candidates = order
                self.measure(ctx, z, layer, [(None, candidates, None), (c, candidates, values[:, c])], labels)
                ace = ctx.state[f"inserted_{c}_mean"] - ctx.state["ablated_mean"][:, c]
                fit = self.calibration(estimate[candidates], ace[candidates])
            info.update(fit)
        info.update(measured=len(candidates), units=units, exhaustive=len(candidates) == units)
        return sorted(candidates), info

    @staticmethod
    def calibration(estimate: torch.Tensor, exact: torch.Tensor) -> dict:
        """How well the estimate ranks the measured units (Spearman) and the least-squares line that maps
        it onto the exact ACE scale (the estimate is in class-score units, the exact ACE in pixel shares)."""
        x, y = estimate.double(), exact.double()
        if len(x) < 2 or float(x.var()) == 0:
            return {"spearman": float("nan"), "fit": {"intercept": float(y.mean()) if len(y) else 0.0, "slope": 0.0}}
        slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
        return {"spearman": rank_correlation(x, y), "fit": {"intercept": float(y.mean() - slope * x.mean()),
                                                            "slope": slope}}

    def decisive(self, state, ablated, c, base_area):
        """Units whose single ablation removes at least DECISIVE of class c (share of its mean area), among
        the units whose ablation was measured; largest first."""
        if base_area <= 0:
            return []
        removed = {u: 1 - float(state["ablated_mean"][u, c]) / base_area for u in ablated}
        return [{"unit": u, "removed_fraction": r} for u, r in sorted(removed.items(), key=lambda kv: -kv[1])
                if r >= self.DECISIVE]

    def measure(self, ctx, z, layer, jobs, labels):
        """Class fractions with each unit of a job ablated (``(None, units, None)``) or inserted at
        ``value`` for class c (``(c, units, value)``), for the units not measured yet; kept in the run's
        state (means in float64 and each latent's values). Several processes split each job's units
        in whole engine chunks (each unit is computed in the same chunk as by one process) and exchange
        the results once for all the jobs; what is left to do is the same in every process because the
        done flags only change through that exchange."""
        state, n, classes = ctx.state, len(z), len(labels)
        total = find_layer(ctx.generator, layer).channels
        block = units_per_chunk(ctx.generator, n)
        computed, pending = [], False
        for c, units, value in jobs:
            prefix = "ablated" if c is None else f"inserted_{c}"
            if f"{prefix}_done" not in state:
                state[f"{prefix}_done"] = torch.zeros(total, dtype=torch.bool)
                state[f"{prefix}_mean"] = torch.zeros(total, *(() if c is not None else (classes,)),
                                                      dtype=torch.float64)
                state[f"{prefix}_latents"] = torch.zeros(total, n, *(() if c is not None else (classes,)))
            todo = [u for u in units if not bool(state[f"{prefix}_done"][u])]
            if not todo:
                continue
            pending = True
            part = ctx.share(len(todo), block=block, what=f"{prefix} units")
            mine = todo[part.start:part.stop]
            if not mine:
                continue
            what = "ablate" if c is None else f"insert {labels[c]}"
            for chunk, images in ctx.track(per_unit(ctx.generator, z, layer, mine, value=value), total=len(mine),
                                           description=f"ace {layer}: {what} per unit", size=lambda item: len(item[0])):
                fractions = block_fractions(ctx.segmenter, images, classes).cpu()  # (u, N, C)
                if c is not None:  # only class c of an insertion is read
                    fractions = fractions[:, :, c]
                computed.append((prefix, torch.as_tensor(chunk), fractions.double().mean(1), fractions.float()))
        if not pending:
            return
        for theirs in ctx.all_gather(computed):
            for prefix, idx, mean, latents in theirs:
                state[f"{prefix}_mean"][idx] = mean
                state[f"{prefix}_latents"][idx] = latents
                state[f"{prefix}_done"][idx] = True
        ctx.save_state()

    def curve_points(self, available: int) -> list[int]:
        """The k at which the top-k curves are measured: ``curve_ks``, or a Fibonacci-like ladder up to top_k."""
        top = min(self.top_k, available)
        if self.curve_ks is not None:
            ks = self.curve_ks
        else:
            ks, a, b = [top], 1, 2
            while a < top:
                ks.append(a)
                a, b = b, a + b
        return sorted({int(k) for k in ks if 1 <= int(k) <= top})

    def top_k_curves(self, gen, seg, z, layer, ranking, value, c, base, classes, single=None):
        """Ablate / insert the top-k units for each k of the ladder: class c removed, ACE of the set.
        single: (ablated, inserted) mean area of class c with the top unit alone, when already measured
        (the per-unit pass, same latents): k = 1 is then not generated again."""
        base_area = float(base[:, c].mean())
        ks = self.curve_points(len(ranking))
        generated = [k for k in ks if not (k == 1 and single is not None)]
        ivs = []
        for k in generated:
            units = ranking[:k]
            ivs += [Intervention(layer, units), Intervention(layer, units, value=value[units])]
        area = torch.zeros(len(ivs), dtype=torch.float64)
        for chunk, images in variants(gen, z, ivs):
            area[chunk] = block_fractions(seg, images, classes)[:, :, c].double().mean(1).cpu()
        by_k = {k: (float(area[2 * i]), float(area[2 * i + 1])) for i, k in enumerate(generated)}
        if single is not None and 1 in ks:
            by_k[1] = single
        ablated = [by_k[k][0] for k in ks]
        removed = [0.0] + [1 - a / base_area if base_area > 0 else 0.0 for a in ablated]
        return {"curve_k": [0] + ks, "topk_removed_fraction": removed,
                "topk_ace": [by_k[k][1] - by_k[k][0] for k in ks], "base_area": base_area}

    def context_gain(self, gen, seg, z, layer, units, value, c, labels, orig):
        """Insert the top units at one feature-map pixel; mean gain of class c by the class found there.
        orig: (N, [K,] H, W) labels of the unedited images of z."""
        info = find_layer(gen, layer)
        h, w = info.size
        g = torch.Generator().manual_seed(0)
        locations = torch.randperm(h * w, generator=g)[: self.context_locations].tolist()
        if not locations:
            return {}
        n = len(z)
        before = class_fractions(orig, len(labels))[:, c]
        ivs = []
        for p in locations:
            region = torch.zeros(h, w, device=z.device)
            region[p // w, p % w] = 1
            ivs.append(Intervention(layer, units, region=region, value=value[units]))
        gain = torch.zeros(len(locations), n, device=z.device)
        for chunk, images in variants(gen, z, ivs):
            gain[chunk] = block_fractions(seg, images, len(labels))[:, :, c] - before
        big_h, big_w = orig.shape[-2:]
        first = label_planes(orig)[:, 0]  # a multi-label segmentation's first plane: what is there (its object)
        context = []
        for p in locations:
            y, x = (p // w) * big_h // h, (p % w) * big_w // w
            patch = first[:, y:y + max(1, big_h // h), x:x + max(1, big_w // w)].reshape(n, -1)
            context.append(patch.mode(1).values)
        context, gain = torch.cat(context), gain.flatten()
        out = {}
        for k in context.unique().tolist():
            if k < 0:  # no label in that plane there
                continue
            sel = context == k
            out[labels[k]] = {"mean_gain": float(gain[sel].mean()), "count": int(sel.sum())}
        return out

    def optimise_alpha(self, gen, seg, z, layer, value, c):
        """Minimise -delta_alpha + lambda ||alpha||^2 with Adam, alpha clamped to [0, 1]."""
        info = find_layer(gen, layer)
        site = norm_site_reading(gen, layer)
        with torch.no_grad():
            feats = features_at(gen, z, layer)
        alpha = torch.full((info.channels,), 0.5, device=feats.device, requires_grad=True)
        opt = torch.optim.Adam([alpha], lr=self.alpha_lr)
        history = []

        def generate(val):
            if site is None:  # no pixel norm reads the layer: intervene in plain PyTorch
                return gen.forward_from(layer, intervene(feats, alpha, None, val), z)
            with norm_overrides(gen, {site: lambda x: intervene_pixelnorm(x, alpha=alpha, value=val)[0]}):
                return gen.forward_from(layer, feats, z)

        for _ in range(self.alpha_steps):
            delta = seg.class_scores(generate(value), c).mean() - seg.class_scores(generate(None), c).mean()
            loss = -delta + self.alpha_lambda * alpha.pow(2).sum()
            # the gradient for alpha only: loss.backward() would also compute (and keep) every weight's
            # gradient in the generator and the segmenter, about as much work again as the backward needed
            (alpha.grad,) = torch.autograd.grad(loss, [alpha])
            opt.step()
            with torch.no_grad():
                alpha.clamp_(0, 1)
            history.append(float(delta.detach()))
        a = alpha.detach()
        return {"alpha": a.tolist(), "delta_history": history, "final_delta": history[-1] if history else 0.0,
                "units_above_half": torch.nonzero(a > 0.5).flatten().tolist(), "steps": self.alpha_steps,
                "lr": self.alpha_lr, "lambda": self.alpha_lambda}

    def plot(self, ctx, result):
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

    REMOVES = 0.5  # the findings say ablation removes a class when the top-k units take at least this much of it

    def report_findings(self, result):
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

        removed = [item(n, e) for n, e in order if e["topk_removed_fraction"][-1] >= self.REMOVES]
        kept = [item(n, e) for n, e in order if e["topk_removed_fraction"][-1] < self.REMOVES]
        found = []
        lead = f"Ablating each class's top {k}units (by ACE, layer <code>{esc(result['layer'])}</code>)"
        if removed:
            found.append(f"{lead} removes most of {len(removed)} of {len(classes)} classes (share of the class's "
                         "pixels removed): " + ", ".join(removed) + ".")
        if kept:
            noun = "class" if len(kept) == 1 else "classes"
            found.append(("It" if removed else lead) + f" cannot remove {len(kept)} {noun} (less than "
                         f"{esc(pct(self.REMOVES))} removed): " + ", ".join(kept) + ".")
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
            found.append(f"<b>Decisive units</b>, whose ablation alone removes at least {esc(pct(self.DECISIVE))} of a "
                         "class (share removed): " + "; ".join(decisive) + ".")
        unstable = [f"{esc(n)} (rank {beats.index(False) + 1})" for n, e in classes.items()
                    for beats in [e.get("rank_distinguishable", [])] if False in beats]
        if unstable:
            found.append("Ranks that resampling the latents cannot tell from the next one (first such rank): "
                         + ", ".join(unstable) + ".")
        return found

    def report_section(self, result, out_dir):
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
                parts.append(f"<p><b>Decisive units</b> (one ablation removes at least {esc(pct(self.DECISIVE))} of "
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


@hookimpl
def gandid_register_analyses(register):
    register("ace", ACE, description="average causal effect of units on classes: ranking, top-k curves, context, alpha")
