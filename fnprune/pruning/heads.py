"""Attention heads: whole KV groups, their statistics, scores, and the o_proj mean bias or least-squares re-fit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..models.loading import model_device
from ..progress import ProgressCallback
from ..tokens import encode_documents
from .budget import resolve_protected
from .repair import DEFAULT_RIDGE, LayerFit, addmm_lower_, refit_down, symmetrize_lower_
from .statistics import forward_masked
from .surgery import normalize_keep


# -- attention heads (whole GQA groups) ------------------------------------------------------------
@dataclass
class AttentionAdapter:
    """One layer's LLaMA-style attention (``q_proj``/``k_proj``/``v_proj``/``o_proj``).

    The prunable unit is a KV group: one key/value head with its ``groups`` query heads, i.e.
    rows of ``k_proj``/``v_proj`` (``head_dim`` each), rows of ``q_proj`` and columns of ``o_proj``
    (``groups * head_dim`` each).
    """

    layer: int
    module: nn.Module

    @property
    def head_dim(self) -> int:
        return int(self.module.head_dim)

    @property
    def groups(self) -> int:
        return int(self.module.num_key_value_groups)

    @property
    def n_kv_heads(self) -> int:
        return self.module.k_proj.weight.shape[0] // self.head_dim

    def q_channels(self, kv_heads: torch.Tensor) -> torch.Tensor:
        """Indices of the q_proj rows / o_proj columns of KV groups ``kv_heads``."""
        per_group = self.groups * self.head_dim
        return (kv_heads[:, None] * per_group + torch.arange(per_group)[None, :]).flatten()

    def kv_channels(self, kv_heads: torch.Tensor) -> torch.Tensor:
        return (kv_heads[:, None] * self.head_dim + torch.arange(self.head_dim)[None, :]).flatten()


def find_attentions(model: nn.Module) -> list[AttentionAdapter]:
    """One :class:`AttentionAdapter` per decoder layer (LLaMA-family models only)."""
    from ..errors import UnsupportedArchitectureError
    from ..models.mlp import decoder_layers

    out = []
    for i, block in enumerate(decoder_layers(model)):
        found = None
        for owner in [block] + [m for _, m in block.named_modules() if m is not block]:
            if ({"q_proj", "k_proj", "v_proj", "o_proj"} <= set(dict(owner.named_children()))
                    and hasattr(owner, "head_dim") and hasattr(owner, "num_key_value_groups")):
                found = owner
                break
        if found is None:
            raise UnsupportedArchitectureError(
                f"{type(model).__name__}: layer {i} has no LLaMA-style attention (q/k/v/o_proj with head_dim "
                "and num_key_value_groups); attention-head pruning supports the LLaMA family only")
        out.append(AttentionAdapter(i, found))
    return out


@dataclass
class AttentionInputStats:
    """Per-layer statistics over real tokens of ``o_proj``'s input channels ``(n_heads*head_dim,)``.

    ``mean[l]``, ``var[l]``: float64 ``(C,)``; ``second_moment[l]``: float64 ``(C, C)`` ``E_t[x_t x_tᵀ]``
    (uncentred), only when collected with ``second_moments=True`` (the least-squares re-fit of
    ``o_proj`` needs it), else None.
    """

    mean: list[torch.Tensor]
    var: list[torch.Tensor]
    n_tokens: int
    second_moment: list[torch.Tensor] | None = None


@torch.no_grad()
def collect_attention_stats(model: nn.Module, tokenizer, docs, max_tokens: int = 512, batch_size: int = 4,
                            progress: ProgressCallback | None = None, *,
                            second_moments: bool = False) -> AttentionInputStats:
    """Mean / variance of every layer's ``o_proj`` input channel over real (non-padding) tokens;
    ``second_moments``: also ``E[x xᵀ]`` per layer (float32 products per batch, summed in float64)."""
    from ..errors import CorpusError

    attentions = find_attentions(model)
    sequences = encode_documents(tokenizer, docs, max_tokens)
    if not sequences:
        raise CorpusError("no calibration document has at least 2 tokens")
    sums: dict[int, torch.Tensor] = {}
    sumsq: dict[int, torch.Tensor] = {}
    grams: dict[int, torch.Tensor] = {}
    state: dict = {"mask": None, "n": 0}

    def hook_for(layer: int):
        def hook(module, inputs):
            x = inputs[0].reshape(-1, inputs[0].shape[-1])[state["mask"].to(inputs[0].device)]  # (real tokens, C)
            xd = x.double()
            sums[layer] = sums.get(layer, 0) + xd.sum(0).cpu()
            sumsq[layer] = sumsq.get(layer, 0) + (xd * xd).sum(0).cpu()
            if second_moments:
                xf = x.float()
                if layer not in grams:
                    grams[layer] = torch.zeros((xf.shape[1], xf.shape[1]), dtype=torch.float64)
                addmm_lower_(grams[layer], xf.T, xf)  # (C, C): the lower triangle, mirrored at the end
        return hook

    handles = [a.module.o_proj.register_forward_pre_hook(hook_for(a.layer)) for a in attentions]
    device = model_device(model)
    try:
        forward_masked(model, sequences, batch_size, state, device, progress, "attention stats")
    finally:
        for h in handles:
            h.remove()
    n = state["n"]
    means = [sums[a.layer] / n for a in attentions]
    var = [(sumsq[a.layer] / n - m * m).clamp_min(0.0) for a, m in zip(attentions, means, strict=True)]
    second = [symmetrize_lower_(grams[a.layer]) / n for a in attentions] if second_moments else None
    return AttentionInputStats(mean=means, var=var, n_tokens=n, second_moment=second)


@torch.no_grad()
def head_group_scores(model: nn.Module, stats: AttentionInputStats) -> list[np.ndarray]:
    """FLAP fluctuation of each KV group: ``Σ_c Var(x_c) · ‖W_o[:, c]‖²`` over the group's channels."""
    out = []
    for a in find_attentions(model):
        per_channel = stats.var[a.layer] * a.module.o_proj.weight.double().pow(2).sum(0).cpu()
        out.append(per_channel.reshape(a.n_kv_heads, -1).sum(1).numpy())
    return out


