"""report.html: findings first, sections in pipeline order, units on numbers, every image in run.json;
and it renders in headless Chromium with no broken image, no script error and no dangling link."""
import html
import json
import os
import re
import shutil
import subprocess

import pytest
import torch
from ground_truth import GroundTruthGenerator
from gt_run import build_run

from gandid.report import Finding, anchor, esc, fmt, fmt_signed, image, interval, pct, pp, readable, sig, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--allow-file-access-from-files"]


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "out"
    build_run(out, segmenter="gt<script>", description="<b>not bold</b>")  # plugin strings must be escaped
    return out


@pytest.mark.slow
def test_report_links_every_section_and_escapes_plugin_strings(report_dir):
    page = (report_dir / "report.html").read_text()
    for section in ("dissect", "ace", "did", "entangle"):
        assert f"<h2 id='{section}'>" in page
    assert "gt<script>" not in page and esc("gt<script>") in page  # the segmenter's name, escaped
    for src in re.findall(r'src="([^"]+)"', page):
        assert (report_dir / src).exists(), src


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs Debian's chromium)")
@pytest.mark.slow
@pytest.mark.browser
def test_report_renders_in_headless_chromium(report_dir, tmp_path):
    url = (report_dir / "report.html").as_uri()
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run([CHROMIUM, *FLAGS, *profile, "--virtual-time-budget=5000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    title = re.search(r"<title>(.*?)</title>", dom.stdout, re.S)
    assert title, dom.stderr[-2000:]
    counts = re.search(r"\[images (\d+), broken (\d+), errors (\d+), links (\d+), dangling (\d+)\]", title.group(1))
    assert counts, title.group(1)
    images, broken, errors, links, dangling = map(int, counts.groups())
    assert images >= 8 and broken == 0 and errors == 0, title.group(1)
    assert links > 20 and dangling == 0, title.group(1)  # findings and contents reach their sections
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *FLAGS, *profile, "--window-size=1200,2400", f"--screenshot={shot}", url],
                   capture_output=True, text=True, timeout=120)
    assert shot.exists() and os.path.getsize(shot) > 10_000


# -- the page's structure: findings first, sections in pipeline order, configuration last ----------------
def _page(report_dir):
    return (report_dir / "report.html").read_text()


def _without_config(page):
    """The page less the collapsed configuration (paths, dates) and the attributes (file names)."""
    page = re.sub(r"<details id='configuration'>.*?</details>", "", page, flags=re.S)
    return re.sub(r"(href|src|id)=(['\"]).*?\2", "", page)


def test_report_leads_with_findings_from_every_analysis(report_dir):
    page = _page(report_dir)
    findings = re.search(r"<section class='summary' id='findings'>(.*?)</section>", page, re.S)
    assert findings, "no findings section"
    assert page.index("id='findings'") < page.index("<h2 id='samples'>") < page.index("<h2 id='dissect'>")
    body = findings.group(1)
    # a group per analysis, in pipeline order, each linking to its section
    groups = re.findall(r"<h3><a href='#([^']+)'>", body)
    assert groups == ["dissect", "ace", "did", "entangle"], groups
    text = html.unescape(re.sub(r"<[^>]+>", " ", body)).replace("\xa0", " ")
    text = re.sub(r"\s+", " ", text)
    # written from the results of the planted world (tests/ground_truth.py)
    assert re.search(r"\d+ of 13 units of feat are interpretable", text), text
    assert re.search(r"removes most of 2 of 3 classes .*red 100%, yellow 100%", text), text
    assert "cannot remove 1 class (less than 50% removed): blue 0%" in text
    assert re.search(r"red ablated: green \+\d+\.\d\d pp \[\+\d+\.\d\d, \+\d+\.\d\d\] pp", text), text
    assert re.search(r"Disentangled .*yellow", text) and re.search(r"Type 2, mis-ablation .*red → green \+\d+%", text)
    assert re.search(r"Type 1, deactivating .*blue 100% remains", text), text
    assert body.count("details&nbsp;›") >= 5


