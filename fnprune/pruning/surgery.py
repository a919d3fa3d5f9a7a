"""Applying keep indices: the coupled index_select, bias compensation or repair, the config's widths."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..models.mlp import (
    MLPAdapter,
    find_mlps,
)
from .repair import DEFAULT_RIDGE, LayerFit, down_weight_by_neuron, refit_down
from .statistics import DownInputStats


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


# -- pruning --------------------------------------------------------------------------------------


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
      (:func:`fnprune.pruning.repair.refit_down`: the objective obs selects by); each layer's
      :class:`~fnprune.pruning.repair.LayerFit` goes into ``fits`` when given.

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
    """Re-fit one dense layer's ``down`` on its kept neurons (:func:`fnprune.pruning.repair.refit_down`), add the
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
