"""Probe 3: token-weighted (1/||h_t||^2 of the residual stream entering the layer) Gram for repair and OBS."""

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
from fnprune.models.mlp import decoder_layers, find_mlps
from fnprune.pruning.budget import params_to_remove
from fnprune.pruning.calibration import Calibration
from fnprune.pruning.recipe import choose_keep
from fnprune.pruning.repair import down_weight_by_neuron
from fnprune.pruning.spec import PruningSpec
from fnprune.pruning.statistics import DownInputStats
from fnprune.pruning.surgery import prune_model
from fnprune.tokens import encode_documents, padded_batches

torch.set_num_threads(2)
NCAL = int(sys.argv[1])
SPLIT = sys.argv[2] if len(sys.argv) > 2 else "validation"
RIDGE = 1e-3
BLOCK = 16
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

# weighted stats
adapters = find_mlps(model)
blocks = decoder_layers(model)
L = len(adapters)
G = [torch.zeros((a.width, a.width), dtype=torch.float64) for a in adapters]
M = [torch.zeros(a.width, dtype=torch.float64) for a in adapters]
WS = [0.0] * L
st = {}
hs = []
for a in adapters:

    def pre(m, args, kwargs, l=a.layer):
        h = args[0] if args else kwargs["hidden_states"]
        st[l] = 1.0 / h.float().pow(2).mean(-1).reshape(-1)

    hs.append(blocks[a.layer].register_forward_pre_hook(pre, with_kwargs=True))

    def dpre(m, i, l=a.layer):
        x = i[0].reshape(-1, i[0].shape[-1])
        mk = st["mask"]
        w = st[l][mk]
        x = x[mk].float()
        G[l] += ((x * w[:, None]).T @ x).double()
        M[l] += (x * w[:, None]).sum(0).double()
        WS[l] += float(w.sum())

    hs.append(a.down.register_forward_pre_hook(dpre))
seqs = encode_documents(tok, calib, 512)
t = time.time()
with torch.no_grad():
    for ids, mask in padded_batches(seqs, 4):
        st["mask"] = mask.reshape(-1).bool()
        model(input_ids=ids, attention_mask=mask)
for h in hs:
    h.remove()
wstats = DownInputStats(
    mean=[M[l] / WS[l] for l in range(L)],
    var=stats.var,
    l2=stats.l2,
    n_tokens=stats.n_tokens,
    second_moment=[G[l] / WS[l] for l in range(L)],
)
wscale = [WS[l] / stats.n_tokens for l in range(L)]  # mean weight: abs costs in per-token relative units
print("weighted calib", time.time() - t, flush=True)

curves, wcurves = {}, {}
for a in adapters:
    W = down_weight_by_neuron(a).detach().double()
    curves[a.layer] = obs_curve(
        W, stats.second_moment[a.layer], stats.mean[a.layer], int(0.8 * a.width), BLOCK
    )
    wcurves[a.layer] = obs_curve(
        W, wstats.second_moment[a.layer], wstats.mean[a.layer], int(0.8 * a.width), BLOCK
    )
ppn = [a.params_per_neuron for a in adapters]


def alloc(curv, protected, n_remove, f):
    items = []
    for a in adapters:
        if a.layer in protected:
            continue
        o, c, ref = curv[a.layer]
        v = f(np.maximum.accumulate(c), ref, a.layer)
        items += [(v[k], a.layer, k) for k in range(len(o))]
    items.sort()
    removed = {a.layer: 0 for a in adapters}
    got = 0
    for v, l, k in items:
        if got >= n_remove:
            break
        removed[l] += 1
        got += ppn[l]
    return [np.sort(np.setdiff1d(np.arange(a.width), curv[a.layer][0][: removed[a.layer]])) for a in adapters]


res = {}
for ratio in (0.2, 0.3):
    spec = PruningSpec(method="flap", target_ratio=ratio, repair="lstsq")
    keep_flap, protected, _ = choose_keep(spec.validated(True), model, fn, stats)
    n_remove = params_to_remove(model, ratio, "all")
    variants = {
        ("flap", "u"): keep_flap,
        ("flap", "w"): keep_flap,
        ("obs-sqrtrel", "u"): alloc(curves, protected, n_remove, lambda c, r, l: c / np.sqrt(r)),
        ("wobs-abs", "w"): alloc(wcurves, protected, n_remove, lambda c, r, l: c * wscale[l]),
        ("wobs-rel", "w"): alloc(wcurves, protected, n_remove, lambda c, r, l: c / r),
        ("wobs-sqrtrel", "w"): alloc(wcurves, protected, n_remove, lambda c, r, l: c / np.sqrt(r)),
    }
    for (name, rep), keep in variants.items():
        if name.startswith("wobs"):
            print(name, ratio, [len(k) for k in keep], flush=True)
        pruned = copy.deepcopy(model)
        fits = {}
        prune_model(pruned, keep, repair=stats if rep == "u" else wstats, ridge=RIDGE, fits=fits)
        r = per_document_perplexity(pruned, tok, evaluation, window=512, keep_units=True)
        res[name, rep, ratio] = r
        p = paired_ratio(r, res["flap", "u", ratio])
        print(
            f"{ratio} {name} repair-{rep}: PPL {r['ppl']:.2f} ({r['ppl'] / dense['ppl']:.3f}x) "
            f"paired vs flap {p['ratio']:.3f} [{p['low']:.3f},{p['high']:.3f}]",
            flush=True,
        )
        del pruned