def test_report_links_resolve_and_sections_follow_the_pipeline(report_dir):
    page = _page(report_dir)
    ids = set(re.findall(r"\bid=['\"]([^'\"]+)['\"]", page))
    targets = re.findall(r"href=['\"]#([^'\"]+)['\"]", page)
    assert len(targets) > 20
    assert not [t for t in targets if t not in ids], "links to no id"
    assert {"ace-red", "did-red", "entangle-red", "dissect-feat"} <= ids
    order = [page.index(f"<h2 id='{s}'>") for s in ("samples", "dissect", "ace", "did", "entangle", "stages")]
    assert order == sorted(order)
    details = page.index("<details id='configuration'><summary>Run configuration</summary>")
    assert details > order[-1] and page.index("</details>") < page.index("id='files'") < page.index("</body>")
    config = page[details:page.index("</details>")]
    assert "<td>default</td>" in config and "<td>—</td>" in config  # weights: None, generator_options: {}
    for raw in ("null", "<td>{}</td>", "<td>[]</td>", "<td>true</td>", '"'):
        assert raw not in config, raw


def test_report_numbers_carry_units_and_no_negative_zero(report_dir):
    page = _page(report_dir)
    shown = _without_config(page)
    assert not re.search(r"-0(\.0+)?(?![\d.])", shown), re.search(r".{60}-0(\.0+)?(?![\d.]).{20}", shown)
    ace = page[page.index("<h2 id='ace'>"):page.index("<h2 id='did'>")]
    cells = re.findall(r"<td class='num'>([^<]*)</td>", ace)
    assert sum(c.endswith("\xa0pp") for c in cells) >= 9  # top units of 3 classes, and the context gains
    assert not [c for c in cells if re.fullmatch(r"[+-]\d\.\d{4}", c)], "ACE as a bare fraction"
    did = page[page.index("<h2 id='did'>"):page.index("<h2 id='entangle'>")]
    assert re.search(r"<td class='num'>\[[+-]?\d+\.\d\d, [+-]?\d+\.\d\d\]\xa0pp</td>", did)


def test_every_image_shown_is_listed_in_run_json(report_dir):
    page = _page(report_dir)
    files = json.loads((report_dir / "run.json").read_text())["files"]
    shown = re.findall(r"<img [^>]*src=\"([^\"]+)\"", page)
    assert "dissect_feat_counts.png" in shown and "did_red.png" in shown and "entangle.png" in shown
    assert [s for s in shown if s not in files] == []
    for src in shown:
        assert (report_dir / src).exists(), src


def test_did_panels_show_samples_where_the_ablated_class_is_present(report_dir):
    """red is present exactly where z[0] > 0, yellow where z[2] > 0 (tests/ground_truth.py)."""
    from gandid.stats import Sum, TopK
    from gandid_plugins.analyses.did import DID

    saved = torch.load(report_dir / "state" / "did.pt", weights_only=True)["tally"]
    z = GroundTruthGenerator().sample_z(32, 0)
    chosen = {}
    for name, dim in (("red", 0), ("yellow", 2)):
        stats = {"panels": TopK.from_state(saved[name]["stats"]["panels"]),
                 "present": Sum.from_state(saved[name]["stats"]["present"])}
        panels = chosen[name] = DID.panel_samples(stats)
        assert len(panels) == 4 and all(area > 0 for area, _ in panels)
        assert all(z[i, dim] > 0 for _, i in panels), (name, panels)
        assert int(stats["present"].total) == int((z[:, dim] > 0).sum())
    assert {i for _, i in chosen["red"]} != {i for _, i in chosen["yellow"]}


