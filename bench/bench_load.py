"""A bounded load test on loopback: many concurrent readers of one analysis while jobs queue up.

    python bench/bench_load.py [--readers 50] [--jobs 5] [--duration 40] [--json out.json]

Starts ``python -m backend.serve`` (API + one worker) on a free loopback port with a temporary
FNPRUNE_DATA_DIR, runs one small analysis (tiny-llama on the pydoc corpus unless --model/--corpus say
otherwise), then for ``--duration`` seconds runs ``--readers`` asyncio clients (httpx) that each request
``/networks``, ``/maps`` and ``/overview`` of that analysis in turn (thresholds varied, so caches are
also missed), while ``--jobs`` more analyses are submitted at the start and queue behind each other.
It then waits (bounded) for those jobs and prints a Markdown table: requests, p50/p95/max latency per
endpoint, failed requests (non-2xx or transport errors) and jobs lost (not ``succeeded``). The server
and its worker are stopped at the end, whatever happens. Bounded to about two minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
ENDPOINTS = ("networks", "maps", "overview")
THRESHOLDS = (None, 2.5, 3.0, 3.5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))] if values else float("nan")


async def wait_jobs(client: httpx.AsyncClient, ids: list[str], timeout_s: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while True:
        statuses = {i: (await client.get(f"/api/analyses/{i}")).json()["status"] for i in ids}
        if all(s in ("succeeded", "failed", "cancelled") for s in statuses.values()) or time.monotonic() > deadline:
            return statuses
        await asyncio.sleep(0.5)


async def reader(client: httpx.AsyncClient, job_id: str, n: int, stop_at: float, latencies: dict,
                 failures: list) -> None:
    i = n
    while time.monotonic() < stop_at:
        endpoint = ENDPOINTS[i % len(ENDPOINTS)]
        threshold = THRESHOLDS[(i // len(ENDPOINTS)) % len(THRESHOLDS)]
        params = {} if threshold is None else {"threshold": threshold}
        started = time.monotonic()
        try:
            response = await client.get(f"/api/analyses/{job_id}/{endpoint}", params=params)
            if response.status_code != 200:
                failures.append(f"{endpoint}: {response.status_code} {response.text[:200]}")
        except httpx.HTTPError as exc:
            failures.append(f"{endpoint}: {type(exc).__name__}: {exc}")
        latencies[endpoint].append(time.monotonic() - started)
        i += 1


async def run(args, base: str) -> dict:
    limits = httpx.Limits(max_connections=args.readers + 8, max_keepalive_connections=args.readers + 8)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:
        analysis = {"model": args.model, "corpus": args.corpus, "n_texts": args.texts, "max_tokens": 128,
                    "n_components": 8}
        first = (await client.post("/api/analyses", json=analysis)).json()["id"]
        status = (await wait_jobs(client, [first], 120))[first]
        if status != "succeeded":
            raise SystemExit(f"bench_load: the analysis to read did not succeed ({status})")
        queued = [(await client.post("/api/analyses", json={**analysis, "seed": s + 1})).json()["id"]
                  for s in range(args.jobs)]
        latencies: dict[str, list[float]] = {e: [] for e in ENDPOINTS}
        failures: list[str] = []
        started = time.monotonic()
        await asyncio.gather(*(reader(client, first, n, started + args.duration, latencies, failures)
                               for n in range(args.readers)))
        elapsed = time.monotonic() - started
        statuses = await wait_jobs(client, queued, args.job_timeout)
    return {"latencies": latencies, "failures": failures, "elapsed_s": elapsed, "jobs": statuses,
            "load": os.getloadavg()[0]}


def report(args, result: dict) -> str:
    rows = []
    all_latencies = [x for values in result["latencies"].values() for x in values]
    for name, values in [*result["latencies"].items(), ("all", all_latencies)]:
        rows.append(f"| {name} | {len(values)} | {percentile(values, 50) * 1000:.0f} | "
                    f"{percentile(values, 95) * 1000:.0f} | {max(values, default=float('nan')) * 1000:.0f} |")
    lost = [i for i, s in result["jobs"].items() if s != "succeeded"]
    lines = [f"`python bench/bench_load.py --readers {args.readers} --jobs {args.jobs} --duration {args.duration:g}` "
             f"on {platform.machine()} with {os.cpu_count()} CPUs (load average {result['load']:.1f} at the end), "
             f"{len(all_latencies) / result['elapsed_s']:.0f} requests/s over {result['elapsed_s']:.0f} s",
             "", "| endpoint | requests | p50 ms | p95 ms | max ms |", "|---|---|---|---|---|", *rows, "",
             f"failed requests: {len(result['failures'])}; queued jobs: {len(result['jobs'])}, "
             f"succeeded {len(result['jobs']) - len(lost)}, lost {len(lost)}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readers", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--duration", type=float, default=40.0, help="seconds of concurrent reading")
    parser.add_argument("--job-timeout", type=float, default=60.0, help="seconds to wait for the queued jobs after")
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--corpus", default="pydoc")
    parser.add_argument("--texts", type=int, default=12)
    parser.add_argument("--json", default=None, help="also write the raw numbers here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="fnprune-load-") as tmp:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FNPRUNE_")}
        env.update({"FNPRUNE_DATA_DIR": str(Path(tmp) / "data"),
                    "FNPRUNE_HOME": os.environ.get("FNPRUNE_HOME", str(Path(tmp) / "home")),
                    "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", "")})
        log = open(Path(tmp) / "serve.log", "wb")
        server = subprocess.Popen([sys.executable, "-m", "backend.serve", "--host", "127.0.0.1", "--port", str(port),
                                   "--log-level", "warning"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/api/health", timeout=2).json()["workers"] >= 1:
                        break
                except (httpx.HTTPError, ValueError, KeyError):
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("bench_load: the server did not come up:\n"
                                     + (Path(tmp) / "serve.log").read_text()[-2000:])
                time.sleep(0.3)
            result = asyncio.run(run(args, base))
        finally:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
                try:
                    server.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(server.pid, signal.SIGKILL)
            log.close()
    print(report(args, result))
    for failure in result["failures"][:10]:
        print("  failed:", failure)
    if args.json:
        summary = {e: {"n": len(v), "p50_s": percentile(v, 50), "p95_s": percentile(v, 95)}
                   for e, v in result["latencies"].items()}
        Path(args.json).write_text(json.dumps({"endpoints": summary, "failures": result["failures"],
                                               "jobs": result["jobs"], "elapsed_s": result["elapsed_s"],
                                               "median_all_s": statistics.median(
                                                   [x for v in result["latencies"].values() for x in v])}, indent=1))
    lost = [i for i, s in result["jobs"].items() if s != "succeeded"]
    return 1 if result["failures"] or lost else 0


if __name__ == "__main__":
    sys.exit(main())
