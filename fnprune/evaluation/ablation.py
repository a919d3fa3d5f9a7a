"""What does a network do? Zero its key neurons in the dense model and measure what changes.

:func:`ablate` silences (multiplies by 0 on their way into ``down``; nothing is removed) the key
neurons of the chosen networks and, as the control, as many random neurons in the same layers, and
reports for each, next to the dense model:

- the perplexity per document label (Brown: genre) and over all documents, each document scored
  alone on its first ``window`` tokens (the per-document protocol of METHOD §2), with paired bootstrap
  ratios (ablated / dense, network / random; :func:`fnprune.evaluation.compare.paired_ratio`, per document);
- the tokens whose predicted probability (of the token that actually came next) falls most when the
  networks are silenced, with their context, and the same token's probability under the control.

METHOD §3's ablation check is the ``all`` row: zeroing a network's neurons should hurt far more than
zeroing as many random neurons.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from fnprune.errors import ConfigError, CorpusError
from fnprune.models.loading import model_device
from fnprune.models.mlp import find_mlps
from fnprune.progress import ProgressCallback, report
from fnprune.pruning.selection import chosen_components, forced_mask
from fnprune.tokens import encode_documents, padded_batches


@contextlib.contextmanager
def zeroed(model: nn.Module, mask: np.ndarray) -> Iterator[None]:
    """Inside the block, the neurons ``mask[l, j]`` (``(n_layers, width)`` bool) send 0 to ``down``."""
    handles = []
    try:
        for adapter in find_mlps(model):
            row = np.asarray(mask[adapter.layer][:adapter.width], dtype=bool)
            if not row.any():
                continue
            keep = torch.as_tensor(~row, dtype=torch.float32)

            def hook(module, inputs, keep=keep):
                x = inputs[0]
                return (x * keep.to(device=x.device, dtype=x.dtype),) + tuple(inputs[1:])
            handles.append(adapter.down.register_forward_pre_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def token_logprobs(model: nn.Module, tokenizer, sequences: Sequence[Sequence[int]], batch_size: int = 4,
                   on_batch: Callable[[float], None] | None = None) -> list[np.ndarray]:
    """Per sequence, ``(len - 1,)`` float64: log p(token t+1 | tokens ≤ t) of the token that came next.
    ``on_batch(fraction of the sequences done)`` after each batch."""
    device = model_device(model)
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    try:
        for ids, mask in padded_batches(list(sequences), batch_size):
            if on_batch is not None:
                on_batch(len(out) / max(1, len(sequences)))
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            logp = torch.log_softmax(logits.float()[:, :-1], dim=-1)  # (b, len-1, vocab)
            picked = logp.gather(-1, ids[:, 1:].to(device)[..., None])[..., 0].double().cpu()  # (b, len-1)
            lengths = mask.sum(1).tolist()
            out += [picked[i, :int(n) - 1].numpy() for i, n in enumerate(lengths)]
    finally:
        model.train(was_training)
    return out


def random_like(mask: np.ndarray, seed: int = 0) -> np.ndarray:
    """As many neurons per layer as ``mask`` holds, uniformly at random among the layer's neurons."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(mask, dtype=bool)
    for layer, row in enumerate(mask):
        n = int(row.sum())
        if n:
            out[layer, rng.choice(row.size, size=n, replace=False)] = True
    return out


def _units(logprobs: list[np.ndarray]) -> dict:
    nll = [float(-lp.sum()) for lp in logprobs]
    tokens = [int(lp.size) for lp in logprobs]
    return {"ppl": math.exp(sum(nll) / sum(tokens)), "unit_nll": nll, "unit_tokens": tokens}


def _row(dense: list[np.ndarray], silenced: list[np.ndarray], rand: list[np.ndarray], seed: int) -> dict:
    """One label's (or every document's) perplexities and paired ratios, per document."""
    from .compare import paired_ratio

    d, s, r = _units(dense), _units(silenced), _units(rand)
    return {"n_docs": len(dense), "n_tokens": int(sum(lp.size for lp in dense)),
            "dense": d["ppl"], "network": s["ppl"], "random": r["ppl"],
            "network_vs_dense": paired_ratio(s, d, seed=seed), "random_vs_dense": paired_ratio(r, d, seed=seed),
            "network_vs_random": paired_ratio(s, r, seed=seed)}


