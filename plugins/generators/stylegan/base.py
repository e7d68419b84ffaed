"""What both StyleGAN v1 layouts share (:mod:`.rosinality`, :mod:`.g_all`): layer and norm-site names, the
Generator protocol around ``_run``, and noise seeded by each latent.

What gandid exposes, in both layouts: layer ``R.conv1`` / ``R.conv2`` (R = the block's resolution) is
the LeakyReLU output that AdaIN ``R.adain1`` / ``R.adain2`` reads, and each AdaIN's instance norm is a
norm site of kind ``instancenorm`` whose per-sample, per-channel statistics the DID engine records,
borrows and replays (:class:`gandid.model.InstanceNorm`); the mapping network's pixel norm is site
``style.0``. Noise: the originals draw fresh noise on every call; here (``noise="latent"``) a sample's
noise map is drawn from a generator seeded with a hash of the sample's latent (its float32 bytes) and
the map's index (the block in rosinality's layout, where both halves of a block share a map; the
layer in ``g_all``, where each of the 2 * blocks layers has its own, as in the official network), so
an image depends only on its latent (and sample i of seed s gets the same noise in any batch and any
process), and the four DID arms share their noise. ``noise="const"``: fixed maps shared by every
sample (rosinality: one per block, seeded with the block index; ``g_all``: GANSpace's
``set_noise_seed(0)``, ``randn(1, 1, R, R)`` after seeding 0, the same for both layers of a block);
``noise="zero"``: none.
"""
from __future__ import annotations

import contextlib
import hashlib
import re

import torch
from torch import nn

from gandid.errors import UnknownNameError
from gandid.model import LayerInfo, NormSite, normal_rows

NOISE_MODES = ("latent", "const", "zero")


class _StyleGANBase(nn.Module):
    """What both layouts share: layer and norm-site names, the Generator protocol around ``_run``, and
    noise seeded by each latent. A subclass provides ``_param`` (a weight whose device and dtype the
    features take), ``_pixel_norm``, ``_activation(block, half)``, ``_instance_norm(block, half)`` and
    ``_run(z, start_block, resume_at, x)``."""

    def _name_sites(self, channels, blocks):
        self.layers, self.norm_sites = [], [NormSite("style.0", "pixelnorm", None)]
        self._where = {}  # layer name -> (block, half)
        for i in range(blocks):
            r = 4 * 2 ** i
            for half in (1, 2):
                name = f"{r}.conv{half}"
                self.layers.append(LayerInfo(name, channels[i], (r, r)))
                self.norm_sites.append(NormSite(f"{r}.adain{half}", "instancenorm", name))
                self._where[name] = (i, half)
        names = [l.name for l in self.layers]
        self.default_layer = names[min(len(names) - 1, 5)]

    _draw: int | None = None  # set inside noise_draws()

    @contextlib.contextmanager
    def noise_draws(self, draw: int):
        """Within the block every noise map is drawn afresh, from ``draw`` and each latent (as
        ``noise="latent"`` draws them, another stream): what the ``noise`` analysis varies."""
        saved = (self.noise_mode, self._draw)
        self.noise_mode, self._draw = "latent", int(draw)
        try:
            yield
        finally:
            self.noise_mode, self._draw = saved

    def _latent_noise(self, z: torch.Tensor, stream: bytes, r: int) -> torch.Tensor:
        """(N, 1, r, r): row i drawn from a generator seeded with a hash of z[i]'s float32 bytes and
        ``stream`` (and the noise draw, inside :meth:`noise_draws`), so it is a function of that row alone."""
        if self._draw is not None:
            stream = stream + b"draw" + self._draw.to_bytes(8, "little", signed=True)
        keys = [row.tobytes() for row in z.detach().float().cpu().contiguous().numpy()]
        drawn: dict[bytes, torch.Tensor] = {}
        for key in keys:  # the DID's four arms repeat each latent: draw each distinct latent once
            if key not in drawn:
                digest = hashlib.blake2b(key + stream, digest_size=8).digest()
                g = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2 ** 63 - 1))
                drawn[key] = torch.randn(1, 1, r, r, generator=g)
        return torch.cat([drawn[key] for key in keys]).to(device=z.device, dtype=self._param().dtype)

    # -- Generator protocol ----------------------------------------------------------------
    def sample_z(self, n, seed, start=0):
        return normal_rows(seed, start, n, self.z_dim).to(self._param().device)

    def layer_module(self, name):
        if name not in self._where:
            raise UnknownNameError("layer", name, list(self._where))
        return self._activation(*self._where[name])

    def norm_module(self, site):
        if site == "style.0":
            return self._pixel_norm()
        found = re.fullmatch(r"(\d+)\.adain([12])", site)
        layer = f"{found.group(1)}.conv{found.group(2)}" if found else None
        if layer not in self._where:
            raise UnknownNameError("norm site", site, [s.name for s in self.norm_sites])
        return self._instance_norm(*self._where[layer])

    def forward(self, z):
        return self._run(z)

    def forward_from(self, layer, features, z):
        if layer not in self._where:
            raise UnknownNameError("layer", layer, list(self._where))
        i, half = self._where[layer]
        return self._run(z, i, half, features)
