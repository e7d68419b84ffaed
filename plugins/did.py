"""`did`: what pixel normalisation does under ablation (Liu et al., "Difference-in-Differences").

For each class: ablate its top-k ACE units at the layer and run the four arms in one pass with β
controlled from the intervened layer on. Pixel space: ΔY = [Y(β',u') - Y(β',u)] - [Y(β,u') - Y(β,u)]
per sample, its mean map and mean |ΔY|. Segmentation space: for every class j the DID of its area,
[A_j(β',u') - A_j(β',u)] - [A_j(β,u') - A_j(β,u)], with a bootstrap 95% interval over samples:
positive for the classes pixel norm in-paints, negative for the ones it removes.
"""
from __future__ import annotations

import torch

from gandid import hookimpl
from gandid.intervene import BetaControl, BufferPool, Intervention, counterfactuals
from gandid.stats import bootstrap_ci

ARMS = ("original", "intervened", "intervened_fixed_beta", "original_swapped_beta")
ARM_TITLES = ("Y(β,u)", "Y(β',u')", "Y(β,u')", "Y(β',u)")


def areas(seg, images, classes):
    """(B, C) fraction of each class's pixels in the segmentation of images."""
    labels = seg.segment(images)
    return torch.nn.functional.one_hot(labels.reshape(len(labels), -1).long(), classes).double().mean(1)


