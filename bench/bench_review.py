"""Benchmark: weight and load time of the subject pages' Review section (NiiVue viewer).

    python bench/bench_review.py --derivatives demo/derivatives/cmb [--runs 3]

For every ``sub-*/**/*_report.html`` under the folder: the page's bytes, the part of
them that is embedded volume layers (base64 NIfTI), the shared viewer script
(``viewer/niivue.umd.js``, loaded once per browser cache), and the time from
navigation to the viewer having drawn every layer (``window.cmbReview.ready``) in
headless Debian chromium driven by Playwright, WebGL2 from SwiftShader (software:
no GPU), the page opened from disk (``file://``). Median of ``--runs`` fresh
browser contexts (no cache).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

FLAGS = [
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--no-sandbox",
    "--host-resolver-rules=MAP * ~NOTFOUND",
]


def page_weight(page: Path) -> dict:
    html = page.read_text(encoding="utf-8")
    m = re.search(
        r'<script type="application/json" id="cmb-review-data">(.*?)</script>', html, re.S
    )
    layers = json.loads(m.group(1))["layers"] if m else []
    return {
        "html_bytes": len(html.encode()),
        "embedded_bytes": sum(len(la.get("b64", "")) for la in layers),
        "layers": ", ".join(la["id"] + ("" if "b64" in la else " (url)") for la in layers),
    }


def load_seconds(page: Path, runs: int, chromium: str) -> tuple[float, float]:
    from playwright.sync_api import sync_playwright

    ready, shown = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=FLAGS)
        for _ in range(runs):
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            tab = context.new_page()
            t0 = time.perf_counter()
            tab.goto(page.resolve().as_uri(), wait_until="load")
            shown.append(time.perf_counter() - t0)
            tab.wait_for_function("window.cmbReview && window.cmbReview.ready", timeout=120_000)
            ready.append(time.perf_counter() - t0)
            context.close()
        browser.close()
    return statistics.median(shown), statistics.median(ready)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--derivatives", type=Path, required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = ap.parse_args(argv)
    pages = sorted(p for p in args.derivatives.glob("sub-*/**/*_report.html"))
    viewer = args.derivatives / "viewer" / "niivue.umd.js"
    if not pages or not viewer.is_file():
        print(
            f"no subject pages with the viewer under {args.derivatives} (run the workflow first)",
            file=sys.stderr,
        )
        return 2
    print(f"viewer script {viewer.stat().st_size / 1e6:.2f} MB (once per output folder)")
    print("| page | page MB | embedded layers MB | layers | page load s | viewer ready s |")
    print("|---|---:|---:|---|---:|---:|")
    for page in pages:
        w = page_weight(page)
        shown, ready = load_seconds(page, args.runs, args.chromium)
        print(
            f"| {page.relative_to(args.derivatives)} | {w['html_bytes'] / 1e6:.2f} | {w['embedded_bytes'] / 1e6:.2f} "
            f"| {w['layers']} | {shown:.2f} | {ready:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
