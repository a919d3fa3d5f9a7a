"""Time until the overview and the gallery of an analysis are rendered in headless Chromium.

    python bench/bench_frontend.py --url http://127.0.0.1:8000 --analysis ID [--runs 3] [--json out.json]

Each run uses a fresh browser context (cold cache). "overview" is the time from navigation to the
overview mosaic being drawn (Plotly SVG present); "gallery" is the time from clicking the gallery tab to
every network's thumbnail being drawn. Prints a Markdown table (median, min, max) for BENCHMARKS.md.
Chromium: --chromium or FNPRUNE_CHROMIUM (default /usr/bin/chromium, else Playwright's own).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def _api(url: str, path: str, token: str | None):
    request = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def run_once(browser, url: str, analysis_id: str, token: str | None, timeout_ms: int) -> dict[str, float]:
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    if token:
        context.add_init_script(f"localStorage.setItem('fnprune.token', {json.dumps(token)})")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        t0 = time.perf_counter()
        page.goto(f"{url}/#/analysis/{analysis_id}/overview")
        page.wait_for_selector("#overview-mosaic .main-svg .heatmaplayer image, #overview-mosaic .main-svg .hm",
                               state="attached", timeout=timeout_ms)
        t_overview = time.perf_counter() - t0
        t1 = time.perf_counter()
        page.get_by_role("link", name="Network gallery").click()
        page.wait_for_selector("#gallery[data-complete=true]", state="attached", timeout=timeout_ms)
        t_gallery = time.perf_counter() - t1
        n_cards = page.locator("[data-testid=network-card]").count()
        n_drawn = page.locator("[data-testid=network-card][data-drawn=true]").count()
        banner = page.locator("#error-banner")
        if banner.is_visible():
            errors.append(banner.inner_text())
    finally:
        context.close()
    return {"overview_s": t_overview, "gallery_s": t_gallery, "cards": n_cards, "drawn": n_drawn, "errors": errors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--analysis", required=True, help="id of a succeeded analysis")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--token", default=os.environ.get("FNPRUNE_TOKEN"))
    parser.add_argument("--chromium", default=os.environ.get("FNPRUNE_CHROMIUM", "/usr/bin/chromium"))
    parser.add_argument("--timeout", type=float, default=300, help="seconds per step")
    parser.add_argument("--json", type=Path, help="also write the raw timings here")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    url = args.url.rstrip("/")
    job = _api(url, f"/api/analyses/{args.analysis}", args.token)
    if job["status"] != "succeeded":
        print(f"analysis {args.analysis} is {job['status']}, not succeeded", file=sys.stderr)
        return 2
    params = job.get("params", {})
    table = _api(url, f"/api/analyses/{args.analysis}/networks", args.token)

    runs = []
    with sync_playwright() as p:
        kwargs = {"args": CHROMIUM_ARGS}
        if Path(args.chromium).is_file():
            kwargs["executable_path"] = args.chromium
        browser = p.chromium.launch(**kwargs)
        try:
            for i in range(args.runs):
                r = run_once(browser, url, args.analysis, args.token, int(args.timeout * 1000))
                runs.append(r)
                print(f"run {i + 1}: overview {r['overview_s']:.2f} s, gallery {r['gallery_s']:.2f} s "
                      f"({r['drawn']}/{r['cards']} maps drawn){'; errors: ' + '; '.join(r['errors']) if r['errors'] else ''}",
                      file=sys.stderr)
        finally:
            browser.close()

    def row(key: str, label: str) -> str:
        values = [r[key] for r in runs]
        return f"| {label} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |"

    print(f"\nFrontend render times, analysis {args.analysis} ({params.get('model')}, {params.get('mode')}, "
          f"{len(table['components'])} networks, {table['n_layers']} layers x {table['width']} neurons), "
          f"headless Chromium, {args.runs} cold runs\n")
    print("| step | median s | min s | max s |")
    print("|---|---|---|---|")
    print(row("overview_s", "overview mosaic drawn"))
    print(row("gallery_s", "gallery: all maps drawn"))
    if args.json:
        args.json.write_text(json.dumps({"analysis": args.analysis, "params": params, "runs": runs}, indent=2))
    return 1 if any(r["errors"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
