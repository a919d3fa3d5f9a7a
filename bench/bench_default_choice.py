"""Which method and how much calibration text for the default recipe? (BENCHMARKS.md §3b)

    python bench/bench_default_choice.py --split validation     # choose here
    python bench/bench_default_choice.py --split test           # report here

Candidates are ``method:calibration documents`` (x 512 tokens; ``method:documents x tokens``, e.g.
``obs:120x2048``, for more tokens of each document), each with the least-squares repair
(for ``obs`` its selection is that fit); ``method+seq:n`` is the same with sequential calibration
(each layer's repair -- and for obs its choice inside the layer -- on the model whose lower layers
are already pruned and repaired; the widths from the one-shot pass); ``method+rec:n`` adds one epoch of
recovery by distillation at the default learning rate (:mod:`fnprune.pruning.recover`). The same evaluation documents for every candidate, so the
comparison is paired: the validation split is ``split_validation(docs, 120)`` (index % 10 == 5,
disjoint from every calibration set tried and from the held-out documents), the test split is the
first 20 held-out documents (index % 10 == 0) of §3b. Each document is scored alone on its first
512 tokens. Prints (and writes to ``bench/results/default_choice_<split>.json``) the perplexity of
every candidate and ratio and the paired bootstrap ratio of each candidate to the first one.

``--units-out FILE`` saves every row's per-document NLL (numbers only) and ``--pair-with FILE`` pairs
each row with the same candidate and ratio of such a file -- e.g. the same candidate run with an
earlier version of the library (``PYTHONPATH=<checkout of that commit>``) on the same documents.

The rule, written before the validation run: the default is the candidate with the lowest
validation perplexity at both 0.2 and 0.3 whose paired interval against the first candidate (the
previous default, flap:40) lies below 1 at both; otherwise the previous default stays.

Sequential vs one-shot obs (issue 21; rule written before the run of 2026-12-06):

    python bench/bench_default_choice.py --split validation --candidates obs:120,obs+seq:120

sequential becomes the default mode if its validation perplexity is lower at both 0.2 and 0.3 and
its paired interval against one-shot obs lies below 1 at both; otherwise one-shot stays (it costs
one calibration pass less).

More tokens of each calibration document (issue 19.4; rule written before the run of 2026-12-07):

    python bench/bench_default_choice.py --split validation --candidates obs:120,obs:120x1024,obs:120x2048

the same 120 documents, longer. A longer calibration becomes the default if its validation perplexity
is lower than 512 tokens' at both 0.2 and 0.3 and its paired interval against obs:120 lies below 1 at
both; of two that pass, the shorter one unless the longer one's paired interval against it also lies
below 1 at both (calibration time grows with the tokens).

More calibration documents (issue 19.4; rule written before the run of 2026-12-07):

    python bench/bench_default_choice.py --split validation --candidates obs:120,obs:240,obs:360

validation documents disjoint from all three (``split_validation(docs, 360)``: later genres than
the held-out set's, so this is a fair but harder check). The same rule as for the tokens: lower
validation perplexity at both ratios and the paired interval against obs:120 below 1 at both; of two
that pass, the smaller unless the larger's paired interval against it also lies below 1 at both.
Outcome: the rule picked 240, but held-out pydoc was worse beyond its interval (issue 19.4's "not
worse on pydoc", which this rule did not score), so 120 stays (BENCHMARKS.md §3b, "Three more levers").
Neither longer documents (obs:120x1024, obs:120x2048) passed their rule. ``--split validation
--corpus pydoc`` scores pydoc's validation documents (index % 10 == 5; calibration is Brown's, so none
of them is calibrated on): a rule about the calibration text should score it too.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path


def _candidate(text: str) -> tuple[str, int, int]:
    """``"obs:120"`` -> ("obs", 120, 512); ``"obs:120x2048"`` -> ("obs", 120, 2048)."""
    method, size = text.split(":")
    docs, _, tokens = size.partition("x")
    return method, int(docs), int(tokens or 512)


def _key(method: str, n: int, tokens: int, ratio: float) -> str:
    """A row's name in --units-out / --pair-with files (the 512-token form is the older files')."""
    return f"{method}:{n}:{ratio}" if tokens == 512 else f"{method}:{n}x{tokens}:{ratio}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("validation", "test"), default="validation")
    parser.add_argument("--candidates", default="flap:40,flap:120,obs:40,obs:120")
    parser.add_argument("--ratios", default="0.2,0.3")
    parser.add_argument("--docs", type=int, default=None, help="evaluation documents (10 validation / 20 test)")
    parser.add_argument("--corpus", default="brown",
                        help="evaluation corpus (brown or pydoc; the calibration is always Brown's)")
    parser.add_argument("--units-out", type=Path, default=None, help="save per-document NLL of every row here")
    parser.add_argument("--pair-with", type=Path, default=None,
                        help="a --units-out file of an earlier run: pair each row with its same candidate and ratio")
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default bench/results/default_choice_<split>.json)")
    args = parser.parse_args()
    candidates = [_candidate(c) for c in args.candidates.split(",")]
    ratios = [float(r) for r in args.ratios.split(",")]

    from fnprune.corpus import load_corpus, split_heldout, split_validation
    from fnprune.evaluation.compare import paired_ratio
    from fnprune.evaluation.metrics import per_document_perplexity
    from fnprune.models.loading import load_model
    from fnprune.pruning.calibration import Calibration
    from fnprune.pruning.recipe import prune_with_networks
    from fnprune.pruning.spec import PruningSpec

    model, tok = load_model("smollm2-135m")
    docs = load_corpus("brown")
    calib = split_heldout(docs)[0]
    if args.split == "validation" and args.corpus == "brown":
        evaluation = split_validation(docs, max(n for _, n, _ in candidates))[:args.docs or 10]
    elif args.split == "validation":  # another corpus: none of its documents is calibrated on
        evaluation = split_validation(load_corpus(args.corpus), 0)[:args.docs or 10]
    else:
        evaluation = split_heldout(docs if args.corpus == "brown" else load_corpus(args.corpus))[1][:args.docs or 20]
    dense = per_document_perplexity(model, tok, evaluation, window=512, keep_units=True)
    print(f"{args.split}: {len(evaluation)} documents, dense PPL {dense['ppl']:.2f}", flush=True)
    calibrations = {}
    res, rows = {}, []
    earlier = json.loads(args.pair_with.read_text()) if args.pair_with else {}
    for method, n, tokens in candidates:
        size = n, tokens
        if size not in calibrations:  # every moment any candidate needs, in one pass per size
            calibrations[size] = Calibration(tok, calib[:n], tokens)
            t0 = time.perf_counter()
            calibrations[size].down_stats(model, second_moments=True, weighted=True)
            print(f"calibration on {n} docs x {tokens} tokens: {time.perf_counter() - t0:.0f} s", flush=True)
        for ratio in ratios:
            pruned = copy.deepcopy(model)
            t0 = time.perf_counter()
            base, *modes = method.split("+")
            prune_with_networks(pruned, None, PruningSpec(method=base, target_ratio=ratio, repair="lstsq",
                                                          sequential="seq" in modes,
                                                          recover_epochs=1 if "rec" in modes else 0),
                                calibrations[size])
            seconds = time.perf_counter() - t0
            res[method, n, tokens, ratio] = r = per_document_perplexity(pruned, tok, evaluation, window=512, keep_units=True)
            pair = paired_ratio(r, res[(*candidates[0], ratio)])
            key = _key(method, n, tokens, ratio)
            rows.append({"method": method, "calib_docs": n, "calib_tokens": tokens, "loadavg": os.getloadavg(), "ratio": ratio, "ppl": r["ppl"],
                         "x_dense": r["ppl"] / dense["ppl"], "paired_vs_first": pair, "prune_s": seconds,
                         "x_dense_interval": paired_ratio(r, dense)})
            if key in earlier:
                rows[-1]["paired_vs_earlier"] = p_earlier = paired_ratio(r, earlier[key])
                print(f"  vs the earlier run of {key}: {p_earlier['ratio']:.3f} [{p_earlier['low']:.3f}, "
                      f"{p_earlier['high']:.3f}] (earlier PPL {earlier[key]['ppl']:.2f})", flush=True)
            print(f"{method} on {n} docs x {tokens} tokens, ratio {ratio}: PPL {r['ppl']:.2f} ({r['ppl'] / dense['ppl']:.3f}x dense), "
                  f"paired vs {':'.join(map(str, candidates[0][:2]))} {pair['ratio']:.3f} "
                  f"[{pair['low']:.3f}, {pair['high']:.3f}], pruning {seconds:.1f} s", flush=True)
            del pruned
    if args.units_out:
        args.units_out.write_text(json.dumps({_key(m, n, t, r): {k: v for k, v in res[m, n, t, r].items()
                                                                 if k in ("ppl", "unit_nll", "unit_tokens")}
                                              for (m, n, t, r) in res} | {"dense": {k: dense[k] for k in
                                                                        ("ppl", "unit_nll", "unit_tokens")}}))
    out = args.out or (Path("bench/results") /
                       f"default_choice_{args.split}{'' if args.corpus == 'brown' else '_' + args.corpus}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"split": args.split, "n_docs": len(evaluation), "dense_ppl": dense["ppl"],
                               "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
