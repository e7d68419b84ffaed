"""The HTML a report is written in: escaping, links and anchors, tables, images, and numbers as text.

Analyses build their report sections and findings with these (imported from :mod:`gandid.report`).
Numbers read the same everywhere: :func:`pp` (a change in a fraction of pixels, as percentage points),
:func:`pct`, :func:`fmt`, :func:`fmt_signed`, :func:`sig`, :func:`interval`, :func:`seconds`; none of
them prints ``-0``.
"""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass

NBSP = "\u00a0"


# -- escaping and markup ------------------------------------------------------------------------
def esc(value) -> str:
    """Escape anything that came from a plugin, a config or a file."""
    return html.escape(str(value), quote=True)


class Html(str):
    """A string that is already HTML (built with :func:`esc`): :func:`table` puts it in unescaped."""


def anchor(*parts) -> str:
    """A stable id for a place in the page, e.g. ``anchor("ace", "lamp") == "ace-lamp"``."""
    slug = re.sub(r"[^a-z0-9_]+", "-", "-".join(str(p) for p in parts).lower()).strip("-")
    return slug or "section"


def link(target: str, text) -> Html:
    """``<a href="#target">text</a>``, text escaped."""
    return Html(f"<a href='#{esc(target)}'>{esc(text)}</a>")


@dataclass
class Finding:
    """One sentence of the findings summary: ``html`` (escaped by the analysis) and the id of the
    place in the page that shows the evidence (default: the analysis's section)."""

    html: str
    anchor: str | None = None


# -- numbers -----------------------------------------------------------------------------------
def _number(x, digits: int, signed: bool, scale: float = 1.0) -> str:
    if x is None:
        return "n/a"
    x = float(x) * scale
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return ("+" if signed and x > 0 else "-" if x < 0 else "") + "∞"
    s = f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"
    if float(s) == 0:  # never "-0.00" (nor "+0.00": zero has no sign)
        s = f"{0:.{digits}f}"
    return s


def fmt(x, digits: int = 2) -> str:
    """A plain number with ``digits`` decimals, never ``-0.00``."""
    return _number(x, digits, signed=False)


def sig(x, digits: int = 3) -> str:
    """A number with ``digits`` significant digits (``%g``), never ``-0``."""
    if x is None or math.isnan(float(x)):
        return "n/a"
    s = f"{float(x):.{digits}g}"
    return "0" if float(s) == 0 else s


def fmt_signed(x, digits: int = 2) -> str:
    """A difference: ``+1.23`` / ``-1.23`` / ``0.00``."""
    return _number(x, digits, signed=True)


def pct(x, digits: int = 0) -> str:
    """A fraction as a percentage: ``pct(0.423) == "42%"``."""
    s = _number(x, digits, signed=False, scale=100)
    return s if s == "n/a" else s + "%"


def pp(x, digits: int = 2, signed: bool = True) -> str:
    """A change in a fraction (of image pixels) as percentage points: ``pp(0.0123) == "+1.23 pp"``."""
    s = _number(x, digits, signed=signed, scale=100)
    return s if s == "n/a" else s + NBSP + "pp"


def interval(lo, hi, digits: int = 2, unit: str = "pp") -> str:
    """A confidence interval of two fractions: ``[+0.91, +1.52] pp`` (unit ``"pp"``, ``"%"`` or ``""``)."""
    scale = 100 if unit in ("pp", "%") else 1
    body = f"[{_number(lo, digits, True, scale)}, {_number(hi, digits, True, scale)}]"
    return body + (NBSP + unit if unit == "pp" else unit)


def seconds(s) -> str:
    """A duration: ``12.3 s``, ``4 min 05 s``."""
    s = float(s or 0)
    if s < 60:
        return f"{s:.1f}{NBSP}s"
    m, r = divmod(int(round(s)), 60)
    return f"{m}{NBSP}min {r:02d}{NBSP}s" if m < 60 else f"{m // 60}{NBSP}h {m % 60:02d}{NBSP}min"


# -- building blocks ---------------------------------------------------------------------------
def _cell(c) -> str:
    if isinstance(c, Html):
        return f"<td>{c}</td>"
    if isinstance(c, (int, float)) and not isinstance(c, bool):
        return f"<td class='num'>{esc(c)}</td>"
    text = str(c)
    numeric = re.fullmatch(r"[+-]?(\d[\d.,]*|∞)(%| pp| s)?|\[[^\]]*\](%| pp)?", text.replace(NBSP, " "))
    return f"<td class='num'>{esc(text)}</td>" if numeric else f"<td>{esc(text)}</td>"


def table(header, rows, row_ids=None) -> str:
    """A table; cells are escaped unless they are :class:`Html`. ``row_ids`` gives each row an id."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        rid = f" id='{esc(row_ids[i])}'" if row_ids and row_ids[i] else ""
        body.append(f"<tr{rid}>" + "".join(_cell(c) for c in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def image(path: str, caption: str = "") -> str:
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{esc(path)}" alt="{esc(caption or path)}">{cap}</figure>'


def readable(value) -> str:
    """A config value for people: None -> "default", empty -> "—", lists joined, dicts as k = v."""
    if value is None:
        return "default"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(readable(v) for v in value) if value else "—"
    if isinstance(value, dict):
        return "; ".join(f"{k} = {readable(v)}" for k, v in value.items()) if value else "—"
    if value == "":
        return "—"
    return str(value)
