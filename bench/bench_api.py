"""Latency and payload size of the map endpoint over a saved run dir.

    python bench/bench_api.py RUN_DIR [--repeats 3] [--limit 200] [--json out.json]
    python bench/bench_api.py --synthetic DIR      # write a default-model-sized synthetic run dir first

RUN_DIR is a directory written by ``FunctionalNetworks.save`` (an analysis' ``run/``). The script
registers it as a succeeded analysis in a temporary data dir, starts the app in-process (TestClient,
no network) and requests ``/api/analyses/{id}/networks/{k}`` for every component ``repeats`` times
(or for ``--limit`` evenly spaced ones). It prints p50/p95 latency and the JSON size of one
component, of the dense maps of every component (extrapolated when ``--limit`` is used), and of the
sparse map set (``/maps``, what the gallery loads), raw and gzip-compressed, plus table and overview.
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


def synthetic_run(run_dir: Path, n_layers: int = 30, width: int = 1536, n_components: int = 128,
                  n_tokens: int = 2048, seed: int = 0) -> Path:
    """A run dir shaped like the default model's per-layer analysis (30 x 128 components of 2 x 1536)
    with heavy-tailed (Student t, 3 dof) z-maps; no model needed."""
    import numpy as np

    from fnprune.analysis.networks import FunctionalNetworks

    rng = np.random.default_rng(seed)
    n_comp = n_layers * n_components
    maps = rng.standard_t(3, size=(n_comp, 1, 2, width)).astype(np.float32) / np.sqrt(3.0)
    docs = [{"id": f"d{i}", "label": ["news", "fiction", "science"][i % 3], "n_tokens": n_tokens // 8}
            for i in range(8)]
    hidden = 576
    ppn = [3 * hidden] * n_layers
    info = {"mode": "per-layer", "signals": ["act", "up"], "layers": list(range(n_layers)), "threshold": 3.0,
            "n_components": n_components, "n_runs": 1,
            "model": {"family": "gated", "n_layers": n_layers, "widths": [width] * n_layers, "hidden_size": hidden,
                      "params_per_neuron": ppn, "mlp_params": 3 * hidden * width * n_layers,
                      "total_params": 134_515_008}}
    fn = FunctionalNetworks(
        maps=maps, component_layer=np.repeat(np.arange(n_layers), n_components),
        component_index=np.tile(np.arange(n_components), n_layers), component_run=np.zeros(n_comp),
        stability=rng.uniform(0.5, 1.0, n_comp), time_courses=rng.normal(size=(n_tokens, n_comp)),
        token_text=[f"tok{i % 97}" for i in range(n_tokens)], token_doc=np.arange(n_tokens) // (n_tokens // 8),
        token_pos=np.arange(n_tokens) % (n_tokens // 8), documents=docs, info=info)
    return fn.save(run_dir)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="time this many components (evenly spaced)")
    parser.add_argument("--synthetic", action="store_true", help="first write a synthetic default-size run dir")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    run_dir = args.run_dir.resolve()
    if args.synthetic:
        synthetic_run(run_dir)
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

        import fnprune.analysis.networks  # noqa: F401  (import time is not the run dir's loading time)

        t0 = time.perf_counter()
        table = client.get(f"{base}/networks")
        first_load_s = time.perf_counter() - t0
        table.raise_for_status()
        all_ids = [c["id"] for c in table.json()["components"]]
        ids = all_ids
        if args.limit and args.limit < len(all_ids):
            step = len(all_ids) / args.limit
            ids = [all_ids[int(i * step)] for i in range(args.limit)]
        t0 = time.perf_counter()
        map_set = client.get(f"{base}/maps")
        map_set_s = time.perf_counter() - t0
        map_set.raise_for_status()
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
        scale = len(all_ids) / len(ids)
        result = {
            "run_dir": str(run_dir), "n_components": len(all_ids), "timed_components": len(ids),
            "requests": len(latencies),
            "n_layers": table.json()["n_layers"], "width": table.json()["width"], "mode": table.json()["mode"],
            "first_request_s (load run dir + component table)": round(first_load_s, 3),
            "map_p50_ms": round(1000 * statistics.median(latencies), 2),
            "map_p95_ms": round(1000 * percentile(latencies, 95), 2),
            "map_json_bytes_median": int(statistics.median(sizes)),
            "map_field_bytes (one component, int8 base64)": map_only,
            "all_components_json_bytes": int(sum(sizes) * scale),
            "all_components_gzip_bytes": int(sum(gz_sizes) * scale),
            "dense_maps_only_bytes (every component)": map_only * len(all_ids),
            "map_set_json_bytes (/maps, sparse)": len(map_set.content),
            "map_set_gzip_bytes (/maps, sparse)": len(gzip.compress(map_set.content, 6)),
            "map_set_request_ms": round(1000 * map_set_s, 1),
            "table_json_bytes": len(table.content), "overview_json_bytes": len(overview.content),
        }
    for key, value in result.items():
        print(f"{key:48s} {value}")
    print(f"{'map set under 5 MB':48s} {result['map_set_json_bytes (/maps, sparse)'] < 5 * 2**20}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
