"""Which generator plugin loads a weights file (``--generator auto``), and the files `gandid convert` writes.

A weights file is read once, safely (:class:`Peek`: tensors only, never code), and every generator
plugin's ``recognise(peek)`` is asked; exactly one must claim it. A converted file
(``.safetensors`` with gandid's metadata) names its plugin itself.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoints import TruncatedFileError, load_state_dict_file
from .errors import CheckpointError, ConfigError

METADATA_KEY = "gandid"  # the safetensors metadata entry of a converted file: JSON, see convert.py
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80


@dataclass
class Peek:
    """A weights file as the recognisers see it.

    kind: 'safetensors', 'torch' (torch.save, zip or legacy), 'pickle' (another pickle: not readable as
    tensors only, e.g. an NVlabs network snapshot), 'empty' or 'unknown'; data: the mapping of a
    'safetensors' or 'torch' file (names to tensors or nested mappings), else None; converted: the
    metadata of a file written by `gandid convert`, else None.
    """

    path: Path
    kind: str
    data: dict | None = None
    converted: dict | None = None
    problem: str | None = field(default=None, repr=False)  # why a torch file could not be read as tensors

    def keys(self, prefix: str = "") -> list[str]:
        """The file's tensor names, nested mappings flattened as ``outer/inner`` (first level only)."""
        out = []
        for key, value in (self.data or {}).items():
            if isinstance(value, dict):
                out += [f"{prefix}{key}/{inner}" for inner in value]
            else:
                out.append(f"{prefix}{key}")
        return out

    def has(self, *keys: str, inside: str | None = None) -> bool:
        """All ``keys`` present at the top level, or in the nested mapping ``inside``."""
        table = self.data if inside is None else (self.data or {}).get(inside)
        return isinstance(table, dict) and all(k in table for k in keys)


# Layouts gandid names when no plugin claims a file: the one whose marker keys match best, supported or
# not (a generator's tensor names; "a/b" is key b inside the top-level mapping a).
KNOWN_LAYOUTS = (
    ("rosinality's SWAGAN (StyleGAN2 with wavelets), which gandid does not read yet", (r"(^|[./])iwt\.ll$",)),
    ("an NVlabs StyleGAN3 generator, which gandid does not read yet", (r"synthesis\.input\.", r"synthesis\.L\d+_")),
    ("a StyleGAN v1 generator in rosinality's layout (--generator stylegan)", (r"generator\.progression\.\d+",)),
    ("the official StyleGAN v1's g_all port (--generator stylegan)", (r"^g_mapping\.", r"^g_synthesis\.")),
    ("an NVlabs StyleGAN2-ADA G_ema state dict (--generator stylegan2-ada)",
     (r"(^|/)mapping\.fc\d+\.", r"(^|/)synthesis\.b\d+\.")),
    ("a rosinality StyleGAN2 generator (--generator stylegan2)", (r"(^|/)style\.\d+\.weight", r"(^|/)convs\.\d+\.conv\.")),
    ("a PG-GAN in GAN Dissection's layout (--generator pggan)", (r"(^|/)layer\d+\.conv\.weight", r"(^|/)output_\d+x\d+")),
    ("a pix2pix / CycleGAN generator (--generator pix2pix)", (r"^(module\.)?model\.(model\.)?\d+\.",)),
    ("a discriminator, not a generator", (r"(^|/)final_linear\.", r"(^|/)b4\.out\.", r"^(d|D)/")),
)


def closest_layout(keys: list[str]) -> str | None:
    """The known layout most of whose marker patterns some key matches, or None."""
    import re

    best, score = None, 0.0
    for what, patterns in KNOWN_LAYOUTS:
        hit = sum(any(re.search(p, k) for k in keys) for p in patterns) / len(patterns)
        if hit > score:
            best, score = what, hit
    return best


def converted_metadata(path) -> dict | None:
    """The metadata `gandid convert` wrote into a .safetensors file, or None."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:
        return None
    if METADATA_KEY not in meta:
        return None
    try:
        return json.loads(meta[METADATA_KEY])
    except ValueError:
        raise CheckpointError(f"{path}: its gandid metadata is not JSON: the file is damaged; convert it again") from None


def peek(path) -> Peek:
    """Read a weights file for recognition: tensors only (never code)."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"weights {str(path)!r} is a directory: give the weights file inside it")
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist")
    with path.open("rb") as f:
        head = f.read(8)
    if not head:
        return Peek(path, "empty")
    if path.suffix == ".safetensors":
        return Peek(path, "safetensors", load_state_dict_file(path), converted_metadata(path))
    if head.startswith(_ZIP_MAGIC) or head[0] == _PICKLE_PROTO or _ZIP_MAGIC.startswith(head):  # or a cut zip
        try:
            return Peek(path, "torch", load_state_dict_file(path))
        except TruncatedFileError:
            raise  # no plugin reads half a file: the message says what happened
        except CheckpointError as exc:
            # not readable as tensors: a legacy torch file would have been; a plain pickle (an NVlabs
            # snapshot) is for a plugin with its own data-only reader to claim
            return Peek(path, "pickle" if not head.startswith(_ZIP_MAGIC) else "torch", problem=str(exc))
    return Peek(path, "unknown")


def detect_generator(registry, path) -> tuple[str, str]:
    """(plugin name, what it found) for a weights file, or a ConfigError naming what gandid knows."""
    found = peek(path)
    names = registry.names("generator")
    if found.converted is not None:
        name = found.converted.get("generator")
        if name not in names:
            raise ConfigError(f"{path} was converted for generator {name!r}, which is not installed "
                              f"(installed: {', '.join(names)})")
        return name, f"a file converted by gandid for {name!r} (from {found.converted.get('source')!r})"
    claims = []
    for entry in registry.entries("generator"):
        if entry.recognise is None:
            continue
        what = entry.recognise(found)
        if what:
            claims.append((entry.name, what))
    if len(claims) == 1:
        return claims[0]
    if len(claims) > 1:
        raise ConfigError(f"{path}: more than one generator reads this file: "
                          + "; ".join(f"{n} ({w})" for n, w in claims) + ". Choose one with --generator NAME")
    known = [f"{e.name} ({e.description})" for e in registry.entries("generator") if e.recognise is not None]
    if found.kind in ("empty", "unknown"):
        what = "it is empty" if found.kind == "empty" else "it is neither a PyTorch, a safetensors nor a pickle file"
        raise ConfigError(f"{path}: unreadable as weights ({what})")
    seen = found.keys()
    shown = (f"its first keys are {seen[:8]}" if seen else found.problem or f"a {found.kind} file")
    closest = closest_layout(seen)
    hint = f" It looks most like {closest}." if closest else ""
    raise ConfigError(f"{path}: no installed generator recognises this file ({shown}).{hint} gandid knows: "
                      + "; ".join(known) + ". Choose one with --generator NAME to see what it expects")
