"""`did`: what pixel normalisation does under ablation (Liu et al., "Difference-in-Differences"), and
likewise instance normalisation (StyleGAN's AdaIN) or weight demodulation, whichever the controlled
norm sites are (``site_kinds`` in the result; the report names them).

For each class: ablate its top-k ACE units at the layer and run the four arms in one pass with β
controlled from the intervened layer on. Pixel space: ΔY = [Y(β',u') - Y(β',u)] - [Y(β,u') - Y(β,u)]
per sample, its mean map and mean |ΔY|. Segmentation space: for every class j the DID of its area,
[A_j(β',u') - A_j(β',u)] - [A_j(β,u') - A_j(β,u)], with a BCa bootstrap 95% interval over samples
and a bootstrap p-value, Benjamini-Hochberg adjusted across the classes of each ablation (q):
positive for the classes pixel norm in-paints, negative for the ones it removes; an effect is
reported as significant when q < ``fdr`` (0.05). Norm sites after the layer of kinds the engine cannot
control (batch norm in eval mode: constant statistics) are listed under ``uncontrolled`` with why, and
when nothing else follows the layer the result and the report say that the DID is 0 by construction.
"""
from __future__ import annotations

import torch

from gandid.intervene import (
    ARM_TITLES,
    CONTROLLABLE,
    BetaControl,
    BufferPool,
    Intervention,
    counterfactuals,
    generator_output_shape,
    not_controllable_reason,
)
from gandid.segmentation import class_fractions
from gandid.stats import PerSample, Sum, TopK, bootstrap_bca, false_discovery

from ..ace import check_class_names, read_ace_result
from . import report
from .results import ARMS, RESULT_VERSION, norm_name


def site_kinds(generator, sites) -> list[str]:
    """The kinds of the controlled norm sites, in the order they first appear."""
    kind = {s.name: s.kind for s in generator.norm_sites}
    return list(dict.fromkeys(kind[s] for s in sites))


def uncontrolled_sites(generator, layer: str, sites) -> dict | None:
    """The norm sites from ``layer`` on that are not controlled because the engine cannot control their
    kind (batch norm in eval mode: constant statistics), with why; None when there are none."""
    names = [info.name for info in generator.layers]
    after = set(names[names.index(layer):]) if layer in names else set()
    fixed = [s for s in generator.norm_sites
             if s.layer in after and s.kind not in CONTROLLABLE and s.name not in set(sites)]
    if not fixed:
        return None
    kinds = list(dict.fromkeys(s.kind for s in fixed))
    return {"sites": [s.name for s in fixed], "kinds": kinds,
            "why": "; ".join(not_controllable_reason(k) for k in kinds)}


def ablation_effect(before_after: torch.Tensor, c: int, labels, seed: int, resamples: int = 2000) -> dict:
    """What ablating class c's units did, natural run against original (Y(β',u') against Y(β,u)), from
    per-sample areas (N, 2C) (the C original, then the C ablated areas): the share of c that remains,
    mean(after_c) / mean(before_c), and each class's gain relative to c's area,
    (mean(after_j) - mean(before_j)) / mean(before_c), with percentile bootstrap 95% intervals over
    samples. None where c is absent from the originals."""
    n, classes = before_after.shape[0], before_after.shape[1] // 2
    rows = before_after.double()
    mean = rows.mean(0)
    if n == 0 or float(mean[c]) <= 0:
        return {"remaining": None, "gain": {}}
    g = torch.Generator().manual_seed(seed)
    boot = rows[torch.randint(n, (resamples, n), generator=g).to(rows.device)].mean(1)  # (B, 2C)
    before, after = boot[:, :classes], boot[:, classes:]
    base = before[:, c].clamp_min(1e-12)

    def summary(point, draws):
        lo, hi = torch.quantile(draws, torch.tensor([0.025, 0.975], dtype=draws.dtype, device=draws.device))
        return {"mean": float(point), "ci95": [float(lo), float(hi)]}

    gain = {labels[j]: summary((mean[classes + j] - mean[j]) / mean[c], (after[:, j] - before[:, j]) / base)
            for j in range(classes) if j != c}
    return {"remaining": summary(mean[classes + c] / mean[c], after[:, c] / base), "gain": gain}


