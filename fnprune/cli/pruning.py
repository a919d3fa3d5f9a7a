"""The ``prune``, ``evaluate`` and ``compare`` subcommands: parse the flags, call the library, report.

The pruning itself is :func:`fnprune.pruning.recipe.prune_with_networks` (the worker and ``compare`` call
it too). Failures raise :class:`fnprune.errors.FnpruneError` subclasses (``fnprune.cli.main``
prints their one-line message).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import ConfigError, RunDirError
from ..progress import tqdm_progress
from ._args import add_batch_options, int_list, job_progress
from .protect import add_protect_options, apply_protect


def _run_model_spec(fn) -> str | None:
    """The model a run directory was computed on (``run.json``'s ``model_spec``)."""
    spec = fn.info.get("model_spec")
    return spec if isinstance(spec, str) and spec else None


def spec_from_args(args: argparse.Namespace):
    """The :class:`fnprune.pruning.spec.PruningSpec` the ``prune`` flags describe (validated later, once).

    Flags that contradict each other are refused here, never resolved by one silently winning:
    ``--threshold`` with ``--target-ratio``, and ``--repair`` / ``--no-repair`` / ``--bias`` asking
    for different repairs (``--target-ratio`` and ``--repair`` default to None so that a flag the
    user gave is told from a default)."""
    from ..options import DEFAULT_REPAIR, DEFAULT_TARGET_RATIO
    from ..pruning.spec import PruningSpec, unrepaired

    allocation = args.allocation
    if args.uniform:
        if allocation not in ("default", "uniform"):
            raise ConfigError(f"--uniform and --allocation {allocation} contradict each other")
        allocation = "uniform"
    asked = {}  # flag -> the repair it asks for
    if args.repair is not None:
        asked[f"--repair {args.repair}"] = args.repair
    if args.no_repair:
        asked["--no-repair"] = unrepaired(args.method)
    if args.bias:
        asked["--bias"] = "bias"
    if len(set(asked.values())) > 1:
        flags = list(asked)
        raise ConfigError(f"{' and '.join(flags)} ask for different repairs "
                          f"({', '.join(f'{f}: {r}' for f, r in asked.items())}): give one")
    repair = next(iter(asked.values()), DEFAULT_REPAIR)
    if args.threshold is not None and args.target_ratio is not None:
        raise ConfigError("--threshold and --target-ratio both give the budget: give one")
    target_ratio = None if args.threshold is not None else (
        args.target_ratio if args.target_ratio is not None else DEFAULT_TARGET_RATIO)
    return PruningSpec(method=args.method, target_ratio=target_ratio,
                       threshold=args.threshold, networks=_tuple(int_list(args.networks, "--networks")),
                       allocation=allocation, protected_layers=_tuple(int_list(args.protected, "--protected")),
                       repair=repair, sequential=args.sequential, ridge=args.ridge, heads_fraction=args.heads,
                       seed=args.seed, ratio_of=args.of, recover_epochs=args.recover_epochs,
                       recover_lr=args.recover_lr)


def _tuple(values):
    return None if values is None else tuple(values)


def cmd_prune(args: argparse.Namespace) -> int:
    from ..analysis.networks import FunctionalNetworks
    from ..pruning.job import PruneJob, prune_job

    spec = spec_from_args(args).validated(have_networks=True)  # contradicting flags: exit 2 before any work
    if args.calib_docs < 1:
        raise ConfigError(f"--calib-docs must be at least 1, got {args.calib_docs}")
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    fn = FunctionalNetworks.load(run_dir)
    model_spec = args.model or _run_model_spec(fn)
    if model_spec is None:
        raise RunDirError(f"{run_dir} does not name the model it was computed on; pass --model")

    protected: dict = {}

    def protect(spec, model, tokenizer, calibration, progress):  # --protect: networks or mixed calibration
        spec, calibration, protected["info"] = apply_protect(args, spec, model, tokenizer, fn, calibration, progress)
        return spec, calibration

    def describe(done) -> dict:  # what pruning.json records besides the outcome
        info = {"source_model": model_spec, "run_dir": str(run_dir.absolute()), **done.outcome.info(),
                "protect": protected.get("info"),
                "networks": None if done.spec.networks is None else list(done.spec.networks),
                "threshold": done.spec.threshold, "target_ratio": done.spec.target_ratio,
                "uniform": done.spec.resolved_allocation == "uniform", "bias": done.spec.repair != "none",
                "heads_fraction": done.spec.heads_fraction}
        if done.fidelity is not None:
            info["fidelity"] = [vars(f) for f in done.fidelity]
        return info

    job = PruneJob(model_spec=model_spec, corpus=args.corpus, out=args.out, n_calibration=args.calib_docs,
                   calibration_tokens=args.max_tokens, n_heldout=args.heldout_docs if args.fidelity else 0,
                   batch_size=args.batch_size, describe=describe, overwrite=args.overwrite,
                   fidelity=args.fidelity or None, fidelity_tokens=args.max_tokens, adjust=protect)
    done = prune_job(fn, spec, job, job_progress(args.quiet))
    print(report_pruning(done.outcome, done.fidelity))
    print(f"-> {done.model_dir}")
    return 0


def report_pruning(outcome, fidelity=None) -> str:
    """The CLI's text report of one pruning: budget, chosen networks, repair, fidelity."""
    lines = [f"{outcome.spec.method} ({outcome.spec.resolved_allocation} allocation, repair {outcome.spec.repair}): "
             f"pruned {outcome.removed_fraction:.1%} of all parameters ({outcome.removed_mlp_fraction:.1%} of MLP); "
             f"widths {outcome.widths}"]
    for c in outcome.chosen:
        lines.append(f"  network {c.id} (layer {c.layer}): key neurons kept: {c.n_kept} of {c.n_key}")
    docs = outcome.calibration_docs
    if docs and docs["used"]:
        lines.append(f"  calibration: {docs['used']} documents x {docs['tokens_per_doc']} tokens"
                     + (f" ({docs['requested']} requested)" if docs["used"] < docs["requested"] else ""))
    for heads, summary in ((False, outcome.repair_summary()), (True, outcome.repair_summary(heads=True))):
        if summary:
            lines.append(f"  calibration output error of the pruned {'attention outputs' if heads else 'layers'} "
                         f"(mean relative): no repair {summary['error_pruned']:.4f}, mean bias "
                         f"{summary['error_bias']:.4f}, least squares {summary['error_repaired']:.4f}")
    if outcome.recovery is not None:
        r = outcome.recovery
        lines.append(f"  recovery by distillation: {r.epochs} epoch(s) over {r.documents} documents ({r.steps} steps, "
                     f"learning rate {r.lr:g}): KL to the dense model {r.kl_first:.4f} -> {r.kl_last:.4f} nats per "
                     f"token, {r.seconds:.0f} s")
    for note in outcome.notes:
        lines.append(f"  note: {note}")
    if fidelity:
        lines.append("  network fidelity on held-out text (time-course correlation dense vs pruned; relative change "
                     "of the layer output on the network's top tokens / on all tokens):")
        for f in fidelity:
            lines.append(f"    network {f.id} (layer {f.layer}): r = {f.correlation:.3f}; output change "
                         f"{f.output_change_top:.3f} / {f.output_change_all:.3f}; key kept {f.n_key_kept} of {f.n_key}")
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..corpus import load_corpus, split_heldout
    from ..evaluation.metrics import evaluate_model
    from ..models.loading import load_model

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
    from ..evaluation.compare import compare

    result = compare(args.model, args.corpus, args.ratios, args.methods, args.out, run_dir=args.run_dir,
                     networks=int_list(args.networks, "--networks"),
                     protected_layers=int_list(args.protected, "--protected"),
                     n_calib=args.calib_docs, n_heldout=args.heldout_docs, max_tokens=args.max_tokens,
                     batch_size=args.batch_size, seed=args.seed, per_document=args.per_document,
                     windows=tuple(int_list(args.windows, "--windows") or (512, 128)),
                     repairs=args.repairs, controls=args.controls, split=args.split,
                     extra_corpora=[c for c in args.extra_corpora.split(",") if c.strip()],
                     fidelity=args.fidelity or None, paper_run_dir=args.paper_run_dir,
                     recover_epochs=args.recover_epochs, recover_lr=args.recover_lr,
                     progress=None if args.quiet else tqdm_progress())
    print((Path(args.out) / "report.md").read_text() if args.out else json.dumps(result, indent=2))
    return 0


def add_recover_options(p: argparse.ArgumentParser) -> None:
    """``--recover-epochs`` and ``--recover-lr`` (recovery by distillation, :mod:`fnprune.pruning.recover`)."""
    from .. import options

    p.add_argument("--recover-epochs", type=int, default=options.DEFAULT_RECOVER_EPOCHS, metavar="N",
                   help=f"{options.RECOVER_HELP} (default {options.DEFAULT_RECOVER_EPOCHS}; at most "
                        f"{options.MAX_RECOVER_EPOCHS})")
    p.add_argument("--recover-lr", type=float, default=options.DEFAULT_RECOVER_LR, metavar="LR",
                   help=f"learning rate of the recovery (default {options.DEFAULT_RECOVER_LR:g}, chosen on validation "
                        "documents)")


def add_subcommands(subparsers) -> None:
    """Register ``prune``, ``evaluate`` and ``compare`` on an argparse subparsers object.

    Names, help and defaults come from :mod:`fnprune.options`; the method choices are the registry's
    (:mod:`fnprune.pruning.methods`) when the parser is built, so a registered method is a choice here."""
    from .. import options
    from ..pruning.methods import registered

    methods = registered()
    p = subparsers.add_parser("prune", help="prune a model with the functional networks of a run directory")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--target-ratio", type=float, default=None,
                   help=f"fraction of parameters to remove (default {options.DEFAULT_TARGET_RATIO:g} of "
                        f"{options.RATIO_BASE_LABELS[options.DEFAULT_RATIO_OF]}; see --of)")
    p.add_argument("--of", choices=options.RATIO_BASES, default=options.DEFAULT_RATIO_OF,
                   help="what --target-ratio is a fraction of: " + "; ".join(
                       f"{b}: {h}" for b, h in options.RATIO_BASE_HELP.items()) + f" (default {options.DEFAULT_RATIO_OF})")
    p.add_argument("--threshold", type=float, default=None,
                   help="|z| threshold instead of a target ratio (not both)")
    p.add_argument("--networks", default=None,
                   help="chosen networks, e.g. 1,5,9: every key neuron of each is kept (default: none forced)")
    p.add_argument("--method", choices=list(methods), default=options.DEFAULT_METHOD,
                   help="; ".join(f"{m.name}: {m.help}" for m in methods.values())
                   + f" (default {options.DEFAULT_METHOD}: {options.DEFAULT_METHOD_REASON})")
    by_default = {}
    for m in methods.values():
        by_default.setdefault(m.default_allocation, []).append(m.name)
    allocation_help = {**options.ALLOCATION_HELP, "default": "the method's own: " + "; ".join(
        f"{a} for {', '.join(names)}" for a, names in by_default.items())}
    p.add_argument("--allocation", choices=options.ALLOCATIONS, default="default",
                   help="how many neurons each layer keeps: " + "; ".join(
                       f"{a}: {h}" for a, h in allocation_help.items()))
    p.add_argument("--uniform", action="store_true", help="same as --allocation uniform")
    p.add_argument("--repair", choices=options.REPAIRS, default=None,
                   help=" ".join(f"{r}: {h}" for r, h in options.REPAIR_HELP.items())
                   + f" (default {options.DEFAULT_REPAIR}; with --heads, o_proj is repaired the same way). "
                   "--no-repair or --bias asking for another repair is refused")
    no_repair = {}
    for m in methods.values():
        no_repair.setdefault(m.unrepaired, []).append(m.name)
    p.add_argument("--no-repair", action="store_true",
                   help="no least-squares repair: " + "; ".join(f"{r} for {', '.join(names)}"
                                                                for r, names in no_repair.items()))
    p.add_argument("--bias", action="store_true", help="same as --repair bias")
    p.add_argument("--sequential", action="store_true",
                   help="repair layer by layer, calibrating each on the already pruned layers below (slower; "
                        f"with --repair {options.SEQUENTIAL_REPAIR} only)" + "".join(
                            f"; not with {m.name}: {m.refuses['sequential']}" for m in methods.values()
                            if "sequential" in m.refuses))
    p.add_argument("--ridge", type=float, default=options.DEFAULT_RIDGE,
                   help=f"repair ridge, times the mean input power (default {options.DEFAULT_RIDGE:g})")
    p.add_argument("--heads", type=float, default=None, metavar="FRACTION",
                   help="also remove this fraction of attention KV groups (a KV head with its query heads) in "
                        "each unprotected layer, lowest FLAP fluctuation first (LLaMA family; o_proj is repaired "
                        "like the MLPs: least squares with lstsq, mean bias with bias)")
    add_recover_options(p)
    p.add_argument("--protected", default=None, help="protected layers, e.g. 0,1,2,-2,-1 (default: paper's)")
    p.add_argument("--model", default=None, help="model spec (default: the one the run directory names)")
    p.add_argument("--corpus", default=options.DEFAULT_CORPUS, help="calibration and held-out corpus")
    p.add_argument("--calib-docs", type=int, default=options.DEFAULT_CALIBRATION_DOCS,
                   help=f"calibration documents x --max-tokens (default {options.DEFAULT_CALIBRATION_DOCS}; a "
                        "smaller corpus gives fewer: the number used is printed and saved in pruning.json)")
    p.add_argument("--heldout-docs", type=int, default=10, help="held-out documents for the fidelity report")
    p.add_argument("--fidelity", type=int, default=20, metavar="N",
                   help="report network fidelity for the chosen networks, or the N most stable (0: off)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline and of the recovery's batch order")
    p.add_argument("--out", required=True, metavar="MODEL_DIR")
    p.add_argument("--overwrite", action="store_true")
    add_protect_options(p)
    add_batch_options(p)
    p.set_defaults(func=cmd_prune)

    p = subparsers.add_parser("evaluate", help="perplexity, size, speed, memory and generations of a model")
    p.add_argument("model", metavar="MODEL_OR_DIR")
    p.add_argument("--corpus", default=options.DEFAULT_CORPUS)
    p.add_argument("--heldout-docs", type=int, default=20)
    p.add_argument("--no-speed", action="store_true")
    p.add_argument("--no-generations", action="store_true")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_batch_options(p)
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser("compare", help="functional-network pruning vs baselines at the same budgets")
    p.add_argument("--model", default=options.DEFAULT_MODEL)
    p.add_argument("--corpus", default=options.DEFAULT_CORPUS)
    p.add_argument("--ratios", default="0.1,0.2,0.3")
    p.add_argument("--methods", default=",".join(methods),
                   help="comma-separated methods, from " + ", ".join(methods) + " (default: all)")
    p.add_argument("--repairs", default="native,lstsq",
                   help="repairs to run each method with: native (its own compensation), lstsq, bias, none")
    p.add_argument("--controls", action="store_true",
                   help="add FLAP in the unresolved-energy-only and in uniform widths (allocation controls)")
    p.add_argument("--extra-corpora", default="", help="more held-out corpora, e.g. pydoc")
    p.add_argument("--split", choices=("test", "validation"), default="test",
                   help="score on held-out (test) or validation documents (where defaults are chosen)")
    p.add_argument("--fidelity", type=int, default=20, metavar="N",
                   help="fidelity of the chosen networks, or of the N most stable (0: off)")
    p.add_argument("--paper-run-dir", default=None, help="a run analysed with --n-init 1 for the paper method")
    p.add_argument("--run-dir", default=None, help="networks from this run (default: compute them)")
    p.add_argument("--networks", default=None)
    p.add_argument("--protected", default=None)
    p.add_argument("--calib-docs", type=int, default=options.DEFAULT_CALIBRATION_DOCS,
                   help=f"calibration documents x --max-tokens (default {options.DEFAULT_CALIBRATION_DOCS})")
    p.add_argument("--heldout-docs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--windows", default="512,128", help="perplexity window lengths (default 512,128)")
    p.add_argument("--per-document", action="store_true",
                   help="score each held-out document alone on its first 512 tokens (METHOD §2's table)")
    add_recover_options(p)
    p.add_argument("--out", required=True, metavar="REPORT_DIR")
    add_batch_options(p)
    p.set_defaults(func=cmd_compare)
