"""Structured MLP pruning: keep masks, the coupled index_select, bias compensation, baselines.

A neuron ``j`` of layer ``l`` is row ``j`` of every in-projection (``gate``/``up``, ``c_fc``, ``fc1``)
and column ``j`` of ``down``; :meth:`fnprune.mlp.MLPAdapter.select` removes it. This module adds:

- :func:`prune_model` -- apply per-layer keep indices (or a bool mask) in place, optionally with
  FLAP-style bias compensation (METHOD §1.9), and record the new widths in the config;
- :func:`collect_down_input_stats` -- per-neuron mean / variance / L2 norm of ``down``'s input
  over real (non-padding) calibration tokens;
- baseline scores (METHOD §2): :func:`random_scores`, :func:`magnitude_scores`,
  :func:`wanda_sp_scores`, :func:`flap_scores`, and :func:`keep_from_scores` which turns
  per-neuron scores into keep indices at a parameter budget, with the method's own (global)
  allocation, with given per-layer widths ("fn" allocation), or with one width everywhere.

Budgets: ``target_ratio`` is the fraction of **all** model parameters to remove (METHOD §2 reports
it that way); only MLP neurons are removed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .errors import ConfigError
from .mlp import (
    MLPAdapter,
    _is_conv1d,
    backbone,
    decoder_layers,
    default_protected_layers,
    find_mlps,
    parameter_counts,
)
from .models import model_device
from .options import BASELINES, RATIO_BASES
from .progress import ProgressCallback, report
from .repair import DEFAULT_RIDGE, LayerFit, down_weight_by_neuron, obs_removal_order, refit_down
from .tokens import encode_documents, padded_batches


# -- layers and budgets -------------------------------------------------------------------------
def _protected(protected_layers: Sequence[int] | None, n_layers: int) -> set[int]:
    if protected_layers is None:
        return set(default_protected_layers(n_layers))
    out = {int(i) if int(i) >= 0 else n_layers + int(i) for i in protected_layers}
    bad = sorted(i for i in out if not 0 <= i < n_layers)
    if bad:
        raise ConfigError(f"protected layer(s) {bad} out of range for a model with {n_layers} layers")
    return out


def check_uniform_protection(uniform: bool, protected_layers: Sequence[int] | None) -> None:
    """A uniform allocation gives every layer the same width (a stock architecture), so no layer can
    be kept whole: explicitly given protected layers are refused (:class:`ConfigError`, field
    ``protected_layers``), never silently ignored. None (the default protected layers) and an empty
    list are fine: under ``uniform`` no layer is protected."""
    if uniform and protected_layers is not None and len(protected_layers) > 0:
        raise ConfigError(f"protected_layers: a uniform allocation prunes every layer to the same width, so "
                          f"layers {sorted(int(x) for x in protected_layers)} cannot be kept whole; drop the "
                          "protected layers or choose another allocation", field="protected_layers")


def check_target_ratio(target_ratio: float) -> float:
    ratio = float(target_ratio)
    if not 0.0 < ratio < 1.0 or math.isnan(ratio):
        raise ConfigError(f"target ratio must be strictly between 0 and 1 (fraction of all parameters "
                          f"to remove), got {target_ratio}", field="target_ratio")
    return ratio


def ratio_base(counts: dict, ratio_of: str = "all") -> int:
    """The parameter count a target ratio is a fraction of: all parameters, the MLPs' or all but the
    embeddings (``counts``: :func:`fnprune.mlp.parameter_counts` or a run's ``info["model"]``)."""
    if ratio_of == "all":
        return int(counts["total_params"])
    if ratio_of == "mlp":
        return int(counts["mlp_params"])
    if ratio_of == "non-embedding":
        if counts.get("embedding_params") is None:
            raise ConfigError("ratio_of: this run directory does not record the embedding parameters (analysed "
                              "before fnprune counted them): analyse again or use 'all' or 'mlp'")
        return int(counts["total_params"]) - int(counts["embedding_params"])
    raise ConfigError(f"ratio_of: unknown {ratio_of!r}; choose from {', '.join(RATIO_BASES)}")


def params_to_remove(model: nn.Module, target_ratio: float, ratio_of: str = "all") -> int:
    """Number of parameters a ``target_ratio`` (a fraction of ``ratio_of``: all parameters by default) asks to remove."""
    return int(round(check_target_ratio(target_ratio) * ratio_base(parameter_counts(model), ratio_of)))


# -- keep indices -------------------------------------------------------------------------------
def normalize_keep(keep, widths: Sequence[int], unit: str = "MLP neuron") -> list[torch.Tensor]:
    """Per-layer sorted LongTensor of kept neuron indices.

    ``keep``: a bool mask ``(n_layers, I)`` (True = keep), or a list with one entry per layer, each a
    bool mask of length ``widths[l]`` or integer indices. Raises :class:`ConfigError` on a wrong
    shape, an out-of-range index or a layer left with no neuron.
    """
    n_layers = len(widths)
    if isinstance(keep, (np.ndarray, torch.Tensor)) and keep.ndim == 2 and keep.dtype in (np.bool_, torch.bool):
        if tuple(keep.shape) != (n_layers, max(widths)) or len(set(widths)) != 1:
            raise ConfigError(f"keep mask has shape {tuple(keep.shape)}, the model needs "
                              f"({n_layers}, {widths[0]})" if len(set(widths)) == 1 else
                              f"keep mask has shape {tuple(keep.shape)}; the model's layers have different "
                              f"widths {list(widths)}: pass one array per layer")
        keep = list(keep)
    elif isinstance(keep, (np.ndarray, torch.Tensor)) and keep.ndim == 2:  # (n_layers, k) indices
        keep = list(keep)
    if not isinstance(keep, (list, tuple)) or len(keep) != n_layers:
        got = len(keep) if isinstance(keep, (list, tuple)) else type(keep).__name__
        raise ConfigError(f"keep must have one entry per layer ({n_layers}), got {got}")
    out = []
    for layer, (entry, width) in enumerate(zip(keep, widths, strict=True)):
        arr = torch.as_tensor(np.asarray(entry.cpu() if isinstance(entry, torch.Tensor) else entry))
        if arr.numel() == 0:
            arr = arr.long().flatten()
        if arr.ndim != 1:
            raise ConfigError(f"layer {layer}: keep entry must be 1-D, got shape {tuple(arr.shape)}")
        if arr.dtype == torch.bool:
            if arr.numel() != width:
                raise ConfigError(f"layer {layer}: keep mask has {arr.numel()} entries, the layer has {width} neurons")
            idx = torch.nonzero(arr).flatten()
        else:
            if arr.is_floating_point():
                raise ConfigError(f"layer {layer}: keep entries must be bool or integer indices")
            idx = torch.unique(arr.long())  # sorted, deduplicated
            if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= width):
                raise ConfigError(f"layer {layer}: neuron index out of range [0, {width})")
        if idx.numel() == 0:
            raise ConfigError(f"layer {layer}: pruning would remove every {unit} of the layer")
        out.append(idx)
    return out


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


