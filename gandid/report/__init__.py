"""report.html: one self-contained page (images referenced relatively) that links a run's results.

The core knows no analysis: each analysis may offer ``report_section(result, out_dir) -> html``
(escaped by the analysis with :func:`esc`); the others get a link to their JSON.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;line-height:1.4}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ddd;padding:.25em .6em;font-size:.9em}
th{background:#f4f4f4} img{max-width:100%;border:1px solid #eee} .muted{color:#777;font-size:.9em}
.grid{display:flex;flex-wrap:wrap;gap:1em} .grid figure{margin:0} figcaption{font-size:.8em;color:#555}
code{background:#f4f4f4;padding:0 .2em}
"""

# Lets a headless browser (and a reader) see broken images and script errors in the title.
CHECK = """<script>
window.__errors = 0;
window.addEventListener('error', function () { window.__errors += 1; }, true);
window.addEventListener('load', function () {
  var broken = 0; var imgs = document.images;
  for (var i = 0; i < imgs.length; i++) { if (!imgs[i].complete || imgs[i].naturalWidth === 0) broken += 1; }
  document.title = document.title + ' [images ' + imgs.length + ', broken ' + broken + ', errors ' + window.__errors + ']';
});
</script>"""


def esc(value) -> str:
    """Escape anything that came from a plugin, a config or a file."""
    return html.escape(str(value), quote=True)


def table(header, rows) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def image(path: str, caption: str = "") -> str:
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{esc(path)}" alt="{esc(caption or path)}">{cap}</figure>'


def write_report(out_dir, record: dict, analyses: dict, results: dict) -> Path:
    """Write ``out_dir/report.html`` from run.json's record and each analysis's result."""
    out_dir = Path(out_dir)
    cfg = record.get("config", {})
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>gandid report</title>"
             f"<style>{STYLE}</style>{CHECK}</head><body>",
             "<h1>gandid report</h1>",
             f"<p class='muted'>status <b>{esc(record.get('status'))}</b>, started {esc(record.get('started'))}, "
             f"ended {esc(record.get('ended', ''))}; fused op: {esc(record.get('op_backend'))}; "
             f"device {esc(record.get('device'))}; gandid {esc(record.get('gandid_version'))}</p>",
             "<h2>Run configuration</h2>",
             table(["option", "value"], [(k, json.dumps(v)) for k, v in cfg.items()]
                   + ([("analysis options in effect", json.dumps(record["analysis_options"]))]
                      if "analysis_options" in record else []))]
    if (out_dir / "samples.png").exists():
        parts += ["<h2>Samples</h2>", image("samples.png", "generated samples and their segmentation")]
    stage_rows = [(n, s.get("status"), f"{s.get('seconds', 0):.1f} s", s.get("error", ""))
                  for n, s in record.get("stages", {}).items()]
    parts += ["<h2>Stages</h2>", table(["analysis", "status", "time", "error"], stage_rows)]
    for name, result in results.items():
        analysis = analyses.get(name)
        parts.append(f"<h2 id='{esc(name)}'>{esc(name)}</h2>")
        section = None
        if analysis is not None and hasattr(analysis, "report_section"):
            try:
                section = analysis.report_section(result, out_dir)
            except Exception as exc:  # a broken section must not lose the report
                section = f"<p class='muted'>section failed: {esc(type(exc).__name__)}: {esc(exc)}</p>"
        parts.append(section or f"<p><a href='{esc(name)}.json'>{esc(name)}.json</a></p>")
    parts.append("<p class='muted'>Files: " + ", ".join(f"<a href='{esc(f)}'>{esc(f)}</a>"
                                                       for f in record.get("files", [])) + "</p>")
    parts.append("</body></html>")
    path = out_dir / "report.html"
    path.write_text("\n".join(parts))
    return path
