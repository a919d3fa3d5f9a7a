"""A first visit, timed: "Quick demo" click -> analysis -> prune with the defaults (evaluation on) -> the
pruned model's zip downloaded, in headless Chromium (issue 13; target ≤ 5 minutes, and the default
choice ≤ 2x dense held-out perplexity).

    python bench/bench_quick_demo.py [--model smollm2-135m] [--corpus brown] [--json out.json]

Starts ``python -m backend.serve`` (API + worker) on a free port with its data directory (jobs, runs,
caches) in a fresh temporary directory and the corpora of ``$FNPRUNE_HOME`` (``fnprune fetch-data``),
so nothing is cached: the dense model's evaluation is computed in this run (a second
pruning of the same model and corpus reuses it; ``--second`` also times that). Every click is the one
a user makes; nothing but the model and corpus ``<select>`` is changed from the page's defaults. Prints
each step's wall time from the first click, the pruned model's size, and the result's perplexities as
the API reports them. Chromium: --chromium or FNPRUNE_CHROMIUM (default /usr/bin/chromium).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_frontend import CHROMIUM_ARGS, own_server  # noqa: E402

JOB_ERROR = "[data-testid=job-progress] .job-error:not([hidden])"


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.load(response)


def _wait(page, done_js: str, what: str, timeout_s: float) -> None:
    page.wait_for_function(f"() => ({done_js}) || document.querySelector({JOB_ERROR!r}) !== null",
                           timeout=timeout_s * 1000, polling=500)
    if page.locator(JOB_ERROR).count():
        raise SystemExit(f"bench_quick_demo: the {what} failed; the page says: {page.locator(JOB_ERROR).inner_text()}")


def prune_and_download(page, url: str, analysis_id: str, out_dir: Path, timeout_s: float, t0: float) -> dict:
    """From the overview: Select & prune -> Prune the model (defaults) -> result -> model zip. Times from t0."""
    page.get_by_role("link", name="Select & prune").click()
    page.wait_for_selector("#width-plot .main-svg", timeout=timeout_s * 1000)
    target = {"target_ratio": page.locator("#ratio-slider").input_value(),
              "ratio_of": page.locator("#ratio-of").input_value(), "method": page.locator("#opt-method").input_value(),
              "repair": page.locator("#opt-repair").input_value()}
    t_select = time.perf_counter() - t0
    page.get_by_role("button", name="Prune the model").click()
    page.wait_for_url(re.compile(r"#/pruning/[\w-]+$"), timeout=60_000)
    pruning_id = re.search(r"#/pruning/([\w-]+)$", page.url).group(1)
    _wait(page, "document.querySelector('#compare-table') !== null", "pruning", timeout_s)
    t_result = time.perf_counter() - t0
    with page.expect_download(timeout=timeout_s * 1000) as info:
        page.get_by_role("button", name="Pruned model (zip)").click()
    path = out_dir / f"{pruning_id}.zip"
    info.value.save_as(path)
    t_download = time.perf_counter() - t0
    job = _get(f"{url}/api/prunings/{pruning_id}")
    result = job["result"]
    return {"pruning": pruning_id, "target_shown": target, "select_page_s": t_select, "result_page_s": t_result,
            "downloaded_s": t_download, "zip_bytes": path.stat().st_size, "method": result.get("method"),
            "repair": result.get("repair"), "ratio_total": result.get("ratio_total"),
            "dense_ppl": result["dense"]["ppl"], "pruned_ppl": result["pruned"]["ppl"],
            "dense_cached": result.get("dense_cached"), "params": job["params"]}


def run(args, url: str) -> dict:
    from playwright.sync_api import sync_playwright

    out: dict = {"model": args.model, "corpus": args.corpus, "machine": platform.machine(),
                 "cpu_count": os.cpu_count()}
    with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="fnprune-quick-") as tmp:
        kwargs = {"args": CHROMIUM_ARGS}
        if Path(args.chromium).is_file():
            kwargs["executable_path"] = args.chromium
        browser = p.chromium.launch(**kwargs)
        try:
            page = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True).new_page()
            page.goto(f"{url}/#/new")
            page.wait_for_selector(f"#model option[value='{args.model}']", state="attached")
            page.select_option("#model", args.model)
            page.select_option("#corpus", args.corpus)
            t0 = time.perf_counter()                                   # the first click
            page.get_by_role("button", name="Quick demo").click()
            page.get_by_role("button", name="Start analysis").click()
            _wait(page, "location.hash.endsWith('/overview')", "analysis", args.timeout)
            page.wait_for_selector("#overview-mosaic .main-svg", timeout=args.timeout * 1000)
            analysis_id = re.search(r"#/analysis/([\w-]+)/", page.url).group(1)
            out.update(analysis=analysis_id, analysis_params=_get(f"{url}/api/analyses/{analysis_id}")["params"],
                       overview_s=time.perf_counter() - t0)
            out["first"] = prune_and_download(page, url, analysis_id, Path(tmp), args.timeout, t0)
            if args.second:
                page.goto(f"{url}/#/analysis/{analysis_id}/overview")
                page.wait_for_selector("#overview-mosaic .main-svg", timeout=args.timeout * 1000)
                out["second"] = prune_and_download(page, url, analysis_id, Path(tmp), args.timeout, time.perf_counter())
        finally:
            browser.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--corpus", default="brown")
    parser.add_argument("--second", action="store_true", help="also time a second pruning (dense evaluation cached)")
    parser.add_argument("--chromium", default=os.environ.get("FNPRUNE_CHROMIUM", "/usr/bin/chromium"))
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per step")
    parser.add_argument("--json", type=Path, help="also write the raw timings here")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # still stops the server this script started
    with own_server(keep_home=True) as url:
        out = run(args, url)
    print(json.dumps(out, indent=1))
    for key in ("first", "second"):
        r = out.get(key)
        if r:
            print(f"{key}: result page {r['result_page_s']:.0f} s, zip downloaded {r['downloaded_s']:.0f} s "
                  f"({r['zip_bytes'] / 1e6:.0f} MB); {r['method']} + {r['repair']}, {r['ratio_total']:.1%} of all "
                  f"parameters removed, held-out PPL {r['dense_ppl']:.2f} -> {r['pruned_ppl']:.2f} "
                  f"({r['pruned_ppl'] / r['dense_ppl']:.2f}x dense); dense evaluation cached: {r['dense_cached']}")
    print(f"analysis: overview drawn {out['overview_s']:.0f} s after the first click")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
