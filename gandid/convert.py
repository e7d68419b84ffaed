"""`gandid convert IN OUT.safetensors`: any checkpoint a generator plugin loads, as safetensors with
gandid's metadata, checked by loading it back.

The tensors are the generator's ``checkpoint()`` (optional Generator member: the tensors and a
JSON-able config of a file its plugin loads back; default its ``state_dict()``). The metadata entry
``gandid`` (:data:`gandid.formats.METADATA_KEY`) is JSON: ``format`` (1), ``generator`` (the plugin),
``options`` (factory options used, weights excluded), ``config`` (the generator's own: architecture,
sizes, ...), ``source`` (the input's file name), ``found`` (what was recognised), ``gandid_version``.

OUT's folder is proved writable before anything loads; OUT is written beside itself under a temporary
name and renamed once checked, so it is whole (or what it was before) whatever stops the write.
"""
from __future__ import annotations

import errno
import json
import os
import re
import tempfile
import uuid
from pathlib import Path

import torch

from . import faults
from .contracts import check_contract
from .errors import ConfigError, DiskFullError, GandidError, OutputExistsError
from .formats import METADATA_KEY, detect_generator
from .model import Generator
from .outdir import FULL, WHY_NOT_WRITTEN
from .registry import get_registry
from .version import __version__

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
    check_destination(target)
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

    # written beside OUT and renamed over it once checked: OUT is whole or absent, never half-written
    tmp = target.with_name(f"{target.stem}.{uuid.uuid4().hex[:8]}.partial.safetensors")  # loaders go by the suffix
    try:
        try:
            save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta)})
        except Exception as exc:
            raise _write_error(target, exc) from None
        difference = _reproduces(reg, name, original, tmp, options)
        faults.point("convert")
        try:
            os.replace(tmp, target)
        except OSError as exc:
            raise _write_error(target, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"generator": name, "found": found, "tensors": len(tensors), "bytes": target.stat().st_size,
            "max_difference": difference, "config": config}


def check_destination(target: Path) -> None:
    """Prove a file can be created in ``target``'s folder before any model loads (as ``run --out`` does)."""
    folder = Path(os.path.abspath(target)).parent
    if target.is_dir():
        raise ConfigError(f"OUT {str(target)!r} is a folder: give a file name ending in .safetensors")
    try:
        fd, probe = tempfile.mkstemp(prefix=".gandid-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        why = WHY_NOT_WRITTEN.get(exc.errno, exc.strerror)
        fix = ("create it first, or choose an OUT in an existing folder" if exc.errno in (errno.ENOENT, errno.ENOTDIR)
               else "free some space, or choose an OUT on another disk" if exc.errno in FULL
               else "choose an OUT in a folder you can write to")
        raise ConfigError(f"cannot write {str(target)!r} into the folder {str(folder)!r} ({why}): {fix}") from None


def _write_error(target: Path, exc: Exception) -> Exception:
    """Writing OUT failed: gandid's message when the system said why (safetensors wraps the OS error in
    its own, as text), else ``exc`` itself."""
    code = getattr(exc, "errno", None)
    if code is None:
        # Rust's io::Error as safetensors words it: "I/O error: ... (os error 28)", or "Os { code: 28, ... }"
        found = re.search(r"\bos error (\d+)|\bcode: (\d+)", str(exc))
        code = int(found.group(1) or found.group(2)) if found else None
    if code is None:
        return exc
    why = WHY_NOT_WRITTEN.get(code) or os.strerror(code)
    fix = ("free some space (or raise the quota or limit), or choose an OUT on another disk" if code in FULL
           else "choose an OUT in a folder you can write to")
    kind = DiskFullError if code in FULL else GandidError
    return kind(f"could not write {str(target)!r} ({why}); nothing was written, no partial file is left: {fix}")


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
