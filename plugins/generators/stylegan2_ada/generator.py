"""The StyleGAN2-ADA generator behind gandid's Generator protocol: layers, norm sites, the forward pass (also
from any layer), noise, truncation, and loading a checked state dict.

Evaluation is in float32 (or float64 after ``.double()``): blocks NVlabs runs in float16
(``num_fp16_res``) give the same images up to float16 rounding. Noise is each layer's fixed
``noise_const`` buffer (NVlabs's ``noise_mode='const'``), so an image depends only on its latent.
Weight demodulation is computed explicitly (``conv(x * s) * d``, NVlabs's non-fused path): its
coefficients d (N, out) form a norm site of kind ``demod`` that the DID engine records and overrides.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from gandid.checkpoints import check_state_dict, to_float
from gandid.errors import CheckpointError, UnknownNameError
from gandid.model import LayerInfo, NormSite, find_layer, normal_rows

from .config import Config, config_as_json
from .networks import MappingNetwork, SynthesisLayer, SynthesisNetwork


class StyleGAN2ADAGenerator(nn.Module):
    """NVlabs's StyleGAN2-ADA Generator behind gandid's Generator protocol (one w for every layer, as
    generate.py without style mixing; ``truncation`` pulls w toward ``mapping.w_avg``, every layer)."""

    def __init__(self, cfg: Config, truncation: float = 1.0):
        super().__init__()
        self.cfg = cfg
        self.mapping = MappingNetwork(cfg)
        self.synthesis = SynthesisNetwork(cfg)
        self.truncation = truncation
        self.z_dim, self.resolution = cfg.z_dim, cfg.resolution
        self.layers, self.norm_sites, self._layer_modules = [], [], {}
        previous = None
        for res, block in self.synthesis.blocks():
            for conv in ("conv0", "conv1"):
                if hasattr(block, conv):
                    name = f"b{res}.{conv}"
                    self.layers.append(LayerInfo(name, cfg.channels[res], (res, res)))
                    # the site's layer is the one whose output the demodulated conv reads, as plugins/generators/stylegan2.py
                    self.norm_sites.append(NormSite(f"{name}.demod", "demod", previous))
                    self._layer_modules[name] = getattr(block, conv)
                    previous = name
        names = [info.name for info in self.layers]
        self.default_layer = names[min(len(names) - 1, 4)]

    def checkpoint(self) -> tuple[dict, dict]:
        """``G_ema.state_dict()`` and the whole config, which `gandid convert` keeps in the file's metadata
        (shapes alone cannot tell conv_clamp, the mapping's learning rate, the activations)."""
        return self.state_dict(), config_as_json(self.cfg)

    # -- Generator protocol ----------------------------------------------------------------
    def sample_z(self, n, seed, start=0):
        return normal_rows(seed, start, n, self.z_dim).to(self.synthesis.b4.const.device)

    def map_z(self, z):
        """w (N, w_dim) for latents z, truncated toward ``mapping.w_avg`` when ``truncation`` < 1."""
        w = self.mapping(z.to(self.synthesis.b4.const.dtype))
        if self.truncation != 1:
            w = self.mapping.w_avg + self.truncation * (w - self.mapping.w_avg)
        return w

    def layer_module(self, name):
        find_layer(self, name)
        return self._layer_modules[name]

    def norm_module(self, site):
        if site.endswith(".demod") and site[: -len(".demod")] in self._layer_modules:
            return self._layer_modules[site[: -len(".demod")]]
        raise UnknownNameError("norm site", site, [s.name for s in self.norm_sites])

    def synthesize(self, w, start: str | None = None, features=None):
        """Images (N, C, R, R) before clamping. ``start`` = a layer name: continue from its output
        ``features``; blocks before it run only where the rest needs them (the RGB skip path for
        'skip', the block input of the resnet shortcut)."""
        start_res, start_conv = (None, None) if start is None else (int(start.split(".")[0][1:]), start.split(".")[1])
        needs_prefix = start is not None and self.cfg.architecture in ("skip", "resnet")
        x = img = None
        for res, block in self.synthesis.blocks():
            if start_res is not None and res < start_res:
                if needs_prefix:
                    x, img = block(x, img, w)
                continue
            if res == start_res:
                x, img = block(x, img, w, start=start_conv, features=features)
            else:
                x, img = block(x, img, w)
        return img

    def images(self, z):
        """Unclamped images, NVlabs's Generator output for truncation_psi = ``truncation``, noise_mode='const'."""
        return self.synthesize(self.map_z(z))

    def forward(self, z):
        return self.images(z).clamp(-1, 1)

    def forward_from(self, layer, features, z):
        """The rest of the network from layer ``layer``'s output (rows matching z)."""
        find_layer(self, layer)
        return self.synthesize(self.map_z(z), start=layer, features=features).clamp(-1, 1)

    @contextlib.contextmanager
    def noise_draws(self, draw: int):
        """Within the block every layer's noise is a fresh standard normal map determined by ``draw``
        instead of its ``noise_const`` (NVlabs's noise_mode='random', made reproducible): what the
        ``noise`` analysis varies."""
        layers = [m for m in self.synthesis.modules() if isinstance(m, SynthesisLayer) and m.use_noise]
        saved = [m.noise_const.clone() for m in layers]
        g = torch.Generator().manual_seed(int(draw))
        try:
            for m in layers:
                m.noise_const.copy_(torch.randn(m.noise_const.shape, generator=g))
            yield
        finally:
            for m, noise in zip(layers, saved):
                m.noise_const.copy_(noise)

    def set_noise_mode(self, mode: str):
        for module in self._layer_modules.values():
            module.noise_mode = mode

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, state: dict, cfg: Config, truncation=1.0, source="state dict", info=None):
        gen = cls(cfg, truncation)
        expected = {k: tuple(v.shape) for k, v in gen.state_dict().items()}
        check_state_dict(state, expected, f"StyleGAN2-ADA G_ema ({source})")
        if truncation != 1 and not cfg.w_avg:
            raise CheckpointError(f"{source}: truncation {truncation} needs mapping.w_avg, which this generator was "
                                  "built without (w_avg_beta=None); use truncation = 1")
        state, dtypes = to_float(state)
        gen.load_state_dict(state)
        gen.weights_info = {"file": source, **(info or {}), **dtypes, "config": config_as_json(cfg)}
        if cfg.assumed:
            gen.weights_info["assumed"] = dict(cfg.assumed)
        return gen.eval().requires_grad_(False)
