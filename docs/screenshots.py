"""Screenshots of the `gandid serve` views for the docs.

    python docs/screenshots.py http://127.0.0.1:8765/        # a server already running
    python docs/screenshots.py runs/default                  # serve this run folder here, then shoot

writes docs/serve_units.png (the Units table), docs/serve_unit.png (a unit's page),
docs/serve_paint.png (Paint after an ablation, with the DID arms) and docs/serve_classes.png (Classes).
Needs the serve extra and Playwright; it drives the system Chromium (--chromium, default
/usr/bin/chromium), so no browser download is needed.
"""
from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from pathlib import Path

DOCS = Path(__file__).resolve().parent
VIEWPORT = {"width": 1320, "height": 900}


def serve_in_thread(run_dir: str) -> str:
    """Serve run_dir on a free local port from a daemon thread; its base URL once it answers."""
    import urllib.request

    import uvicorn

    from gandid.serve.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(run_dir), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}/"
    for _ in range(300):
        try:
            urllib.request.urlopen(url + "api/run", timeout=2).close()
            return url
        except OSError:
            time.sleep(0.1)
    sys.exit(f"the server for {run_dir} did not start")


def drag_cells(page, canvas, cells):
    """Paint feature-map cells (row, col) on the grid canvas by mouse: one press-drag-release per row."""
    box = canvas.bounding_box()
    h, w = page.evaluate("() => [state.paint.h, state.paint.w]")
    rows = {}
    for r, c in cells:
        rows.setdefault(r, []).append(c)
    for r, cols in rows.items():
        y = box["y"] + (r + 0.5) * box["height"] / h
        page.mouse.move(box["x"] + (min(cols) + 0.5) * box["width"] / w, y)
        page.mouse.down()
        page.mouse.move(box["x"] + (max(cols) + 0.5) * box["width"] / w, y, steps=max(2, len(cols)))
        page.mouse.up()


def shoot(url: str, out: Path, chromium: str) -> list[str]:
    from playwright.sync_api import sync_playwright

    problems = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))

        # Units: sorted by IoU, largest first
        page.goto(url + "#units")
        page.wait_for_selector("#units-table tbody tr")
        page.click("#units-table th:has-text('IoU')")
        page.screenshot(path=str(out / "serve_units.png"))

        # a unit's page: the first row (highest IoU), its top images regenerated
        page.click("#units-table tbody tr:first-child a")
        page.wait_for_selector("#unit-page .unit-image img")
        page.wait_for_function("() => [...document.querySelectorAll('#unit-page img')].every(i => i.complete)")
        page.screenshot(path=str(out / "serve_unit.png"), full_page=True)

        # Paint: the first ACE class's top 5 units, on a sample where its best unit fires, in a painted block
        info = page.evaluate("""() => {
            const ace = state.results.ace, cls = Object.keys(ace.classes)[0], best = ace.classes[cls].ranking[0];
            const unit = (state.results.dissect.layers[ace.layer].units || []).find(u => u.unit === best);
            return {cls, sample: unit && unit.top_seeds ? unit.top_seeds[0] : 0};
        }""")
        page.goto(url + "#paint")
        page.check("input[name=source][value=class]")
        page.select_option("#paint-class", info["cls"])
        page.fill("#paint-k", "5")
        page.fill("#paint-sample", str(info["sample"]))
        page.dispatch_event("#paint-sample", "change")
        page.wait_for_function("() => state.paint.sample && !state.paint.sampleLoading")
        h, w = page.evaluate("() => [state.paint.h, state.paint.w]")
        drag_cells(page, page.locator("#paint-grid"), [(r, c) for r in range(h // 8, h // 2) for c in range(w // 8, w - w // 8)])
        page.click("#paint-apply")
        page.wait_for_selector("#paint-result img[data-role=edited]")
        page.click("#paint-arms")
        page.wait_for_selector("#paint-arms-result .arm img")
        page.screenshot(path=str(out / "serve_paint.png"), full_page=True)

        # Classes: the top of the page (the first class's charts, DID table and call)
        page.goto(url + "#classes")
        page.wait_for_selector(".class-card svg.chart")
        page.screenshot(path=str(out / "serve_classes.png"), full_page=True,
                        clip={"x": 0, "y": 0, "width": VIEWPORT["width"], "height": 1500})
        browser.close()
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="the URL of a running `gandid serve`, or a run folder to serve here")
    parser.add_argument("--out", type=Path, default=DOCS, help="where the PNGs go (default: docs/)")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium binary to drive")
    args = parser.parse_args(argv)
    url = args.target if args.target.startswith(("http://", "https://")) else serve_in_thread(args.target)
    url = url if url.endswith("/") else url + "/"
    args.out.mkdir(parents=True, exist_ok=True)
    problems = shoot(url, args.out, args.chromium)
    for name in ("units", "unit", "paint", "classes"):
        print(args.out / f"serve_{name}.png")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
