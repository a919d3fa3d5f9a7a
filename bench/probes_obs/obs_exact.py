"""Probe: structured OBS selection (greedy, exact least-squares error) vs FLAP scores, same repair."""

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
from fnprune.pruning.repair import _augmented_moment, down_weight_by_neuron
from fnprune.pruning.spec import PruningSpec
from fnprune.pruning.surgery import prune_model

torch.set_num_threads(2)
NCAL = int(sys.argv[1]) if len(sys.argv) > 1 else 40
RIDGE = 1e-3


def obs_curve(W, S, mu, max_remove, ridge=RIDGE):
    """Greedy structured OBS: order of removal and cost of each step (absolute output error increase)."""
    n = S.shape[0]
    G = _augmented_moment(S, mu)
    lam = ridge * float(torch.diagonal(S).mean())
    H = G.clone()
    H[range(n), range(n)] += lam
    Hinv = torch.linalg.inv(H)
    Wz = torch.cat([W, torch.zeros((W.shape[0], 1), dtype=torch.float64)], 1).clone()
    alive = torch.ones(n + 1, dtype=torch.bool)
    order, costs = [], []
    for _ in range(max_remove):
        d = torch.diagonal(Hinv)[:n]
        c = (Wz[:, :n] ** 2).sum(0) / d.clamp_min(1e-30)
        c[~alive[:n]] = float("inf")
        j = int(torch.argmin(c))
        order.append(j)
        costs.append(float(c[j]))
        row = Hinv[j] / Hinv[j, j]
        Wz -= torch.outer(Wz[:, j], row)
        Hinv -= torch.outer(Hinv[:, j], row)
        alive[j] = False
    ref = float(
        torch.einsum(
            "hi,ij,hj->",
            torch.cat([W, torch.zeros((W.shape[0], 1), dtype=torch.float64)], 1),
            G,
            torch.cat([W, torch.zeros((W.shape[0], 1), dtype=torch.float64)], 1),
        )
    )
    return np.array(order), np.array(costs), ref


model, tok = load_model("smollm2-135m")
docs = load_corpus("brown")
fn = FunctionalNetworks.load(str(Path(__file__).resolve().parents[1] / "results" / "recipe" / "run"))
calib = split_heldout(docs)[0][:NCAL]
evaluation = split_validation(docs, 120)[:10]
dense = per_document_perplexity(model, tok, evaluation, window=512, keep_units=True)
print("dense", dense["ppl"], flush=True)
calibration = Calibration(tok, calib, 512)
t = time.time()
stats = calibration.down_stats(model, second_moments=True)
print("calib", time.time() - t, flush=True)
adapters = find_mlps(model)
curves = {}
t = time.time()
for a in adapters:
    W = down_weight_by_neuron(a).detach().double()
    o, c, ref = obs_curve(W, stats.second_moment[a.layer], stats.mean[a.layer], int(0.8 * a.width))
    curves[a.layer] = (o, c, ref)
print("obs curves", time.time() - t, flush=True)
ppn = [a.params_per_neuron for a in adapters]
res = {}
for ratio in (0.2, 0.3):
    spec = PruningSpec(method="flap", target_ratio=ratio, repair="lstsq")
    keep_flap, protected, _ = choose_keep(spec.validated(True), model, fn, stats)
    widths = [len(k) for k in keep_flap]
    n_remove = params_to_remove(model, ratio, "all")
    variants = {"flap": keep_flap}
    # OBS inside FLAP widths
    variants["obs@flapw"] = [
        np.sort(np.setdiff1d(np.arange(a.width), curves[a.layer][0][: a.width - w]))
        if w < a.width
        else np.arange(a.width)
        for a, w in zip(adapters, widths)
    ]
    # OBS global allocation with normalisations
    for norm in ("rel", "abs", "sqrtrel"):
        items = []
        for a in adapters:
            if a.layer in protected:
                continue
            o, c, ref = curves[a.layer]
            cm = np.maximum.accumulate(c)
            cum = np.cumsum(c)
            if norm == "rel":
                v = cm / ref
            elif norm == "abs":
                v = cm
            else:
                v = cm / np.sqrt(ref)
            for k in range(len(o)):
                items.append((v[k], a.layer, k))
        items.sort()
        removed = {a.layer: 0 for a in adapters}
        got = 0
        for v, l, k in items:
            if got >= n_remove:
                break
            if k != removed[l]:
                continue  # monotone so in order
            removed[l] += 1
            got += ppn[l]
        variants[f"obs-{norm}"] = [
            np.sort(np.setdiff1d(np.arange(a.width), curves[a.layer][0][: removed[a.layer]]))
            for a in adapters
        ]
        print(norm, ratio, [a.width - removed[a.layer] for a in adapters], flush=True)
    print("flap widths", ratio, widths, flush=True)
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
