"""The exact obs greedy against its linear-algebra floor, by block size (issue 21.4, BENCHMARKS §12)

    python bench/bench_greedy_block.py --shapes 1536x576,4096x1024 --blocks 16,32,64 \
        --against 234ba2a --out bench/results/greedy_block.json

For each shape ``I x hidden`` (MLP width x hidden size): synthetic correlated moments of ``I``
neurons, one float64 ``torch.linalg.inv`` of the ``(I, I)`` moment (the floor of issue 21's target:
a layer's pruning time <= 3x it), then the full greedy removal order (``min_width=1``: what the
recipe's scores need, every neuron ranked) at each block size (``shipped``: each version's default,
a fixed 32 before 36f7bea, sized by the matrix since). ``--against REV`` times the same calls
with ``fnprune/pruning/repair.py`` of that commit, loaded from git beside the current one (same
inputs, same process, interleaved), and checks the two give the same order. Each time is the
minimum of ``--repeat`` runs. The block size changes the speed only; the order must not change
(checked).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def _module_at(rev: str):
    """``fnprune/pruning/repair.py`` at ``rev`` as a module (its relative imports made absolute)."""
    text = subprocess.run(["git", "show", f"{rev}:fnprune/pruning/repair.py"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout
    text = re.sub(r"^from \.\.([\w.]+) import", r"from fnprune.\1 import", text, flags=re.M)
    text = re.sub(r"^from \.(\w+) import", r"from fnprune.pruning.\1 import", text, flags=re.M)
    path = Path(tempfile.mkdtemp()) / f"repair_{rev}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _inputs(width: int, hidden: int):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn((3 * width, width), generator=gen, dtype=torch.float64)
    X = X @ (torch.eye(width, dtype=torch.float64) + 0.05 * torch.randn((width, width), generator=gen,
                                                                          dtype=torch.float64))
    return (torch.randn((hidden, width), generator=gen, dtype=torch.float64), X.T @ X / X.shape[0], X.mean(0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="1536x576,4096x1024")
    parser.add_argument("--blocks", default="shipped,32,64", help="block sizes, or 'shipped' (each version's default)")
    parser.add_argument("--against", default=None, help="a commit whose repair.py is timed beside the current one")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "greedy_block.json")
    args = parser.parse_args()

    from fnprune.io import atomic_write_json
    from fnprune.pruning import repair

    versions = {"current": repair} | ({args.against: _module_at(args.against)} if args.against else {})
    blocks = [b if b == "shipped" else int(b) for b in args.blocks.split(",")]
    result = {"command": "python " + " ".join(sys.argv), "machine": f"{os.cpu_count()} cores",
              "torch": torch.__version__, "threads": torch.get_num_threads(), "loadavg_start": os.getloadavg(),
              "shipped_block": "2√m in [16, 256], m the greedy's current matrix size (repair.obs_block)",
              "rows": []}
    for shape in args.shapes.split(","):
        width, hidden = (int(x) for x in shape.split("x"))
        W, G, mean = _inputs(width, hidden)
        times: dict[str, list[float]] = {}
        orders = {}
        for _ in range(args.repeat):
            t = time.perf_counter()
            torch.linalg.inv(G)
            times.setdefault("inv", []).append(time.perf_counter() - t)
            for name, module in versions.items():
                for b in blocks:
                    t = time.perf_counter()
                    kw = {} if b == "shipped" else {"block": b}          # shipped: each version's own default
                    order, _ = module.obs_removal_order(W, G, mean, min_width=1, **kw)
                    times.setdefault(f"{name}:{b}", []).append(time.perf_counter() - t)
                    orders[name, b] = order
        reference = orders["current", blocks[0]]
        same = all((o == reference).all() for o in orders.values())
        inv = min(times["inv"])
        row = {"width": width, "hidden": hidden, "inv_float64_s": inv, "same_order_everywhere": bool(same),
               "greedy": [{"version": name, "block": b, "seconds": min(times[f"{name}:{b}"]),
                           "over_inv": min(times[f"{name}:{b}"]) / inv} for name in versions for b in blocks]}
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
        if not same:
            raise SystemExit(f"{shape}: the block size or the version changed the removal order")
    result["loadavg_end"] = os.getloadavg()
    atomic_write_json(args.out, result, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
