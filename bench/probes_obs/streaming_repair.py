"""Probe 4: layer-wise streaming repair with dense targets (error-correcting), on FLAP's keep sets."""

import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from fnprune.analysis.networks import FunctionalNetworks
from fnprune.corpus import load_corpus, split_heldout, split_validation
from fnprune.evaluation.compare import paired_ratio
from fnprune.evaluation.metrics import per_document_perplexity
from fnprune.models.loading import load_model
from fnprune.models.mlp import decoder_layers, find_mlps
from fnprune.pruning.calibration import Calibration
from fnprune.pruning.recipe import choose_keep
from fnprune.pruning.spec import PruningSpec
from fnprune.pruning.surgery import prune_model
from fnprune.tokens import encode_documents, padded_batches

torch.set_num_threads(2)
NCAL = int(sys.argv[1])
RIDGE = 1e-3


class Stop(Exception):
    pass


def capture_inputs(model, batches):
    blocks = decoder_layers(model)
    out = []

    def pre(m, args, kwargs):
        out.append((args[0].detach(), args[1:], dict(kwargs)))
        raise Stop

    h = blocks[0].register_forward_pre_hook(pre, with_kwargs=True)
    with torch.no_grad():
        for ids, mask in batches:
            try:
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            except Stop:
                pass
    h.remove()
    return out


def run_block(block, h, args, kw):
    o = block(h, *args, **kw)
    return o[0] if isinstance(o, tuple) else o


@torch.no_grad()
def streaming(model, keep, batches, target_kind):
    dense = model
    pruned = copy.deepcopy(model)
    inp = capture_inputs(model, batches)
    hd = [x[0] for x in inp]
    hp = [x[0].clone() for x in inp]
    bd, bp = decoder_layers(dense), decoder_layers(pruned)
    ad, ap = find_mlps(dense), find_mlps(pruned)
    for l in range(len(ad)):
        K = torch.as_tensor(keep[l]).long()
        if K.numel() == ad[l].width:
            for b, (h0, args, kw) in enumerate(inp):
                hd[b] = run_block(bd[l], hd[b], args, kw)
                hp[b] = run_block(bp[l], hp[b], args, kw)
            continue
        n = ad[l].width
        H = ad[l].hidden_size
        S = torch.zeros((K.numel() + 1, K.numel() + 1), dtype=torch.float64)
        C = torch.zeros((H, K.numel() + 1), dtype=torch.float64)
        cap = {}
        h1 = ad[l].module.register_forward_hook(lambda m, i, o: cap.__setitem__("yd", o))
        h2 = ap[l].down.register_forward_pre_hook(lambda m, i: cap.__setitem__("xp", i[0]))
        h3 = ap[l].module.register_forward_hook(lambda m, i, o: cap.__setitem__("yp", o))
        new_hd = []
        for b, (h0, args, kw) in enumerate(inp):
            mask = batches[b][1].reshape(-1).bool()
            out_d = run_block(bd[l], hd[b], args, kw)
            new_hd.append(out_d)
            out_p = run_block(bp[l], hp[b], args, kw)
            xp = cap["xp"].reshape(-1, n)[mask][:, K].double()
            z = torch.cat([xp, torch.ones((xp.shape[0], 1), dtype=torch.float64)], 1)
            if target_kind == "mlp":
                t = cap["yd"].reshape(-1, H)[mask].double()
            else:  # dense residual after the layer minus the pruned path's residual before its MLP
                t = (out_d - (out_p - cap["yp"])).reshape(-1, H)[mask].double()
            S += z.T @ z
            C += t.T @ z
        h1.remove()
        h2.remove()
        h3.remove()
        k = K.numel()
        lam = RIDGE * float(torch.diagonal(S)[:k].mean())
        S[range(k), range(k)] += lam
        sol = torch.linalg.solve(S, C.T).T
        a = ap[l]
        a.select(K)
        a.down.weight.data = sol[:, :k].to(a.down.weight.dtype).contiguous()
        a.down.bias = nn.Parameter(sol[:, k].to(a.down.weight.dtype))
        hd = new_hd
        hp = [run_block(bp[l], hp[b], args, kw) for b, (h0, args, kw) in enumerate(inp)]
    return pruned


model, tok = load_model("smollm2-135m")
docs = load_corpus("brown")
fn = FunctionalNetworks.load(str(Path(__file__).resolve().parents[1] / "results" / "recipe" / "run"))
calib = split_heldout(docs)[0][:NCAL]
evaluation = split_validation(docs, 120)[:10]
dense = per_document_perplexity(model, tok, evaluation, window=512, keep_units=True)
print("dense", dense["ppl"], flush=True)
calibration = Calibration(tok, calib, 512)
stats = calibration.down_stats(model, second_moments=True)
batches = list(padded_batches(encode_documents(tok, calib, 512), 4))
for ratio in (0.2, 0.3):
    keep, protected, _ = choose_keep(
        PruningSpec(method="flap", target_ratio=ratio).validated(True), model, fn, stats
    )
    pruned = copy.deepcopy(model)
    prune_model(pruned, keep, repair=stats, ridge=RIDGE)
    base = per_document_perplexity(pruned, tok, evaluation, window=512, keep_units=True)
    print(f"{ratio} one-shot: {base['ppl']:.2f} ({base['ppl'] / dense['ppl']:.3f}x)", flush=True)
    for kind in ("mlp", "resid"):
        t = time.time()
        pruned = streaming(model, keep, batches, kind)
        dt = time.time() - t
        r = per_document_perplexity(pruned, tok, evaluation, window=512, keep_units=True)
        p = paired_ratio(r, base)
        print(
            f"{ratio} stream-{kind}: {r['ppl']:.2f} ({r['ppl'] / dense['ppl']:.3f}x) paired {p['ratio']:.3f} "
            f"[{p['low']:.3f},{p['high']:.3f}] {dt:.0f}s",
            flush=True,
        )
