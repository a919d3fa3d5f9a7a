"""fnprune's CanICA vs a faithful reimplementation of the paper's algorithm, on the same activations.

    python bench/capture_default.py /tmp/acts40          # default model, 40 Brown docs x 512 tokens
    python bench/bench_canica.py /tmp/acts40 --layers 5,10,15,20,25 --out bench/results/canica.json

Faithful (METHOD.md §1.4): all activations of a layer in memory as float64, z-scored, exact full SVD,
U = top-k right singular vectors, scikit-learn FastICA (parallel, cube, tol 1e-4, max_iter 300) with
one seed, maps z-scored, key = |z| > threshold in any component and either signal.

For each layer and method, two seeds give two key-neuron sets *at the same budget*: the number of
neurons the faithful seed-0 run marks key at ``--threshold`` (so both methods are compared at the
paper's own budget); each method's set is its top-N neurons by score (fnprune: ``CanICA.key_score_``,
what its masks use; also reported: the plain max |z| of the consensus maps). Reported: wall time per layer,
the peak RSS of this process, and the Jaccard index between seeds, and between methods.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

from fnprune.capture import ActivationStore
from fnprune.ica import CanICA


def faithful_maps(X: np.ndarray, k: int, seed: int, U: np.ndarray | None = None):
    from sklearn.decomposition import fastica

    if U is None:
        Xd = X.astype(np.float64)
        Xd -= Xd.mean(0)
        std = Xd.std(0)
        std[std == 0] = 1.0
        Xd /= std
        _, _, Vt = np.linalg.svd(Xd, full_matrices=False)
        U = Vt[:k].T                                     # (n_neurons, k)
    _, _, sources = fastica(U, n_components=k, whiten="arbitrary-variance", fun="cube", algorithm="parallel",
                            tol=1e-4, max_iter=300, random_state=seed)
    maps = sources.T
    maps = (maps - maps.mean(1, keepdims=True)) / maps.std(1, keepdims=True)
    return maps, U


def neuron_scores(maps: np.ndarray, width: int) -> np.ndarray:
    """max |z| over components and signals, per neuron."""
    a = np.abs(maps).max(0)
    return a.reshape(-1, width).max(0)


def top_set(scores: np.ndarray, n: int) -> set[int]:
    return set(np.argsort(-scores, kind="stable")[:n].tolist())


def jaccard(a: set, b: set) -> float:
    return len(a & b) / max(1, len(a | b))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("--layers", default="5,10,15,20,25")
    parser.add_argument("--components", type=int, default=128)
    parser.add_argument("--threshold", type=float, default=3.46)
    parser.add_argument("--n-init", type=int, default=None)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--skip-faithful", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from fnprune.networks import DEFAULT_N_INIT

    n_init = args.n_init or DEFAULT_N_INIT
    store = ActivationStore.open(args.store)
    seeds = [int(s) for s in args.seeds.split(",")]
    results = []
    for layer in [int(x) for x in args.layers.split(",")]:
        X = store.layer_matrix(layer)
        row: dict = {"layer": layer}
        if not args.skip_faithful:
            t0 = time.perf_counter()
            maps0, U = faithful_maps(np.asarray(X), args.components, seeds[0])
            row["faithful_s"] = time.perf_counter() - t0
            maps1, _ = faithful_maps(None, args.components, seeds[1], U=U)
            s0, s1 = neuron_scores(maps0, store.width), neuron_scores(maps1, store.width)
            budget = int((s0 > args.threshold).sum())
            f0, f1 = top_set(s0, budget), top_set(s1, budget)
            row.update(budget=budget, faithful_jaccard_seeds=jaccard(f0, f1),
                       faithful_jaccard_threshold=jaccard(set(np.flatnonzero(s0 > args.threshold)),
                                                          set(np.flatnonzero(s1 > args.threshold))))
        else:
            budget = None
        fn_scores, consensus_scores, n_stable, times = [], [], [], []
        for seed in seeds:
            t0 = time.perf_counter()
            ica = CanICA(args.components, n_init=n_init, random_state=seed).fit(X)
            times.append(time.perf_counter() - t0)
            # what fnprune's masks use: stable maps' |z| and the seed-free expectation for the rest
            fn_scores.append(ica.key_score_.reshape(-1, store.width).max(0))
            consensus_scores.append(neuron_scores(ica.components_, store.width))
            n_stable.append(int(ica.stable_.sum()))
        if budget is None:
            budget = int((fn_scores[0] > args.threshold).sum())
            row["budget"] = budget
        n0, n1 = top_set(fn_scores[0], budget), top_set(fn_scores[1], budget)
        row.update(fnprune_s=float(np.mean(times)), fnprune_jaccard_seeds=jaccard(n0, n1), n_init=n_init,
                   consensus_maps_jaccard_seeds=jaccard(top_set(consensus_scores[0], budget),
                                                        top_set(consensus_scores[1], budget)),
                   n_stable_components=n_stable)
        if not args.skip_faithful:
            row["jaccard_fnprune_vs_faithful"] = jaccard(n0, f0)
        print(json.dumps(row), flush=True)
        results.append(row)
    summary = {"store": args.store, "n_tokens": store.n_tokens, "components": args.components,
               "threshold": args.threshold, "layers": results,
               "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}
    print(json.dumps({k: v for k, v in summary.items() if k != "layers"}))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
