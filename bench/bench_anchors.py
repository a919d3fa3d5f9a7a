"""Fair timing anchors: both of the authors' CanICA paths and fnprune's CanICA, per layer, in one run.

    python bench/capture_default.py /tmp/acts40          # default model, 40 Brown docs x 512 tokens
    python bench/bench_anchors.py /tmp/acts40 --layers 5,20 --out bench/results/anchors.json
    # a check of the script (400 tokens, one layer, 32 components; under a minute on 2 cores):
    python bench/capture_default.py /tmp/acts_tiny --texts 1 --max-tokens 400
    python bench/bench_anchors.py /tmp/acts_tiny --layers 5 --components 32

On the same activations, the same machine and in the same process, each layer is decomposed by
(METHOD.md §1.4, ../shared/reference/README.md):

(a) the authors' torch path, ``llmfact/decomposition/canica.py``: a full SVD of the signals in
    float32, then one FastICA run in float64 (cube, tol 1e-4, ``max_iter`` 300, seed 666);
(b) their scikit-learn path, ``llmfact/decomposition/ica.py``, with the settings of their Vicuna-7B
    notebook: ``randomized_svd`` with 4 power iterations, 10 FastICA restarts (``whiten="unit-variance"``,
    cube, ``max_iter`` 300) in parallel on every core (their ``n_jobs=-1``), the sparsest kept
    (``fit(X, n_iter=4, max_iter=300, norm=False)``);
(c) fnprune's ``CanICA`` with its defaults (``fit`` only, as for (a) and (b): no time courses).

The authors' code is imported from ``../shared/reference`` by path, never copied into fnprune. Each
of their paths is timed from the layer's raw activations (float16 as captured) including their own
preprocessing: ``z_score_signals`` on a float32 tensor, then float64, as their ``MLPLayerAnalysis``
does; fnprune standardises inside ``fit``. The activations are read into memory once per layer,
before any timing. Paths run in the order (c), (b), (a) on each layer; every timing is one fit unless
``--repeat`` is given (then the median); the joblib workers and torch's threads are started before
the first timing. Also printed, as a check that each path really decomposed
the layer: the number of neurons with |z| > ``--threshold`` in any map and signal (fnprune: its key
score). Prints one JSON line per layer, then a Markdown table with the speedup of fnprune against
each authors' path; ``--out`` stores everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fnprune.analysis.capture import ActivationStore
from fnprune.analysis.ica import CanICA

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
PATHS = ("torch", "sklearn", "fnprune")
ITERATIONS: list[int] = []   # FastICA iterations of each torch-path fit


def import_reference(reference: Path):
    """The authors' two CanICA classes and their z-scoring, imported from ``reference`` by path."""
    if not (reference / "llmfact" / "decomposition" / "ica.py").is_file():
        raise SystemExit(f"error: the authors' code is not at {reference} (expected llmfact/decomposition/ica.py); "
                         "pass --reference")
    sys.path.insert(0, str(reference))
    import llmfact.decomposition.fastica as torch_fastica
    from llmfact.decomposition.canica import CanICA as AuthorsTorchCanICA
    from llmfact.decomposition.ica import CanICA as AuthorsSklearnCanICA
    from llmfact.utils import z_score_signals

    # record the torch path's FastICA iterations (their fit discards them): its time depends on
    # whether FastICA converges before max_iter; the wrapped function is theirs, called unchanged
    inner = torch_fastica._ica_par

    def ica_par(*a, **kw):
        W, n_iter = inner(*a, **kw)
        ITERATIONS.append(int(n_iter))
        return W, n_iter

    torch_fastica._ica_par = ica_par
    return AuthorsTorchCanICA, AuthorsSklearnCanICA, z_score_signals


def neurons_above(maps, width: int, threshold: float) -> int:
    """Neurons with |z| > threshold in any component and signal of (k, n_signals * width) maps."""
    maps = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    return int((np.abs(maps).max(0).reshape(-1, width).max(0) > threshold).sum())


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def warm_up(n_jobs: int) -> None:
    """Start what the first timed fit would otherwise pay for once: the joblib worker processes of the
    sklearn path (their ``n_jobs``) and torch's LAPACK/BLAS threads."""
    from joblib import Parallel, delayed

    Parallel(n_jobs=n_jobs)(delayed(abs)(-i) for i in range(32))
    a = torch.randn(256, 64, dtype=torch.float64)
    torch.linalg.svd(a, full_matrices=False)
    torch.linalg.eigh(a.T @ a)


