"""Which CanICA settings give the most reproducible networks per unit of time? (issue 12, BENCHMARKS.md §2)

    python bench/capture_default.py /tmp/acts40
    python bench/bench_components.py /tmp/acts40 --layers 5,10,20 \
        --variants '{"k128": {}, "k64": {"n_components": 64}, "k48": {"n_components": 48}}'

For every layer and every variant (keyword arguments of ``fnprune.analysis.ica.CanICA``; ``{}`` = the class
defaults), five seeds are fitted and compared with ``fnprune.analysis.stability.seed_stability`` at the paper's
budget for that layer: the number of neurons over ``--threshold`` in one FastICA run (seed 0, cube,
scikit-learn) on the exact top-128 subspace, as ``bench_canica.py``'s faithful algorithm counts them.
Prints one JSON line per layer and variant: mean fit time, reproducible networks per seed (matched
|corr| ≥ 0.9 in every other seed), networks the key score uses, the key-neuron shares (reproducible
networks / other networks / unresolved energy), mask Jaccard across seeds, the leverage-only control
and the chance Jaccard, then a Markdown table. ``--out`` stores the rows as a JSON list;
``--table FILE...`` prints the table of stored rows instead of fitting.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from fnprune.analysis.capture import ActivationStore
from fnprune.analysis.ica import CanICA
from fnprune.analysis.stability import SeedFit, seed_stability


def paper_budget(X: np.ndarray, width: int, k: int = 128, threshold: float = 3.46) -> int:
    """Neurons over the paper's threshold in one FastICA run (seed 0) on the exact top-k subspace."""
    from sklearn.decomposition import fastica

    Xd = torch.from_numpy(np.asarray(X, dtype=np.float32)).double()
    Xd -= Xd.mean(0)
    std = Xd.std(0)
    std[std == 0] = 1
    Xd /= std
    _, V = torch.linalg.eigh(Xd.T @ Xd)
    U = V[:, -k:].flip(1).numpy()                       # the top-k loadings (n_signals * width, k)
    _, _, sources = fastica(U, n_components=k, whiten="arbitrary-variance", fun="cube", algorithm="parallel",
                            tol=1e-4, max_iter=300, random_state=0)
    maps = sources.T
    maps = (maps - maps.mean(1, keepdims=True)) / maps.std(1, keepdims=True)
    return int((np.abs(maps).max(0).reshape(-1, width).max(0) > threshold).sum())


def table(rows: list[dict]) -> str:
    """Markdown: one line per layer and variant."""
    lines = ["| layer | setting | fit time per layer | reproducible networks (of k), mean / min over 5 seeds | "
             "key neurons from reproducible networks / other networks / unresolved energy | mask Jaccard across "
             "seeds, mean (min) | leverage-only control | chance | budget |", "|" + "---|" * 9]
    for r in sorted(rows, key=lambda r: r["layer"]):
        k = r["kwargs"].get("n_components", r.get("n_components", "?"))
        lines.append(
            f"| {r['layer']} | {r['variant']} | {r['s']:.1f} s | {np.mean(r['n_reproducible']):.1f} / "
            f"{min(r['n_reproducible'])} (of {k}) | {r['share_reproducible']:.2f} / {r['share_other']:.2f} / "
            f"{r['share_unresolved']:.2f} | {r['mask_jaccard']['mean']:.2f} ({r['mask_jaccard']['min']:.2f}) | "
            f"{r['leverage_jaccard']['mean']:.2f} | {r['chance_jaccard']:.2f} | {r['budget']} of {r['n_neurons']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store")
    parser.add_argument("--layers", default="5,10,20")
    parser.add_argument("--variants", default='{"default": {}}', help="JSON: name -> CanICA keyword arguments")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--threshold", type=float, default=3.46)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--table", type=Path, nargs="+", help="print the table of these --out files and stop")
    args = parser.parse_args()
    if args.table:
        print(table([r for path in args.table for r in json.loads(path.read_text())]))
        return
    variants = json.loads(args.variants)
    seeds = [int(s) for s in args.seeds.split(",")]
    store = ActivationStore.open(args.store)
    rows = []
    for layer in [int(x) for x in args.layers.split(",")]:
        X = np.asarray(store.layer_matrix(layer))
        budget = paper_budget(X, store.width, threshold=args.threshold)
        for name, kwargs in variants.items():
            fits, times = [], []
            for seed in seeds:
                t0 = time.perf_counter()
                ica = CanICA(random_state=seed, **kwargs).fit(X)
                times.append(time.perf_counter() - t0)
                fits.append(SeedFit.from_canica(ica))
            st = seed_stability(fits, budget, width=store.width)
            row = {"layer": layer, "variant": name, "kwargs": kwargs, "n_components": int(fits[0].maps.shape[0]),
                   "s": float(np.mean(times)), "budget": budget,
                   "n_neurons": st.n_neurons, "n_reproducible": st.n_reproducible, "n_networks": st.n_networks,
                   "share_reproducible": st.key_share_reproducible, "share_other": st.key_share_other_networks,
                   "share_unresolved": st.key_share_unresolved, "mask_jaccard": st.mask_jaccard,
                   "leverage_jaccard": st.leverage_jaccard, "chance_jaccard": st.chance_jaccard}
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(table(rows))
    if args.out:
        from fnprune.io import atomic_write_text

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
