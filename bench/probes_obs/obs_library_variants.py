"""Probe 5 (library obs): ridge and protected-layer variants at 120 calibration docs, validation split."""

import copy
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from fnprune.analysis.networks import FunctionalNetworks
from fnprune.corpus import load_corpus, split_heldout, split_validation
from fnprune.evaluation.compare import paired_ratio
from fnprune.evaluation.metrics import per_document_perplexity
from fnprune.models.loading import load_model
from fnprune.pruning.calibration import Calibration
from fnprune.pruning.recipe import prune_with_networks
from fnprune.pruning.spec import PruningSpec
from fnprune.pruning.statistics import collect_down_input_stats

torch.set_num_threads(2)
NCAL = int(sys.argv[1])
SPLIT = sys.argv[2]
VARIANTS = sys.argv[3].split(";")
model, tok = load_model("smollm2-135m")
docs = load_corpus("brown")
fn = FunctionalNetworks.load(str(Path(__file__).resolve().parents[1] / "results" / "recipe" / "run"))
calib = split_heldout(docs)[0][:NCAL]
evaluation = split_validation(docs, 120)[:10] if SPLIT == "validation" else split_heldout(docs)[1][:20]
dense = per_document_perplexity(model, tok, evaluation, window=512, keep_units=True)
print("dense", dense["ppl"], flush=True)
cal = Calibration(tok, calib, 512)
path = f"/tmp/fnprune_probe_stats{NCAL}.pt"  # cached calibration statistics
if os.path.exists(path):
    cal._down = torch.load(path, weights_only=False)
else:
    t = time.time()
    cal._down = collect_down_input_stats(model, tok, calib, 512, second_moments=True, weighted=True)
    print("calibration", time.time() - t, flush=True)
    torch.save(cal._down, path)
res = {}
for ratio in (0.2, 0.3):
    for v in VARIANTS:
        kw = eval(f"dict({v})")
        pruned = copy.deepcopy(model)
        t = time.time()
        out = prune_with_networks(pruned, fn, PruningSpec(target_ratio=ratio, **kw), cal)
        dt = time.time() - t
        r = per_document_perplexity(pruned, tok, evaluation, window=512, keep_units=True)
        res[v, ratio] = r
        p = paired_ratio(r, res[VARIANTS[0], ratio])
        print(
            f"{ratio} {v}: PPL {r['ppl']:.2f} ({r['ppl'] / dense['ppl']:.3f}x) paired vs first {p['ratio']:.3f} "
            f"[{p['low']:.3f},{p['high']:.3f}] prune {dt:.1f}s removed {out.removed_fraction:.4f} widths {out.widths}",
            flush=True,
        )
        del pruned
