"""fnprune's CanICA vs a faithful reimplementation of the paper's algorithm, on the same activations.

    python bench/capture_default.py /tmp/acts40          # default model, 40 Brown docs x 512 tokens
    python bench/bench_canica.py /tmp/acts40 --layers 5,10,15,20,25 --out bench/results/canica.json
    # a quick check of the script (2 layers, 32 components, 3 seeds; ~9 min on a busy 2-core CPU):
    python bench/capture_default.py /tmp/acts8 --texts 8 --max-tokens 256
    python bench/bench_canica.py /tmp/acts8 --layers 5,10 --components 32 --seeds 0,1,2 --thorough ''

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

Stability of the networks themselves (``fnprune.analysis.stability.seed_stability``, issue 12), per layer and
method: how many of the k components are reproduced in every other seed (Hungarian-matched map
|corr| ≥ ``--min-corr``), the share of key neurons that a reproduced network makes key (vs another
network, vs only fnprune's unresolved-subspace energy), the mask Jaccard across seeds, the Jaccard
against a PCA-leverage-only mask at the same budget (no ICA), and the chance Jaccard of random sets
of that size. Printed as a Markdown table at the end and stored under ``"stability"`` per layer.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import time
from pathlib import Path

import numpy as np

from fnprune.analysis.capture import ActivationStore
from fnprune.analysis.ica import CanICA
from fnprune.analysis.stability import SeedFit, seed_stability


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


def stability_table(rows: list[dict]) -> str:
    """The per-layer stability table (BENCHMARKS.md §2) as Markdown."""
    lines = ["| layer | method | reproducible networks (of k), mean / min over seeds | key neurons from "
             "reproducible networks / other networks / unresolved energy | mask Jaccard across seeds, mean "
             "(min) | leverage-control Jaccard | chance Jaccard | budget |", "|" + "---|" * 8]
    for row in rows:
        for method, st in row["stability"].items():
            lev = st["leverage_jaccard"]
            lines.append(
                f"| {row['layer']} | {method} | {np.mean(st['n_reproducible']):.1f} / {min(st['n_reproducible'])} "
                f"(of {st['n_components']}) "
                f"| {st['key_share_reproducible']:.2f} / {st['key_share_other_networks']:.2f} / "
                f"{st['key_share_unresolved']:.2f} | {st['mask_jaccard']['mean']:.2f} ({st['mask_jaccard']['min']:.2f}) "
                f"| {'—' if lev is None else format(lev['mean'], '.2f')} | {st['chance_jaccard']:.2f} "
                f"| {st['budget']} of {st['n_neurons']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("--layers", default="5,10,15,20,25")
    parser.add_argument("--components", type=int, default=128, help="the faithful algorithm's (the paper's 128)")
    parser.add_argument("--fn-components", type=int, default=None,
                        help="fnprune's components (default: CanICA's, fnprune.analysis.ica.DEFAULT_N_COMPONENTS)")
    parser.add_argument("--threshold", type=float, default=3.46)
    parser.add_argument("--n-init", type=int, default=None, help="fnprune restarts (default: CanICA's)")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="every pair of these seeds is compared")
    parser.add_argument("--thorough", default="10x300",
                        help="RESTARTSxITERATIONS of a thorough fnprune run to compare the default budget with "
                             "(seeds 0 and 1); '' to skip")
    parser.add_argument("--skip-faithful", action="store_true")
    parser.add_argument("--min-corr", type=float, default=0.9, help="matched |corr| of a reproduced network")
    parser.add_argument("--max-tokens", type=int, default=None, help="use only the first N tokens (quick checks)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    n_init = args.n_init or CanICA().n_init
    fn_k = args.fn_components or CanICA().n_components
    store = ActivationStore.open(args.store)
    seeds = [int(s) for s in args.seeds.split(",")]
    if len(seeds) < 2:
        parser.error("--seeds needs at least two seeds")
    results = []
    for layer in [int(x) for x in args.layers.split(",")]:
        X = store.layer_matrix(layer)
        if args.max_tokens:
            X = X[:args.max_tokens]
        row: dict = {"layer": layer, "stability": {}}
        budget = None
        if not args.skip_faithful:
            t0 = time.perf_counter()
            maps, U = faithful_maps(np.asarray(X), args.components, seeds[0])
            row["faithful_s"] = time.perf_counter() - t0
            scores = [neuron_scores(maps, store.width)]
            leverage = (U ** 2).sum(1)                       # the exact subspace's PCA leverage
            faithful_fits = [SeedFit(maps, leverage=leverage)]
            for seed in seeds[1:]:
                maps_s = faithful_maps(None, args.components, seed, U=U)[0]
                scores.append(neuron_scores(maps_s, store.width))
                faithful_fits.append(SeedFit(maps_s, leverage=leverage))
            budget = int((scores[0] > args.threshold).sum())
            faithful_sets = [top_set(sc, budget) for sc in scores]
            row.update(budget=budget, faithful_jaccard_seeds=pair_stats(faithful_sets))
            row["stability"]["faithful"] = seed_stability(faithful_fits, budget, width=store.width,
                                                          min_corr=args.min_corr).as_dict()
        fn_sets, consensus_scores, n_stable, times, fn_fits = [], [], [], [], []
        for seed in seeds:
            t0 = time.perf_counter()
            ica = CanICA(fn_k, n_init=n_init, random_state=seed).fit(X)
            times.append(time.perf_counter() - t0)
            # what fnprune's masks use: stable maps' |z| and the seed-free expectation for the rest
            score = ica.key_score_.reshape(-1, store.width).max(0)
            if budget is None:
                budget = int((score > args.threshold).sum())
                row["budget"] = budget
            fn_sets.append(top_set(score, budget))
            consensus_scores.append(neuron_scores(ica.components_, store.width))
            n_stable.append(int(ica.stable_.sum()))
            fn_fits.append(SeedFit.from_canica(ica))
        row["stability"]["fnprune"] = seed_stability(fn_fits, budget, width=store.width,
                                                     min_corr=args.min_corr).as_dict()
        row.update(fnprune_s=float(np.mean(times)), n_init=n_init, fn_components=fn_k, fnprune_jaccard_seeds=pair_stats(fn_sets),
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
                ica = CanICA(fn_k, n_init=restarts, max_iter=iters, random_state=seed).fit(X)
                row.setdefault("thorough_s", []).append(time.perf_counter() - t0)
                agree.append(jaccard(top_set(ica.key_score_.reshape(-1, store.width).max(0), budget), fn_sets[i]))
                stable_t.append(int(ica.stable_.sum()))
            row.update(thorough=args.thorough, jaccard_default_vs_thorough=float(np.mean(agree)),
                       n_stable_thorough=stable_t)
        print(json.dumps(row), flush=True)
        results.append(row)
    summary = {"store": args.store, "n_tokens": min(args.max_tokens or store.n_tokens, store.n_tokens), "components": args.components,
               "threshold": args.threshold, "seeds": seeds, "layers": results,
               "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}
    print(json.dumps({k: v for k, v in summary.items() if k != "layers"}))
    print(stability_table(results))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
