"""A baseline method outside the recipe (tests and benches): scores through the registry, keep, prune."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import nn

from ..errors import ConfigError
from ..models.mlp import (
    find_mlps,
)
from .budget import keep_from_scores, params_to_remove
from .methods import BASELINES
from .statistics import DownInputStats
from .surgery import prune_model


def baseline_scores(method: str, model: nn.Module, stats: DownInputStats | None = None,
                    seed: int = 0) -> list[np.ndarray]:
    """Scores of one of :data:`BASELINES` (``random``, ``magnitude``, ``wanda-sp``, ``flap``): its
    record's score function (:mod:`fnprune.pruning.methods`), as the recipe ranks them across layers
    (magnitude's and Wanda-sp's z-scored within each layer, FLAP's standardised)."""
    from .methods import ScoreInputs
    from .methods import get as get_method

    if method not in BASELINES:
        raise ConfigError(f"unknown baseline {method!r}; choose from {', '.join(BASELINES)}")
    return get_method(method).scores(ScoreInputs(model=model, stats=stats, seed=seed))


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
