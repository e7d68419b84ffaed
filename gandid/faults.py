"""Named points where the fault-injection tests kill a process, so that every step (a build, a state
save, a JSON write, the report, a merge, a conversion) is tried dead in the middle, not only the
steps a random clock happens to hit.

``GANDID_KILL_AT=NAME[:K]`` makes the K-th time (from 1; default 1) this process passes point
``NAME`` end it with SIGKILL, exactly as a power cut or the OOM killer would. Unset, a point costs
one dictionary lookup.
"""
from __future__ import annotations

import os
import signal

_passes: dict[str, int] = {}


def point(name: str) -> None:
    """Die here if ``GANDID_KILL_AT`` names this point and this pass."""
    wanted = os.environ.get("GANDID_KILL_AT")
    if not wanted:
        return
    target, _, nth = wanted.partition(":")
    if target != name:
        return
    _passes[name] = _passes.get(name, 0) + 1
    if _passes[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
