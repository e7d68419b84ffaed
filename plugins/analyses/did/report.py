"""did's part of report.html: the findings, the section per ablated class, what could not be
controlled in words, and the figures per class (``did_<class>.png``, ``did_<class>_map.png``, drawn
during the run).

gandid.report and matplotlib are imported inside the functions: loading the plugin imports neither.
"""
from __future__ import annotations

from pathlib import Path

import torch

from gandid.intervene import ARM_TITLES

from .results import norm_name


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


def draw_panels(ctx, name, chosen, arms, area, st, norm):
    """``did_<name>.png``: the four arms, the two inner differences and ΔY of the ``chosen`` samples, one
    row each (``arms``: their counterfactuals; ``area``: the class's share of each original)."""
    from gandid.plotting import pyplot

    plt = pyplot()

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


def draw_map(ctx, name, mean_abs):
    """``did_<name>_map.png``: mean |ΔY| per pixel."""
    from gandid.plotting import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(3, 3))
    im = ax.imshow(mean_abs.mean(0).cpu().numpy(), cmap="magma")
    ax.set(title=f"mean |ΔY|, {name}", xticks=[], yticks=[])
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(ctx.path(f"did_{name}_map.png"), dpi=100)
    plt.close(fig)


def findings(result, top: int = 3) -> list:
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


def section(result, out_dir) -> str:
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
