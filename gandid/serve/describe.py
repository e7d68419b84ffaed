"""What the explorer shows of each analysis: the analysis's own ``explorer(result) -> dict``, made safe to send.

The front end knows no analysis: it renders the descriptions these functions return (the contract is in
docs/serve.md, "What an analysis shows"). A description is plain JSON built from the analysis's result; an
analysis without ``explorer`` is listed with ``view: null`` and the views show nothing of it.
"""
from __future__ import annotations

import math

from ..errors import GandidError

KEYS = ("units", "absent", "unit_sets", "classes", "controlled_sites")  # a description's top-level keys
MAX_NODES = 5_000_000  # values in one description: far above a 512-unit, 150-class run; stops a runaway one


class BadDescription(GandidError):
    """An analysis's ``explorer`` answer is not a description (the message says where)."""


def describe(analysis, result: dict) -> dict | None:
    """``analysis.explorer(result)`` checked and made JSON-safe, or None when it has no ``explorer``."""
    method = getattr(analysis, "explorer", None)
    if method is None:
        return None
    view = method(result)
    if not isinstance(view, dict):
        raise BadDescription(f"explorer() returned {type(view).__name__}, not a dict")
    unknown = sorted(set(view) - set(KEYS))
    if unknown:
        raise BadDescription(f"explorer() returned unknown keys {unknown} (allowed: {', '.join(KEYS)})")
    for key, kind in (("units", dict), ("unit_sets", list), ("classes", dict), ("absent", str),
                      ("controlled_sites", dict)):
        if key in view and not isinstance(view[key], kind):
            raise BadDescription(f"explorer()'s {key!r} must be a {kind.__name__}, got {type(view[key]).__name__}")
    return json_safe(view)


def json_safe(value):
    """``value`` with tuples as lists and NaN/inf as None (JSON has neither); anything else not JSON is refused.

    Iterative, so a deep or large description cannot exhaust the stack."""
    root = [None]
    stack = [(value, root, 0, "explorer()")]
    nodes = 0
    while stack:
        item, parent, key, where = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise BadDescription(f"explorer() returned more than {MAX_NODES} values")
        if isinstance(item, bool) or item is None or isinstance(item, str):
            parent[key] = item
        elif isinstance(item, int):
            parent[key] = int(item)
        elif isinstance(item, float):
            parent[key] = float(item) if math.isfinite(item) else None
        elif isinstance(item, dict):
            out = parent[key] = {}
            for k, v in item.items():
                if not isinstance(k, str):
                    raise BadDescription(f"{where} has a key {k!r} that is not a string")
                out[k] = None
                stack.append((v, out, k, f"{where}[{k!r}]"))
        elif isinstance(item, (list, tuple)):
            out = parent[key] = [None] * len(item)
            stack.extend((v, out, i, f"{where}[{i}]") for i, v in enumerate(item))
        elif hasattr(item, "item") and callable(item.item) and getattr(item, "ndim", None) == 0:
            stack.append((item.item(), parent, key, where))  # a numpy or torch scalar
            nodes -= 1
        else:
            raise BadDescription(f"{where} is a {type(item).__name__}, not a JSON value")
    return root[0]
