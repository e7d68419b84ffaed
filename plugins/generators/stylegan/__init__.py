"""StyleGAN (v1) generators, on the CPU or a GPU, in two checkpoint layouts.

Modules: :mod:`.base` (what both layouts share: layer and norm-site names, the Generator protocol, noise
seeded by each latent), :mod:`.rosinality_net` and :mod:`.rosinality` (rosinality's style-based-gan-pytorch
layout: its network modules; its generator and loading), :mod:`.g_all_net` and :mod:`.g_all` (the same for
the official network's ``g_all`` layout: GANSpace, lernapparat), :mod:`.checkpoint` (telling a file's
layout), :mod:`.factory` (``--generator stylegan``).
"""
from gandid import hookimpl

from .base import NOISE_MODES
from .checkpoint import recognise
from .factory import stylegan
from .g_all import G_ALL_TRUNCATION_CUTOFF, StyleGANGAllGenerator
from .rosinality import StyleGANGenerator

__all__ = ["G_ALL_TRUNCATION_CUTOFF", "NOISE_MODES", "StyleGANGAllGenerator", "StyleGANGenerator", "recognise",
           "stylegan"]


@hookimpl
def gandid_register_generators(register):
    register("stylegan", stylegan, description="StyleGAN v1 (rosinality/style-based-gan-pytorch checkpoints and "
                                               "the official network's g_all port: GANSpace, lernapparat; AdaIN "
                                               "instance norms as DID norm sites)", recognise=recognise)
