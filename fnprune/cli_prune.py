"""The ``prune``, ``evaluate`` and ``compare`` subcommands of the ``fnprune`` command.

``fnprune.cli`` calls :func:`add_subcommands` on its subparsers; each subcommand sets
``func(args) -> int``. Failures raise :class:`fnprune.errors.FnpruneError` subclasses (the main
CLI prints their one-line message).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .errors import ConfigError, RunDirError
from .progress import tqdm_progress


def _int_list(text: str | None, what: str) -> list[int] | None:
    if text is None or not text.strip():
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise ConfigError(f"{what} must be integers separated by commas, got {text!r}") from err


def _run_model_spec(fn, run_dir: Path) -> str | None:
    """The model a run directory was computed on, from the networks object or its JSON files."""
    for attr in ("model_spec", "model_name", "model"):
        value = getattr(fn, attr, None)
        if isinstance(value, str) and value:
            return value
    for holder in ("meta", "info", "metadata", "config"):
        value = getattr(fn, holder, None)
        if isinstance(value, dict):
            for key in ("model_spec", "model", "model_name"):
                if isinstance(value.get(key), str):
                    return value[key]
    for name in ("run.json", "meta.json", "metadata.json", "networks.json", "config.json"):
        path = run_dir / name
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            for key in ("model_spec", "model", "model_name"):
                if isinstance(data.get(key), str):
                    return data[key]
    return None


def _calibration(corpus: str, n_docs: int):
    from .corpus import load_corpus, split_heldout

    calib, heldout = split_heldout(load_corpus(corpus))
    return calib[:n_docs], heldout


def cmd_prune(args: argparse.Namespace) -> int:
    from .compare import check_networks_match
    from .mlp import find_mlps
    from .models import load_model
    from .networks import FunctionalNetworks
    from .prune import (
        check_target_ratio,
        collect_down_input_stats,
        flap_scores,
        keep_from_scores,
        params_to_remove,
        prune_model,
        resolve_layers,
        widths_summary,
    )
    from .pruned_io import save_pruned

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    if args.threshold is None:
        check_target_ratio(args.target_ratio)
    networks = _int_list(args.networks, "--networks")
    fn = FunctionalNetworks.load(run_dir)
    protected = resolve_layers(_int_list(args.protected, "--protected"), fn.n_layers)
    spec = args.model or _run_model_spec(fn, run_dir)
    if spec is None:
        raise RunDirError(f"{run_dir} does not name the model it was computed on; pass --model")
    progress = None if args.quiet else tqdm_progress()
    model, tokenizer = load_model(spec)
    check_networks_match(fn, model)
    before = widths_summary(model)
    adapters = find_mlps(model)
    ppn = [a.params_per_neuron for a in adapters]
    stats = None
    if args.bias or args.method == "fn-flap":
        calib, _ = _calibration(args.corpus, args.calib_docs)
        stats = collect_down_input_stats(model, tokenizer, calib, args.max_tokens, args.batch_size, progress)
    if args.uniform:
        if args.threshold is not None:
            raise ConfigError("--uniform needs --target-ratio, not --threshold")
        scores = flap_scores(model, stats) if args.method == "fn-flap" else \
            list(np.asarray(fn.neuron_scores(networks=networks)))
        keep = keep_from_scores(scores, ppn, n_params_remove=params_to_remove(model, args.target_ratio), uniform=True)
    elif args.method == "fn-flap":
        if args.threshold is not None:
            widths = [int(r.sum()) for r in np.asarray(fn.key_mask(threshold=args.threshold, networks=networks,
                                                                   protected_layers=protected))]
        else:
            widths = fn.plan(target_ratio=args.target_ratio, networks=networks, protected_layers=protected)["widths"]
        keep = keep_from_scores(flap_scores(model, stats), ppn, widths=widths)
    else:
        mask = fn.key_mask(threshold=args.threshold, target_ratio=None if args.threshold is not None else args.target_ratio,
                           networks=networks, protected_layers=protected)
        keep = [np.flatnonzero(row) for row in np.asarray(mask)]
    if args.heads is not None:
        from .prune import collect_attention_stats, head_group_scores, keep_heads_from_scores, prune_heads

        calib, _ = _calibration(args.corpus, args.calib_docs)
        att_stats = collect_attention_stats(model, tokenizer, calib, args.max_tokens, args.batch_size, progress)
        keep_heads = keep_heads_from_scores(head_group_scores(model, att_stats), args.heads,
                                            protected if protected is not None else None)
        prune_heads(model, keep_heads, bias=att_stats if args.bias else None)
    prune_model(model, keep, bias=stats if (args.bias or args.method == "fn-flap") else None)
    after = widths_summary(model)
    info = {"source_model": spec, "run_dir": str(run_dir.absolute()), "method": args.method,
            "networks": networks, "threshold": args.threshold,
            "target_ratio": None if args.threshold is not None else args.target_ratio,
            "uniform": bool(args.uniform), "bias": bool(args.bias or args.method == "fn-flap"),
            "heads_fraction": args.heads,
            "protected_layers": protected if protected is not None else "default",
            "dense_total_params": before["total_params"], "dense_mlp_params": before["mlp_params"],
            "removed_fraction": 1 - after["total_params"] / before["total_params"],
            "removed_mlp_fraction": 1 - after["mlp_params"] / before["mlp_params"]}
    out = save_pruned(model, tokenizer, args.out, info, overwrite=args.overwrite)
    print(f"pruned {info['removed_fraction']:.1%} of all parameters ({info['removed_mlp_fraction']:.1%} of MLP) "
          f"-> {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .corpus import load_corpus, split_heldout
    from .evaluate import evaluate_model
    from .models import load_model

    model, tokenizer = load_model(args.model)
    _, heldout = split_heldout(load_corpus(args.corpus))
    path = Path(args.model)
    result = evaluate_model(model, tokenizer, heldout[:args.heldout_docs], max_tokens_per_doc=args.max_tokens,
                            with_speed=not args.no_speed, with_generations=not args.no_generations,
                            model_dir=path if path.exists() else None,
                            progress=None if args.quiet or args.json else tqdm_progress())
    result["model"] = args.model
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    p = result["params"]
    print(f"model: {args.model}\nparameters: {p['total_params']:,} (MLP {p['mlp_params']:,})")
    for w, r in result["perplexity"].items():
        print(f"perplexity@{w}: {r['ppl']:.2f} ({r['n_tokens']} tokens)")
    if "size_on_disk_bytes" in result:
        print(f"size on disk: {result['size_on_disk_bytes'] / 2**20:.1f} MiB")
    for key, s in result.get("speed", {}).items():
        if key.startswith("batch_"):
            print(f"{key}: prefill {s['prefill_ms']:.1f} ms, {s['tokens_per_s']:.0f} tok/s; "
                  f"decode {s['decode_tokens_per_s']:.1f} tok/s")
    for g in result.get("generations", []):
        print(f"> {g['prompt']}{g['completion']}")
    print(f"peak RSS: {result['memory']['peak_rss_bytes'] / 2**20:.0f} MiB")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare

    result = compare(args.model, args.corpus, args.ratios, args.methods, args.out, run_dir=args.run_dir,
                     networks=_int_list(args.networks, "--networks"),
                     protected_layers=_int_list(args.protected, "--protected"),
                     n_calib=args.calib_docs, n_heldout=args.heldout_docs, max_tokens=args.max_tokens,
                     batch_size=args.batch_size, seed=args.seed, per_document=args.per_document,
                     windows=tuple(_int_list(args.windows, "--windows") or (512, 128)),
                     progress=None if args.quiet else tqdm_progress())
    print((Path(args.out) / "report.md").read_text() if args.out else json.dumps(result, indent=2))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=512, help="tokens per document (default 512)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_subcommands(subparsers) -> None:
    """Register ``prune``, ``evaluate`` and ``compare`` on an argparse subparsers object."""
    p = subparsers.add_parser("prune", help="prune a model with the functional networks of a run directory")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--target-ratio", type=float, default=0.2, help="fraction of all parameters to remove")
    p.add_argument("--threshold", type=float, default=None, help="|z| threshold instead of a target ratio")
    p.add_argument("--networks", default=None, help="components that count, e.g. 1,5,9 (default: all)")
    p.add_argument("--method", choices=("fn", "fn-flap"), default="fn-flap",
                   help="fn-flap (default, recommended: lowest held-out PPL at 0.2 and 0.3 in BENCHMARKS.md): "
                        "the networks' per-layer widths, FLAP score within each layer, bias compensation; "
                        "fn: keep the key neurons (the paper's rule)")
    p.add_argument("--bias", action="store_true", help="FLAP-style bias compensation of pruned neurons")
    p.add_argument("--uniform", action="store_true",
                   help="the same width in every layer (protected layers too): a stock architecture")
    p.add_argument("--heads", type=float, default=None, metavar="FRACTION",
                   help="also remove this fraction of attention KV groups (a KV head with its query heads) in "
                        "each unprotected layer, lowest FLAP fluctuation first (LLaMA family; with --bias: "
                        "o_proj bias compensation)")
    p.add_argument("--protected", default=None, help="protected layers, e.g. 0,1,2,-2,-1 (default: paper's)")
    p.add_argument("--model", default=None, help="model spec (default: the one the run directory names)")
    p.add_argument("--corpus", default="brown", help="calibration corpus for --bias / fn-flap")
    p.add_argument("--calib-docs", type=int, default=40)
    p.add_argument("--out", required=True, metavar="MODEL_DIR")
    p.add_argument("--overwrite", action="store_true")
    _common(p)
    p.set_defaults(func=cmd_prune)

    p = subparsers.add_parser("evaluate", help="perplexity, size, speed, memory and generations of a model")
    p.add_argument("model", metavar="MODEL_OR_DIR")
    p.add_argument("--corpus", default="brown")
    p.add_argument("--heldout-docs", type=int, default=20)
    p.add_argument("--no-speed", action="store_true")
    p.add_argument("--no-generations", action="store_true")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _common(p)
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser("compare", help="functional-network pruning vs baselines at the same budgets")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--corpus", default="brown")
    p.add_argument("--ratios", default="0.1,0.2,0.3")
    p.add_argument("--methods", default="fn,fn-bias,fn-flap,random,magnitude,wanda-sp,flap")
    p.add_argument("--run-dir", default=None, help="networks from this run (default: compute them)")
    p.add_argument("--networks", default=None)
    p.add_argument("--protected", default=None)
    p.add_argument("--calib-docs", type=int, default=40)
    p.add_argument("--heldout-docs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--windows", default="512,128", help="perplexity window lengths (default 512,128)")
    p.add_argument("--per-document", action="store_true",
                   help="score each held-out document alone on its first 512 tokens (METHOD §2's table)")
    p.add_argument("--out", required=True, metavar="REPORT_DIR")
    _common(p)
    p.set_defaults(func=cmd_compare)
