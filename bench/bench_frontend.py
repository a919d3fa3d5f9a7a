"""Time until the overview and the gallery of an analysis are rendered in headless Chromium.

    python bench/bench_frontend.py --url http://127.0.0.1:8000 --analysis ID [--runs 3] [--json out.json]
    python bench/bench_frontend.py [--model smollm2-135m] [--url URL]   # no --analysis: run one first

Without ``--analysis`` the script first runs a "Quick demo" analysis (pydoc corpus, 8 texts x 128 tokens,
16 components per layer) of ``--model`` on ``--url``, or, without ``--url``, on a server it starts itself
(``python -m backend.serve`` on a free port, data in a temporary directory), so ``make bench`` needs no
arguments.

Each run uses a fresh browser context (cold cache). "overview visible" is the time from navigation to
the whole mosaic on screen (the canvas the page draws while plotly.js compiles); "overview" to the
interactive Plotly mosaic (hover, click); "gallery" is the time from clicking the gallery tab to
every network's thumbnail being drawn. Prints a Markdown table (median, min, max) for BENCHMARKS.md.
Chromium: --chromium or FNPRUNE_CHROMIUM (default /usr/bin/chromium, else Playwright's own).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REGISTERED: str | None = None

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _api(url: str, path: str, token: str | None, body: dict | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        raise SystemExit(f"bench_frontend: {path}: HTTP {exc.code}: {detail}") from None


def register_run(data_dir: Path, run_dir: Path) -> str:
    """Enter an existing run directory as a succeeded analysis in ``data_dir``; returns its id."""
    sys.path.insert(0, str(ROOT))
    from backend.app.core.config import Settings
    from backend.app.services.jobs import JobStore

    settings = Settings(HOME=data_dir.parent, DATA_DIR=data_dir, DEVICE="cpu")
    settings.ensure_dirs()
    store = JobStore(settings.jobs_path)
    job = store.create("analysis", {"model": "smollm2-135m", "corpus": "brown", "run_dir": str(run_dir)})
    store.start(job["id"])
    store.succeed(job["id"], {})
    job_dir = settings.job_dir("analysis", job["id"])
    job_dir.mkdir(parents=True)
    (job_dir / "run").symlink_to(run_dir.resolve(), target_is_directory=True)
    return job["id"]


@contextmanager
def own_server(run_dir: Path | None = None, keep_home: bool = False):
    """``python -m backend.serve`` (API + worker) on a free port, data in a temporary directory.

    With ``run_dir``, that run is registered first as a succeeded analysis; its id is left in the
    module global ``REGISTERED``. ``keep_home``: only the data directory (jobs, runs, caches) is
    temporary; ``$FNPRUNE_HOME`` (the fetched Brown corpus) stays the user's.
    """
    global REGISTERED
    with tempfile.TemporaryDirectory(prefix="fnprune-bench-") as home, socket.socket() as s:
        if run_dir is not None:
            REGISTERED = register_run(Path(home) / "data", run_dir)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        env = {k: v for k, v in os.environ.items() if k != "FNPRUNE_TOKEN"}
        env.update(FNPRUNE_DATA_DIR=str(Path(home) / "data"))
        if not keep_home:
            env["FNPRUNE_HOME"] = home
        log = open(Path(home) / "server.log", "w")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "backend.serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    _api(url, "/api/health", None)
                    break
                except (OSError, SystemExit):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit(
                            "bench_frontend: the server did not start:\n"
                            + (Path(home) / "server.log").read_text()[-2000:]
                        ) from None
                    time.sleep(0.5)
            yield url
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()


def run_analysis(url: str, token: str | None, model: str, timeout_s: float) -> str:
    body = {
        "model": model,
        "corpus": "pydoc",
        "genres": None,
        "n_texts": 8,
        "max_tokens": 128,
        "n_components": 16,
        "mode": "per-layer",
        "n_runs": 1,
        "seed": 0,
    }
    job = _api(url, "/api/analyses", token, body)
    print(
        f"analysis {job['id']}: {model}, pydoc, 8 texts x 128 tokens, 16 components per layer",
        file=sys.stderr,
    )
    deadline = time.monotonic() + timeout_s
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        if time.monotonic() > deadline:
            raise SystemExit(f"bench_frontend: analysis {job['id']} did not finish in {timeout_s:.0f} s")
        time.sleep(1)
        job = _api(url, f"/api/analyses/{job['id']}", token)
    if job["status"] != "succeeded":
        raise SystemExit(f"bench_frontend: analysis {job['id']} {job['status']}: {job.get('error')}")
    return job["id"]


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
        # the whole mosaic visible: the canvas drawn while plotly.js loads, or the Plotly chart itself
        page.wait_for_selector(
            "#overview-preview, #overview-mosaic .main-svg .heatmaplayer image, #overview-mosaic .main-svg .hm",
            state="attached",
            timeout=timeout_ms,
        )
        t_visible = time.perf_counter() - t0
        page.wait_for_selector(
            "#overview-mosaic .main-svg .heatmaplayer image, #overview-mosaic .main-svg .hm",
            state="attached",
            timeout=timeout_ms,
        )
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
    return {
        "overview_visible_s": t_visible,
        "overview_s": t_overview,
        "gallery_s": t_gallery,
        "cards": n_cards,
        "drawn": n_drawn,
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running fnprune server (default: start one)")
    parser.add_argument("--analysis", help="id of a succeeded analysis (default: run a quick one first)")
    parser.add_argument("--model", default="smollm2-135m", help="model of the quick analysis")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--token", default=os.environ.get("FNPRUNE_TOKEN"))
    parser.add_argument("--chromium", default=os.environ.get("FNPRUNE_CHROMIUM", "/usr/bin/chromium"))
    parser.add_argument("--timeout", type=float, default=300, help="seconds per step")
    parser.add_argument("--json", type=Path, help="also write the raw timings here")
    parser.add_argument("--run-dir", type=Path, help="serve this saved run directory (fnprune analyze --out) "
                        "as the analysis to time, on a server this script starts")
    args = parser.parse_args(argv)

    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        print("bench_frontend: skipped, the playwright package is not installed (pip install -e '.[e2e]')")
        return 0
    if args.analysis and not args.url:
        parser.error("--analysis needs --url")
    if args.url:
        return bench(args, args.url.rstrip("/"))
    # SIGTERM (e.g. from `timeout`) must still stop the server this script started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with own_server(args.run_dir) as url:
        if args.run_dir is not None:
            args.analysis = REGISTERED
        return bench(args, url)


def bench(args, url: str) -> int:
    from playwright.sync_api import sync_playwright

    if not args.analysis:
        args.analysis = run_analysis(url, args.token, args.model, 30 * 60)
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
                print(
                    f"run {i + 1}: overview visible {r['overview_visible_s']:.2f} s, interactive {r['overview_s']:.2f} s, gallery {r['gallery_s']:.2f} s "
                    f"({r['drawn']}/{r['cards']} maps drawn){'; errors: ' + '; '.join(r['errors']) if r['errors'] else ''}",
                    file=sys.stderr,
                )
        finally:
            browser.close()

    def row(key: str, label: str) -> str:
        values = [r[key] for r in runs]
        return f"| {label} | {statistics.median(values):.2f} | {min(values):.2f} | {max(values):.2f} |"

    print(
        f"\nFrontend render times, analysis {args.analysis} ({params.get('model')}, {params.get('mode')}, "
        f"{len(table['components'])} networks, {table['n_layers']} layers x {table['width']} neurons), "
        f"headless Chromium, {args.runs} cold runs\n"
    )
    print("| step | median s | min s | max s |")
    print("|---|---|---|---|")
    print(row("overview_visible_s", "overview: whole mosaic visible (canvas, or Plotly when already loaded)"))
    print(row("overview_s", "overview: interactive Plotly mosaic drawn"))
    print(row("gallery_s", "gallery: all maps drawn"))
    if args.json:
        args.json.write_text(
            json.dumps({"analysis": args.analysis, "params": params, "runs": runs}, indent=2)
        )
    return 1 if any(r["errors"] for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
