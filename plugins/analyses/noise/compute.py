"""`noise`: how much a StyleGAN's noise inputs move its images as more units of a layer are ablated.

A student report dissecting StyleGAN with GAN Dissection's tool (../shared/papers/004, "Noise increase
with ablation in Style GAN") saw that ablating or inserting more and more units of a layer removed no
object but made the images vary more from one noise draw to the next. gandid keeps noise fixed per
sample (an image depends only on its latent); this analysis draws it on purpose. For each layer and
each share of its units ablated (units in a fixed order: by mean activation over the samples, highest
first, or a seeded random order), every latent is generated under ``draws`` independent noise draws;
the variation is the standard deviation across draws of each pixel (image values in [-1, 1]),
averaged over pixels and colour channels, then over latents (with its standard error over latents).

The generator provides the draws: an optional member ``noise_draws(draw)``, a context manager in which
every noise input is a fresh standard normal map determined by ``draw`` (the StyleGAN plugins have it).
A generator without noise inputs gets a result that says so, not an error, so a default run that
selects every installed analysis still runs on PG-GAN.
"""
from __future__ import annotations

import torch

from gandid.intervene import Intervention, variants
from gandid.model import find_layer

from . import report

RESULT_VERSION = 1
DEFAULT_FRACTIONS = (0.0, 0.0625, 0.125, 0.25, 0.5, 0.75)


class Noise:
    """Options: samples (latents, default 8), draws (noise draws per latent, default 4), fractions (shares
    of the layer's units ablated, default 0 to 3/4), order ('activation' or 'random'), seed (of the
    random order and of the draws)."""

    needs_segmenter = False

    def __init__(self, samples: int = 8, draws: int = 4, fractions: list[float] | None = None,
                 order: str = "activation", seed: int = 0):
        fractions = list(DEFAULT_FRACTIONS if fractions is None else fractions)
        if samples < 1 or draws < 2:
            raise ValueError(f"noise: samples must be at least 1 and draws at least 2, got {samples} and {draws}")
        if not fractions or any(not 0 <= f <= 1 for f in fractions):
            raise ValueError(f"noise: fractions must be shares of a layer's units in [0, 1], got {fractions}")
        if order not in ("activation", "random"):
            raise ValueError(f"noise: order must be 'activation' or 'random', got {order!r}")
        self.samples, self.draws, self.fractions = samples, draws, sorted(set(float(f) for f in fractions))
        self.order, self.seed = order, seed

    def run(self, ctx):
        gen = ctx.generator
        if not hasattr(gen, "noise_draws"):
            return {"version": RESULT_VERSION, "applicable": False,
                    "why": f"generator {ctx.config.generator!r} has no noise inputs to draw (noise_draws)",
                    "layers": {}}
        z = gen.sample_z(self.samples, ctx.config.seed).to(ctx.device)
        result = {"version": RESULT_VERSION, "applicable": True, "samples": self.samples, "draws": self.draws,
                  "order": self.order, "layers": {}}
        for layer in ctx.layers:
            result["layers"][layer] = self.measure(ctx, gen, z, layer)
        if ctx.is_writer:
            report.plot(ctx, result)
        return result

    def unit_order(self, gen, z, layer) -> list[int]:
        channels = find_layer(gen, layer).channels
        if self.order == "random":
            return torch.randperm(channels, generator=torch.Generator().manual_seed(self.seed)).tolist()
        from gandid.hooks import features_at

        with torch.no_grad():
            mean = features_at(gen, z, layer).float().mean((0, 2, 3)).cpu()
        return torch.sort(mean, descending=True, stable=True).indices.tolist()

    def measure(self, ctx, gen, z, layer) -> dict:
        order = self.unit_order(gen, z, layer)
        counts = [round(f * len(order)) for f in self.fractions]
        ivs = [Intervention(layer, order[:k]) for k in counts]
        images = None
        for draw in ctx.track(range(self.draws), self.draws, f"noise {layer}: draws"):
            with torch.no_grad(), gen.noise_draws(self.seed * 1_000_003 + draw + 1):
                for chunk, block in variants(gen, z, ivs):  # (len(chunk), N, 3, H, W)
                    if images is None:
                        images = torch.zeros(self.draws, len(ivs), *block.shape[1:], dtype=torch.float64)
                    images[draw, chunk] = block.double().cpu()
        per_latent = images.std(0).mean((2, 3, 4))  # (F, N): std across draws, mean over channels and pixels
        mean = per_latent.mean(1)
        se = per_latent.std(1) / max(1, per_latent.shape[1]) ** 0.5 if per_latent.shape[1] > 1 else torch.zeros_like(mean)
        return {"fractions": self.fractions, "units_ablated": counts, "variation": mean.tolist(),
                "variation_se": se.tolist(), "ratio_to_none": (mean / mean[0].clamp_min(1e-12)).tolist()
                if counts[0] == 0 else None, "first_units": order[:10]}

    # -- report.html (drawn by .report; the core calls these) ----------------------------------
    def report_findings(self, result):
        return report.findings(result)

    def report_section(self, result, out_dir):
        return report.section(result, out_dir)
