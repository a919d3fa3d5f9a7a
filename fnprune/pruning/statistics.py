"""Calibration statistics of down's input: the hooks that collect them (per neuron, second moments, residual-weighted)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..models.loading import model_device
from ..models.mlp import (
    backbone,
    decoder_layers,
    find_mlps,
)
from ..progress import ProgressCallback, report
from ..tokens import encode_documents, padded_batches
from .repair import addmm_lower_, symmetrize_lower_


# -- calibration statistics -----------------------------------------------------------------------
@dataclass
class DownInputStats:
    """Per-layer statistics of ``down``'s input ``x`` (the neuron outputs) over real tokens.

    ``mean[l]``, ``var[l]``, ``l2[l]``: float64 tensors ``(I_l,)`` -- mean over tokens, population
    variance over tokens, and ``sqrt(sum_t x_tj^2)`` (the Wanda ``‖x_j‖₂``). ``n_tokens``: tokens seen.
    ``second_moment[l]``: float64 ``(I_l, I_l)`` ``E_t[x_t x_tᵀ]`` (uncentred), only when collected
    with ``second_moments=True`` (what the least-squares repair needs), else None.

    Residual-weighted moments (``weighted=True``; what ``obs`` selects and repairs with): each token
    weighs ``w_t = 1 / mean_k h_tk²``, ``h_t`` the residual stream entering the decoder layer, so an
    output error counts relative to the stream it is added to -- the next RMS/LayerNorm divides it
    by that norm, and the few tokens with a huge residual norm (attention sinks) stop dominating.
    ``weighted_second_moment[l]`` = ``Σ w x xᵀ / Σ w``, ``weighted_mean[l]`` = ``Σ w x / Σ w``,
    ``weight_mean[l]`` = ``Σ w / n_tokens`` (so ``cost × weight_mean`` is ``E_t[w_t e_t²]``,
    comparable across layers).
    """

    mean: list[torch.Tensor]
    var: list[torch.Tensor]
    l2: list[torch.Tensor]
    n_tokens: int
    second_moment: list[torch.Tensor] | None = None
    weighted_second_moment: list[torch.Tensor] | None = None
    weighted_mean: list[torch.Tensor] | None = None
    weight_mean: list[float] | None = None

    @property
    def widths(self) -> list[int]:
        return [int(m.numel()) for m in self.mean]

    def weighted(self) -> DownInputStats:
        """These statistics with the residual-weighted moments as ``second_moment`` and ``mean``
        (what :func:`prune_model`'s repair reads), for the ``obs`` method."""
        if self.weighted_second_moment is None:
            raise ConfigError("residual-weighted moments were not collected (collect_down_input_stats(weighted=True))")
        return DownInputStats(mean=self.weighted_mean, var=self.var, l2=self.l2, n_tokens=self.n_tokens,
                              second_moment=self.weighted_second_moment)


class StopForward(Exception):
    """Raised by a hook once the last layer of interest has run: the rest of the pass is skipped."""


def forward_masked(model: nn.Module, sequences: list[list[int]], batch_size: int, state: dict, device,
                    progress: ProgressCallback | None, stage: str) -> None:
    """Run padded batches through ``model``; before each, ``state["mask"]`` is the flat (batch*seq,)
    real-token mask the hooks read and ``state["n"]`` counts the real tokens so far. A hook may raise
    :class:`StopForward` to end a batch early."""
    n_batches = math.ceil(len(sequences) / batch_size)
    for b, (ids, mask) in enumerate(padded_batches(sequences, batch_size)):
        state["mask"] = mask.reshape(-1).bool()
        state["n"] += int(mask.sum())
        try:
            backbone(model)(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
        except StopForward:
            pass
        report(progress, stage, (b + 1) / n_batches, f"batch {b + 1}/{n_batches}")


@torch.no_grad()
def collect_down_input_stats(model: nn.Module, tokenizer, docs, max_tokens: int = 512, batch_size: int = 4,
                             progress: ProgressCallback | None = None, *, second_moments: bool = False,
                             layers: Sequence[int] | None = None, weighted: bool = False) -> DownInputStats:
    """Mean / variance / L2 norm per neuron of every layer's ``down`` input over real tokens.

    ``docs``: :class:`fnprune.corpus.Document` objects or strings. Padded positions are masked
    out with the attention mask (hooks may see ``(batch, seq, I)`` or, for OPT, ``(batch*seq, I)``).
    ``second_moments``: also accumulate ``E[x xᵀ]`` per layer (float32 products per batch, summed in
    float64). ``layers``: only these layers get statistics (the others stay zero and the forward
    pass stops after the last of them) -- what the sequential repair uses. ``weighted``: also the
    residual-weighted moments (see :class:`DownInputStats`).
    """
    from ..errors import CorpusError

    adapters = find_mlps(model)
    sequences = encode_documents(tokenizer, docs, max_tokens)
    if not sequences:
        raise CorpusError("no calibration document has at least 2 tokens")
    widths = [a.width for a in adapters]
    sums = [torch.zeros(w, dtype=torch.float64) for w in widths]
    sumsq = [torch.zeros(w, dtype=torch.float64) for w in widths]
    wanted = set(range(len(adapters))) if layers is None else {int(x) for x in layers}
    grams = {a.layer: torch.zeros((a.width, a.width), dtype=torch.float64)
             for a in adapters if second_moments and a.layer in wanted}
    wgrams = {a.layer: torch.zeros((a.width, a.width), dtype=torch.float64)
              for a in adapters if weighted and a.layer in wanted}
    wsums = {layer: torch.zeros(g.shape[0], dtype=torch.float64) for layer, g in wgrams.items()}
    wtotal = dict.fromkeys(wgrams, 0.0)
    state: dict = {"mask": None, "n": 0, "weights": {}}
    last = max(wanted)

    def sink_for(layer: int):
        def sink(signal: str, x: torch.Tensor, post=None) -> None:  # down_in: post is always None
            x = x.reshape(-1, x.shape[-1])  # (batch*seq, I)
            real = state["mask"].to(x.device)
            x = x[real]  # (real tokens, I)
            xd = x.double()
            sums[layer] += xd.sum(0).cpu()
            sumsq[layer] += (xd * xd).sum(0).cpu()
            xf = x.float() if layer in grams or layer in wgrams else None
            if layer in grams:  # (I, I), the lower triangles (half the flops), mirrored at the end
                addmm_lower_(grams[layer], xf.T, xf)
            if layer in wgrams:
                w = state["weights"].pop(layer)[real]  # (real tokens,)
                addmm_lower_(wgrams[layer], (xf * w[:, None]).T, xf)
                wd = w.double()
                wsums[layer] += (wd @ xd).cpu()  # Σ_t w_t x_t
                wtotal[layer] += float(wd.sum())
            if layer == last and layers is not None:
                raise StopForward
        return sink

    handles = []
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        blocks = decoder_layers(model) if wgrams else None
        for adapter in adapters:
            if adapter.layer in wanted:
                handles += adapter.register_signal_hooks(("down_in",), sink_for(adapter.layer))
            if adapter.layer in wgrams:
                handles.append(blocks[adapter.layer].register_forward_pre_hook(
                    _residual_weight_hook(state["weights"], adapter.layer), with_kwargs=True))
        forward_masked(model, sequences, batch_size, state, device, progress, "stats")
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    n = state["n"]
    means = [s / n for s in sums]
    var = [(sq / n - m * m).clamp_min(0.0) for sq, m in zip(sumsq, means, strict=True)]
    l2 = [sq.sqrt() for sq in sumsq]
    for g in (*grams.values(), *wgrams.values()):
        symmetrize_lower_(g)
    second = [grams[a.layer] / n if a.layer in grams else None for a in adapters] if second_moments else None
    out = DownInputStats(mean=means, var=var, l2=l2, n_tokens=n, second_moment=second)
    if weighted:
        out.weighted_second_moment = [wgrams[a.layer] / wtotal[a.layer] if a.layer in wgrams else None
                                      for a in adapters]
        out.weighted_mean = [wsums[a.layer] / wtotal[a.layer] if a.layer in wgrams else None for a in adapters]
        out.weight_mean = [wtotal[a.layer] / n if a.layer in wgrams else None for a in adapters]
    return out


def _residual_weight_hook(weights: dict, layer: int):
    """Forward pre-hook on decoder layer ``layer``: ``weights[layer]`` = ``1 / mean_k h_tk²`` per token
    (flat ``(batch*seq,)``) of the residual stream ``h`` the layer receives (its first argument)."""
    def hook(module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        ms = h.detach().float().pow(2).mean(-1).reshape(-1)
        weights[layer] = 1.0 / ms.clamp_min(torch.finfo(torch.float32).tiny)
    return hook
