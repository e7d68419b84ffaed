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

from typing import TypedDict

import torch

from gandid import hookimpl
from gandid.analysis import read_result
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

from .ace import check_class_names, read_ace_result

ARMS = tuple(ARM_TITLES)  # gandid.intervene.Arms's four images, by field name; results are keyed by them
RESULT_VERSION = 3  # 2: BCa intervals, p and q per area DID; 3: ablation effect with intervals


class AreaDid(TypedDict):
    mean: float  # DID of the class's area, as a fraction of image pixels
    ci95: list[float]  # BCa bootstrap 95% interval over samples
    p: float  # bootstrap p-value of "no effect"
    q: float  # Benjamini-Hochberg adjusted across the classes of this ablation
    significant: bool  # q below the false discovery rate (option fdr, 0.05)


class DidClassResult(TypedDict):
    """One ablated class's DID."""

    units: list[int]  # the class's top-k ACE units, ablated
    samples: int
    area_did: dict[str, AreaDid]  # per class j: [A_j(β',u') - A_j(β',u)] - [A_j(β,u') - A_j(β,u)]
    arm_mean_area: dict[str, dict[str, float]]  # arm name (ARMS) -> class -> mean fraction of image pixels
    pixel_did_mean_abs: float  # mean |ΔY| over pixels, channels and samples (image values in [-1, 1])
    ablation: dict  # what the ablation itself did, with bootstrap 95% intervals (see ablation_effect)


class DidResult(TypedDict):
    """``did.json``, as entangle reads it (:func:`read_did_result`)."""

    version: int
    layer: str
    sites: list[str]
    # also "site_kinds": list[str], the sites' norm kinds (not required: results written before it lack it)
    # also "uncontrolled": {"sites", "kinds", "why"} when norm sites after the layer are of kinds the engine
    # cannot control (batch norm in eval mode), else absent
    top_k: int
    arm_titles: dict[str, str]  # arm name -> Y(β,u)-style title
    classes: dict[str, DidClassResult]


NORM_NAMES = {"pixelnorm": "pixel norm", "instancenorm": "instance norm", "demod": "weight demodulation",
              "batchnorm": "batch norm (eval mode)"}


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


def uncontrolled_sentence(result) -> str | None:
    """What a DID result says about the normalisation it could not control (plain text), or None."""
    fixed = result.get("uncontrolled")
    if not fixed:
        return None
    what = norm_name(fixed["kinds"])
    n = len(fixed["sites"])
    if not result["sites"]:
        return (f"Every normalisation after layer {result['layer']} ({n} sites) is {what}: {fixed['why']}. So the "
                "DID is 0 by construction here, and the arms show only what the ablation itself does.")
    return (f"{n} {what} sites after layer {result['layer']} are not controlled (they add nothing to the DID): "
            f"{fixed['why']}.")


def demod_sentence(result) -> str | None:
    """For a DID whose controlled sites are all weight demodulation: why it is 0 by construction, and
    what was measured (shown, not assumed); else None."""
    if result.get("site_kinds") != ["demod"] or not result["classes"]:
        return None
    largest = max((abs(v["mean"]) for e in result["classes"].values() for v in e["area_did"].values()), default=0.0)
    pixels = max(e["pixel_did_mean_abs"] for e in result["classes"].values())
    return ("Weight demodulation's coefficients depend only on the styles (from w), not on the activations, so "
            "ablating units cannot change them and the DID is 0 by construction. Measured here: largest |area DID| "
            f"{largest * 100:.2g} pp, largest mean |ΔY| {pixels:.2g}.")


def norm_name(kinds) -> str:
    """The controlled normalisation in words; results written before ``site_kinds`` existed are pixel norm's."""
    if kinds is None:
        return "pixel norm"
    return " and ".join(NORM_NAMES.get(k, k) for k in kinds) or "normalisation"


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


