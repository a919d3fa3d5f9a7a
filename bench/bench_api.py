"""Latency and payload size of the map endpoint over a saved run dir.

    python bench/bench_api.py RUN_DIR [--repeats 3] [--json out.json]

RUN_DIR is a directory written by ``FunctionalNetworks.save`` (an analysis' ``run/``). The script
registers it as a succeeded analysis in a temporary data dir, starts the app in-process (TestClient,
no network) and requests ``/api/analyses/{id}/networks/{k}`` for every component ``repeats`` times
(the first pass includes loading the run dir). It prints p50/p95 latency, the JSON size of one map
and of the whole map set, raw and gzip-compressed (what a browser receives), and the same for the
component table and the overview.
"""

from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    run_dir = args.run_dir.resolve()
    if not run_dir.is_dir():
        parser.error(f"{run_dir} is not a directory")

    from fastapi.testclient import TestClient

    from backend.app.core.config import Settings
    from backend.app.main import create_app
    from backend.app.services.jobs import JobStore

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(HOME=Path(tmp), DATA_DIR=Path(tmp) / "data", DEVICE="cpu")
        settings.ensure_dirs()
        store = JobStore(settings.jobs_path)
        job = store.create("analysis", {"model": "(bench)", "corpus": "(bench)"})
        store.start(job["id"])
        store.succeed(job["id"], {})
        job_dir = settings.job_dir("analysis", job["id"])
        job_dir.mkdir(parents=True)
        (job_dir / "run").symlink_to(run_dir, target_is_directory=True)
        client = TestClient(create_app(settings))
        base = f"/api/analyses/{job['id']}"

        t0 = time.perf_counter()
        table = client.get(f"{base}/networks")
        first_load_s = time.perf_counter() - t0
        table.raise_for_status()
        ids = [c["id"] for c in table.json()["components"]]
        overview = client.get(f"{base}/overview")
        overview.raise_for_status()

        latencies: list[float] = []
        sizes: list[int] = []
        gz_sizes: list[int] = []
        for rep in range(args.repeats):
            for k in ids:
                t0 = time.perf_counter()
                response = client.get(f"{base}/networks/{k}")
                latencies.append(time.perf_counter() - t0)
                response.raise_for_status()
                if rep == 0:
                    sizes.append(len(response.content))
                    gz_sizes.append(len(gzip.compress(response.content, 6)))
        one = client.get(f"{base}/networks/{ids[0]}").json()
        map_only = len(json.dumps(one["map"]))
        result = {
            "run_dir": str(run_dir), "n_components": len(ids), "requests": len(latencies),
            "n_layers": table.json()["n_layers"], "width": table.json()["width"], "mode": table.json()["mode"],
            "first_request_s (loads the run dir)": round(first_load_s, 3),
            "map_p50_ms": round(1000 * statistics.median(latencies), 2),
            "map_p95_ms": round(1000 * percentile(latencies, 95), 2),
            "map_json_bytes_median": int(statistics.median(sizes)),
            "map_field_bytes (one component, int8 base64)": map_only,
            "map_set_json_bytes": sum(sizes), "map_set_gzip_bytes": sum(gz_sizes),
            "table_json_bytes": len(table.content), "overview_json_bytes": len(overview.content),
        }
    for key, value in result.items():
        print(f"{key:48s} {value}")
    print(f"{'map set under 5 MB':48s} {result['map_set_json_bytes'] < 5 * 2**20}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
