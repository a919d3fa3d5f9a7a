"""Do chosen networks protect a capability the calibration text does not cover? (issue 22, BENCHMARKS.md §10)

    nice -n 5 python bench/bench_protect.py                     # the recorded run
    nice -n 5 python bench/bench_protect.py --quick              # a smoke run (tiny sizes, numbers meaningless)

Domain A (calibrated on): Brown, all genres interleaved (``sampling="stratified"``); calibration = the
first ``--calib-docs`` (40) calibration-split documents x 512 tokens; validation = the first 10 of
``split_validation`` (index % 10 == 5, disjoint from calibration); test = the first 12 held-out
documents (index % 10 == 0). Domain B (protected, never calibrated on except in (e)): pydoc, by index
% 10: {1, 2, 3} = selection (the analysis, B's activity, the B part of (e)), {4, 5} = validation,
{0, 7} = test. (Sizes cut before any result was seen: the shared 2-core machine ran at a load of
about 14.) Each document is scored alone on its first 512 tokens (per-document NLL, the
unit of the paired bootstrap, ``fnprune.compare.paired_ratio``, 2,000 resamples).

Networks: one default analysis (32 components x 16 restarts per layer, seed 0) of 30 A calibration
documents + the B selection documents (512 tokens each), so its texts include B. Every pruning uses
the default method (obs + its least-squares repair), one shared ``Calibration`` on A.

Conditions, each at the same parameter budget (20% and 30% of all parameters):
  (a) default, nothing forced;
  (b) the n networks most selective for B forced (``fnprune.protect.propose_networks``), rule and n
      chosen on validation (below); rule ``profile`` is the web app's guided selection ("Top N most
      selective for" pydoc: networks whose genre profile peaks on pydoc, by peak minus mean),
      rule ``activity`` ranks networks by the mean log ratio of their key neurons' RMS activation on
      B vs A;
  (c) control: the same number of neurons per layer forced, B's highest-RMS neurons (no ICA);
  (c2) control: the same counts, the neurons with the highest RMS ratio B / A (no ICA);
  (d) control: the same counts at random (seed 0);
  (e) no networks, calibration on A + a little B at the same token budget: the first 36 A calibration
      documents + B selection documents up to the token count of the 4 A documents left out.

The rule, written before the run:
  1. Choosing (b), on validation at 20%: for rule in (profile, activity) and n in --sweep, the paired
     ratio to (a) on validation A and on validation B. Chosen: the (rule, n) with the lowest B ratio
     among those whose A ratio (point estimate) is <= 1.02; if none qualifies, the lowest B ratio
     overall (and the 2% target is then reported as missed).
  2. Reported on test at 20% and 30%: (b) meets issue 22's target when its paired ratio to (a), to
     (c), to (c2) and to (d) on test B has its upper 95% bound below 1, and its paired ratio to (a) on
     test A is <= 1.02 (point estimate; interval reported). If (c), (c2) or (e) is as good as (b) on B
     (interval of (b) / it contains or exceeds 1) at no larger cost on A, that is said first.
  3. The curve: the sweep's A cost and B gain (paired to (a)) on validation, per rule.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path("bench/results/protect.json")


def main() -> None:  # noqa: C901  (one experiment, read top to bottom)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratios", default="0.2,0.3")
    parser.add_argument("--sweep", default="10,40,160", help="numbers of networks tried for (b)")
    parser.add_argument("--calib-docs", type=int, default=40)
    parser.add_argument("--analysis-a-docs", type=int, default=30)
    parser.add_argument("--run-dir", type=Path, default=Path("bench/results/protect_run"),
                        help="the analysis is saved here and reused when it exists")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes")
    parser.add_argument("--model", default="smollm2-135m", help="tiny-llama for a smoke run of the script")
    args = parser.parse_args()

    import torch

    from fnprune.compare import paired_ratio
    from fnprune.corpus import load_corpus, split_heldout, split_validation
    from fnprune.evaluate import per_document_perplexity
    from fnprune.models import load_model
    from fnprune.networks import FunctionalNetworks, analyze
    from fnprune.protect import activity_from_stats, control_mask, domain_activity, propose_networks
    from fnprune.recipe import Calibration, PruningSpec, prune_with_networks
    from fnprune.tokens import encode_documents

    t_start = time.perf_counter()
    ratios = [float(r) for r in args.ratios.split(",")]
    sweep = [int(n) for n in args.sweep.split(",")]
    max_tokens = 64 if args.quick else 512
    model, tok = load_model(args.model)
    brown = load_corpus("brown", sampling="stratified")
    a_cal_split, a_held = split_heldout(brown)
    a_calib = a_cal_split[:args.calib_docs]
    a_val = split_validation(brown, args.calib_docs)[:10]
    a_test = a_held[:12]
    pydoc = load_corpus("pydoc")
    b_sel = [d for i, d in enumerate(pydoc) if i % 10 in (1, 2, 3)]
    b_val = [d for i, d in enumerate(pydoc) if i % 10 in (4, 5)]
    b_test = [d for i, d in enumerate(pydoc) if i % 10 in (0, 7)]
    if args.quick:
        a_calib, a_val, a_test, b_sel, b_val, b_test = (a_calib[:8], a_val[:3], a_test[:3], b_sel[:4], b_val[:3],
                                                        b_test[:3])
    sets = {"val_A": a_val, "val_B": b_val, "test_A": a_test, "test_B": b_test}
    result: dict = {
        "command": "python " + " ".join(sys.argv), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "torch_threads": torch.get_num_threads(), "max_tokens": max_tokens,
        "docs": {"A_calibration": len(a_calib), "B_selection": len(b_sel)} | {k: len(v) for k, v in sets.items()},
        "ratios": ratios, "sweep_n": sweep, "dense": {}, "sweep": [], "conditions": [], "timings_s": {}}

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(args.out)

    def score(m, names) -> dict:
        return {k: per_document_perplexity(m, tok, sets[k], window=max_tokens, keep_units=True) for k in names}

    dense = score(model, list(sets))
    result["dense"] = {k: v["ppl"] for k, v in dense.items()}
    print("dense:", {k: round(v["ppl"], 2) for k, v in dense.items()}, flush=True)

    # -- the analysis of A + B texts -----------------------------------------------------------
    t0 = time.perf_counter()
    run_dir = args.run_dir if not args.quick else args.run_dir.with_name(f"{args.run_dir.name}_quick_{args.model}")
    if (run_dir / "run.json").exists():
        fn = FunctionalNetworks.load(run_dir)
    else:
        fn = analyze(model, tok, a_calib[:args.analysis_a_docs] + b_sel, n_components=8 if args.quick else 32,
                     n_init=4 if args.quick else 16, max_tokens=max_tokens, random_state=0,
                     **({"threshold": 1.5} if args.quick else {}),
                     model_spec=args.model, corpus_spec="brown+pydoc")
        fn.save(run_dir)
    result["timings_s"]["analysis"] = time.perf_counter() - t0
    result["analysis"] = {"n_components": fn.n_components, "n_tokens": int(fn.info["n_tokens"]),
                          "threshold": fn.threshold, "documents": len(fn.documents)}
    print(f"analysis: {fn.n_components} networks, {fn.info['n_tokens']} tokens "
          f"({result['timings_s']['analysis']:.0f} s)", flush=True)

    # -- calibration on A, activity on A and B ------------------------------------------------------
    t0 = time.perf_counter()
    calib = Calibration(tok, a_calib, max_tokens)
    stats = calib.down_stats(model, second_moments=False, weighted=True)
    result["timings_s"]["calibration_A"] = time.perf_counter() - t0
    activity_a = activity_from_stats(stats)
    activity_b = domain_activity(model, tok, b_sel, max_tokens=max_tokens)
    n_a_tokens = sum(len(s) for s in encode_documents(tok, a_calib, max_tokens))

    def prune(ratio, *, networks=None, forced=None, calibration=calib):
        pruned = copy.deepcopy(model)
        t = time.perf_counter()
        out = prune_with_networks(pruned, fn if networks else None,
                                  PruningSpec(target_ratio=ratio, networks=tuple(networks) if networks else None),
                                  calibration, forced=forced)
        return pruned, out, time.perf_counter() - t

    def paired(r, ref, names) -> dict:
        return {k: paired_ratio(r[k], ref[k]) for k in names}

    def fmt(p) -> str:
        return f"{p['ratio']:.3f} [{p['low']:.3f}, {p['high']:.3f}]"

    # -- (a) and the sweep at the first ratio, on validation and test ----------------------------------
    r0 = ratios[0]
    base: dict = {}
    base_keep: dict = {}
    for ratio in ratios:
        pruned, out, secs = prune(ratio)
        base[ratio] = score(pruned, list(sets) if ratio == r0 else ["test_A", "test_B"])
        base_keep[ratio] = out.keep
        result["conditions"].append({"condition": "a", "ratio": ratio, "ppl": {k: v["ppl"] for k, v in base[ratio].items()},
                                     "x_dense": paired(base[ratio], dense, list(base[ratio])), "prune_s": secs,
                                     "removed_fraction": out.removed_fraction, "n_forced": 0})
        print(f"(a) {ratio}: " + ", ".join(f"{k} {v['ppl']:.2f}" for k, v in base[ratio].items()), flush=True)
        save()

    def kept_anyway(forced, ratio) -> int:
        return int(sum(np.isin(np.flatnonzero(forced[layer]), k).sum() for layer, k in enumerate(base_keep[ratio])))

    proposals = {}
    validation = ["val_A", "val_B"]
    for n in sweep:
        for rule in ("profile", "activity"):
            prop = propose_networks(fn, n, rule=rule, activity_b=activity_b, activity_a=activity_a, label="pydoc")
            proposals[rule, n] = prop
            try:
                pruned, out, secs = prune(r0, networks=prop.networks)
            except Exception as exc:  # a choice over the budget: recorded, not fatal
                result["sweep"].append({"rule": rule, "n": n, "error": str(exc)})
                print(f"sweep {rule} n={n}: {exc}", flush=True)
                continue
            r = score(pruned, validation)
            row = {"rule": rule, "n": n, "n_networks": len(prop.networks), "n_forced": prop.n_forced,
                   "forced_kept_by_a": kept_anyway(prop.forced, r0), "ratio": r0,
                   "ppl": {k: v["ppl"] for k, v in r.items()}, "vs_a": paired(r, base[r0], validation), "prune_s": secs,
                   "networks": prop.networks}
            result["sweep"].append(row)
            print(f"sweep {rule} n={n} ({len(prop.networks)} networks, {prop.n_forced} forced, "
                  f"{row['forced_kept_by_a']} kept by (a)): " + ", ".join(f"{k} {fmt(p)}" for k, p in row["vs_a"].items()),
                  flush=True)
            save()

    # -- the pre-written choice ------------------------------------------------------------------------
    ok = [s for s in result["sweep"] if "error" not in s]
    qualifying = [s for s in ok if s["vs_a"]["val_A"]["ratio"] <= 1.02]
    pick = min(qualifying or ok, key=lambda s: s["vs_a"]["val_B"]["ratio"])
    result["choice"] = {"rule": pick["rule"], "n": pick["n"], "met_cost_on_validation": bool(qualifying)}
    print(f"chosen on validation: rule {pick['rule']}, n={pick['n']}"
          + ("" if qualifying else " (no setting kept the A cost <= 2%)"), flush=True)
    prop = proposals[pick["rule"], pick["n"]]
    counts = prop.forced_per_layer

    # -- (e): A + a little B at the same token budget --------------------------------------------------
    n_keep_a = max(1, len(a_calib) - max(1, len(a_calib) // 10))
    budget = n_a_tokens - sum(len(s) for s in encode_documents(tok, a_calib[:n_keep_a], max_tokens))
    b_part, used = [], 0
    for d in b_sel:
        if used >= budget:
            break
        b_part.append(d)
        used += len(encode_documents(tok, [d], max_tokens)[0])
    calib_e = Calibration(tok, a_calib[:n_keep_a] + b_part, max_tokens)
    result["condition_e"] = {"A_docs": n_keep_a, "B_docs": len(b_part), "B_tokens": used,
                             "tokens": n_a_tokens - budget + used, "A_only_tokens": n_a_tokens}

    controls = {"d": "random", "c": "top-activity", "e": None, "c2": "top-ratio"}  # most needed first
    test = ["test_A", "test_B"]
    for ratio in ratios:
        runs = {}
        pruned, out, secs = prune(ratio, networks=prop.networks)
        runs["b"] = (score(pruned, test), out, secs, prop.n_forced)
        for name, kind in [("b", "")] + list(controls.items()):
            if name == "e":
                pruned, out, secs = prune(ratio, calibration=calib_e)
                runs[name] = (score(pruned, test), out, secs, 0)
            elif name != "b":
                mask = control_mask(counts, kind, activity_b=activity_b, activity_a=activity_a, seed=0)
                pruned, out, secs = prune(ratio, forced=mask)
                runs[name] = (score(pruned, test), out, secs, int(mask.sum()))
            r, out, secs, n_forced = runs[name]
            row = {"condition": name, "ratio": ratio, "ppl": {k: v["ppl"] for k, v in r.items()},
                   "vs_a": paired(r, base[ratio], test), "x_dense": paired(r, dense, test), "prune_s": secs,
                   "removed_fraction": out.removed_fraction, "n_forced": n_forced}
            if name != "b":
                row["b_vs_this"] = paired(runs["b"][0], r, test)
            result["conditions"].append(row)
            print(f"({name}) {ratio}: A {r['test_A']['ppl']:.2f} B {r['test_B']['ppl']:.2f}; vs (a) "
                  + ", ".join(f"{k} {fmt(p)}" for k, p in row["vs_a"].items())
                  + ("" if name == "b" else "; (b)/this " + ", ".join(f"{k} {fmt(p)}" for k, p in row["b_vs_this"].items())),
                  flush=True)
            save()
    result["timings_s"]["total"] = time.perf_counter() - t_start
    save()
    print(f"wrote {args.out} ({result['timings_s']['total']:.0f} s)")


if __name__ == "__main__":
    main()