def keep_heads_from_scores(scores: Sequence[np.ndarray], fraction: float,
                           protected_layers: Sequence[int] | None = None) -> list[np.ndarray]:
    """Per-layer kept KV groups: drop ``round(fraction * n_kv)`` lowest-scored groups of each
    unprotected layer (always keeping at least one)."""
    if not 0.0 < float(fraction) < 1.0:
        raise ConfigError(f"head fraction must be strictly between 0 and 1, got {fraction}")
    protected = resolve_protected(protected_layers, len(scores))
    out = []
    for layer, s in enumerate(scores):
        n_remove = 0 if layer in protected else min(int(round(fraction * len(s))), len(s) - 1)
        order = np.argsort(-np.asarray(s), kind="stable")
        out.append(np.sort(order[:len(s) - n_remove]))
    return out


def _slice_rows(proj: nn.Linear, idx: torch.Tensor) -> None:
    idx = idx.to(proj.weight.device)
    proj.weight = nn.Parameter(proj.weight.index_select(0, idx).contiguous())
    proj.out_features = idx.numel()
    if proj.bias is not None:
        proj.bias = nn.Parameter(proj.bias.index_select(0, idx).contiguous())


@dataclass
class _OutputProjection:
    """``o_proj`` seen as :func:`fnprune.pruning.repair.refit_down` sees an MLP: the projection whose input
    columns are re-fitted (it reads only ``down``)."""

    down: nn.Module


