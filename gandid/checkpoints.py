"""Loading weights safely (never unpickling code) and checking them against an expected layout."""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from .errors import CheckpointError


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format is a zip archive
_PICKLE_PROTO = 0x80  # legacy torch.save files and plain pickles start with the PROTO opcode


def refusal_reason(exc: Exception) -> str:
    """What the tensors-only unpickler objected to, without torch's advice to disable it."""
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return f"it needs the Python object {found.group(1)}"
    found = re.search(r"Unsupported operand (\d+)", text)
    if found:
        return f"it uses pickle instruction {found.group(1)}, which a plain tensor file never needs"
    return "it holds objects beyond tensors and plain containers"


def load_error(exc: Exception) -> str:
    """``torch.load``'s failure in a few words, for a message: the unpickler's objection (see
    :func:`refusal_reason`) or the error's first line, never torch's advice to load without
    ``weights_only``."""
    if isinstance(exc, pickle.UnpicklingError):
        return refusal_reason(exc)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    first = next((line for line in lines if "weights_only" not in line), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def load_state_dict_file(path) -> dict:
    """Tensors from ``.safetensors`` or a ``.pth``/``.pt`` file read with ``weights_only=True``.

    A pickle that would run code (or build arbitrary objects) is refused with a clear error.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"weights {str(path)!r} is a directory: give the weights file inside it")
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    with path.open("rb") as f:
        head = f.read(4)
    if not head.startswith(_ZIP_MAGIC) and (not head or head[0] != _PICKLE_PROTO):
        what = "it is empty" if not head else "it is neither a zip archive nor a pickle"
        raise CheckpointError(f"{path}: not a PyTorch file ({what}); give a file written by torch.save "
                              "(.pth/.pt) or a .safetensors file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refusing to load: {refusal_reason(exc)}, and gandid never unpickles "
                              "code or arbitrary objects. Convert it to a plain state dict (names to tensors) "
                              "or .safetensors in an environment you trust.") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch file, damaged or truncated ({load_error(exc)})"
                              ) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a state dict (a mapping of names to tensors), got "
                              f"{type(data).__name__}")
    return data


def check_state_dict(state: dict, expected: dict, what: str, integer_keys=()) -> None:
    """Raise one error that lists every missing key, unexpected key, shape mismatch and tensor that is
    not floating point (weights stored as integers or booleans load into garbage, silently);
    ``integer_keys`` are counters that are integers by design."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: file has {tuple(state[k].shape)}, expected {tuple(expected[k])}"
                  for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k])]
    not_float = [f"{k}: {getattr(state[k], 'dtype', type(state[k]).__name__)}" for k in expected
                 if k in state and k not in integer_keys
                 and not (isinstance(state[k], torch.Tensor) and state[k].is_floating_point())]
    if not (missing or unexpected or mismatched or not_float):
        return
    lines = [f"{what} does not match the expected layout:"]

    def show(title, items):
        if items:
            lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:12]) + (" ..." if len(items) > 12 else ""))

    show("missing keys", missing)
    show("unexpected keys", unexpected)
    show("shape mismatches", mismatched)
    show("not floating-point weights (expected float32, float16, bfloat16 or float64)", not_float)
    raise CheckpointError("\n".join(lines))


def to_float(state: dict, dtype: torch.dtype = torch.float32) -> tuple[dict, dict]:
    """Floating tensors converted to ``dtype`` on purpose (float16/bfloat16 files run in float32);
    returns the converted dict and a record of what the file stored, for run.json."""
    stored: dict[str, int] = {}
    out = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            name = str(value.dtype).removeprefix("torch.")
            stored[name] = stored.get(name, 0) + 1
            value = value.to(dtype)
        out[key] = value
    info = {"stored_dtypes": stored, "loaded_as": str(dtype).removeprefix("torch.")}
    if any(name != info["loaded_as"] for name in stored):
        info["converted"] = True
    return out, info