def test_did_panel_choice_prefers_large_areas_and_spans_batches():
    from gandid.stats import Sum, TopK
    from gandid_plugins.analyses.did import DID

    stats = {"panels": TopK(1, 3), "present": Sum(())}
    DID.keep_panel_samples(stats, range(0, 4), torch.tensor([0.0, 0.2, 0.1, 0.0]))
    DID.keep_panel_samples(stats, range(4, 8), torch.tensor([0.3, 0.0, 0.2, 0.05]))
    assert [i for _, i in DID.panel_samples(stats)] == [4, 1, 6]  # ties: the earlier sample
    assert int(stats["present"].total) == 5
    few = {"panels": TopK(1, 3), "present": Sum(())}
    DID.keep_panel_samples(few, range(0, 3), torch.tensor([0.0, 0.4, 0.0]))
    assert DID.panel_samples(few) == [[pytest.approx(0.4), 1]]  # absent samples are never chosen


# -- the core, without any concrete analysis ---------------------------------------------------------
class _Fake:
    def __init__(self, findings=None, fail=False, draw=False):
        self.findings, self.fail, self.draw = findings, fail, draw

    def report_findings(self, result):
        if self.fail:
            raise RuntimeError("<boom>")
        return self.findings

    def report_section(self, result, out_dir):
        if self.draw:  # an image drawn while the report is written
            (out_dir / "late.png").write_bytes(PNG)
            return image("late.png", "drawn late") + "<p id='fine-anchor'>x</p>"
        return "<p>section</p>"


PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082")


def test_write_report_gathers_findings_through_the_generic_contract(tmp_path):
    record = {"status": "completed_with_errors", "config": {"weights": None, "layer": [], "samples": 8,
                                                          "analysis_options": {}, "force": False},
              "stages": {"first": {"status": "done", "seconds": 1.5}, "second": {"status": "done"},
                         "broken": {"status": "failed", "error": "analysis 'broken' failed: <x>"}},
              "files": ["first.json"]}
    analyses = {"first": _Fake([Finding("one <b>bold</b>", "fine-anchor"), "plain " + esc("<i>")], draw=True),
                "second": _Fake(fail=True)}
    write_report(tmp_path, record, analyses, {"first": {}, "second": {}})
    page = (tmp_path / "report.html").read_text()
    findings = page[page.index("id='findings'"):page.index("</section>")]
    assert "one <b>bold</b> <a class='more' href='#fine-anchor'>" in findings
    assert "plain &lt;i&gt; <a class='more' href='#first'>" in findings
    assert "report_findings failed: RuntimeError: &lt;boom&gt;" in findings
    assert "broken failed: analysis &#x27;broken&#x27; failed: &lt;x&gt;" in findings and "href='#stages'" in findings
    assert record["files"] == ["first.json", "late.png"]
    config = page[page.index("<details"):page.index("</details>")]
    assert "<td>weights</td><td>default</td>" in config and "<td>layer</td><td>—</td>" in config
    assert "<td>force</td><td>no</td>" in config


def test_number_helpers_have_units_and_no_negative_zero():
    assert pp(0.0123) == "+1.23\xa0pp" and pp(-0.00001) == "0.00\xa0pp" and pp(-0.5, 1) == "-50.0\xa0pp"
    assert fmt_signed(-0.0) == "0.00" and fmt_signed(-1e-9, 4) == "0.0000" and fmt_signed(0.25) == "+0.25"
    assert fmt(-0.0004, 3) == "0.000" and sig(-0.0) == "0" and sig(-1e-12) == "-1e-12"
    assert sig(0.000123456) == "0.000123"
    assert pct(0.423) == "42%" and pct(-0.001) == "0%" and pct(float("nan")) == "n/a"
    assert interval(-0.00001, 0.02) == "[0.00, +2.00]\xa0pp" and interval(0.1, 0.2, unit="%") == "[+10.00, +20.00]%"
    assert readable(None) == "default" and readable({}) == "—" and readable([]) == "—"
    assert readable({"a": 1, "b": None}) == "a = 1; b = default" and readable(["x", "y"]) == "x, y"
    assert anchor("ace", "potted plant") == "ace-potted-plant"
