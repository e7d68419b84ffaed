"""StyleGAN v1 in the official network's ``g_all`` layout: :class:`StyleGANGAllGenerator` (the forward pass,
noise and truncation) and its loading from a state dict. The network's modules and the facts of the key
layout: :mod:`.g_all_net`.

Facts read from harskish/ganspace ``models/stylegan/model.py``, checked against NVlabs/stylegan,
``training/networks_stylegan.py``:

- truncation (``G_style`` / ``Truncation``): w_l = avg + psi * (w - avg) for layers l < cutoff (8),
  w_l = w above; ``avg`` is ``dlatent_avg``, a training-time variable the export leaves out
  (``Truncation`` with its ``avg_latent`` buffer is commented out of ``StyleGAN_G``); a file that has
  ``truncation.avg_latent`` (an ``nn.Sequential`` with the ``Truncation`` module) provides it.
"""
from __future__ import annotations

import re

import torch

from gandid.checkpoints import check_state_dict, to_float
from gandid.errors import CheckpointError

from .base import NOISE_MODES, _StyleGANBase
from .checkpoint import _dims
from .g_all_net import _OfficialMapping, _OfficialSynthesis

G_ALL_TRUNCATION_CUTOFF = 8  # G_style's truncation_cutoff and the port's Truncation(max_layer=8)


