"""Probe 2: block OBS (fast), allocations rel / sqrtrel / resid, calib docs from argv."""

import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from fnprune.analysis.networks import FunctionalNetworks
from fnprune.corpus import load_corpus, split_heldout, split_validation
from fnprune.evaluation.compare import paired_ratio
from fnprune.evaluation.metrics import per_document_perplexity
from fnprune.models.loading import load_model
from fnprune.models.mlp import find_mlps
from fnprune.pruning.budget import params_to_remove
from fnprune.pruning.calibration import Calibration
from fnprune.pruning.recipe import choose_keep
from fnprune.pruning.repair import down_weight_by_neuron
from fnprune.pruning.spec import PruningSpec
from fnprune.pruning.surgery import prune_model
from fnprune.tokens import padded_batches

torch.set_num_threads(2)
NCAL = int(sys.argv[1])
BLOCK = int(sys.argv[2])
SPLIT = sys.argv[3] if len(sys.argv) > 3 else "validation"
RIDGE = 1e-3

from obs_curve import obs_curve  # noqa: E402

model, tok = load_model("smollm2-135m")
docs = load_corpus("brown")
fn = FunctionalNetworks.load(str(Path(__file__).resolve().parents[1] / "results" / "recipe" / "run"))
calib = split_heldout(docs)[0][:NCAL]
evaluation = split_validation(docs, 120)[:10] if SPLIT == "validation" else split_heldout(docs)[1][:20]
dense = per_document_perplexity(model, tok, evaluation, window=512, keep_units=True)
print("dense", dense["ppl"], flush=True)
calibration = Calibration(tok, calib, 512)
t = time.time()
stats = calibration.down_stats(model, second_moments=True)
print("calib", time.time() - t, flush=True)
# residual stream energy per layer (calibration docs, first 40)
t = time.time()
seqs = [tok(d.text if hasattr(d, "text") else d["text"])["input_ids"][:512] for d in calib[:40]]
L = len(find_mlps(model))
energy = np.zeros(L + 1)
ntok = 0
with torch.no_grad():
    for ids, mask in padded_batches(seqs, 4):
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        mk = mask.bool()
        for l, h in enumerate(out.hidden_states):
            energy[l] += float((h[mk].double() ** 2).sum())
        ntok += int(mk.sum())
energy /= ntok
print("resid energy", np.round(energy, 1).tolist(), time.time() - t, flush=True)
adapters = find_mlps(model)
curves = {}
t = time.time()
for a in adapters:
    W = down_weight_by_neuron(a).detach().double()
    curves[a.layer] = obs_curve(
        W, stats.second_moment[a.layer], stats.mean[a.layer], int(0.8 * a.width), BLOCK
    )
print("obs curves", time.time() - t, flush=True)
ppn = [a.params_per_neuron for a in adapters]
res = {}
for ratio in (0.2, 0.3):
    spec = PruningSpec(method="flap", target_ratio=ratio, repair="lstsq")
    keep_flap, protected, _ = choose_keep(spec.validated(True), model, fn, stats)
    n_remove = params_to_remove(model, ratio, "all")
    variants = {"flap": keep_flap}
    for norm in ("rel", "sqrtrel", "resid", "resid_in"):
        items = []
        for a in adapters:
            if a.layer in protected:
                continue
            o, c, ref = curves[a.layer]
            cm = np.maximum.accumulate(c)
            v = {
                "rel": cm / ref,
                "sqrtrel": cm / np.sqrt(ref),
                "resid": cm / energy[a.layer + 1],
                "resid_in": cm / energy[a.layer],
            }[norm]
            items += [(v[k], a.layer, k) for k in range(len(o))]
        items.sort()
        removed = {a.layer: 0 for a in adapters}
        got = 0
        for v, l, k in items:
            if got >= n_remove:
                break
            removed[l] += 1
            got += ppn[l]
        variants[f"obs-{norm}"] = [
            np.sort(np.setdiff1d(np.arange(a.width), curves[a.layer][0][: removed[a.layer]]))
            for a in adapters
        ]
        print(norm, ratio, [a.width - removed[a.layer] for a in adapters], flush=True)
    for name, keep in variants.items():
        pruned = copy.deepcopy(model)
        fits = {}
        prune_model(pruned, keep, repair=stats, ridge=RIDGE, fits=fits)
        r = per_document_perplexity(pruned, tok, evaluation, window=512, keep_units=True)
        res[name, ratio] = r
        err = np.mean([f.error_repaired for f in fits.values()])
        p = paired_ratio(r, res["flap", ratio])
        print(
            f"{ratio} {name}: PPL {r['ppl']:.2f} ({r['ppl'] / dense['ppl']:.3f}x) err {err:.4f} "
            f"paired vs flap {p['ratio']:.3f} [{p['low']:.3f},{p['high']:.3f}]",
            flush=True,
        )
        del pruned