class _StopForward(Exception):
    """Raised by a hook once the last layer of interest has run: the rest of the pass is skipped."""


def _forward_masked(model: nn.Module, sequences: list[list[int]], batch_size: int, state: dict, device,
                    progress: ProgressCallback | None, stage: str) -> None:
    """Run padded batches through ``model``; before each, ``state["mask"]`` is the flat (batch*seq,)
    real-token mask the hooks read and ``state["n"]`` counts the real tokens so far. A hook may raise
    :class:`_StopForward` to end a batch early."""
    n_batches = math.ceil(len(sequences) / batch_size)
    for b, (ids, mask) in enumerate(padded_batches(sequences, batch_size)):
        state["mask"] = mask.reshape(-1).bool()
        state["n"] += int(mask.sum())
        try:
            backbone(model)(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
        except _StopForward:
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
    from .errors import CorpusError

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
            if layer in grams:
                grams[layer] += (xf.T @ xf).double().cpu()  # (I, I)
            if layer in wgrams:
                w = state["weights"].pop(layer)[real]  # (real tokens,)
                wgrams[layer] += ((xf * w[:, None]).T @ xf).double().cpu()
                wd = w.double()
                wsums[layer] += (wd @ xd).cpu()  # Σ_t w_t x_t
                wtotal[layer] += float(wd.sum())
            if layer == last and layers is not None:
                raise _StopForward
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
        _forward_masked(model, sequences, batch_size, state, device, progress, "stats")
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    n = state["n"]
    means = [s / n for s in sums]
    var = [(sq / n - m * m).clamp_min(0.0) for sq, m in zip(sumsq, means, strict=True)]
    l2 = [sq.sqrt() for sq in sumsq]
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


# -- pruning --------------------------------------------------------------------------------------
_down_weight_by_neuron = down_weight_by_neuron  # TODO(issue 20.5): last use in obs_layer_scores; then delete


@torch.no_grad()
def compensation_bias(adapter: MLPAdapter, keep_idx: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``W_down[:, pruned] @ mean[pruned]`` -- ``(hidden,)``, the pruned neurons' average output."""
    pruned = torch.ones(adapter.width, dtype=torch.bool)
    pruned[keep_idx.cpu()] = False
    w = down_weight_by_neuron(adapter)  # (hidden, I)
    pruned = pruned.to(w.device)
    return w[:, pruned].double() @ mean.to(w.device).double()[pruned]


def _add_down_bias(adapter: MLPAdapter, delta: torch.Tensor) -> None:
    down = adapter.down
    w = down.weight
    delta = delta.to(device=w.device, dtype=w.dtype)
    if getattr(down, "bias", None) is None:
        down.bias = nn.Parameter(delta.clone())
    else:
        down.bias = nn.Parameter(down.bias.detach() + delta)


def _set_width_config(model: nn.Module, widths: list[int], down_bias_added: bool) -> None:
    config = getattr(model, "config", None)
    if config is None:
        return
    uniform = len(set(widths)) == 1
    key = next((k for k in ("intermediate_size", "ffn_dim", "n_inner") if hasattr(config, k)), None)
    if key is not None:
        setattr(config, key, widths[0] if uniform else max(widths))
    config.fnprune_intermediate_sizes = None if uniform else [int(w) for w in widths]
    if down_bias_added:
        config.fnprune_down_bias = True


@torch.no_grad()
def prune_model(model: nn.Module, keep, *, bias: DownInputStats | Sequence[torch.Tensor] | None = None,
                repair: DownInputStats | None = None, ridge: float = DEFAULT_RIDGE,
                fits: dict[int, LayerFit] | None = None) -> nn.Module:
    """Remove every MLP neuron not in ``keep``, in place; returns ``model``.

    ``keep``: bool mask ``(n_layers, I)`` (True = keep) or one entry per layer (bool mask or
    indices), see :func:`normalize_keep`. Then, for each layer that loses neurons, at most one of:

    - ``bias``: calibration statistics (or one mean vector ``(I_l,)`` per layer) for FLAP-style bias
      compensation -- ``down`` gets the bias ``W_down[:, pruned] @ mean(x[pruned])``;
    - ``repair``: statistics collected with ``second_moments=True``: ``down``'s kept columns and a
      bias are re-fitted by ridge least squares to the dense layer's output, the ridge (``ridge`` ×
      the mean diagonal over all the layer's neurons) pulling the kept columns toward the dense ones
      (:func:`fnprune.repair.refit_down`: the objective obs selects by); each layer's
      :class:`~fnprune.repair.LayerFit` goes into ``fits`` when given.

    A bias is added where the layer had none (and then to every layer, zero where nothing changed).
    The config gets the new width (``intermediate_size`` / ``ffn_dim`` / ``n_inner``); when the
    widths differ across layers it holds their maximum and ``config.fnprune_intermediate_sizes``
    the per-layer list. ``config.fnprune_down_bias`` is set when a bias was added.
    """
    if bias is not None and repair is not None:
        raise ConfigError("give either bias (mean compensation) or repair (least squares), not both")
    adapters = find_mlps(model)
    widths = [a.width for a in adapters]
    keep_idx = normalize_keep(keep, widths)
    means = None
    if bias is not None:
        means = bias.mean if isinstance(bias, DownInputStats) else list(bias)
        got = [int(torch.as_tensor(m).numel()) for m in means]
        if got != widths:
            raise ConfigError(f"bias statistics are for widths {got}, the model has {widths} "
                              "(collect them on the unpruned model)")
    if repair is not None and (repair.second_moment is None or repair.widths != widths):
        raise ConfigError("repair needs second moments collected on the unpruned layers "
                          "(collect_down_input_stats(..., second_moments=True))")
    added = False
    for adapter, idx in zip(adapters, keep_idx, strict=True):
        if idx.numel() == adapter.width:
            continue
        if repair is not None:
            added |= getattr(adapter.down, "bias", None) is None
            fit = repair_layer(adapter, idx, repair.second_moment[adapter.layer], repair.mean[adapter.layer], ridge)
            if fits is not None:
                fits[adapter.layer] = fit
            continue
        if means is not None:
            delta = compensation_bias(adapter, idx, torch.as_tensor(means[adapter.layer]))
            added |= getattr(adapter.down, "bias", None) is None
            _add_down_bias(adapter, delta)
        adapter.select(idx)
    finish_pruning(model, added)
    return model


@torch.no_grad()
def repair_layer(adapter: MLPAdapter, keep_idx: torch.Tensor, second_moment: torch.Tensor, mean: torch.Tensor,
                 ridge: float = DEFAULT_RIDGE) -> LayerFit:
    """Re-fit one dense layer's ``down`` on its kept neurons (:func:`fnprune.repair.refit_down`), add the
    fitted bias and remove the other neurons, in place. The moments are of that layer's ``down`` input
    on the calibration tokens. Call :func:`finish_pruning` once every layer is done."""
    fit = refit_down(adapter, keep_idx, second_moment, mean, ridge)
    w = down_weight_by_neuron(adapter)
    w[:, keep_idx.to(w.device)] = fit.weight.to(device=w.device, dtype=w.dtype)
    _add_down_bias(adapter, fit.bias)
    adapter.select(keep_idx)
    return fit


def finish_pruning(model: nn.Module, bias_added: bool) -> None:
    """After some layers were pruned: every ``down`` gets a bias when one did (the saved architecture
    gives all or none one), and the config gets the widths (see :func:`prune_model`)."""
    adapters = find_mlps(model)
    if bias_added:
        for adapter in adapters:
            if getattr(adapter.down, "bias", None) is None:
                _add_down_bias(adapter, torch.zeros(adapter.hidden_size))
    _set_width_config(model, [a.width for a in adapters], bias_added)


# -- baseline scores (higher = more important) -----------------------------------------------------
def random_scores(model: nn.Module, seed: int = 0) -> list[np.ndarray]:
    """Uniform random scores per neuron, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return [rng.random(a.width) for a in find_mlps(model)]


@torch.no_grad()
def magnitude_scores(model: nn.Module) -> list[np.ndarray]:
    """L2 norm of every weight tied to the neuron: its in-projection rows and its down column."""
    out = []
    for a in find_mlps(model):
        sq = down_weight_by_neuron(a).double().pow(2).sum(0)  # (I,)
        for proj in a.in_projs:
            w = proj.weight.double()
            sq = sq + (w.pow(2).sum(0) if _is_conv1d(proj) else w.pow(2).sum(1))
        out.append(sq.sqrt().cpu().numpy())
    return out


def _check_stats(model: nn.Module, stats: DownInputStats | None, method: str) -> list[MLPAdapter]:
    adapters = find_mlps(model)
    if stats is None:
        raise ConfigError(f"{method} needs calibration statistics (collect_down_input_stats)")
    if stats.widths != [a.width for a in adapters]:
        raise ConfigError(f"statistics are for widths {stats.widths}, the model has {[a.width for a in adapters]}")
    return adapters


@torch.no_grad()
def wanda_sp_scores(model: nn.Module, stats: DownInputStats) -> list[np.ndarray]:
    """Structured Wanda: ``score_j = Σ_i |W_down[i, j]| · ‖x_j‖₂``."""
    adapters = _check_stats(model, stats, "wanda-sp")
    return [(down_weight_by_neuron(a).double().abs().sum(0).cpu() * stats.l2[a.layer]).numpy()
            for a in adapters]


@torch.no_grad()
def flap_scores(model: nn.Module, stats: DownInputStats, standardize: bool = True) -> list[np.ndarray]:
    """FLAP fluctuation: ``Var_tokens(x_j) · ‖W_down[:, j]‖₂²``, z-scored within each layer."""
    adapters = _check_stats(model, stats, "flap")
    out = []
    for a in adapters:
        s = (stats.var[a.layer] * down_weight_by_neuron(a).double().pow(2).sum(0).cpu()).numpy()
        if standardize:
            std = s.std()
            s = (s - s.mean()) / (std if std > 0 else 1.0)
        out.append(s)
    return out


@torch.no_grad()
def obs_scores(model: nn.Module, stats: DownInputStats, forced: Sequence[np.ndarray] | None = None,
               ridge: float = DEFAULT_RIDGE, skip: Sequence[int] = (),
               progress: ProgressCallback | None = None) -> list[np.ndarray]:
    """Structured-OBS scores (higher = keep), comparable across layers, from the residual-weighted moments.

    Each layer's neurons are ordered by :func:`fnprune.repair.obs_removal_order` (greedy least rise
    of the re-fitted output error, never removing ``forced``); a neuron's score is the running
    maximum of the costs up to its removal, times the layer's mean token weight -- ``E_t[w_t e_t²]``,
    the error relative to the residual stream, so one global ranking allocates the layers. Scores
    rise strictly along the removal order, so keeping a layer's ``k`` best is the greedy stopped at
    ``k``. Neurons the greedy never removes (forced ones and the last of a layer) score ``+inf``.
    ``skip``: layers kept whole anyway (protected): all ``+inf``, no greedy run for them.
    ``progress`` gets ``("select", fraction, "layer l")`` after each layer's greedy.
    """
    adapters = _check_stats(model, stats, "obs")
    if stats.weighted_second_moment is None:
        raise ConfigError("obs needs residual-weighted second moments (collect_down_input_stats(weighted=True))")
    masks = _forced_masks(forced, [a.width for a in adapters])
    skip = {int(x) for x in skip}
    out = []
    for i, a in enumerate(adapters):
        out.append(np.full(a.width, np.inf) if a.layer in skip else
                   obs_layer_scores(a, stats.weighted_second_moment[a.layer], stats.weighted_mean[a.layer],
                                    float(stats.weight_mean[a.layer]), masks[a.layer], ridge))
        report(progress, "select", (i + 1) / len(adapters), f"layer {a.layer}")
    return out


def obs_layer_scores(adapter: MLPAdapter, second_moment: torch.Tensor, mean: torch.Tensor, weight_mean: float,
                     forced: np.ndarray | None, ridge: float = DEFAULT_RIDGE) -> np.ndarray:
    """One layer's :func:`obs_scores` from its residual-weighted moments (what the layer-streamed
    calibration calls with one layer's statistics at a time)."""
    order, cost = obs_removal_order(_down_weight_by_neuron(adapter), second_moment, mean, forced=forced, ridge=ridge,
                                    layer=adapter.layer)
    v = np.maximum.accumulate(cost * float(weight_mean)) if len(cost) else cost
    for k in range(1, len(v)):  # strictly increasing: ties would lose the greedy order
        v[k] = max(v[k], np.nextafter(v[k - 1], np.inf))
    s = np.full(adapter.width, np.inf)
    s[order] = v  # removed later = costlier = more important
    return s


def baseline_scores(method: str, model: nn.Module, stats: DownInputStats | None = None,
                    seed: int = 0) -> list[np.ndarray]:
    """Scores of one of :data:`BASELINES` (``random``, ``magnitude``, ``wanda-sp``, ``flap``): its
    record's score function (:mod:`fnprune.methods`), as the recipe ranks them across layers
    (magnitude's and Wanda-sp's z-scored within each layer, FLAP's standardised)."""
    from .methods import ScoreInputs
    from .methods import get as get_method

    if method not in BASELINES:
        raise ConfigError(f"unknown baseline {method!r}; choose from {', '.join(BASELINES)}")
    return get_method(method).scores(ScoreInputs(model=model, stats=stats, seed=seed))


# -- scores -> keep indices at a budget ------------------------------------------------------------
def keep_from_scores(scores: Sequence[np.ndarray], params_per_neuron: Sequence[int], *,
                     n_params_remove: int | None = None, widths: Sequence[int] | None = None,
                     threshold: float | None = None, protected_layers: Sequence[int] | None = None,
                     uniform: bool = False, forced: Sequence[np.ndarray] | None = None,
                     min_width: int = 1) -> list[np.ndarray]:
    """Per-layer kept neuron indices (sorted) from per-neuron scores (higher = keep).

    Exactly one way to size the layers:
    - ``widths`` given (e.g. the networks' allocation): keep the ``widths[l]`` best-scored neurons of layer l;
    - ``threshold`` given: keep the neurons of unprotected layers scoring above it (protected layers whole);
    - ``uniform=True``: remove the same number of neurons from **every** layer (protected layers
      too, so the result is a stock architecture) until ``n_params_remove`` is reached;
    - otherwise (the method's own, global allocation): rank the neurons of unprotected layers
      together and remove the lowest until ``n_params_remove`` parameters are gone, leaving every
      layer at least ``min_width`` neurons. Scores must be comparable across layers (z-score them first).

    ``forced``: per layer, a bool mask or indices of neurons that must be kept whatever their score
    (the key neurons of the networks a user chose): they rank above every other neuron, and a
    budget or width that cannot keep them all raises :class:`ConfigError` saying by how much.
    """
    n_layers = len(scores)
    sizes = [len(s) for s in scores]
    forced_masks = _forced_masks(forced, sizes)
    scores = [np.where(f, np.inf, np.asarray(s, dtype=np.float64)) for s, f in zip(scores, forced_masks, strict=True)]
    if widths is not None:
        if len(widths) != n_layers:
            raise ConfigError(f"{len(widths)} widths for {n_layers} layers")
        out = []
        for layer, (s, w, f) in enumerate(zip(scores, widths, forced_masks, strict=True)):
            if not min_width <= int(w) <= len(s):
                raise ConfigError(f"layer {layer}: width {w} outside [{min_width}, {len(s)}]")
            if int(f.sum()) > int(w):
                raise ConfigError(f"layer {layer}: the chosen networks have {int(f.sum())} key neurons, more than "
                                  f"the layer's width {int(w)}")
            order = np.argsort(-s, kind="stable")
            out.append(np.sort(order[:int(w)]))
        return out
    if threshold is not None:
        protected = _protected(protected_layers, n_layers)
        out = [np.arange(n) if layer in protected else np.flatnonzero(s > threshold)
               for layer, (s, n) in enumerate(zip(scores, sizes, strict=True))]
        empty = [layer for layer, idx in enumerate(out) if len(idx) < min_width]
        if empty:
            raise ConfigError(f"threshold {threshold:g} would remove every MLP neuron of layer(s) {empty[:5]}; "
                              "lower it, choose networks in those layers or protect them")
        return out
    if n_params_remove is None or n_params_remove <= 0:
        raise ConfigError("a positive parameter budget (n_params_remove), a threshold or per-layer widths are needed")
    if uniform:
        per_layer = sum(params_per_neuron)
        n_remove = math.ceil(n_params_remove / per_layer)
        width = min(sizes) - n_remove
        need = max(int(f.sum()) for f in forced_masks)
        if width < max(min_width, need):
            if need > min_width and width >= min_width:
                raise ConfigError(f"uniform widths of {width} neurons cannot keep the chosen networks' {need} key "
                                  f"neurons of one layer: lower the target ratio or choose fewer networks")
            raise ConfigError(f"removing {n_params_remove:,} parameters uniformly would leave {width} "
                              "neurons per layer: lower the target ratio")
        return keep_from_scores(scores, params_per_neuron, widths=[width] * n_layers, min_width=min_width)
    protected = _protected(protected_layers, n_layers)
    free = [layer for layer in range(n_layers) if layer not in protected]
    check_budget(n_params_remove, sizes, params_per_neuron, protected, forced_masks, min_width)
    layer_of = np.concatenate([np.full(sizes[layer], layer) for layer in free] or [[]]).astype(int)
    flat = np.concatenate([scores[layer] for layer in free] or [[]])
    index = np.concatenate([np.arange(sizes[layer]) for layer in free] or [[]]).astype(int)
    order = np.argsort(flat, kind="stable")  # least important first
    keep_masks = [np.ones(n, dtype=bool) for n in sizes]
    left = list(sizes)
    removed = 0
    for k in order:
        if removed >= n_params_remove:
            break
        layer = int(layer_of[k])
        if left[layer] <= min_width or forced_masks[layer][int(index[k])]:
            continue
        keep_masks[layer][int(index[k])] = False
        left[layer] -= 1
        removed += params_per_neuron[layer]
    return [np.flatnonzero(m) for m in keep_masks]


def _forced_masks(forced: Sequence[np.ndarray] | None, sizes: Sequence[int]) -> list[np.ndarray]:
    """Per-layer bool masks of the neurons that must stay (all False when ``forced`` is None)."""
    if forced is None:
        return [np.zeros(n, dtype=bool) for n in sizes]
    if len(forced) != len(sizes):
        raise ConfigError(f"forced neurons given for {len(forced)} layers, the model has {len(sizes)}")
    out = []
    for layer, (f, n) in enumerate(zip(forced, sizes, strict=True)):
        f = np.asarray(f)
        if f.dtype == bool:
            if f.shape != (n,):
                raise ConfigError(f"layer {layer}: forced mask has shape {f.shape}, the layer has {n} neurons")
            out.append(f.copy())
        else:
            mask = np.zeros(n, dtype=bool)
            mask[f.astype(np.int64)] = True
            out.append(mask)
    return out


def removable_params(sizes: Sequence[int], params_per_neuron: Sequence[int], protected: set[int],
                     forced: Sequence[np.ndarray], min_width: int = 1) -> int:
    """Most parameters an allocation over the unprotected layers can remove while keeping ``forced``."""
    return sum(int(params_per_neuron[layer]) * (n - max(min_width, int(np.sum(forced[layer]))))
               for layer, n in enumerate(sizes) if layer not in protected)


def check_budget(n_params_remove: int, sizes: Sequence[int], params_per_neuron: Sequence[int], protected: set[int],
                 forced: Sequence[np.ndarray], min_width: int = 1, total_params: int | None = None,
                 base_name: str = "all") -> None:
    """Raise :class:`ConfigError` when ``n_params_remove`` cannot be reached (saying by how much as a
    fraction of ``total_params``, the count the ratio refers to: ``base_name`` all / mlp / non-embedding)."""
    reachable = removable_params(sizes, params_per_neuron, protected, forced, min_width)
    if n_params_remove <= reachable:
        return
    n_forced = int(sum(np.sum(f) for layer, f in enumerate(forced) if layer not in protected))
    what = (f"the chosen networks' {n_forced:,} key neurons and the protected layers" if n_forced
            else "the protected layers (and one neuron per layer)")
    if total_params:
        base = f"{base_name} parameters" if base_name != "all" else "all parameters"
        raise ConfigError(f"the target asks to remove {n_params_remove / total_params:.1%} of {base}, but "
                          f"with {what} kept at most {reachable / total_params:.1%} can be removed "
                          f"({(n_params_remove - reachable) / total_params:.1%} too much): lower the target ratio"
                          + (" or choose fewer networks" if n_forced else ""))
    raise ConfigError(f"cannot remove {n_params_remove:,} parameters with {what} kept (at most {reachable:,}): "
                      "lower the target ratio" + (" or choose fewer networks" if n_forced else ""))


def plan_keep(model: nn.Module, method: str, target_ratio: float | None = None, *,
              stats: DownInputStats | None = None, widths: Sequence[int] | None = None,
              protected_layers: Sequence[int] | None = None, uniform: bool = False,
              seed: int = 0, scores: Sequence[np.ndarray] | None = None) -> list[np.ndarray]:
    """Keep indices for a baseline (or given ``scores``) at ``target_ratio`` or at given ``widths``."""
    adapters = find_mlps(model)
    if scores is None:
        scores = baseline_scores(method, model, stats, seed)  # comparable across layers
    n_remove = None if widths is not None else params_to_remove(model, target_ratio)
    return keep_from_scores(scores, [a.params_per_neuron for a in adapters], n_params_remove=n_remove,
                            widths=widths, protected_layers=protected_layers, uniform=uniform)


def prune_baseline(model: nn.Module, method: str, target_ratio: float | None = None, *,
                   stats: DownInputStats | None = None, widths: Sequence[int] | None = None,
                   protected_layers: Sequence[int] | None = None, uniform: bool = False,
                   bias: bool | None = None, seed: int = 0) -> nn.Module:
    """Prune ``model`` in place with a baseline; ``bias`` defaults to the method's native repair
    being the mean bias (``flap``)."""
    from .methods import get as get_method

    keep = plan_keep(model, method, target_ratio, stats=stats, widths=widths,
                     protected_layers=protected_layers, uniform=uniform, seed=seed)
    use_bias = (get_method(method).native_repair == "bias") if bias is None else bias
    if use_bias and stats is None:
        raise ConfigError("bias compensation needs calibration statistics (collect_down_input_stats)")
    return prune_model(model, keep, bias=stats if use_bias else None)




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
    from .errors import UnsupportedArchitectureError
    from .mlp import decoder_layers

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
    from .errors import CorpusError

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
                grams[layer] = grams.get(layer, 0) + (xf.T @ xf).double().cpu()  # (C, C)
        return hook

    handles = [a.module.o_proj.register_forward_pre_hook(hook_for(a.layer)) for a in attentions]
    device = model_device(model)
    try:
        _forward_masked(model, sequences, batch_size, state, device, progress, "attention stats")
    finally:
        for h in handles:
            h.remove()
    n = state["n"]
    means = [sums[a.layer] / n for a in attentions]
    var = [(sumsq[a.layer] / n - m * m).clamp_min(0.0) for a, m in zip(attentions, means, strict=True)]
    second = [grams[a.layer] / n for a in attentions] if second_moments else None
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
    protected = _protected(protected_layers, len(scores))
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
    """``o_proj`` seen as :func:`fnprune.repair.refit_down` sees an MLP: the projection whose input
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
      calibration tokens -- the closed form of the MLP repair (:func:`fnprune.repair.refit_down`,
      ridge ``ridge`` × mean diagonal); each layer's :class:`~fnprune.repair.LayerFit` goes into
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