def read_did_result(data: dict) -> DidResult:
    """``did``'s result checked for the version and keys this module writes."""
    return read_result(data, "did", RESULT_VERSION, DidResult)


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
                self.draw_map(ctx, name, dy_abs_sum / n)
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
        from gandid.plotting import pyplot

        plt = pyplot()

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
        inner_prime = arms.intervened - arms.original_swapped_beta
        inner = arms.intervened_fixed_beta - arms.original
        cols = [(getattr(arms, arm), t) for arm, t in ARM_TITLES.items()] + [
            (inner_prime, "Y(β',u')-Y(β',u)"), (inner, "Y(β,u')-Y(β,u)"), (arms.did, "ΔY")]
        # one canvas, one image: a grid of 7 axes per row took most of this stage's plotting time
        size, gap = arms.original.shape[-1], 2
        canvas = torch.ones(len(chosen) * (size + gap), len(cols) * (size + gap), 3)
        for r in range(len(chosen)):
            for k, (imgs, _) in enumerate(cols):
                img = imgs[r].float().cpu()
                if k >= 4:  # differences: centred at grey
                    img = img / max(1e-6, float(img.abs().max()))
                y, x = r * (size + gap), k * (size + gap)
                canvas[y:y + size, x:x + size] = ((img.clamp(-1, 1) + 1) / 2).permute(1, 2, 0)
        fig, ax = plt.subplots(figsize=(1.6 * len(cols), 1.7 * len(chosen) + 0.3))
        ax.imshow(canvas.numpy(), interpolation="nearest")
        ax.set_xticks([(k + 0.5) * (size + gap) for k in range(len(cols))], [t for _, t in cols], fontsize=7)
        ax.xaxis.tick_top()
        ax.set_yticks([(r + 0.5) * (size + gap) for r in range(len(chosen))],
                      [f"sample {chosen[r]}\n{name} " + (f"{100 * area[r]:.1f}%" if area[r] > 0 else "absent")
                       for r in range(len(chosen))], fontsize=6)
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        present = st.get("panel_present")
        title = f"DID of {norm}, top units of {name} ablated: the samples with the most {name}"
        if present is not None and present < len(chosen):
            title += f"\n(only {present} of {st['done']} samples contain {name})"
        fig.suptitle(title, fontsize=8)
        fig.tight_layout()
        fig.savefig(ctx.path(f"did_{name}.png"), dpi=110)
        plt.close(fig)

    def draw_map(self, ctx, name, mean_abs):
        from gandid.plotting import pyplot

        plt = pyplot()

        fig, ax = plt.subplots(figsize=(3, 3))
        im = ax.imshow(mean_abs.mean(0).cpu().numpy(), cmap="magma")
        ax.set(title=f"mean |ΔY|, {name}", xticks=[], yticks=[])
        fig.colorbar(im, ax=ax, fraction=0.046)
        fig.tight_layout()
        fig.savefig(ctx.path(f"did_{name}_map.png"), dpi=100)
        plt.close(fig)


    def report_findings(self, result, top: int = 3):
        """The largest in-painting effects whose 95% interval is above zero, and the largest removal."""
        from gandid.report import Finding, anchor, esc, interval, link, pp

        fixed = uncontrolled_sentence(result)
        if fixed and not result["sites"]:  # nothing controlled: every DID is 0 by construction
            return [esc(fixed)]
        demod = demod_sentence(result)
        if demod:
            return [esc(demod)]
        effects = [(name, other, v) for name, e in result["classes"].items() for other, v in e["area_did"].items()]
        if not effects:
            return []
        k = {len(e["units"]) for e in result["classes"].values()}
        k = f"{k.pop()} " if len(k) == 1 else ""

        def say(name, other, v):
            what = f"{esc(other)} (the ablated class itself)" if other == name else esc(other)
            return (f"{link(anchor('did', name), name)} ablated: {what} <b>{esc(pp(v['mean']))}</b> "
                    f"{esc(interval(*v['ci95']))}")

        norm = norm_name(result.get("site_kinds"))
        found = []
        if fixed:
            found.append(esc(fixed))
        up = sorted((t for t in effects if t[2]["significant"] and t[2]["mean"] > 0), key=lambda t: -t[2]["mean"])
        if up:
            found.append(Finding(f"{esc(norm[0].upper() + norm[1:])} in-paints under ablation (area DID, share of image pixels, BCa 95% "
                                 f"interval), largest of {len(up)} significant effects above zero "
                                 f"(false discovery rate 5% per ablation): "
                                 + "; ".join(say(*t) for t in up[:top]) + ".", anchor("did", up[0][0])))
        else:
            found.append(f"Ablating each class's top {k}units, no class is significantly in-painted by {esc(norm)} "
                         "(false discovery rate 5% per ablation).")
        down = sorted((t for t in effects if t[2]["significant"] and t[2]["mean"] < 0), key=lambda t: t[2]["mean"])
        if down:
            found.append(Finding(f"Largest removal by {esc(norm)}: " + say(*down[0]) + ".", anchor("did", down[0][0])))
        return found

    def report_section(self, result, out_dir):
        from pathlib import Path

        from gandid.report import Html, anchor, esc, fmt, image, interval, pct, pp, sig, table

        norm = norm_name(result.get("site_kinds"))
        parts = [f"<p>Layer <code>{esc(result['layer'])}</code>; β ({esc(norm)}) controlled at "
                 f"{len(result['sites'])} sites ({esc(', '.join(result['sites']))}). Area DID: "
                 "[A(β',u') - A(β',u)] - [A(β,u') - A(β,u)], "
                 f"A a class's share of the image pixels, in percentage points (pp): positive where {esc(norm)} "
                 "in-paints the class, negative where it removes it. Intervals: BCa bootstrap 95% over samples; "
                 "q: the bootstrap p-value adjusted (Benjamini-Hochberg) across the classes of each table; "
                 "<b>bold</b>: significant (q &lt; 0.05).</p>"]
        for sentence in (uncontrolled_sentence(result), demod_sentence(result)):
            if sentence:
                parts.append(f"<p><b>{esc(sentence)}</b></p>")
        for name, e in result["classes"].items():
            rows = sorted(e["area_did"].items(), key=lambda kv: -abs(kv[1]["mean"]))
            before, after = e["arm_mean_area"]["original"], e["arm_mean_area"]["intervened"]
            shown = [(k, v) for k, v in rows if v["mean"] != 0 or v["ci95"] != [0, 0] or before.get(k) or after.get(k)]
            parts.append(f"<h3 id='{esc(anchor('did', name))}'>top {len(e['units'])} units of {esc(name)} ablated "
                         f"({e['samples']} samples)</h3>")
            numbers = table(["class", "area DID", "95% interval", "q", "area Y(β,u)", "area Y(β',u')"],
                            [(k, Html(f"<b>{esc(pp(v['mean']))}</b>") if v["significant"] else pp(v["mean"]),
                              interval(*v["ci95"]), sig(v["q"]), pct(before.get(k, 0), 1), pct(after.get(k, 0), 1))
                             for k, v in shown])
            if len(shown) < len(rows):
                numbers += (f"<p class='muted'>{len(rows) - len(shown)} classes absent from every arm are "
                            "not listed.</p>")
            numbers += f"<p>mean |ΔY| = {esc(fmt(e['pixel_did_mean_abs'], 4))} (image values in [-1, 1])</p>"
            if (Path(out_dir) / f"did_{name}_map.png").exists():  # the small map beside the table
                numbers = (f"<div class='grid'><div>{numbers}</div>"
                           + image(f"did_{name}_map.png", "mean |ΔY| per pixel") + "</div>")
            parts.append(numbers)
            if (Path(out_dir) / f"did_{name}.png").exists():
                parts.append(image(f"did_{name}.png", f"arms, inner differences and ΔY for the samples with the "
                                                      f"most {name} (row labels: sample, its area)"))
        return "\n".join(parts)


@hookimpl
def gandid_register_analyses(register):
    register("did", DID, description="difference-in-differences of pixel norm (or instance norm, weight "
                                     "demodulation) under ablation: pixels and areas")
