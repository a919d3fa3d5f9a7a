"""``fnprune ablate`` (what does a network do?) and the ``--protect`` option of ``fnprune prune``.

    fnprune ablate RUN_DIR --networks 12,40 [--corpus brown] [--genres news] [--texts 20] [--json OUT]
    fnprune prune RUN_DIR --protect pydoc [--protect-networks 20] --out MODEL_DIR

The work is the library's (:mod:`fnprune.evaluation.ablation`, :mod:`fnprune.pruning.protect`); this module parses and reports.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError, RunDirError
from ._args import add_batch_options, int_list


# -- prune --protect ---------------------------------------------------------------------------------
def add_protect_options(p: argparse.ArgumentParser) -> None:
    """The ``--protect`` flags of ``fnprune prune``."""
    from ..pruning.protect import (
        DEFAULT_PROTECT_BY,
        DEFAULT_PROTECT_DOCS,
        DEFAULT_PROTECT_NETWORKS,
        PROTECT_BY,
    )

    p.add_argument("--protect", default=None, metavar="CORPUS[:GENRES]",
                   help="keep this text working too (e.g. pydoc, brown:learned, texts.jsonl); see --protect-by")
    p.add_argument("--protect-by", choices=PROTECT_BY, default=DEFAULT_PROTECT_BY,
                   help="calibration: replace about 10%% of the calibration tokens by the protected text (default: "
                        "measured best, BENCHMARKS.md §10); networks: force the key neurons of the networks most "
                        "selective for it against the calibration text (printed)")
    p.add_argument("--protect-networks", type=int, default=DEFAULT_PROTECT_NETWORKS, metavar="N",
                   help=f"how many networks --protect forces (default {DEFAULT_PROTECT_NETWORKS})")
    p.add_argument("--protect-docs", type=int, default=DEFAULT_PROTECT_DOCS, metavar="N",
                   help=f"documents of the protected corpus that choose them (default {DEFAULT_PROTECT_DOCS}; its "
                        "held-out split is not used)")


def apply_protect(args: argparse.Namespace, spec, model, tokenizer, fn, calibration, progress=None):
    """``(spec, calibration, info for pruning.json)`` for ``--protect``
    (:func:`fnprune.pruning.protect.apply_protection`); prints what it did. Unchanged and None without it."""
    if not getattr(args, "protect", None):
        return spec, calibration, None
    from ..pruning.protect import Protection, apply_protection, protect_documents

    docs, heldout = protect_documents(args.protect, args.protect_docs)
    protection = Protection(args.protect, docs, heldout, by=args.protect_by, networks=args.protect_networks)
    spec, calibration, info = apply_protection(protection, spec, model, tokenizer, fn, calibration, progress)
    if info["by"] == "calibration":
        print(f"protecting {args.protect}: calibrating on {info['calibration_docs']} calibration documents + "
              f"{info['protect_docs']} of it ({info['protect_tokens']:,} of {info['tokens']:,} tokens)")
    else:
        print(f"protecting {args.protect}: networks {', '.join(map(str, info['networks']))} (the "
              f"{len(info['networks'])} most selective for it against the calibration text; {info['n_forced']} key "
              "neurons forced)")
    return spec, calibration, info


# -- ablate ------------------------------------------------------------------------------------------
def cmd_ablate(args: argparse.Namespace) -> int:
    from fnprune.analysis.networks import FunctionalNetworks
    from fnprune.evaluation.ablation import ablate

    from ..corpus import load_corpus, split_heldout
    from ..io import atomic_write_text
    from ..models import load_model

    networks = int_list(args.networks, "--networks")
    if not networks:
        raise ConfigError("--networks: give at least one network id, e.g. --networks 12,40", field="networks")
    if args.texts < 1:
        raise ConfigError(f"--texts must be at least 1, got {args.texts}", field="texts")
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    fn = FunctionalNetworks.load(run_dir)
    bad = [c for c in networks if not 0 <= c < fn.n_components]
    if bad:
        raise ConfigError(f"--networks: {bad} not in 0..{fn.n_components - 1}", field="networks")
    model_spec = args.model or fn.info.get("model_spec")
    if not model_spec:
        raise RunDirError(f"{run_dir} does not name the model it was computed on; pass --model")
    docs = load_corpus(args.corpus, genres=args.genres.split(",") if args.genres else None, sampling="stratified")
    heldout = split_heldout(docs)[1] if len(docs) >= 10 else docs
    model, tokenizer = load_model(model_spec)
    result = ablate(model, tokenizer, fn, networks, heldout[:args.texts], window=args.max_tokens, seed=args.seed,
                    n_tokens=args.top_tokens, batch_size=args.batch_size)
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(result, indent=1))
    print(report_ablation(result))
    return 0


def _ratio(p: dict) -> str:
    return f"{p['ratio']:.3f}x [{p['low']:.3f}, {p['high']:.3f}]"


def report_ablation(r: dict) -> str:
    """The text report of :func:`fnprune.evaluation.ablation.ablate`."""
    layers = ", ".join(f"{layer}: {n}" for layer, n in enumerate(r["neurons_per_layer"]) if n)
    lines = [f"zeroing networks {', '.join(map(str, r['networks']))}: {r['n_neurons']} key neurons (layer: count "
             f"{layers}); control: as many random neurons in the same layers (seed {r['seed']})",
             f"{'label':<18} {'docs':>4} {'dense PPL':>10} {'networks zeroed':>16} {'random zeroed':>14}"]
    for label, row in r["by_label"].items():
        lines.append(f"{label:<18} {row['n_docs']:>4} {row['dense']:>10.2f} {row['network']:>16.2f} {row['random']:>14.2f}")
    a = r["all"]
    lines.append(f"{'all':<18} {a['n_docs']:>4} {a['dense']:>10.2f} {a['network']:>16.2f} {a['random']:>14.2f}")
    lines.append(f"paired (95% bootstrap over documents): networks zeroed / dense {_ratio(a['network_vs_dense'])}; "
                 f"random / dense {_ratio(a['random_vs_dense'])}; networks / random {_ratio(a['network_vs_random'])}")
    if r["top_tokens"]:
        lines.append("tokens whose probability falls most when the networks are zeroed (p dense -> zeroed; random):")
        for t in r["top_tokens"]:
            lines.append(f"  {t['token']!r} after {t['left'][-40:]!r} ({t['label']}): {t['p_dense']:.3f} -> "
                         f"{t['p_network']:.3f}; random {t['p_random']:.3f}")
    return "\n".join(lines)


def add_subcommands(subparsers) -> None:
    """Register ``ablate``."""
    from ..options import DEFAULT_ABLATION_TEXTS, DEFAULT_ABLATION_TOP_TOKENS, DEFAULT_CORPUS

    p = subparsers.add_parser("ablate", help="zero networks' key neurons in the dense model: perplexity per genre and "
                                             "the tokens that change most, next to a same-size random ablation")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--networks", required=True, help="network ids, e.g. 12,40")
    p.add_argument("--model", default=None, help="model spec (default: the one the run directory names)")
    p.add_argument("--corpus", default=DEFAULT_CORPUS, help="held-out documents of this corpus are scored")
    p.add_argument("--genres", default=None, help="only these genres, e.g. news,fiction")
    p.add_argument("--texts", type=int, default=DEFAULT_ABLATION_TEXTS,
                   help=f"held-out documents (default {DEFAULT_ABLATION_TEXTS})")
    p.add_argument("--top-tokens", type=int, default=DEFAULT_ABLATION_TOP_TOKENS,
                   help=f"tokens listed (default {DEFAULT_ABLATION_TOP_TOKENS})")
    p.add_argument("--seed", type=int, default=0, help="seed of the random control")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the result as JSON")
    add_batch_options(p, quiet=False)
    p.set_defaults(func=cmd_ablate)
