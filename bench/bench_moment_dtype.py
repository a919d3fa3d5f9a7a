"""Float32 or float64 moment sums for the default method? (issue 21.2, BENCHMARKS §12)

The layer-streamed calibration forms each batch's products ``xᵀx`` in float32 and sums them over
the calibration tokens in ``dtype``; the obs greedy and the repair then run in float64 on those
sums. This measures what summing in float32 instead of float64 changes, on the default model:

- per layer, the Jaccard of the kept neurons (obs at 20% and 30% of all parameters, default
  protected layers) and the relative difference of the summed moments;
- the validation perplexity of the two pruned models (``split_validation``: documents disjoint
  from calibration and from the held-out set), paired bootstrap ratio float32 / float64.

Both prunings are the recipe's (``prune_with_networks``, default obs) on a streamed ``Calibration``
whose ``moment_dtype`` is float64 or float32. The recorded run (bench/results/moment_dtype.json)
called the streamed obs scores and repair directly, before ``Calibration`` had that option.

The rule, written before the run (2026-12-06): float32 sums become the default if the paired
interval at both ratios contains 1 or lies below it *and* the per-layer kept-neuron Jaccard is at
least 0.99 in every layer; otherwise float64 stays.

    python bench/bench_moment_dtype.py --calib-docs 40 --out bench/results/moment_dtype.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calib-docs", type=int, default=40)
    parser.add_argument("--eval-docs", type=int, default=10)
    parser.add_argument("--ratios", default="0.2,0.3")
    parser.add_argument("--out", type=Path, default=Path("bench/results/moment_dtype.json"))
    args = parser.parse_args()

    from fnprune.corpus import load_corpus, split_heldout, split_validation
    from fnprune.evaluation.compare import paired_ratio
    from fnprune.evaluation.metrics import per_document_perplexity
    from fnprune.io import atomic_write_json
    from fnprune.models import load_model
    from fnprune.pruning.calibration import Calibration
    from fnprune.pruning.layerwise import streamed_layer_moments
    from fnprune.pruning.recipe import prune_with_networks
    from fnprune.pruning.spec import PruningSpec

    model, tok = load_model("smollm2-135m", dtype=torch.float32)
    docs = load_corpus("brown")
    calib = split_heldout(docs)[0][:args.calib_docs]
    evaluation = split_validation(docs, 120)[:args.eval_docs]
    result = {"machine": f"{os.cpu_count()} cores, torch {torch.__version__}", "calib_docs": len(calib),
              "eval_docs": len(evaluation), "loadavg_start": os.getloadavg(), "rows": []}

    # the summed moments themselves, layer by layer (float64 as the reference)
    moment_diff = []
    f64 = {a.layer: m.weighted_second_moment.clone()  # freed by the stream once the next layer starts
           for a, m in streamed_layer_moments(model, tok, calib, weighted=True, dtype=torch.float64)}
    for adapter, m in streamed_layer_moments(model, tok, calib, weighted=True, dtype=torch.float32):
        ref = f64[adapter.layer]
        moment_diff.append(float((m.weighted_second_moment.double() - ref).norm() / ref.norm()))
    del f64
    result["moment_relative_difference"] = {"max": max(moment_diff), "median": float(np.median(moment_diff))}

    dense = per_document_perplexity(model, tok, evaluation, window=512, keep_units=True)
    result["dense_ppl"] = dense["ppl"]
    # the recipe itself (obs + its least-squares repair, streamed), once per dtype of the sums; each
    # Calibration caches its greedy orders, so the second ratio reuses them
    calibrations = {dtype: Calibration(tok, calib, streamed=True, moment_dtype=dtype)
                    for dtype in (torch.float64, torch.float32)}
    for ratio in (float(r) for r in args.ratios.split(",")):
        runs = {}
        for dtype, calibration in calibrations.items():
            pruned = copy.deepcopy(model)
            keep = prune_with_networks(pruned, None, PruningSpec(target_ratio=ratio), calibration).keep
            runs[dtype] = (keep, per_document_perplexity(pruned, tok, evaluation, window=512, keep_units=True))
            del pruned
        (k64, r64), (k32, r32) = runs[torch.float64], runs[torch.float32]
        jac = [len(np.intersect1d(a, b)) / len(np.union1d(a, b)) for a, b in zip(k64, k32, strict=True)]
        row = {"ratio": ratio, "ppl_float64": r64["ppl"], "ppl_float32": r32["ppl"],
               "paired_float32_over_float64": paired_ratio(r32, r64), "min_layer_keep_jaccard": min(jac),
               "layers_with_a_different_choice": int(sum(j < 1 for j in jac)),
               "neurons_kept_differently": int(sum(len(np.setxor1d(a, b)) for a, b in zip(k64, k32, strict=True)))}
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
    result["loadavg_end"] = os.getloadavg()
    atomic_write_json(args.out, result, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
