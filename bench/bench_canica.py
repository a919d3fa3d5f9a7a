"""fnprune's CanICA vs a faithful reimplementation of the paper's algorithm, on the same activations.

    python bench/capture_default.py /tmp/acts40          # default model, 40 Brown docs x 512 tokens
    python bench/bench_canica.py /tmp/acts40 --layers 5,10,15,20,25 --out bench/results/canica.json

Faithful (METHOD.md §1.4): all activations of a layer in memory as float64, z-scored, exact full SVD,
U = top-k right singular vectors, scikit-learn FastICA (parallel, cube, tol 1e-4, max_iter 300) with
one seed, maps z-scored, key = |z| > threshold in any component and either signal.

For each layer and method, every seed gives a key-neuron set *at the same budget*: the number of
neurons the faithful first-seed run marks key at ``--threshold`` (so both methods are compared at
the paper's own budget); each method's set is its top-N neurons by score (fnprune:
``CanICA.key_score_``, what its masks use; also reported: the plain max |z| of the consensus maps).
Reported: wall time per layer, the peak RSS of this process, the Jaccard index over every pair of
seeds (mean, min, the pair 0/1), between methods, and between fnprune's default restart budget
and a thorough one (``--thorough``, 10 restarts x 300 iterations).
"""

from __future__ import annotations

import argparse
import itertools
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


def pair_stats(sets: list[set]) -> dict:
    """Jaccard over every pair of seeds: mean, min and the (0, 1) pair."""
    js = [jaccard(a, b) for a, b in itertools.combinations(sets, 2)]
    return {"mean": float(np.mean(js)), "min": float(np.min(js)), "pair01": js[0], "n_pairs": len(js)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("--layers", default="5,10,15,20,25")
    parser.add_argument("--components", type=int, default=128)
    parser.add_argument("--threshold", type=float, default=3.46)
    parser.add_argument("--n-init", type=int, default=None, help="fnprune restarts (default: CanICA's)")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="every pair of these seeds is compared")
    parser.add_argument("--thorough", default="10x300",
                        help="RESTARTSxITERATIONS of a thorough fnprune run to compare the default budget with "
                             "(seeds 0 and 1); '' to skip")
    parser.add_argument("--skip-faithful", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    n_init = args.n_init or CanICA().n_init
    store = ActivationStore.open(args.store)
    seeds = [int(s) for s in args.seeds.split(",")]
    if len(seeds) < 2:
        parser.error("--seeds needs at least two seeds")
    results = []
    for layer in [int(x) for x in args.layers.split(",")]:
        X = store.layer_matrix(layer)
        row: dict = {"layer": layer}
        budget = None
        if not args.skip_faithful:
            t0 = time.perf_counter()
            maps, U = faithful_maps(np.asarray(X), args.components, seeds[0])
            row["faithful_s"] = time.perf_counter() - t0
            scores = [neuron_scores(maps, store.width)]
            for seed in seeds[1:]:
                scores.append(neuron_scores(faithful_maps(None, args.components, seed, U=U)[0], store.width))
            budget = int((scores[0] > args.threshold).sum())
            faithful_sets = [top_set(sc, budget) for sc in scores]
            row.update(budget=budget, faithful_jaccard_seeds=pair_stats(faithful_sets))
        fn_sets, consensus_scores, n_stable, times = [], [], [], []
        for seed in seeds:
            t0 = time.perf_counter()
            ica = CanICA(args.components, n_init=n_init, random_state=seed).fit(X)
            times.append(time.perf_counter() - t0)
            # what fnprune's masks use: stable maps' |z| and the seed-free expectation for the rest
            score = ica.key_score_.reshape(-1, store.width).max(0)
            if budget is None:
                budget = int((score > args.threshold).sum())
                row["budget"] = budget
            fn_sets.append(top_set(score, budget))
            consensus_scores.append(neuron_scores(ica.components_, store.width))
            n_stable.append(int(ica.stable_.sum()))
        row.update(fnprune_s=float(np.mean(times)), n_init=n_init, fnprune_jaccard_seeds=pair_stats(fn_sets),
                   consensus_maps_jaccard_seeds=pair_stats([top_set(c, budget) for c in consensus_scores]),
                   n_stable_components=n_stable)
        if not args.skip_faithful:
            pairs = zip(fn_sets, faithful_sets, strict=True)     # same seed for both methods
            row["jaccard_fnprune_vs_faithful"] = float(np.mean([jaccard(a, b) for a, b in pairs]))
        if args.thorough:
            restarts, iters = (int(v) for v in args.thorough.split("x"))
            agree, stable_t = [], []
            for i, seed in enumerate(seeds[:2]):
                t0 = time.perf_counter()
                ica = CanICA(args.components, n_init=restarts, max_iter=iters, random_state=seed).fit(X)
                row.setdefault("thorough_s", []).append(time.perf_counter() - t0)
                agree.append(jaccard(top_set(ica.key_score_.reshape(-1, store.width).max(0), budget), fn_sets[i]))
                stable_t.append(int(ica.stable_.sum()))
            row.update(thorough=args.thorough, jaccard_default_vs_thorough=float(np.mean(agree)),
                       n_stable_thorough=stable_t)
        print(json.dumps(row), flush=True)
        results.append(row)
    summary = {"store": args.store, "n_tokens": store.n_tokens, "components": args.components,
               "threshold": args.threshold, "seeds": seeds, "layers": results,
               "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}
    print(json.dumps({k: v for k, v in summary.items() if k != "layers"}))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