class StyleGANGAllGenerator(_StyleGANBase):
    """The official StyleGAN generator as GANSpace's / lernapparat's PyTorch port stores it (``g_all``:
    ``g_mapping`` + ``g_synthesis``), behind gandid's Generator protocol.

    ``channels[i]``: depth of block ``{4 * 2**i}x{4 * 2**i}``; the mapping has ``mapping_layers`` dense
    layers z_dim -> mapping_fmaps -> ... -> dlatent_size. ``truncation`` (psi) pulls the styles of the
    layers below ``truncation_cutoff`` (None: every layer) toward ``avg_latent``.
    """

    def __init__(self, channels, z_dim, mapping_fmaps, dlatent_size, mapping_layers, truncation=1.0,
                 truncation_cutoff=G_ALL_TRUNCATION_CUTOFF, noise="latent", instance_eps=1e-8):
        super().__init__()
        if noise not in NOISE_MODES:
            raise ValueError(f"stylegan: noise must be one of {NOISE_MODES}, got {noise!r}")
        self.g_mapping = _OfficialMapping(z_dim, mapping_fmaps, dlatent_size, mapping_layers)
        self.g_synthesis = _OfficialSynthesis(list(channels), dlatent_size, instance_eps)
        self.register_buffer("avg_latent", torch.zeros(dlatent_size), persistent=False)
        self.truncation, self.truncation_cutoff, self.noise_mode = truncation, truncation_cutoff, noise
        self.z_dim, self.resolution = z_dim, 4 * 2 ** (len(channels) - 1)
        self.num_layers = 2 * len(channels)
        self._avg_from_file = False
        self._name_sites(channels, len(channels))

    def _param(self):
        return self.g_synthesis.torgb.weight

    def _pixel_norm(self):
        return self.g_mapping.pixel_norm

    def _epilogue(self, block, half):
        return getattr(list(self.g_synthesis.blocks.values())[block], f"epi{half}")

    def _activation(self, block, half):
        return self._epilogue(block, half).top_epi.activation

    def _instance_norm(self, block, half):
        return self._epilogue(block, half).top_epi.instance_norm

    def mapping(self, z):
        """w (N, dlatent_size), before truncation."""
        return self.g_mapping(z)

    def dlatents(self, z) -> list[torch.Tensor]:
        """Each synthesis layer's style, (N, dlatent_size) for layers 0 .. 2 * blocks - 1."""
        w = self.g_mapping(z)
        cutoff = self.num_layers if self.truncation_cutoff is None else self.truncation_cutoff
        if self.truncation >= 1 or cutoff <= 0:
            return [w] * self.num_layers
        pulled = torch.lerp(self.avg_latent, w, self.truncation)  # as the port's Truncation
        return [pulled if layer < cutoff else w for layer in range(self.num_layers)]

    # -- noise --------------------------------------------------------------------------------
    def noise_map(self, z: torch.Tensor, layer: int) -> torch.Tensor:
        """Layer ``layer``'s noise (N, 1, r, r), r = 4 * 2**(layer // 2): a function of each row of z
        only (see the docstring of :mod:`.base`); each layer has its own stream."""
        n, r = len(z), 4 * 2 ** (layer // 2)
        dev, dtype = z.device, self._param().dtype
        if self.noise_mode == "zero":
            return torch.zeros(n, 1, r, r, device=dev, dtype=dtype)
        if self.noise_mode == "const":  # GANSpace's set_noise_seed(0): seed 0, then randn(1, 1, r, r)
            g = torch.Generator().manual_seed(0)
            return torch.randn(1, 1, r, r, generator=g).to(device=dev, dtype=dtype).expand(n, 1, r, r)
        return self._latent_noise(z, b"g_all" + layer.to_bytes(2, "little"), r)

    def noise_maps(self, z: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's noise, two per block: (N, 1, r, r) for r = 4, 4, 8, 8, ..., resolution."""
        return [self.noise_map(z, layer) for layer in range(self.num_layers)]

    def _run(self, z, start_block=0, resume_at=0, x=None):
        ws = self.dlatents(z)
        out = len(z) if x is None else x
        blocks = list(self.g_synthesis.blocks.values())
        for i in range(start_block, len(blocks)):
            resume = resume_at if i == start_block else 0
            noises = [self.noise_map(z, 2 * i + h) if resume <= h else None for h in (0, 1)]
            out = blocks[i](out, ws[2 * i:2 * i + 2], noises, resume)
        return self.g_synthesis.torgb(out).clamp(-1, 1)

    # -- loading ---------------------------------------------------------------------------
    def checkpoint(self) -> tuple[dict, dict]:
        """The tensors of a file this plugin loads back (``gandid convert``): the g_all state dict, with
        ``truncation.avg_latent`` where the file had it."""
        tensors = dict(self.state_dict())
        if self._avg_from_file:
            tensors["truncation.avg_latent"] = self.avg_latent
        return tensors, {"layout": "g_all", "resolution": self.resolution}

    @classmethod
    def from_state_dict(cls, state: dict, resolution: int | None = None, truncation: float = 1.0,
                        truncation_cutoff: int | None = G_ALL_TRUNCATION_CUTOFF, noise: str = "latent",
                        instance_eps: float = 1e-8, source: str = "state dict") -> "StyleGANGAllGenerator":
        what = f"StyleGAN generator in the g_all layout ({source})"
        state = dict(state)
        avg = state.pop("truncation.avg_latent", None)
        found = [int(m.group(1)) for m in (re.fullmatch(r"g_mapping\.dense(\d+)\.weight", k) for k in state) if m]
        if 0 not in found:
            raise CheckpointError(f"{what}: cannot tell the mapping network's sizes: missing keys (1): "
                                  "g_mapping.dense0.weight")
        mapping_layers = max(found) + 1
        fmaps, z_dim = _dims(state, "g_mapping.dense0.weight", 2, what)
        dlatent_size = _dims(state, f"g_mapping.dense{mapping_layers - 1}.weight", 2, what)[0]
        sizes = sorted({int(m.group(1)) for m in (re.match(r"g_synthesis\.blocks\.(\d+)x\1\.", k) for k in state)
                        if m})
        if not sizes or sizes != [4 * 2 ** i for i in range(len(sizes))]:
            raise CheckpointError(f"{what}: the synthesis blocks must be 4x4, 8x8, 16x16, ... without gaps; the "
                                  f"file has {', '.join(f'{r}x{r}' for r in sizes) or 'none'}")
        channels = []
        for r in sizes:
            key = "g_synthesis.blocks.4x4.const" if r == 4 else f"g_synthesis.blocks.{r}x{r}.conv0_up.weight"
            if key not in state:
                raise CheckpointError(f"{what}: cannot tell block {r}x{r}'s channels: missing keys (1): {key}")
            channels.append(_dims(state, key, 4, what)[1 if r == 4 else 0])
        if resolution is not None and resolution != sizes[-1]:
            raise CheckpointError(f"stylegan: {source} is a {sizes[-1]} px g_all network, which runs at its own "
                                  f"resolution only (the export keeps its last toRGB layer), got resolution "
                                  f"{resolution}")
        gen = cls(channels, z_dim, fmaps, dlatent_size, mapping_layers, truncation, truncation_cutoff, noise,
                  instance_eps)
        expected = {k: tuple(v.shape) for k, v in gen.state_dict().items()}
        if avg is not None:
            expected["truncation.avg_latent"] = (dlatent_size,)
            state["truncation.avg_latent"] = avg
        check_state_dict(state, expected, what)
        state, dtypes = to_float(state)
        avg = state.pop("truncation.avg_latent", None)
        gen.load_state_dict(state, strict=True)
        gen.weights_info = {"file": source, **dtypes, "layout": "g_all", "resolution": gen.resolution,
                            "resolution_from": "the file's last block", "noise": noise, "instance_eps": instance_eps,
                            "truncation_cutoff": truncation_cutoff}
        gen._avg_from_file = avg is not None
        with torch.no_grad():
            if avg is not None:
                gen.avg_latent.copy_(avg)
                gen.weights_info["avg_latent"] = "truncation.avg_latent (the file)"
            elif truncation < 1:  # the file has no dlatent_avg: estimate it as rosinality's generate.py does
                g = torch.Generator().manual_seed(0)
                gen.avg_latent.copy_(gen.g_mapping(torch.randn(10 * 1024, z_dim, generator=g)).mean(0))
                gen.weights_info["avg_latent"] = "mean of g_mapping over 10240 latents (seed 0)"
        return gen.eval()
