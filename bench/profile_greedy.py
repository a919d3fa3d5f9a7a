"""Where the exact obs greedy's time goes at one layer shape (BENCHMARKS §12, issue 21.4)

    python bench/profile_greedy.py --shape 8192x2048 --out bench/results/greedy_profile.json

Synthetic correlated moments of ``I`` neurons (as ``bench/bench_greedy_block.py``), one float64
``torch.linalg.inv`` of the moment (the floor), then the full greedy (``min_width=1``) once under
``torch.profiler``: its total, the lower-triangle panel updates (``repair.addmm_lower_``, timed by a
wrapper), and the profiler's self CPU time of the named one-off operations (the Cholesky factor,
``cholesky_inverse``, the matrix products). What is left is the per-removal vector work and the
compactions. One run: a breakdown, not a timing to quote to three digits.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

import fnprune.pruning.repair as repair


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="8192x2048", help="I x hidden")
    parser.add_argument("--out", type=Path, default=Path("bench/results/greedy_profile.json"))
    args = parser.parse_args(argv)
    width, hidden = (int(x) for x in args.shape.split("x"))
    g = torch.Generator().manual_seed(0)
    X = torch.randn(2 * width, width, generator=g, dtype=torch.float64)
    X = X @ (torch.eye(width, dtype=torch.float64) + 0.3 * torch.randn(width, width, generator=g,
                                                                      dtype=torch.float64) / width ** 0.5)
    S, mu = X.T @ X / X.shape[0], X.mean(0)
    del X
    W = torch.randn(hidden, width, generator=g, dtype=torch.float64) / width ** 0.5
    started = time.perf_counter()
    torch.linalg.inv(S)
    inv_s = time.perf_counter() - started

    panel = {"s": 0.0}
    real = repair.addmm_lower_

    def timed(*a, **k):
        t = time.perf_counter()
        real(*a, **k)
        panel["s"] += time.perf_counter() - t

    repair.addmm_lower_ = timed
    try:
        started = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            repair.obs_removal_order(W, S, mu)
        total = time.perf_counter() - started
    finally:
        repair.addmm_lower_ = real
    ops = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    result = {"shape": args.shape, "machine": f"{os.cpu_count()} cores, torch {torch.__version__}",
              "loadavg": os.getloadavg(), "inv_float64_s": round(inv_s, 3), "greedy_s": round(total, 2),
              "greedy_over_inv": round(total / inv_s, 2), "panel_updates_s": round(panel["s"], 2),
              "cholesky_s": round(ops.get("aten::linalg_cholesky_ex", 0.0), 2),
              "cholesky_inverse_s": round(ops.get("aten::cholesky_inverse", 0.0), 2),
              "matrix_products_s": round(ops.get("aten::mm", 0.0), 2),
              "note": "the profiler adds overhead to the greedy's many small operations: its total is above an "
                      "unprofiled run's"}
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
