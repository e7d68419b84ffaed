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

import torch
import torch.nn.functional as F

from gandid.errors import ConfigError
from gandid.hooks import features_at, norm_overrides, norm_site_reading
from gandid.intervene import Intervention, per_unit, units_per_chunk, variants
from gandid.model import find_layer
from gandid.ops import intervene_pixelnorm
from gandid.ops.reference import intervene
from gandid.segmentation import class_fractions, label_planes, presence
from gandid.stats import Histogram, Sum

from . import report
from .estimates import ace_uncertainty, rank_correlation, screen_estimates
from .results import RESULT_VERSION

NOT_OBJECTS = ("unlabelled", "unlabeled", "background")  # never chosen as ACE classes by default


def check_class_names(analysis: str, names, segmenter, what: str = "classes") -> None:
    """Refuse a class the segmenter does not know, naming the closest labels; ``what``: the option."""
    if names is None or segmenter is None:
        return
    labels = list(segmenter.labels)
    for name in names:
        if name not in labels:
            from gandid.errors import UnknownNameError

            raise UnknownNameError(f"class in {analysis}'s {what}", name, labels)


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
            report.plot(ctx, result)
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

    # -- report.html (drawn by .report; the core calls these) -----------------------------------
    def report_findings(self, result):
        return report.findings(result, self.DECISIVE)

    def report_section(self, result, out_dir):
        return report.section(result, out_dir, self.DECISIVE)

    # -- gandid serve (described by .explore; the explorer calls it) -----------------------------
    def explorer(self, result):
        from .explore import explorer_view

        return explorer_view(result)
