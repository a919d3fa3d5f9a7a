"""Probe: do chosen networks still do what they did after recovery by distillation? (BENCHMARKS §3b)

    python bench/probes_obs/recover_fidelity.py RUN_DIR [out.json]

RUN_DIR: the default analysis of the default model (``fnprune analyze --model smollm2-135m --corpus brown
--texts 40 --max-tokens 512 --runs 1 --seed 0 --out RUN_DIR``). The 20 most stable networks are chosen as
a constraint (every key neuron kept) and the model is pruned with the default recipe (obs, 20% of all
parameters, 120 calibration documents); recovery (one epoch, the default learning rate) then trains the
MLP weights, the chosen networks' neurons included. Network fidelity (fnprune.evaluation.fidelity: the
correlation of each network's time course dense vs pruned, and the relative change of its layer's output
on the network's top tokens) on the 20 held-out Brown documents, before and after recovery, and the
held-out perplexity of both (each document alone on its first 512 tokens). A measurement: no default
depends on it.
"""

import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

from fnprune.analysis.networks import FunctionalNetworks
from fnprune.corpus import load_corpus, split_heldout
from fnprune.evaluation.compare import paired_ratio
from fnprune.evaluation.fidelity import dense_reference, fidelity_against, most_stable_networks
from fnprune.evaluation.metrics import per_document_perplexity
from fnprune.models.loading import load_model
from fnprune.pruning.calibration import Calibration
from fnprune.pruning.recipe import prune_with_networks
from fnprune.pruning.recover import distill
from fnprune.pruning.spec import PruningSpec

RUN = Path(sys.argv[1])
OUT = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("bench/results/recover_fidelity.json")

model, tok = load_model("smollm2-135m")
fn = FunctionalNetworks.load(RUN)
docs = load_corpus("brown")
calib, heldout = split_heldout(docs)
calib, heldout = calib[:120], heldout[:20]
ids = most_stable_networks(fn, 20)
cal = Calibration(tok, calib, 512)
pruned = copy.deepcopy(model)
outcome = prune_with_networks(pruned, fn, PruningSpec(method="obs", target_ratio=0.2, networks=tuple(ids)), cal)
assert all(c.n_kept == c.n_key for c in outcome.chosen)
reference = dense_reference(model, tok, heldout, fn, ids)
recovered = copy.deepcopy(pruned)
t0 = time.perf_counter()
rec = distill(recovered, model, tok, calib, epochs=1, lr=PruningSpec().recover_lr)
seconds = time.perf_counter() - t0
dense_ppl = per_document_perplexity(model, tok, heldout, window=512, keep_units=True)
res = {}
for name, m in (("obs", pruned), ("obs + recovery", recovered)):
    fid = fidelity_against(reference, m, outcome.keep)
    ppl = per_document_perplexity(m, tok, heldout, window=512, keep_units=True)
    r = np.array([f.correlation for f in fid])
    top = np.array([f.output_change_top for f in fid])
    res[name] = {"correlation": r.tolist(), "output_change_top": top.tolist(), "ppl": ppl["ppl"],
                 "x_dense": paired_ratio(ppl, dense_ppl), "units": ppl,
                 "median_r": float(np.median(r)), "worst_r": float(r.min()),
                 "median_output_change_top": float(np.median(top))}
    print(f"{name}: median r {np.median(r):.3f}, worst {r.min():.3f}, median output change (top) "
          f"{np.median(top):.3f}, PPL {ppl['ppl']:.2f}", flush=True)
diff = np.array(res["obs + recovery"]["correlation"]) - np.array(res["obs"]["correlation"])
summary = {"networks": ids, "recovery_s": seconds, "kl_first": rec.kl_first, "kl_last": rec.kl_last,
           "r_change_median": float(np.median(diff)), "r_change_min": float(diff.min()),
           "r_change_max": float(diff.max()), "n_r_lower": int((diff < 0).sum()),
           "ppl_paired": paired_ratio(res["obs + recovery"]["units"], res["obs"]["units"]),
           "dense_ppl": dense_ppl["ppl"]}
print(summary, flush=True)
for v in res.values():
    v.pop("units")
OUT.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), **summary, "rows": res}, indent=1))
print(f"wrote {OUT}")