class DID:
    """Options: top_k (units ablated per class), classes (default: every ACE class), sites (controlled
    norm sites; default from the intervened layer on), samples, panels (examples drawn), resamples."""

    requires = ("ace",)

    def __init__(self, top_k: int = 20, classes=None, sites=None, samples: int | None = None, panels: int = 4,
                 resamples: int = 2000):
        self.top_k, self.classes, self.sites, self.samples = top_k, classes, sites, samples
        self.panels, self.resamples = panels, resamples

    def run(self, ctx):
        gen, seg = ctx.generator, ctx.segmenter
        labels = list(seg.labels)
        ace = ctx.results["ace"]
        layer = ace["layer"]
        names = self.classes or list(ace["classes"])
        unknown = [c for c in names if c not in ace["classes"]]
        if unknown:
            from gandid.errors import UnknownNameError

            raise UnknownNameError("class measured by ace", unknown[0], list(ace["classes"]))
        control = BetaControl(self.sites)
        sites = control.resolve(gen, layer)
        state = ctx.load_state() or {}
        pool = BufferPool()
        result = {"layer": layer, "sites": sites, "top_k": self.top_k, "classes": {}}
        for name in names:
            units = ace["classes"][name]["ranking"][: self.top_k]
            st = state.setdefault(name, {"done": 0, "area_did": [], "arm_area": torch.zeros(4, len(labels),
                                                                                           dtype=torch.float64),
                                         "dy_sum": None, "dy_abs_sum": None})
            iv = Intervention(layer, units)
            for batch in ctx.batches(samples=self.samples, start=st["done"], generate=False,
                                     description=f"did {name}"):
                arms = counterfactuals(gen, batch.z, iv, control, pool=pool)
                a = [areas(seg, getattr(arms, arm), len(labels)) for arm in ARMS]  # 4 x (B, C)
                st["area_did"].append((a[1] - a[3]) - (a[2] - a[0]))
                st["arm_area"] += torch.stack([x.sum(0) for x in a])
                dy = arms.did.double()
                st["dy_sum"] = dy.sum(0) if st["dy_sum"] is None else st["dy_sum"] + dy.sum(0)
                st["dy_abs_sum"] = dy.abs().sum(0) if st["dy_abs_sum"] is None else st["dy_abs_sum"] + dy.abs().sum(0)
                if batch.start == 0:
                    self.draw_panels(ctx, name, arms)
                st["done"] = batch.start + len(batch.z)
                ctx.save_state(state)
            per_sample = torch.cat(st["area_did"]) if st["area_did"] else torch.zeros(0, len(labels))
            n = max(1, st["done"])
            entry = {"units": units, "samples": st["done"], "area_did": {},
                     "arm_mean_area": {title: {labels[j]: float(st["arm_area"][i, j] / n) for j in range(len(labels))}
                                       for i, title in enumerate(ARM_TITLES)},
                     "pixel_did_mean_abs": float(st["dy_abs_sum"].mean() / n) if st["dy_abs_sum"] is not None
                     else 0.0}
            for j, other in enumerate(labels):
                values = per_sample[:, j]
                lo, hi = bootstrap_ci(values, seed=ctx.config.seed + j, resamples=self.resamples)
                entry["area_did"][other] = {"mean": float(values.mean()) if len(values) else 0.0, "ci95": [lo, hi]}
            if st["dy_abs_sum"] is not None:
                self.draw_map(ctx, name, st["dy_abs_sum"] / n)
            result["classes"][name] = entry
        return result

    def draw_panels(self, ctx, name, arms):
        """The four arms, the two inner differences and ΔY for a few samples (the paper's Figure 4)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = min(self.panels, len(arms.original))
        inner_prime = arms.intervened - arms.original_swapped_beta
        inner = arms.intervened_fixed_beta - arms.original
        cols = [(getattr(arms, arm), t) for arm, t in zip(ARMS, ARM_TITLES)] + [
            (inner_prime, "Y(β',u')-Y(β',u)"), (inner, "Y(β,u')-Y(β,u)"), (arms.did, "ΔY")]
        fig, axes = plt.subplots(rows, len(cols), figsize=(1.6 * len(cols), 1.7 * rows), squeeze=False)
        for r in range(rows):
            for k, (imgs, title) in enumerate(cols):
                img = imgs[r].float()
                if k >= 4:  # differences: centred at grey
                    img = img / max(1e-6, float(img.abs().max()))
                img = ((img.clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
                ax = axes[r][k]
                ax.imshow(img, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(title, fontsize=7)
        fig.suptitle(f"DID of pixel norm, top units of {name} ablated", fontsize=8)
        fig.tight_layout()
        fig.savefig(ctx.path(f"did_{name}.png"), dpi=110)
        plt.close(fig)

    def draw_map(self, ctx, name, mean_abs):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(3, 3))
        im = ax.imshow(mean_abs.mean(0).numpy(), cmap="magma")
        ax.set(title=f"mean |ΔY|, {name}", xticks=[], yticks=[])
        fig.colorbar(im, ax=ax, fraction=0.046)
        fig.tight_layout()
        fig.savefig(ctx.path(f"did_{name}_map.png"), dpi=100)
        plt.close(fig)


    def report_section(self, result, out_dir):
        from gandid.report import esc, image, table

        parts = [f"<p>Layer <code>{esc(result['layer'])}</code>; β controlled at {len(result['sites'])} sites "
                 f"({esc(', '.join(result['sites']))}). Area DID: [A(β',u') - A(β',u)] - [A(β,u') - A(β,u)], "
                 "positive where pixel norm in-paints.</p>"]
        for name, e in result["classes"].items():
            rows = sorted(e["area_did"].items(), key=lambda kv: -abs(kv[1]["mean"]))
            parts.append(f"<h3>top {len(e['units'])} units of {esc(name)} ablated ({e['samples']} samples)</h3>")
            parts.append(table(["class", "area DID", "95% interval"],
                               [(k, f"{v['mean']:+.4f}", f"[{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}]")
                                for k, v in rows]))
            parts.append(f"<p>mean |ΔY| = {e['pixel_did_mean_abs']:.4f}</p>")
            parts.append("<div class='grid'>" + image(f"did_{name}.png", "arms, inner differences and ΔY")
                         + image(f"did_{name}_map.png", "mean |ΔY| per pixel") + "</div>")
        return "\n".join(parts)


@hookimpl
def gandid_register_analyses(register):
    register("did", DID, description="difference-in-differences of pixel norm under ablation: pixels and areas")
