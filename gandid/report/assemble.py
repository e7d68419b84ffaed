"""Assembling report.html from run.json's record and each analysis's result (see :mod:`gandid.report`
for what an analysis contributes): the headline, notes and findings, the sections in pipeline order,
the stages, the configuration and the files.
"""
from __future__ import annotations

import html
import re
from datetime import datetime
from pathlib import Path

from ..outdir import write_atomic
from .html import Finding, esc, image, readable, seconds, table

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222;line-height:1.45}
h1{margin-bottom:.1em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
h3{margin-top:1.4em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ddd;padding:.25em .6em;font-size:.9em}
th{background:#f4f4f4;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee} .muted{color:#666;font-size:.9em}
.notes{background:#fff8e1;border-left:4px solid #f0b400;padding:.4em 1em .4em 2em;font-size:.9em}
.grid{display:flex;flex-wrap:wrap;gap:0 2em;align-items:flex-start}
.grid figure{margin:.5em 0} .grid>div{max-width:36em}
figure{margin:.5em 0} figcaption{font-size:.8em;color:#555}
code{background:#f4f4f4;padding:0 .2em}
.summary{background:#f6f8fb;border:1px solid #d8e0ec;border-radius:6px;padding:.6em 1.4em 1em;margin-top:1.2em}
.summary h2{border:0;margin:.3em 0 .2em}
.summary h3{font-size:1em;margin:.9em 0 .2em;text-transform:uppercase;letter-spacing:.04em;color:#456}
.summary h3 a{color:inherit;text-decoration:none}
.summary ul{margin:.2em 0;padding-left:1.3em} .summary li{margin:.25em 0}
.summary li.failed{color:#a33}
a.more{font-size:.85em;white-space:nowrap;text-decoration:none}
nav.toc{font-size:.9em;margin:.8em 0} nav.toc a{margin-right:.9em}
details{margin-top:2em;border-top:1px solid #ddd;padding-top:.5em}
summary{font-weight:600;cursor:pointer;font-size:1.1em}
tr:target,h3:target{background:#fff6d5}
"""

# Lets a headless browser (and a reader) see broken images, script errors and links to no id in the title.
CHECK = """<script>
window.__errors = 0;
window.addEventListener('error', function () { window.__errors += 1; }, true);
window.addEventListener('load', function () {
  var broken = 0; var imgs = document.images;
  for (var i = 0; i < imgs.length; i++) { if (!imgs[i].complete || imgs[i].naturalWidth === 0) broken += 1; }
  var dangling = 0; var links = document.querySelectorAll('a[href^="#"]');
  for (var j = 0; j < links.length; j++) {
    if (!document.getElementById(decodeURIComponent(links[j].getAttribute('href').slice(1)))) dangling += 1;
  }
  document.title = document.title + ' [images ' + imgs.length + ', broken ' + broken + ', errors ' + window.__errors
    + ', links ' + links.length + ', dangling ' + dangling + ']';
});
</script>"""


# -- the page ------------------------------------------------------------------------------------
def _call(analysis, method, *args):
    """analysis.method(*args), or (None, error html) when it raises."""
    try:
        return getattr(analysis, method)(*args), None
    except Exception as exc:  # a broken plugin method must not lose the report
        return None, f"{esc(method)} failed: {esc(type(exc).__name__)}: {esc(exc)}"


def _findings(record: dict, analyses: dict, results: dict) -> str:
    groups = []
    stages = record.get("stages", {})
    for name in list(dict.fromkeys([*stages, *results])):
        items = []
        status = stages.get(name, {}).get("status")
        if name not in results:
            if status in ("failed", "skipped", "interrupted"):
                error = stages[name].get("error", "")
                items.append(f"<li class='failed'>{esc(name)} {esc(status)}{': ' + esc(error) if error else ''} "
                             "<a class='more' href='#stages'>stages&nbsp;›</a></li>")
            if items:
                groups.append((name, items))
            continue
        analysis = analyses.get(name)
        if analysis is None or not hasattr(analysis, "report_findings"):
            continue
        found, error = _call(analysis, "report_findings", results[name])
        if error:
            items.append(f"<li class='failed'>{error}</li>")
        for f in found or []:
            f = f if isinstance(f, Finding) else Finding(str(f))
            target = f.anchor or name
            items.append(f"<li>{f.html} <a class='more' href='#{esc(target)}'>details&nbsp;›</a></li>")
        if items:
            groups.append((name, items))
    if not groups:
        body = "<p class='muted'>No analysis wrote findings; see the sections below.</p>"
    else:
        body = "".join(f"<h3><a href='#{esc(name)}'>{esc(name)}</a></h3><ul>{''.join(items)}</ul>"
                       for name, items in groups)
    return f"<section class='summary' id='findings'><h2>Findings</h2>{body}</section>"


def _headline(record: dict) -> str:
    cfg = record.get("config", {})
    bits = []
    for key, label in (("generator", "generator"), ("segmenter", "segmenter")):
        if cfg.get(key):
            bits.append(f"{label} <b>{esc(cfg[key])}</b>")
    if cfg.get("samples") is not None:
        bits.append(f"{esc(cfg['samples'])} samples (seed {esc(cfg.get('seed', 0))})")
    if record.get("layers"):
        bits.append("layer " + ", ".join(f"<code>{esc(l)}</code>" for l in record["layers"]))
    status = f"<b>{esc(record.get('status'))}</b>{esc(_took(record))}"
    bits.append(f"{status} on {esc(record.get('device'))} (fused op {esc(record.get('op_backend'))})")
    return f"<p class='muted'>{' · '.join(bits)}; started {esc(_when(record.get('started')))}.</p>"


def _notes(record: dict) -> str:
    """The run's notes (e.g. the fused op was unavailable and what that cost), where a reader sees them."""
    notes = [n for n in record.get("notes") or [] if isinstance(n, str)]
    if not notes:
        return ""
    return "<ul class='notes' id='notes'>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>"


def _took(record: dict) -> str:
    """`` in 5 min 18 s`` from start to end, none for a resumed run (its span would count the pause)."""
    if record.get("resumes"):
        return f" (resumed {len(record['resumes'])}×)"
    try:
        took = datetime.fromisoformat(record["ended"]) - datetime.fromisoformat(record["started"])
    except (KeyError, TypeError, ValueError):
        return ""
    return f" in {seconds(took.total_seconds())}"


def _when(stamp) -> str:
    """An ISO time stamp as ``2026-11-24 05:49 UTC`` (as given when it does not parse)."""
    try:
        t = datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        return str(stamp)
    zone = "UTC" if t.utcoffset() is not None and not t.utcoffset() else t.strftime("%z")
    return f"{t:%Y-%m-%d %H:%M} {zone}".strip()


def _configuration(record: dict) -> str:
    cfg = record.get("config", {})
    rows = [(k, readable(v)) for k, v in cfg.items()]
    parts = [table(["option", "value"], rows)]
    options = record.get("analysis_options")
    if options is not None:
        parts.append("<p>Analysis options in effect (the config's over the generator's suggestions; "
                     "anything not listed is the analysis's default):</p>")
        parts.append(table(["analysis", "options"], [(k, readable(v)) for k, v in options.items()]))
    versions = record.get("versions", {})
    plain = [(k, v) for k, v in versions.items() if not isinstance(v, dict)]
    if plain:
        parts.append(table(["software", "version"], plain))
    return ("<details id='configuration'><summary>Run configuration</summary>" + "".join(parts) + "</details>")


def _images(page: str, out_dir: Path) -> list[str]:
    """The output folder's files that the page shows as images, in page order."""
    found = []
    for src in re.findall(r"<img\b[^>]*\bsrc=[\"']([^\"']+)[\"']", page):
        src = html.unescape(src)
        if re.match(r"^[a-z][a-z0-9+.-]*:", src, re.I) or src.startswith(("/", "#")):
            continue
        if (out_dir / src).is_file():
            found.append(src)
    return list(dict.fromkeys(found))


def write_report(out_dir, record: dict, analyses: dict, results: dict) -> Path:
    """Write ``out_dir/report.html`` from run.json's record and each analysis's result.

    Adds every image the page shows to ``record["files"]`` (the caller writes run.json after)."""
    out_dir = Path(out_dir)
    body = []
    has_samples = (out_dir / "samples.png").exists()
    if has_samples:
        body += ["<h2 id='samples'>Samples</h2>", image("samples.png", "generated samples and their segmentation")]
    for name, result in results.items():
        analysis = analyses.get(name)
        body.append(f"<h2 id='{esc(name)}'>{esc(name)}</h2>")
        section = None
        if analysis is not None and hasattr(analysis, "report_section"):
            section, error = _call(analysis, "report_section", result, out_dir)
            if error:
                section = f"<p class='muted'>{error}</p>"
        body.append(section or f"<p><a href='{esc(name)}.json'>{esc(name)}.json</a></p>")
    stage_rows = [(n, s.get("status"), seconds(s.get("seconds", 0)), s.get("error", ""))
                  for n, s in record.get("stages", {}).items()]
    body += ["<h2 id='stages'>Stages</h2>", table(["analysis", "status", "time", "error"], stage_rows)]

    record["files"] = list(dict.fromkeys(record.get("files", []) + _images("\n".join(body), out_dir)))
    toc = [("findings", "Findings")] + ([("samples", "Samples")] if has_samples else []) + \
        [(n, n) for n in results] + [("stages", "Stages"), ("configuration", "Run configuration"), ("files", "Files")]
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>gandid report</title>"
             f"<style>{STYLE}</style>{CHECK}</head><body>",
             "<h1>gandid report</h1>",
             _headline(record),
             _notes(record),
             _findings(record, analyses, results),
             "<nav class='toc'>" + "".join(f"<a href='#{esc(a)}'>{esc(t)}</a>" for a, t in toc) + "</nav>",
             *body,
             _configuration(record),
             "<p class='muted' id='files'>Files: " + ", ".join(f"<a href='{esc(f)}'>{esc(f)}</a>"
                                                              for f in record.get("files", [])) + "</p>",
             "</body></html>"]
    path = out_dir / "report.html"
    html = "\n".join(parts)
    write_atomic(path, path.with_suffix(".html.tmp"), lambda tmp: tmp.write_text(html), "report")
    return path
