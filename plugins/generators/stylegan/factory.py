"""``--generator stylegan``: the options checked, the file read, its layout told and the generator built.

rosinality's files (facts read from rosinality/style-based-gan-pytorch ``train.py``, what a checkpoint
holds, and ``generate.py``, which samples from ``g_running``):

- a checkpoint is ``{"generator", "discriminator", "g_optimizer", "d_optimizer", "g_running"}`` (training
  checkpoints, also the README's ``stylegan-256px-new.model``) or a bare ``g_running`` state dict
  (train.py's ``NNNNNN.model``, the README's old running-average files); ``g_running`` is the moving
  average that ``generate.py`` samples from, so it is preferred here.
"""
from __future__ import annotations

from pathlib import Path

from gandid.checkpoints import load_state_dict_file
from gandid.errors import CheckpointError
from gandid.model import InstanceNorm

from .base import NOISE_MODES
from .checkpoint import _layout
from .g_all import G_ALL_TRUNCATION_CUTOFF, StyleGANGAllGenerator
from .rosinality import StyleGANGenerator


def stylegan(weights: str | None = None, resolution: int | None = None, truncation: float = 1.0,
             noise: str = "latent", truncation_cutoff: int | None = None,
             instance_eps: float | None = None) -> StyleGANGenerator | StyleGANGAllGenerator:
    """Factory for ``--generator stylegan --weights FILE``, .pt/.pth/.model or .safetensors: a rosinality
    training checkpoint (its ``g_running``, else ``generator``) or bare generator state dict, or a
    ``g_all`` state dict of the official network's PyTorch port (GANSpace, lernapparat).

    ``resolution``: rosinality's progressive step's image size (default: the largest block that was
    trained; a g_all file runs at its own size only); ``truncation``: psi (rosinality's generate.py
    samples with 0.7, the official network with 0.7; 1 = none); ``truncation_cutoff`` (g_all only):
    the layers truncated are those below it (default 8, the official one); ``noise``: "latent"
    (per-sample noise seeded by the latent), "const" or "zero"; ``instance_eps``: the AdaIN instance
    norms' eps (default: the layout's own, 1e-5 for rosinality, 1e-8 for g_all as official StyleGAN).
    """
    if weights is None:
        raise CheckpointError("generator 'stylegan' needs a weights file: --weights stylegan-256px-new.model "
                              "(rosinality) or --weights stylegan_ffhq_1024.pt (GANSpace's g_all)")
    if not 0 < truncation <= 1:
        raise CheckpointError(f"stylegan: truncation must be in (0, 1], got {truncation}")
    if noise not in NOISE_MODES:
        raise CheckpointError(f"stylegan: noise must be one of {', '.join(NOISE_MODES)}, got {noise!r}")
    if truncation_cutoff is not None and truncation_cutoff < 0:
        raise CheckpointError(f"stylegan: truncation_cutoff must be 0 or more, got {truncation_cutoff}")
    if instance_eps is not None and not instance_eps > 0:
        raise CheckpointError(f"stylegan: instance_eps must be positive, got {instance_eps}")
    data = load_state_dict_file(Path(weights))
    which = next((k for k in ("g_running", "generator") if isinstance(data.get(k), dict)), None)
    state = data[which] if which else data
    if _layout(state, str(weights)) == "g_all":
        gen = StyleGANGAllGenerator.from_state_dict(
            state, resolution, truncation, G_ALL_TRUNCATION_CUTOFF if truncation_cutoff is None else truncation_cutoff,
            noise, 1e-8 if instance_eps is None else instance_eps, source=str(weights))
    else:
        if truncation_cutoff is not None:
            raise CheckpointError(f"stylegan: truncation_cutoff applies to the g_all layout only; {weights} is in "
                                  "rosinality's layout, whose generate.py truncates every layer's style")
        gen = StyleGANGenerator.from_state_dict(state, resolution, truncation, noise, source=str(weights))
        if instance_eps is not None:
            for module in gen.modules():
                if isinstance(module, InstanceNorm):
                    module.eps = instance_eps
        gen.weights_info["instance_eps"] = 1e-5 if instance_eps is None else instance_eps
    gen.weights_info["state"] = which or "bare state dict"
    return gen
