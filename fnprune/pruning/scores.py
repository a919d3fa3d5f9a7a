"""Within-layer neuron scores of the methods (higher = keep): random, magnitude, Wanda-SP, FLAP, structured OBS."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..models.mlp import (
    MLPAdapter,
    _is_conv1d,
    find_mlps,
)
from ..progress import ProgressCallback, report
from .budget import forced_neuron_masks
from .repair import DEFAULT_RIDGE, down_weight_by_neuron, obs_removal_order
from .statistics import DownInputStats


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

    Each layer's neurons are ordered by :func:`fnprune.pruning.repair.obs_removal_order` (greedy least rise
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
    masks = forced_neuron_masks(forced, [a.width for a in adapters])
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
    order, cost = obs_removal_order(down_weight_by_neuron(adapter), second_moment, mean, forced=forced, ridge=ridge,
                                    layer=adapter.layer)
    v = np.maximum.accumulate(cost * float(weight_mean)) if len(cost) else cost
    for k in range(1, len(v)):  # strictly increasing: ties would lose the greedy order
        v[k] = max(v[k], np.nextafter(v[k - 1], np.inf))
    s = np.full(adapter.width, np.inf)
    s[order] = v  # removed later = costlier = more important
    return s
