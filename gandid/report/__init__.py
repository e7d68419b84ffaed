"""report.html: one self-contained page (images referenced relatively) that links a run's results.

The page leads with a **Findings** summary, then the samples, one section per analysis in pipeline
order, the stages, and the run configuration collapsed at the end.

The core knows no analysis. Each analysis may offer, both optional:

- ``report_section(result, out_dir) -> str``: the HTML of its section (everything that came from a
  plugin, a config or a file escaped with :func:`esc`). The core writes ``<h2 id="NAME">`` above it;
  finer anchors inside it come from :func:`anchor`. Analyses without it get a link to ``NAME.json``.
- ``report_findings(result) -> list[Finding | str]``: a few sentences written from the result for
  the summary at the top, each an HTML fragment (escaped with :func:`esc`, the same rule as
  sections) and linked to ``#NAME`` or to the :class:`Finding`'s finer ``anchor`` (an id the
  section writes). A plain ``str`` is a finding linked to the section.

Both are called once per report; an exception in either is shown on the page and loses nothing
else. Numbers go through the helpers here so units and signs read the same everywhere: :func:`pp`
(a change in a fraction of pixels, as percentage points), :func:`pct`, :func:`fmt`,
:func:`fmt_signed`, :func:`sig`, :func:`interval`; none of them prints ``-0``.

Every image the page shows (``<img src>`` of a file in the output folder, including images a
section draws while the report is written) is added to ``record["files"]``, which the runner then
writes to run.json.

In parts: :mod:`gandid.report.html` (the helpers above), :mod:`gandid.report.assemble` (the page);
every name is imported from here.
"""
from __future__ import annotations

from .assemble import CHECK, STYLE, write_report
from .html import (
    NBSP,
    Finding,
    Html,
    anchor,
    esc,
    fmt,
    fmt_signed,
    image,
    interval,
    link,
    pct,
    pp,
    readable,
    seconds,
    sig,
    table,
)

__all__ = ["CHECK", "STYLE", "write_report", "NBSP", "Finding", "Html", "anchor", "esc", "fmt", "fmt_signed", "image",
           "interval", "link", "pct", "pp", "readable", "seconds", "sig", "table"]