def ablate(model: nn.Module, tokenizer, fn, networks: Sequence[int], docs, *, window: int = 512,
           seed: int = 0, n_tokens: int = 20, context: int = 8, batch_size: int = 4,
           threshold: float | None = None, progress: ProgressCallback | None = None) -> dict:
    """Silence the key neurons (|z| > ``threshold``, default the analysis') of ``networks`` in the dense
    ``model`` and, as the control, as many random neurons per layer (``seed``); see the module docstring.

    Returns ``{"networks", "n_neurons", "neurons_per_layer", "by_label": {label: {"n_docs", "n_tokens",
    "dense", "network", "random", "network_vs_dense", "random_vs_dense", "network_vs_random"}}, "all":
    {the same over every document}, "top_tokens": [...]}`` (perplexities; paired ratios with 95% bootstrap
    intervals over documents). ``progress``: stage ``ablate``, the three passes (dense, networks zeroed,
    random zeroed) one third each."""
    sel = chosen_components(fn, networks)
    if sel is None:
        raise ConfigError("networks: choose at least one network to ablate", field="networks")
    n_layers = len(find_mlps(model))
    if n_layers != fn.n_layers:
        raise ConfigError(f"the networks are for {fn.n_layers} layers, the model has {n_layers}", field="networks")
    mask = forced_mask(fn, sel, threshold)  # (n_layers, width)
    if not mask.any():
        raise ConfigError("the chosen networks have no key neurons at this threshold", field="networks")
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 0:
        raise ConfigError(f"n_tokens must be a non-negative integer, got {n_tokens!r}", field="n_tokens")
    control = random_like(mask, seed)
    kept_docs, sequences = [], []
    for doc in docs:
        seq = encode_documents(tokenizer, [doc], window)
        if seq:
            kept_docs.append(doc)
            sequences.append(seq[0])
    if not sequences:
        raise CorpusError("no document has at least 2 tokens")

    def scored(step: int, what: str, zero: np.ndarray | None) -> list[np.ndarray]:
        def on_batch(done: float) -> None:
            report(progress, "ablate", (step + done) / 3, f"{what}: {done:.0%} of {len(sequences)} documents")
        with zeroed(model, zero) if zero is not None else contextlib.nullcontext():
            out = token_logprobs(model, tokenizer, sequences, batch_size, on_batch)
        on_batch(1.0)
        return out

    dense = scored(0, "dense model", None)
    silenced = scored(1, f"{int(mask.sum())} key neurons zeroed", mask)
    rand = scored(2, f"{int(mask.sum())} random neurons zeroed", control)

    labels = [getattr(d, "label", None) or "unlabelled" for d in kept_docs]
    by_label = {}
    for label in sorted(set(labels)):
        idx = [i for i, x in enumerate(labels) if x == label]
        by_label[label] = _row([dense[i] for i in idx], [silenced[i] for i in idx], [rand[i] for i in idx], seed)
    overall = _row(dense, silenced, rand, seed)

    # the tokens whose probability falls most when the networks are silenced
    drops = [(float(dl[t] - sl[t]), i, t) for i, (dl, sl) in enumerate(zip(dense, silenced, strict=True))
             for t in range(dl.size)]
    drops.sort(key=lambda x: (-x[0], x[1], x[2]))
    top = []
    for drop, i, t in drops[:n_tokens]:
        seq = sequences[i]
        top.append({"doc": kept_docs[i].id, "label": labels[i], "position": t + 1,
                    "token": tokenizer.decode([seq[t + 1]]),
                    "left": tokenizer.decode(seq[max(0, t + 1 - context):t + 1]),
                    "p_dense": math.exp(dense[i][t]), "p_network": math.exp(silenced[i][t]),
                    "p_random": math.exp(rand[i][t]), "logp_drop": drop})
    return {"networks": [int(c) for c in sel], "threshold": fn.threshold if threshold is None else float(threshold),
            "n_neurons": int(mask.sum()), "neurons_per_layer": [int(x) for x in mask.sum(axis=1)],
            "window": int(window), "seed": int(seed), "by_label": by_label, "all": overall, "top_tokens": top}
