"""What an intervention is: units of one layer ablated or inserted (:class:`Intervention`), which norm
sites have their coefficients controlled in a DID (:class:`BetaControl`), and the four DID arms (:class:`Arms`).

Notation (as in docs/normalisation.md): units U of a layer, a feature-map region with mask m, strength α per
unit, insertion values k. Ablation: ``r' = (1 - α m) r``; insertion: ``r' = (1 - α m) r + α m k``; the
formula itself is :func:`gandid.ops.reference.intervene`, the one written outside the kernels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from .errors import ConfigError, UnknownNameError
from .model import Generator, find_layer
from .ops.reference import intervene

# Norm kinds the engine can record and override: pixel norm through the fused op; weight
# demodulation (StyleGAN2; coefficients d of shape (N, out)) and instance norm (StyleGAN's AdaIN;
# per-sample, per-channel mean and std, (N, 2, C)) in plain PyTorch.
CONTROLLABLE = ("pixelnorm", "demod", "instancenorm")

# Why a norm kind is not controllable (a DID says so, and an explicit request to control one is refused).
NOT_CONTROLLABLE = {
    "batchnorm": "batch norm in eval mode normalises with the running statistics of training, the same for "
                 "every sample: an intervention does not change them, so there is nothing to record, borrow or "
                 "replay",
}


def not_controllable_reason(kind: str) -> str:
    """Why the engine does not control norm sites of ``kind`` (one that is not in :data:`CONTROLLABLE`)."""
    return NOT_CONTROLLABLE.get(kind, f"the engine cannot record or override {kind} coefficients")


@dataclass
class Intervention:
    """Ablate (``value=None``) or insert units of one layer, everywhere or in a feature-map region.

    units: unit (channel) indices; alpha: scalar or one per unit, in [0, 1]; value: insertion value
    k, scalar or one per unit; region: (h, w) or (N, h, w) mask in [0, 1] on the layer's map.
    """

    layer: str
    units: Sequence[int]
    region: torch.Tensor | None = None
    alpha: float | Sequence[float] | torch.Tensor = 1.0
    value: float | Sequence[float] | torch.Tensor | None = None

    def check(self, generator: Generator):
        info = find_layer(generator, self.layer)
        units = torch.as_tensor(list(self.units), dtype=torch.long)  # empty: a no-op intervention
        bad = units[(units < 0) | (units >= info.channels)]
        if bad.numel():
            shown = bad.tolist()[:10] + (["..."] if bad.numel() > 10 else [])
            raise ValueError(f"invalid unit indices {shown} for layer {self.layer!r}, which has "
                             f"{info.channels} units (0..{info.channels - 1})")
        if units.unique().numel() != units.numel():
            raise ValueError(f"intervention on {self.layer!r}: unit indices repeat: {units.tolist()}")
        for name, v in (("alpha", self.alpha), ("value", self.value)):
            t = None if v is None else torch.as_tensor(v, dtype=torch.float32)
            if t is not None and t.dim() > 0 and t.shape != (len(units),):
                raise ValueError(f"intervention on {self.layer!r}: {name} must be a scalar or one per unit "
                                 f"({len(units)}), got shape {tuple(t.shape)}")
        if self.region is not None:
            r = self.region
            if r.dim() not in (2, 3) or tuple(r.shape[-2:]) != tuple(info.size):
                raise ValueError(f"intervention on {self.layer!r}: region must be (h, w) = {tuple(info.size)} "
                                 f"or (N, h, w), got {tuple(r.shape)}")
        return info

    def alpha_vector(self, channels: int, device) -> torch.Tensor:
        """(C,) strengths: alpha at the units, zero elsewhere."""
        alpha = torch.zeros(channels, device=device)
        alpha[torch.as_tensor(list(self.units), dtype=torch.long, device=device)] = torch.as_tensor(
            self.alpha, dtype=torch.float32, device=device)
        return alpha

    def value_vector(self, channels: int, device) -> torch.Tensor | None:
        if self.value is None:
            return None
        value = torch.zeros(channels, device=device)
        value[torch.as_tensor(list(self.units), dtype=torch.long, device=device)] = torch.as_tensor(
            self.value, dtype=torch.float32, device=device)
        return value

    def region_mask(self, latents: int, repeats: int, device) -> torch.Tensor | None:
        """(1 or repeats*latents, h, w) mask for rows laid out as ``repeats`` blocks of the latents."""
        if self.region is None:
            return None
        r = self.region.to(device=device, dtype=torch.float32)
        if r.dim() == 2:
            return r.unsqueeze(0)
        if r.shape[0] != latents:
            raise ValueError(f"intervention on {self.layer!r}: region has {r.shape[0]} rows for {latents} latents")
        return r.repeat(repeats, 1, 1)

    def apply(self, x: torch.Tensor, latents: int, repeats: int, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The intervention on features x in plain PyTorch (for layers not followed by a pixel norm)."""
        c = x.shape[1]
        return intervene(x, self.alpha_vector(c, x.device).to(x.dtype), self.region_mask(latents, repeats, x.device),
                         self.value_vector(c, x.device), rows)


@dataclass
class BetaControl:
    """Which norm sites have β controlled in a DID.

    ``sites=None``: every pixel-norm (and weight-demodulation and instance-norm) site from the one
    that reads the intervened layer to the output (the papers control layers 4 to 13 of PG-GAN); or
    a list of names. Sites of other kinds (batch norm in eval mode) are never controlled; naming one
    is refused (:data:`NOT_CONTROLLABLE` says why).
    """

    sites: Sequence[str] | None = None

    def resolve(self, generator: Generator, layer: str) -> list[str]:
        names = [s.name for s in generator.norm_sites]
        if self.sites is not None:
            unknown = [s for s in self.sites if s not in names]
            if unknown:
                raise UnknownNameError("norm site", unknown[0], names)
            kinds = {s.name: s.kind for s in generator.norm_sites}
            fixed = [s for s in self.sites if kinds[s] not in CONTROLLABLE]
            if fixed:
                kind = kinds[fixed[0]]
                raise ConfigError(f"norm site {fixed[0]!r} is a {kind} site, which the DID engine does not control: "
                                  f"{not_controllable_reason(kind)}. Leave it out of the controlled sites")
            return list(self.sites)
        layer_names = [l.name for l in generator.layers]
        start = layer_names.index(layer)
        after = set(layer_names[start:])
        return [s.name for s in generator.norm_sites if s.kind in CONTROLLABLE and s.layer in after]


# The four arms by field name of :class:`Arms`, with their notation (for display; results key by name).
ARM_TITLES = {"original": "Y(β,u)", "intervened": "Y(β',u')", "intervened_fixed_beta": "Y(β,u')",
              "original_swapped_beta": "Y(β',u)"}


@dataclass
class Arms:
    """The four DID arms, each (N, 3, H, W), and the controlled sites."""

    original: torch.Tensor  # Y(β, u)
    intervened: torch.Tensor  # Y(β', u'): the natural intervened run
    intervened_fixed_beta: torch.Tensor  # Y(β, u'): intervened units, the original run's β
    original_swapped_beta: torch.Tensor  # Y(β', u): original units, the intervened run's β
    sites: list[str] = field(default_factory=list)

    @property
    def did(self) -> torch.Tensor:
        """ΔY = [Y(β',u') - Y(β',u)] - [Y(β,u') - Y(β,u)], per image (N, 3, H, W)."""
        return (self.intervened - self.original_swapped_beta) - (self.intervened_fixed_beta - self.original)
