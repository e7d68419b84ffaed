"""``--generator stylegan2-ada``: a network pickle or a ``G_ema`` state dict read, its configuration found and
the generator built; and what auto-detection recognises.

Files: a ``network-snapshot-*.pkl`` (read as data by :mod:`.nvlabs_pickle`; the
configuration comes from ``G_ema``'s recorded init kwargs) or ``G_ema.state_dict()`` saved with
``torch.save`` (.pt/.pth) or as .safetensors (the configuration is inferred from tensor shapes).
"""
from __future__ import annotations

import re
from pathlib import Path

from gandid.checkpoints import load_state_dict_file
from gandid.errors import CheckpointError
from gandid.formats import converted_metadata

from .config import config_from_json, config_from_kwargs, config_from_state_dict
from .generator import StyleGAN2ADAGenerator
from .nvlabs_pickle import PersistentObject, describe, load_nvlabs_pickle, sniff


def _generator_from_pickle(path: Path, truncation: float) -> StyleGAN2ADAGenerator:
    data = load_nvlabs_pickle(path)
    if isinstance(data, PersistentObject):  # pickle.dump(G_ema) on its own
        g, where = data, "the pickle"
    elif isinstance(data, dict) and "G_ema" in data:
        g, where = data["G_ema"], "G_ema"
    else:
        raise CheckpointError(f"{path}: no 'G_ema' in this pickle: it holds {describe(data)}. gandid reads the "
                              "network-snapshot-*.pkl files NVlabs's train.py writes ({'G', 'D', 'G_ema', ...})")
    if not isinstance(g, PersistentObject) or g.class_name != "Generator":
        raise CheckpointError(f"{path}: {where} is {describe(g)}, not a persistent Generator")
    synthesis = g.modules.get("synthesis")
    if synthesis is not None and ("input" in synthesis.modules
                                  or any(re.match(r"L\d+_", n) for n in synthesis.modules)):
        raise CheckpointError(f"{path}: a StyleGAN3 generator (synthesis.input, synthesis.L0_...): the stylegan2-ada "
                              "plugin reads StyleGAN2-ADA only")
    cfg = config_from_kwargs(g, str(path))
    info = {"format": "NVlabs network pickle", "class": g.class_name, "source_sha256": g.source_sha256}
    return StyleGAN2ADAGenerator.from_state_dict(g.state_dict(), cfg, truncation, str(path), info)


def _generator_from_state_dict(path: Path, truncation: float) -> StyleGAN2ADAGenerator:
    try:
        state = load_state_dict_file(path)
    except CheckpointError as exc:
        if "torch_utils.persistence" in str(exc):
            raise CheckpointError(f"{exc}\nThis is a torch.save of an NVlabs network object: give gandid the original "
                                  "network-snapshot-*.pkl, or save G_ema.state_dict() instead.") from None
        raise
    if isinstance(state.get("G_ema"), dict):
        state = state["G_ema"]
    converted = converted_metadata(path) if path.suffix == ".safetensors" else None
    if converted is not None and converted.get("config"):
        cfg = config_from_json(converted["config"], str(path))
        return StyleGAN2ADAGenerator.from_state_dict(state, cfg, truncation, str(path),
                                                     {"format": f"converted by gandid from {converted.get('source')}"})
    cfg = config_from_state_dict(state, str(path))
    return StyleGAN2ADAGenerator.from_state_dict(state, cfg, truncation, str(path), {"format": "G_ema state dict"})


def stylegan2_ada(weights: str | None = None, truncation: float = 1.0, noise_mode: str = "const"
                  ) -> StyleGAN2ADAGenerator:
    """Factory for ``--generator stylegan2-ada --weights FILE``: an NVlabs ``network-snapshot-*.pkl``
    (read as data, never run) or ``G_ema.state_dict()`` as .pt/.pth/.safetensors. ``truncation`` in
    (0, 1]; ``noise_mode`` 'const' (each layer's fixed noise) or 'none'."""
    if weights is None:
        raise CheckpointError("generator 'stylegan2-ada' needs a weights file: --weights network-snapshot-XXXXXX.pkl")
    if not 0 < truncation <= 1:
        raise CheckpointError(f"stylegan2-ada: truncation must be in (0, 1], got {truncation}")
    if noise_mode not in ("const", "none"):
        raise CheckpointError(f"stylegan2-ada: noise_mode must be 'const' or 'none', got {noise_mode!r} ('random' "
                              "would make an image depend on more than its latent)")
    path = Path(weights)
    if path.is_file() and path.suffix != ".safetensors" and sniff(path) not in ("zip", "torch-legacy"):
        gen = _generator_from_pickle(path, truncation)  # also says "unreadable" for random bytes
    else:
        gen = _generator_from_state_dict(path, truncation)
    gen.set_noise_mode(noise_mode)
    return gen


def recognise(peek) -> str | None:
    """An NVlabs network pickle (read by our data-only reader: the loader checks it), or a G_ema state dict."""
    if peek.kind == "pickle":
        return "a pickle that is not a tensor file: an NVlabs network snapshot, read as data"
    for inside in (None, "G_ema"):
        if peek.has("mapping.fc0.weight", "synthesis.b4.const", inside=inside):
            return "an NVlabs StyleGAN2-ADA G_ema state dict"
    return None