@torch.no_grad()
def prune_heads(model: nn.Module, keep_kv_heads: Sequence, *, bias: AttentionInputStats | None = None,
                repair: AttentionInputStats | None = None, ridge: float = DEFAULT_RIDGE,
                fits: dict[int, LayerFit] | None = None) -> nn.Module:
    """Keep only the KV groups ``keep_kv_heads[l]`` (indices) of each layer, in place.

    A KV group goes with all its query heads. For each layer that loses groups, at most one of:

    - ``bias``: statistics of ``o_proj``'s input for FLAP-style compensation (``o_proj`` gets
      ``W_o[:, pruned] @ mean(x[pruned])``);
    - ``repair``: statistics collected with ``second_moments=True``: ``o_proj``'s columns of the kept
      channels and a bias are re-fitted by ridge least squares to the dense ``o_proj`` output on the
      calibration tokens -- the closed form of the MLP repair (:func:`fnprune.pruning.repair.refit_down`,
      ridge ``ridge`` × mean diagonal); each layer's :class:`~fnprune.pruning.repair.LayerFit` goes into
      ``fits`` when given.

    An ``o_proj`` bias is added where there was none (then to every layer; ``config.fnprune_o_bias``).
    The config gets ``num_key_value_heads`` / ``num_attention_heads`` / ``head_dim`` when every layer
    keeps the same number of groups, else ``config.fnprune_num_key_value_heads`` (per-layer list).
    """
    if bias is not None and repair is not None:
        raise ConfigError("give either bias (mean compensation) or repair (least squares), not both")
    attentions = find_attentions(model)
    keep = normalize_keep(list(keep_kv_heads), [a.n_kv_heads for a in attentions], unit="KV head")
    if repair is not None and (repair.second_moment is None or [int(m.numel()) for m in repair.mean]
                               != [int(a.module.o_proj.weight.shape[1]) for a in attentions]):
        raise ConfigError("the heads' repair needs o_proj input second moments collected on the unpruned model "
                          "(collect_attention_stats(..., second_moments=True))")
    added = False
    for a, kv in zip(attentions, keep, strict=True):
        if kv.numel() == a.n_kv_heads:
            continue
        o = a.module.o_proj
        q_keep = a.q_channels(kv)
        if repair is not None:
            fit = refit_down(_OutputProjection(o), q_keep, repair.second_moment[a.layer], repair.mean[a.layer], ridge,
                             layer=a.layer)
            o.weight[:, q_keep.to(o.weight.device)] = fit.weight.to(device=o.weight.device, dtype=o.weight.dtype)
            added |= o.bias is None
            delta = fit.bias.to(device=o.weight.device)
            o.bias = nn.Parameter((delta if o.bias is None else o.bias.double() + delta).to(o.weight.dtype))
            if fits is not None:
                fits[a.layer] = fit
        elif bias is not None:
            pruned = torch.ones(o.weight.shape[1], dtype=torch.bool)
            pruned[q_keep] = False
            delta = o.weight[:, pruned.to(o.weight.device)].double() @ bias.mean[a.layer].to(o.weight.device)[pruned]
            added |= o.bias is None
            o.bias = nn.Parameter((delta if o.bias is None else o.bias.double() + delta).to(o.weight.dtype))
        _slice_rows(a.module.q_proj, q_keep)
        _slice_rows(a.module.k_proj, a.kv_channels(kv))
        _slice_rows(a.module.v_proj, a.kv_channels(kv))
        o.weight = nn.Parameter(o.weight.index_select(1, q_keep.to(o.weight.device)).contiguous())
        o.in_features = q_keep.numel()
    if added:
        for a in attentions:
            o = a.module.o_proj
            if o.bias is None:
                o.bias = nn.Parameter(torch.zeros(o.weight.shape[0], dtype=o.weight.dtype, device=o.weight.device))
        model.config.fnprune_o_bias = True
    counts = [a.n_kv_heads for a in attentions]
    config = model.config
    if not hasattr(config, "head_dim") or config.head_dim is None:
        config.head_dim = attentions[0].head_dim
    if len(set(counts)) == 1:
        config.num_key_value_heads = counts[0]
        config.num_attention_heads = counts[0] * attentions[0].groups
        config.fnprune_num_key_value_heads = None
    else:
        config.fnprune_num_key_value_heads = counts
    return model
