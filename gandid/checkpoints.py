"""Loading weights safely (never unpickling code) and checking them against an expected layout."""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .errors import CheckpointError


def load_state_dict_file(path) -> dict:
    """Tensors from ``.safetensors`` or a ``.pth``/``.pt`` file read with ``weights_only=True``.

    A pickle that would run code (or build arbitrary objects) is refused with a clear error.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: refusing to load: the file is a pickle that needs code or objects "
                              f"beyond tensors, and gandid never unpickles code ({first}). Convert it to a "
                              "plain state dict or .safetensors in a trusted environment.") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch file ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a state dict (a mapping of names to tensors), got "
                              f"{type(data).__name__}")
    return data


def check_state_dict(state: dict, expected: dict, what: str) -> None:
    """Raise one error that lists every missing key, unexpected key and shape mismatch."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k}: file has {tuple(state[k].shape)}, expected {tuple(expected[k])}"
                  for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k])]
    if not (missing or unexpected or mismatched):
        return
    lines = [f"{what} does not match the expected layout:"]

    def show(title, items):
        if items:
            lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:12]) + (" ..." if len(items) > 12 else ""))

    show("missing keys", missing)
    show("unexpected keys", unexpected)
    show("shape mismatches", mismatched)
    raise CheckpointError("\n".join(lines))
