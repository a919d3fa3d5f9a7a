"""Budgets: protected layers, the target ratio and its base, keep indices from scores at a budget."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from torch import nn

from ..errors import ConfigError
from ..models.mlp import (
    default_protected_layers,
    parameter_counts,
)
from ..options import RATIO_BASES


# -- layers and budgets -------------------------------------------------------------------------
def resolve_protected(protected_layers: Sequence[int] | None, n_layers: int) -> set[int]:
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


def check_target_ratio(target_ratio) -> float:
    """The one check of a target ratio (the CLI, the web API's worker, ``compare``, the spec and the
    plan all call it): a real number strictly between 0 and 1, the fraction of parameters to remove;
    :class:`ConfigError` (field ``target_ratio``) otherwise."""
    if (isinstance(target_ratio, bool) or not isinstance(target_ratio, int | float | np.floating)
            or not np.isfinite(target_ratio) or not 0 < target_ratio < 1):
        raise ConfigError(f"target_ratio must be between 0 and 1 (exclusive): the target ratio is the fraction "
                          f"of parameters to remove, got {target_ratio!r}", field="target_ratio")
    return float(target_ratio)


def ratio_base(counts: dict, ratio_of: str = "all") -> int:
    """The parameter count a target ratio is a fraction of: all parameters, the MLPs' or all but the
    embeddings (``counts``: :func:`fnprune.models.mlp.parameter_counts` or a run's ``info["model"]``)."""
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
    forced_masks = forced_neuron_masks(forced, sizes)
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
        protected = resolve_protected(protected_layers, n_layers)
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
    protected = resolve_protected(protected_layers, n_layers)
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


def forced_neuron_masks(forced: Sequence[np.ndarray] | None, sizes: Sequence[int]) -> list[np.ndarray]:
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
