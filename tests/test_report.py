"""report.html renders in headless Chromium with no broken image and no script error."""
import os
import re
import shutil
import subprocess
import types

import pytest

from gandid import hookimpl
from gandid.config import RunConfig
from gandid.registry import Registry
from gandid.report import esc
from gandid.runner import run
from ground_truth import GroundTruthGenerator, GroundTruthSegmenter

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--allow-file-access-from-files"]


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    import gandid_plugins.ace
    import gandid_plugins.did
    import gandid_plugins.dissect
    import gandid_plugins.entangle

    module = types.ModuleType("gt")
    module.gandid_register_generators = hookimpl(lambda register: register("gt", GroundTruthGenerator))
    module.gandid_register_segmenters = hookimpl(
        lambda register: register("gt<script>", GroundTruthSegmenter, description="<b>not bold</b>"))
    reg = Registry(load_entry_points=False)
    reg.add_plugin(module, "gt")
    for mod in (gandid_plugins.dissect, gandid_plugins.ace, gandid_plugins.did, gandid_plugins.entangle):
        reg.add_plugin(mod, mod.__name__)
    out = tmp_path_factory.mktemp("report") / "out"
    cfg = RunConfig(generator="gt", segmenter="gt<script>", analysis=["dissect", "ace", "did", "entangle"],
                    samples=32, batch_size=16, device="cpu", out=str(out), layer=["feat"],
                    analysis_options={"dissect": {"quantile": 0.9, "fit_samples": 32},
                                      "ace": {"samples": 8, "top_k": 3, "alpha_steps": 3},
                                      "did": {"top_k": 1}})
    result = run(cfg, registry=reg)
    assert result.status == "completed", result.errors
    return out


def test_report_links_every_section_and_escapes_plugin_strings(report_dir):
    page = (report_dir / "report.html").read_text()
    for section in ("dissect", "ace", "did", "entangle"):
        assert f"<h2 id='{section}'>" in page
    assert "gt<script>" not in page and esc("gt<script>") in page  # the segmenter's name, escaped
    for src in re.findall(r'src="([^"]+)"', page):
        assert (report_dir / src).exists(), src


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs Debian's chromium)")
def test_report_renders_in_headless_chromium(report_dir, tmp_path):
    url = (report_dir / "report.html").as_uri()
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run([CHROMIUM, *FLAGS, *profile, "--virtual-time-budget=5000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    title = re.search(r"<title>(.*?)</title>", dom.stdout, re.S)
    assert title, dom.stderr[-2000:]
    counts = re.search(r"\[images (\d+), broken (\d+), errors (\d+)\]", title.group(1))
    assert counts, title.group(1)
    images, broken, errors = map(int, counts.groups())
    assert images >= 8 and broken == 0 and errors == 0, title.group(1)
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *FLAGS, *profile, "--window-size=1200,2400", f"--screenshot={shot}", url],
                   capture_output=True, text=True, timeout=120)
    assert shot.exists() and os.path.getsize(shot) > 10_000