def areas(seg, images, classes):
    """(B, C) fraction of each class's pixels in the segmentation of images, float64."""
    return class_fractions(seg.segment(images), classes, torch.float64)


class DID:
    """Options: top_k (units ablated per class), classes (default: every ACE class), sites (controlled
    norm sites; default from the intervened layer on), samples, panels (examples drawn), resamples
    (bootstrap), fdr (false discovery rate for the significance marks)."""

    requires = ("ace",)

    def __init__(self, top_k: int = 20, classes: list[str] | None = None, sites: list[str] | None = None,
                 samples: int | None = None, panels: int = 4, resamples: int = 2000, fdr: float = 0.05):
        if not 0 < fdr < 1:
            raise ValueError(f"did: fdr must be in (0, 1), got {fdr}")
        self.fdr = fdr
        for name, n in {"top_k": top_k, "samples": 1 if samples is None else samples, "resamples": resamples,
                        "panels": panels + 1}.items():
            if n < 1:
                raise ValueError(f"did: {name} must be at least {0 if name == 'panels' else 1}")
        self.top_k, self.classes, self.sites, self.samples = top_k, classes, sites, samples
        self.panels, self.resamples = panels, resamples

    def check(self, generator, segmenter, layers):
        """Before any work: the class names exist and the norm sites are the generator's, of kinds the
        engine controls."""
        check_class_names("did", self.classes, segmenter)
        if self.sites is not None:
            kinds = {s.name: s.kind for s in getattr(generator, "norm_sites", [])}
            for site in self.sites:
                if site not in kinds:
                    from gandid.errors import UnknownNameError

                    raise UnknownNameError("norm site in did's sites", site, list(kinds))
                if kinds[site] not in CONTROLLABLE:
                    raise ValueError(f"did: norm site {site!r} in sites is a {kinds[site]} site, which the DID engine "
                                     f"does not control: {not_controllable_reason(kinds[site])}")

    def run(self, ctx):
        gen, seg = ctx.generator, ctx.segmenter
        labels = list(seg.labels)
        ace = read_ace_result(ctx.results["ace"])
        layer = ace["layer"]
        names = self.classes or list(ace["classes"])
        unknown = [c for c in names if c not in ace["classes"]]
        if unknown:
            from gandid.errors import UnknownNameError

            raise UnknownNameError("class measured by ace", unknown[0], list(ace["classes"]))
        control = BetaControl(self.sites)
        sites = control.resolve(gen, layer)
        pool = BufferPool()
        result = {"version": RESULT_VERSION, "layer": layer, "sites": sites, "site_kinds": site_kinds(gen, sites),
                  "top_k": self.top_k, "arm_titles": dict(ARM_TITLES), "classes": {}}
        fixed = uncontrolled_sites(gen, layer, sites)
        if fixed:
            result["uncontrolled"] = fixed
        image_shape = generator_output_shape(gen)
        # Y(β,u) is the same image for every class (same latents, same rows of the same pass, no
        # intervention in its rows): segment it once per sample and reuse its areas for the later classes
        original_areas: dict[int, torch.Tensor] = {}
        for name in names:
            units = ace["classes"][name]["ranking"][: self.top_k]
            c = labels.index(name)
            dev = ctx.device  # statistics live where the images are
            stats = {"area_did": PerSample(len(labels), dev), "arm_area": Sum((4, len(labels)), dev),
                     "before_after": PerSample(2 * len(labels), dev),
                     "dy_abs_sum": Sum(image_shape, dev), "panels": TopK(1, self.panels, dev), "present": Sum((), dev)}
            iv = Intervention(layer, units)
            stream = ctx.tally(stats, key=name, samples=self.samples, generate=False, description=f"did {name}")
            for batch in stream:
                arms = counterfactuals(gen, batch.z, iv, control, pool=pool)
                seeds = [int(i) for i in batch.seeds]
                if all(i in original_areas for i in seeds):
                    first = torch.stack([original_areas[i] for i in seeds])
                else:
                    first = areas(seg, arms.original, len(labels))
                    original_areas.update(zip(seeds, first))
                a = [first] + [areas(seg, getattr(arms, arm), len(labels)) for arm in ARMS[1:]]  # 4 x (B, C)
                stats["area_did"].update((a[1] - a[3]) - (a[2] - a[0]), batch.seeds)
                stats["arm_area"].update(torch.stack([x.sum(0) for x in a]))
                stats["before_after"].update(torch.cat([a[0], a[1]], 1), batch.seeds)  # Y(β,u) and Y(β',u') areas
                stats["dy_abs_sum"].update(arms.did.double().abs().sum(0))
                self.keep_panel_samples(stats, batch.seeds, a[0][:, c])
            per_sample = stats["area_did"].rows()
            done = stream.done
            n = max(1, done)
            arm_area, dy_abs_sum = stats["arm_area"].total, stats["dy_abs_sum"].total
            entry = {"units": units, "samples": done, "area_did": {},
                     "arm_mean_area": {arm: {labels[j]: float(arm_area[i, j] / n) for j in range(len(labels))}
                                       for i, arm in enumerate(ARMS)},
                     "pixel_did_mean_abs": float(dy_abs_sum.mean() / n) if done else 0.0}
            # BCa intervals for every class at once; Benjamini-Hochberg across this table's classes
            lo, hi, p = bootstrap_bca(per_sample, seed=ctx.config.seed, resamples=self.resamples)
            q = false_discovery(p)
            for j, other in enumerate(labels):
                values = per_sample[:, j]
                entry["area_did"][other] = {"mean": float(values.mean()) if len(values) else 0.0,
                                            "ci95": [float(lo[j]), float(hi[j])], "p": float(p[j]), "q": float(q[j]),
                                            "significant": bool(q[j] < self.fdr)}
            entry["ablation"] = ablation_effect(stats["before_after"].rows(), c, labels, seed=ctx.config.seed + c,
                                                resamples=self.resamples)
            if done and ctx.is_writer:  # pictures: only the process that writes the output folder draws them
                st = {"panel_samples": self.panel_samples(stats), "panel_present": int(stats["present"].total),
                      "done": done}
                report.draw_map(ctx, name, dy_abs_sum / n)
                self.draw_panels(ctx, name, labels, st, iv, control, norm_name(result["site_kinds"]))
            result["classes"][name] = entry
        return result

    @staticmethod
    def keep_panel_samples(stats, seeds, area):
        """Pictures only, the numbers never read this: keep the samples where the ablated class covers the
        most of the original image (``stats["panels"]``, a TopK; ties to the earlier sample) and count
        those where it is present at all (``stats["present"]``). area (B,) of samples ``seeds``."""
        stats["panels"].update(torch.where(area > 0, area.double(), -torch.inf)[None], torch.as_tensor(seeds))
        stats["present"].update(int((area > 0).sum()))

    @staticmethod
    def panel_samples(stats) -> list:
        """[[area, sample], ...] kept by :meth:`keep_panel_samples`, largest area first."""
        top = stats["panels"]
        return [[float(v), int(i)] for v, i in zip(top.values[0], top.ids[0]) if v > 0]

    def draw_panels(self, ctx, name, labels, st, iv, control, norm="pixel norm"):
        """The four arms, the two inner differences and ΔY for a few samples (the paper's Figure 4):
        the samples where the ablated class covers the largest area, regenerated from their seeds;
        samples without it fill the rows only when fewer than ``panels`` contain it, and say so."""
        if self.panels < 1:
            return
        gen = ctx.generator
        chosen = [int(i) for _, i in st.get("panel_samples", [])]
        rows = min(self.panels, st["done"])
        chosen += [i for i in range(rows + len(chosen)) if i not in chosen][: rows - len(chosen)]
        if not chosen:
            return
        with torch.no_grad():
            z = torch.cat([gen.sample_z(1, ctx.config.seed, start=i) for i in chosen]).to(ctx.device)
            arms = counterfactuals(gen, z, iv, control)
            area = areas(ctx.segmenter, arms.original, len(labels))[:, labels.index(name)].tolist()
        report.draw_panels(ctx, name, chosen, arms, area, st, norm)

    # -- report.html (drawn by .report; the core calls these) -----------------------------------
    def report_findings(self, result, top: int = 3):
        return report.findings(result, top)

    def report_section(self, result, out_dir):
        return report.section(result, out_dir)

    # -- gandid serve (described by .explore; the explorer calls it) -----------------------------
    def explorer(self, result):
        from .explore import explorer_view

        return explorer_view(result)
