"""`gandid serve`'s views in a real browser (Playwright driving the system Chromium) against uvicorn on
127.0.0.1: the Units table and a unit's page with its regenerated images, a region painted by mouse on
Paint's grid, an ablation that changes the image, the four DID arms, the Classes charts, an API error
shown to the user, and no console or page error on the way."""
import os

import pytest

pytest.importorskip("starlette", reason="gandid serve needs the serve extra (starlette)")
pytest.importorskip("uvicorn", reason="gandid serve needs the serve extra (uvicorn)")
pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")

from gt_run import build_run, serving  # noqa: E402

from gandid.serve.app import create_app  # noqa: E402

CHROMIUM = "/usr/bin/chromium"  # Playwright's own browser download is not used: the system Chromium
pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no system Chromium at {CHROMIUM}"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve-browser") / "run"
    reg = build_run(out)
    with serving(create_app(out, registry=reg, device="cpu", queue=8)) as url:
        yield url + "/"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        try:
            chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        except Exception as exc:  # a Chromium that Playwright cannot drive is an environment problem
            pytest.skip(f"Playwright cannot start {CHROMIUM}: {exc}")
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh page that records console errors and uncaught exceptions in page.problems."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(15_000)
    page.problems = []
    page.on("console", lambda m: page.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    yield page
    page.close()


def images_loaded(page, selector):
    return page.evaluate("(s) => [...document.querySelectorAll(s)].map(i => i.complete && i.naturalWidth > 0)",
                         selector)


def drag_over_cells(page, cells):
    """Paint feature-map cells (row, col) by mouse on the grid canvas, one press-drag-release per row."""
    box = page.locator("#paint-grid").bounding_box()
    h, w = page.evaluate("() => [state.paint.h, state.paint.w]")
    by_row = {}
    for r, c in cells:
        by_row.setdefault(r, []).append(c)
    for r, cols in by_row.items():
        y = box["y"] + (r + 0.5) * box["height"] / h
        page.mouse.move(box["x"] + (min(cols) + 0.5) * box["width"] / w, y)
        page.mouse.down()
        page.mouse.move(box["x"] + (max(cols) + 0.5) * box["width"] / w, y, steps=2 * len(cols))
        page.mouse.up()


def test_units_unit_page_paint_edit_and_did_arms(page, base_url):
    # Units: every unit of the ground-truth layer, sortable
    page.goto(base_url + "#units")
    page.wait_for_selector("#units-table tbody tr")
    assert page.locator("#units-table tbody tr").count() == 13
    assert page.locator("#run-name").inner_text() == "run"
    page.click("#units-table th:has-text('IoU')")  # largest IoU first: a red, yellow or blue unit
    first = page.locator("#units-table tbody tr:first-child td:first-child").inner_text()
    assert first != "12", "the constant background unit cannot have the largest IoU"

    # unit 0 (red, top-left square): its page regenerates its top images with overlays
    page.goto(base_url + "#units/feat/0")
    page.wait_for_selector("#unit-page .unit-image img")
    page.wait_for_function("() => [...document.querySelectorAll('#unit-page .unit-image img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    assert len(images_loaded(page, "#unit-page .unit-image img")) >= 2
    assert "unit 0" in page.locator("#unit-page h2").inner_text()

    # a top image's sample link opens Paint on that sample (where red is present) with unit 0 chosen
    page.click("#unit-page .unit-image figcaption a")
    page.wait_for_function("() => state.paint.sample && !state.paint.sampleLoading")
    assert page.evaluate("() => location.hash") == "#paint/feat/0"
    assert page.input_value("#paint-list").replace(" ", "") == "0"
    assert "whole" in page.locator("#paint-region-note").inner_text()  # nothing painted yet: the whole map

    # paint the top-left 4 x 4 cells of the 8 x 8 map by mouse, erase one with a right-drag
    drag_over_cells(page, [(r, c) for r in range(4) for c in range(4)])
    assert page.evaluate("() => state.paint.mask.reduce((n, v) => n + v, 0)") == 16
    box = page.locator("#paint-grid").bounding_box()
    page.mouse.move(box["x"] + 3.5 * box["width"] / 8, box["y"] + 3.5 * box["height"] / 8)
    page.mouse.down(button="right")
    page.mouse.up(button="right")
    assert page.evaluate("() => state.paint.mask.reduce((n, v) => n + v, 0)") == 15
    assert "15 of 64 cells" in page.locator("#paint-region-note").inner_text()

    # ablate: the edited image differs from the original, and red's area drops
    page.check("input[name=mode][value=ablate]")
    page.click("#paint-apply")
    page.wait_for_selector("#paint-result img[data-role=edited]")
    original = page.get_attribute("#paint-result img[data-role=original]", "src")
    edited = page.get_attribute("#paint-result img[data-role=edited]", "src")
    assert original.startswith("data:image/png;base64,") and edited.startswith("data:image/png;base64,")
    assert original != edited
    assert all(images_loaded(page, "#paint-result img"))
    assert "red" in page.locator("#paint-result table").inner_text()

    # the four DID arms of the same edit, each with its image and segmentation, and ΔY
    page.click("#paint-arms")
    page.wait_for_selector("#paint-arms-result .arm img")
    assert page.locator("#paint-arms-result .arm").count() == 4
    assert page.locator("#paint-arms-result .arm img").count() == 8
    titles = page.locator("#paint-arms-result .arm h4").all_inner_texts()
    assert any("Y(β',u')" in t for t in titles), titles
    assert all(images_loaded(page, "#paint-arms-result img"))
    assert "ms" in page.locator("#paint-arms-result h3").inner_text()

    # Classes: a chart per ACE class
    page.click("#tabs a[data-view=classes]")
    page.wait_for_selector(".class-card svg.chart")
    assert page.locator(".class-card").count() >= 1
    assert page.problems == []


def test_api_errors_are_shown(page, base_url):
    page.goto(base_url + "#paint")
    page.wait_for_function("() => state.paint.sample && !state.paint.sampleLoading")
    page.check("input[name=source][value=list]")
    page.fill("#paint-list", "1")
    # a full model queue answers 503 with Retry-After: the message says so
    page.route("**/api/edit", lambda route: route.fulfill(
        status=503, content_type="application/json", headers={"Retry-After": "1"},
        body='{"error": "busy: 8 requests are waiting for the model (at most 8)"}'))
    page.click("#paint-apply")
    message = page.wait_for_selector("#messages .message")
    assert "busy" in message.inner_text() and "try again in 1 s" in message.inner_text()
    page.unroute("**/api/edit")
    # a unit the layer does not have is refused before any request
    page.fill("#paint-list", "99")
    page.click("#paint-apply")
    page.wait_for_function("() => document.querySelector('#messages').innerText.includes('99')")
    # the 503 itself is logged by the browser as a failed resource; nothing else may be
    assert all("503" in p for p in page.problems), page.problems
