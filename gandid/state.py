"""Saved statistics on disk: a stage's state and a shard's contribution, written atomically and read
back with any damage named.

Where they live in an output folder (paths relative to it):

- ``state/STAGE.pt``: the stage's state, written by rank 0 or a shard (``RunContext.save_state``);
- ``state/rank-K/STAGE.pt``: the same for process K of a group (its private folder);
- ``state/exchange/STAGE.pt``: what a shard contributes to ``gandid merge`` at the stage's first exchange.

Each file is a ``torch.save`` of tensors, numbers and lists in dicts, read with ``weights_only=True``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .checkpoints import load_error
from .errors import GandidError
from .outdir import STATE_DIR, write_atomic

EXCHANGE_DIR = "exchange"  # under a shard's state/: STAGE.pt, what the shard contributes to the merge


def state_path(out: Path, stage: str) -> Path:
    """``out/state/STAGE.pt``: the saved state of ``stage`` in the output folder ``out``."""
    return Path(out) / STATE_DIR / f"{stage}.pt"


def exchange_path(out: Path, stage: str) -> Path:
    """``out/state/exchange/STAGE.pt``: a shard's contribution to ``stage``."""
    return Path(out) / STATE_DIR / EXCHANGE_DIR / f"{stage}.pt"


def save_state_file(path: Path, state, point: str = "state") -> None:
    """``state`` to ``path`` through ``path.tmp``: the file holds the old or the new state, never half
    of one (``point``: the failpoint name of this write, see :mod:`gandid.faults`)."""
    write_atomic(path, path.with_suffix(".tmp"), lambda tmp: torch.save(state, tmp), point)


def load_state_file(path: Path, stage: str) -> dict:
    """A stage's saved statistics; a damaged file is named, with the two ways to start that stage over."""
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:
        raise GandidError(f"the saved state of stage {stage!r} is damaged: {path} ({load_error(exc)}). "
                          f"Start over with --force, or delete {path} and --resume to redo only {stage!r}"
                          ) from None
    if not isinstance(state, dict):
        raise GandidError(f"the saved state of stage {stage!r} in {path} is not a dict: delete it and --resume "
                          f"to redo only {stage!r}, or start over with --force")
    return state


def load_exchange_file(path: Path, stage: str):
    """A shard's contribution to ``stage`` (tensors on the CPU), for the merge; unreadable is named."""
    try:
        return torch.load(path, weights_only=True)
    except Exception as exc:
        raise GandidError(f"gandid merge: the shard statistics of stage {stage!r} in {path} cannot be "
                          f"read ({load_error(exc)}): run that shard again with --force") from None
