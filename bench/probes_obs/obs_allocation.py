"""Probe (issue 19.4): how obs turns its per-layer costs into widths, on the validation split.

    python bench/probes_obs/obs_allocation.py [n_calibration_docs] [ratios] [out.json]

obs ranks every unprotected neuron by ``w_l · c_k`` where ``c_k`` is the exact rise of the layer's
(residual-weighted) output error at the greedy's k-th removal (``scores.obs_layer_scores``: the
running maximum of the marginal costs): one global threshold on the marginal cost, the allocation
that minimises the *sum* of the layers' relative errors. The variant scores each neuron by the
layer's *total* relative error after its removal (``w_l · Σ_{j≤k} c_j``): every pruned layer ends
with about the same relative error (minimax). Same calibration (the library's default: the first
``n`` calibration documents x 512 tokens), same 10 validation documents
(``split_validation(docs, 120)[:10]``), each scored alone on its first 512 tokens; paired to the
shipped allocation. The rule, written before the run of 2026-12-07: the variant replaces the
shipped allocation only if its validation perplexity is lower at both 0.2 and 0.3 and its paired
interval lies below 1 at both.
"""

import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

from fnprune.corpus import load_corpus, split_heldout, split_validation
from fnprune.evaluation.compare import paired_ratio
from fnprune.evaluation.metrics import per_document_perplexity
from fnprune.models.loading import load_model
from fnprune.pruning import scores
from fnprune.pruning.calibration import Calibration
from fnprune.pruning.recipe import prune_with_networks
from fnprune.pruning.spec import PruningSpec

NCAL = int(sys.argv[1]) if len(sys.argv) > 1 else 120
RATIOS = [float(r) for r in (sys.argv[2] if len(sys.argv) > 2 else "0.2,0.3").split(",")]
OUT = Path(sys.argv[3]) if len(sys.argv) > 3 else Path("bench/results/obs_allocation_validation.json")
shipped = scores.obs_layer_scores


def cumulative_scores(*args, **kwargs):
    """The layer's total relative error after each removal (minimax allocation): the shipped scores of
    the running totals of the greedy's costs instead of the costs themselves."""
    real = scores.obs_removal_order

    def totals(*a, **k):
        order, cost = real(*a, **k)
        return order, np.cumsum(np.maximum(cost, 0.0))

    scores.obs_removal_order = totals
    try:
        return shipped(*args, **kwargs)
    finally:
        scores.obs_removal_order = real


VARIANTS = {"marginal (shipped)": shipped, "cumulative (minimax)": cumulative_scores}

model, tok = load_model("smollm2-135m")
docs = load_corpus("brown")
evaluation = split_validation(docs, 120)[:10]
dense = per_document_perplexity(model, tok, evaluation, window=512, keep_units=True)
print(f"validation: {len(evaluation)} documents, dense PPL {dense['ppl']:.2f}", flush=True)
cal = Calibration(tok, split_heldout(docs)[0][:NCAL], 512)
t0 = time.perf_counter()
cal.down_stats(model, second_moments=True, weighted=True)
print(f"calibration on {NCAL} docs: {time.perf_counter() - t0:.0f} s", flush=True)
res, rows = {}, []
for ratio in RATIOS:
    for name, fn in VARIANTS.items():
        scores.obs_layer_scores = fn
        cal._obs.clear()  # the scores are cached per ridge: recompute them with this variant
        pruned = copy.deepcopy(model)
        out = prune_with_networks(pruned, None, PruningSpec(method="obs", target_ratio=ratio, repair="lstsq"), cal)
        res[name, ratio] = r = per_document_perplexity(pruned, tok, evaluation, window=512, keep_units=True)
        p = paired_ratio(r, res[next(iter(VARIANTS)), ratio])
        print(f"{ratio} {name}: PPL {r['ppl']:.2f} ({r['ppl'] / dense['ppl']:.3f}x dense), paired vs shipped "
              f"{p['ratio']:.3f} [{p['low']:.3f}, {p['high']:.3f}], widths {out.widths}", flush=True)
        rows.append({"variant": name, "ratio": ratio, "ppl": r["ppl"], "x_dense": r["ppl"] / dense["ppl"],
                     "paired_vs_shipped": p, "widths": [int(w) for w in out.widths]})
        del pruned
scores.obs_layer_scores = shipped
OUT.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "calib_docs": NCAL,
                           "n_docs": len(evaluation), "dense_ppl": dense["ppl"], "rows": rows}, indent=1))
print(f"wrote {OUT}")