def run_layer(X: np.ndarray, width: int, args, authors) -> dict:
    AuthorsTorchCanICA, AuthorsSklearnCanICA, z_score_signals = authors
    k = args.components

    def authors_signals() -> np.ndarray:
        # MLPLayerAnalysis.fit: z_score_signals(layer_outputs).to(torch.float64)
        return z_score_signals(torch.from_numpy(X.astype(np.float32))).to(torch.float64).numpy()

    def path_fnprune():
        ica = CanICA(k, random_state=args.seed, device=args.device).fit(X)
        return neurons_above(ica.key_score_[None], width, args.threshold), int(ica.stable_.sum())

    def path_sklearn():
        ica = AuthorsSklearnCanICA(n_components=k, n_jobs=args.n_jobs, random_state=args.authors_seed)
        ica.fit(authors_signals(), n_iter=4, max_iter=300, norm=False)
        return neurons_above(ica.normal_mixing_, width, args.threshold), None

    def path_torch():
        ica = AuthorsTorchCanICA(n_components=k, random_state=args.authors_seed, device=args.device)
        ica.fit(authors_signals(), max_iter=300)
        return neurons_above(ica.normal_mixing_, width, args.threshold), None

    row: dict = {}
    for name, fn in (("fnprune", path_fnprune), ("sklearn", path_sklearn), ("torch", path_torch)):
        if name in args.skip:
            continue
        seconds, (n_above, n_stable) = timed(fn, args.repeat)
        row[name] = {"s": seconds, "n_above_threshold": n_above}
        if n_stable is not None:
            row[name]["n_stable"] = n_stable
        if name == "torch":
            row[name]["fastica_iterations"] = ITERATIONS[-args.repeat:]
    return row


def table(rows: list[dict]) -> str:
    def cell(row, name, fmt="{:.1f} s"):
        return fmt.format(row[name]["s"]) if name in row else "—"

    def ratio(row, name):
        return f"{row[name]['s'] / row['fnprune']['s']:.1f}×" if name in row and "fnprune" in row else "—"

    lines = ["| layer | authors' torch CanICA (full SVD f32 + 1 FastICA f64) | authors' sklearn CanICA "
             "(randomized SVD, 4 power it., 10 FastICA restarts) | fnprune CanICA (defaults) "
             "| speedup over the torch path (torch / fnprune) | speedup over the sklearn path (sklearn / fnprune) |", "|" + "---|" * 6]
    for row in rows:
        lines.append(f"| {row['layer']} | {cell(row, 'torch')} | {cell(row, 'sklearn')} | {cell(row, 'fnprune')} "
                     f"| {ratio(row, 'torch')} | {ratio(row, 'sklearn')} |")
    if len(rows) > 1:
        total = {"layer": "all"} | {p: {"s": sum(r[p]["s"] for r in rows)} for p in PATHS if all(p in r for r in rows)}
        lines.append(f"| all | {cell(total, 'torch')} | {cell(total, 'sklearn')} | {cell(total, 'fnprune')} "
                     f"| {ratio(total, 'torch')} | {ratio(total, 'sklearn')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", help="an activation store (bench/capture_default.py)")
    parser.add_argument("--layers", default="5,20", help="comma-separated layers")
    parser.add_argument("--components", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=None, help="use only the first N tokens")
    parser.add_argument("--threshold", type=float, default=3.46, help="|z| of the key-neuron count printed")
    parser.add_argument("--seed", type=int, default=0, help="fnprune's random_state")
    parser.add_argument("--authors-seed", type=int, default=666, help="the authors' random_state (theirs: 666)")
    parser.add_argument("--n-jobs", type=int, default=-1, help="sklearn path: parallel restarts (theirs: -1)")
    parser.add_argument("--device", default="cpu", help="torch device of the authors' torch path and fnprune")
    parser.add_argument("--repeat", type=int, default=1, help="fits per path and layer (the median is kept)")
    parser.add_argument("--skip", default="", help="comma-separated paths not to run: torch, sklearn, fnprune")
    parser.add_argument("--reference", type=Path, default=REFERENCE, help="directory holding llmfact/")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    args.skip = {s for s in args.skip.split(",") if s}
    if args.skip - set(PATHS):
        parser.error(f"--skip: unknown paths {sorted(args.skip - set(PATHS))}; choose from {PATHS}")
    if args.repeat < 1 or args.components < 1:
        parser.error("--repeat and --components must be positive")
    authors = import_reference(args.reference)
    store = ActivationStore.open(args.store)
    warm_up(args.n_jobs)
    try:
        layers = [int(x) for x in args.layers.split(",")]
    except ValueError:
        parser.error(f"--layers must be comma-separated integers, got {args.layers!r}")
    rows = []
    for layer in layers:
        X = np.asarray(store.layer_matrix(layer)[:args.max_tokens] if args.max_tokens else store.layer_matrix(layer))
        if X.shape[0] <= args.components:
            parser.error(f"layer {layer}: {X.shape[0]} tokens, not more than --components {args.components}")
        row = {"layer": layer, "n_tokens": int(X.shape[0]), "n_signals": int(X.shape[1])} | run_layer(
            X, store.width, args, authors)
        print(json.dumps(row), flush=True)
        rows.append(row)
    summary = {"store": str(args.store), "components": args.components, "threshold": args.threshold,
               "device": args.device, "n_jobs": args.n_jobs, "repeat": args.repeat, "cpu_count": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
               "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "layers": rows}
    print(json.dumps({k: v for k, v in summary.items() if k != "layers"}))
    print(table(rows))
    if args.out:
        from fnprune.io import atomic_write_text

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.out), json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
