"""`gandid convert IN OUT.safetensors`: any checkpoint a generator plugin loads, as safetensors with
gandid's metadata, checked by loading it back.

The tensors are the generator's ``checkpoint()`` (optional Generator member: the tensors and a
JSON-able config of a file its plugin loads back; default its ``state_dict()``). The metadata entry
``gandid`` (:data:`gandid.formats.METADATA_KEY`) is JSON: ``format`` (1), ``generator`` (the plugin),
``options`` (factory options used, weights excluded), ``config`` (the generator's own: architecture,
sizes, ...), ``source`` (the input's file name), ``found`` (what was recognised), ``gandid_version``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from . import __version__
from .contracts import check_contract
from .errors import ConfigError, GandidError, OutputExistsError
from .formats import METADATA_KEY, detect_generator
from .model import Generator
from .registry import get_registry

CHECK_LATENTS = 4  # latents whose images the converted file must reproduce


def convert(source, target, generator: str = "auto", options: dict | None = None, registry=None,
            force: bool = False) -> dict:
    """Write ``target`` (.safetensors) from the weights file ``source``; returns what was done."""
    reg = registry or get_registry()
    source, target = Path(source), Path(target)
    options = dict(options or {})
    if target.suffix != ".safetensors":
        raise ConfigError(f"the converted file is a .safetensors file: give OUT ending in .safetensors, not {target.name!r}")
    if target.exists() and not force:
        raise OutputExistsError(f"{target} exists: give another name, or --force to replace it")
    if "weights" in options:
        raise ConfigError("give the weights file as IN, not as an option")
    if generator == "auto":
        name, found = detect_generator(reg, source)
    else:
        reg.get("generator", generator)
        name, found = generator, f"read as {generator!r}, as asked"
    original = reg.create("generator", name, weights=str(source), **options)
    check_contract(original, Generator, f"generator {name!r}")
    if hasattr(original, "checkpoint"):
        tensors, config = original.checkpoint()
    else:
        tensors, config = original.state_dict(), {}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {"format": 1, "generator": name, "options": options, "config": config, "source": source.name,
            "found": found, "gandid_version": __version__}
    from safetensors.torch import save_file

    tmp = target.with_name(target.stem + ".partial.safetensors")  # the loaders go by the suffix
    save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta)})
    try:
        difference = _reproduces(reg, name, original, tmp, options)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, target)
    return {"generator": name, "found": found, "tensors": len(tensors), "bytes": target.stat().st_size,
            "max_difference": difference, "config": config}


def _reproduces(reg, name: str, original, path: Path, options: dict) -> float:
    """Load the converted file with the same plugin; its images must equal the original's."""
    try:
        again = reg.create("generator", name, weights=str(path), **options)
    except GandidError as exc:
        raise GandidError(f"generator {name!r} cannot load the file it was converted to ({exc}): a bug in the "
                          "plugin's checkpoint(); nothing was written") from None
    with torch.no_grad():
        z = original.sample_z(CHECK_LATENTS, 0)
        before, after = original.forward(z), again.forward(z)
    difference = float((before.float() - after.float().to(before.device)).abs().max())
    if not difference <= 1e-5:
        raise GandidError(f"the converted file does not reproduce the original images (largest difference "
                          f"{difference:.3g}): a bug in generator {name!r}'s checkpoint(); nothing was written")
    return difference
