"""Reading a StyleGAN v1 file's keys: which of the two layouts it is in (or what it looks like instead), the
sizes its tensors tell, and what auto-detection recognises."""
from __future__ import annotations

import torch

from gandid.errors import CheckpointError


def _dims(state, key, ndim, what):
    """The shape of ``state[key]``, which must be a tensor of ``ndim`` dimensions (the shape tells a size)."""
    value = state[key]
    if not isinstance(value, torch.Tensor) or value.dim() != ndim:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise CheckpointError(f"{what}: {key} must be a {ndim}-d tensor, the file has {shape}")
    return tuple(value.shape)


def _layout(state: dict, source: str) -> str:
    """"rosinality" or "g_all", or a CheckpointError that says what the file looks like instead."""
    if any(k.startswith(("g_mapping.", "g_synthesis.")) for k in state):
        return "g_all"
    if any(k.startswith(("style.", "generator.")) for k in state):
        return "rosinality"
    hint = ""
    if any(k.startswith("dense0.") for k in state):
        hint = (" It looks like the mapping network of the g_all layout alone (lernapparat's '*_mapping.pt'); "
                "give the whole generator (the '*.for_g_all.pt' file, keys 'g_mapping.*' and 'g_synthesis.*').")
    elif any(k.startswith(("blocks.4x4.", "torgb.")) for k in state):
        hint = (" It looks like the synthesis network of the g_all layout alone (lernapparat's '*_synthesis.pt'); "
                "give the whole generator (the '*.for_g_all.pt' file, keys 'g_mapping.*' and 'g_synthesis.*').")
    raise CheckpointError(f"{source}: not a StyleGAN v1 generator in a layout this plugin reads: not a rosinality "
                          "style-based-gan-pytorch StyledGenerator (no 'style.1.linear.weight_orig' / "
                          "'generator.progression.0.conv1.input') nor the official network's g_all layout (no "
                          f"'g_mapping.dense0.weight' / 'g_synthesis.blocks.4x4.const'); its first keys are "
                          f"{sorted(state)[:8]}.{hint}")


def recognise(peek) -> str | None:
    """rosinality's checkpoints ({'g_running', 'generator', ...} or a bare state dict) and g_all state dicts."""
    for inside in ("g_running", "generator", None):
        if peek.has("style.1.linear.weight_orig", "generator.progression.0.conv1.input", inside=inside):
            return ("a rosinality style-based-gan-pytorch StyleGAN " +
                    (f"checkpoint ({inside})" if inside else "generator state dict"))
    if peek.has("g_mapping.dense0.weight", "g_synthesis.blocks.4x4.const"):
        return "a StyleGAN generator in the official network's g_all layout (GANSpace / lernapparat PyTorch port)"
    return None
