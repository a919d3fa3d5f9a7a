"""Which neurons stay: neuron scores from the maps, the user's chosen networks, and the plan.

Pure functions over a :class:`fnprune.analysis.networks.FunctionalNetworks` (no model needed). The pruning
recipe (:mod:`fnprune.pruning.recipe`), the ``mask``/``prune`` commands, ``compare`` and the web app's
preview all size the layers here, so a preview and a pruning of the same choice agree.

Scores (higher = keep), each ``(n_layers, width)``:

- ``"networks"`` -- the seed-robust score of :meth:`FunctionalNetworks.neuron_scores`: the largest
  |z| over the stable networks, or the unresolved-subspace energy where restarts did not resolve the
  subspace into reproducible maps;
- ``"paper"`` -- the authors' rule: the largest |z| over every component's map (no unresolved-energy
  term). On a run analysed with one FastICA run per layer (``n_init=1``) it is exactly their mask;
- ``"unresolved"`` -- the unresolved-subspace energy alone (a PCA statistic, a control).

A *choice* of networks is a constraint (METHOD §1.11): every key neuron (|z| above the key
threshold in any signal) of every chosen network is kept whatever fills the rest of the budget;
the rest of the budget is filled by the score. With no choice nothing is forced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from ..models.mlp import default_protected_layers
from ..options import RATIO_BASES
from .budget import check_budget, check_target_ratio, check_uniform_protection, keep_from_scores, ratio_base

SCORES = ("networks", "paper", "unresolved")


def chosen_components(fn, networks) -> np.ndarray | None:
    """Sorted unique component ids of a choice (None = no choice); raises on an unknown id."""
    if networks is None:
        return None
    sel = np.unique(np.asarray(list(networks), dtype=np.int64))
    if sel.size == 0:
        raise ConfigError("networks: select at least one component")
    if sel.min() < 0 or sel.max() >= fn.n_components:
        raise ConfigError(f"networks: component ids must be in 0..{fn.n_components - 1}")
    return sel


def component_key_masks(fn, components: Sequence[int], threshold: float) -> np.ndarray:
    """``(len(components), n_layers, width)`` bool: the key neurons (max |z| over signals > threshold)
    of each component, placed in the layers its map covers."""
    out = np.zeros((len(components), fn.n_layers, fn.width), dtype=bool)
    for i, c in enumerate(components):
        out[i, fn.map_layers(int(c))] = fn.abs_max_map(int(c)) > threshold
    return out


def forced_mask(fn, networks, threshold: float | None = None) -> np.ndarray:
    """``(n_layers, width)`` bool: the key neurons of the chosen networks (all False without a choice)."""
    sel = chosen_components(fn, networks)
    if sel is None:
        return np.zeros((fn.n_layers, fn.width), dtype=bool)
    return component_key_masks(fn, sel, fn.threshold if threshold is None else float(threshold)).any(axis=0)


def neuron_scores(fn, kind: str = "networks") -> np.ndarray:
    """``(n_layers, width)`` float64 scores of one of :data:`SCORES` (see the module docstring)."""
    if kind == "networks":
        return np.asarray(fn.neuron_scores(), dtype=np.float64)
    if kind == "paper":
        out = np.zeros((fn.n_layers, fn.width))
        for c in range(fn.n_components):
            rows = fn.map_layers(c)
            out[rows] = np.maximum(out[rows], fn.abs_max_map(c))
        return out
    if kind == "unresolved":
        out = np.zeros((fn.n_layers, fn.width))
        for unit in np.unique(fn.component_unit):
            first = int(np.flatnonzero(fn.component_unit == unit)[0])
            rows = fn.map_layers(first)
            out[rows] = np.maximum(out[rows], fn.unit_unresolved[unit])
        return out
    raise ConfigError(f"unknown score {kind!r}; choose from {', '.join(SCORES)}")


def protected_set(fn, protected_layers) -> set[int]:
    """Protected layers (default: the paper's) plus every layer the analysis did not cover."""
    n = fn.n_layers
    protected = default_protected_layers(n) if protected_layers is None else list(protected_layers)
    out = set()
    for layer in protected:
        if isinstance(layer, bool) or not isinstance(layer, int | np.integer) or not -n <= int(layer) < n:
            raise ConfigError(f"protected_layers: {layer!r} is not a layer index in 0..{n - 1}",
                              field="protected_layers")
        out.add(int(layer) % n)
    return out | (set(range(n)) - set(fn.layers))


@dataclass
class NetworkKept:
    """How many key neurons of one chosen network a keep mask keeps."""

    id: int
    layer: int
    n_key: int
    n_kept: int


@dataclass
class Plan:
    """Per-layer widths of a choice, before any model is loaded (what the preview shows)."""

    keep: np.ndarray                  # (n_layers, width) bool, True = kept
    threshold: float | None           # the |z| score threshold the allocation amounts to
    target_ratio: float | None
    uniform: bool
    networks: list[int] | None
    protected_layers: list[int]
    original_widths: list[int]
    total_params: int
    mlp_params: int
    params_per_neuron: list[int]
    forced_per_layer: list[int]       # key neurons of the chosen networks per layer
    max_ratio_total: float            # the largest fraction of all parameters this choice can remove
    ratio_of: str = "all"
    max_ratio: dict = field(default_factory=dict)  # the same per base: {"all", "mlp", "non-embedding"}
    chosen: list[NetworkKept] = field(default_factory=list)

    @property
    def widths(self) -> list[int]:
        return [int(w) for w in self.keep.sum(axis=1)]

    @property
    def removed_params(self) -> int:
        return int(sum((o - w) * p for o, w, p in zip(self.original_widths, self.widths, self.params_per_neuron,
                                                       strict=True)))

    def as_dict(self) -> dict:
        removed = self.removed_params
        return {
            "threshold": self.threshold, "target_ratio": self.target_ratio, "uniform": self.uniform,
            "networks": self.networks, "widths": self.widths, "original_widths": self.original_widths,
            "protected_layers": self.protected_layers,
            "removed_neurons": int(sum(self.original_widths) - sum(self.widths)),
            "removed_params": removed, "total_params": self.total_params, "mlp_params": self.mlp_params,
            "ratio_total": removed / self.total_params, "ratio_mlp": removed / self.mlp_params,
            "size_bytes": int((self.total_params - removed) * 4),
            "forced_per_layer": self.forced_per_layer, "max_ratio_total": self.max_ratio_total,
            "ratio_of": self.ratio_of, "max_ratio": self.max_ratio,
            "chosen_networks": [vars(c) for c in self.chosen],
        }


def networks_kept(fn, networks, keep: np.ndarray | Sequence[np.ndarray], threshold: float | None = None
                  ) -> list[NetworkKept]:
    """For each chosen network: its key neurons and how many of them ``keep`` keeps.

    ``keep``: ``(n_layers, width)`` bool or per-layer kept indices (original neuron numbering).
    """
    sel = chosen_components(fn, networks)
    if sel is None:
        return []
    keep_mask = np.zeros((fn.n_layers, fn.width), dtype=bool)
    for layer, row in enumerate(keep):
        row = np.asarray(row)
        keep_mask[layer] = row if row.dtype == bool else np.isin(np.arange(fn.width), row)
    masks = component_key_masks(fn, sel, fn.threshold if threshold is None else float(threshold))
    out = []
    for c, m in zip(sel, masks, strict=True):
        out.append(NetworkKept(id=int(c), layer=fn.component_row_layer(int(c)), n_key=int(m.sum()),
                               n_kept=int((m & keep_mask).sum())))
    return out


def plan(fn, *, threshold: float | None = None, target_ratio: float | None = None, networks=None,
         protected_layers=None, uniform: bool = False, score: str = "networks",
         key_threshold: float | None = None, forced: Sequence[np.ndarray] | None = None,
         ratio_of: str = "all") -> Plan:
    """The keep mask and widths of a choice, sized with ``score`` (no model needed).

    Exactly one of ``threshold`` (keep neurons scoring above it) and ``target_ratio`` (fraction of
    ``ratio_of`` parameters to remove: ``all`` (default), ``mlp`` or ``non-embedding``; the
    lowest-scored neurons of the unprotected layers go first).
    ``uniform``: the same width in every layer, protected layers included (a stock architecture;
    explicitly given ``protected_layers`` are refused, :func:`fnprune.pruning.budget.check_uniform_protection`).
    ``networks``: the chosen networks, whose key neurons (|z| > ``key_threshold``, default the
    analysis threshold) are always kept. ``forced``: instead, the per-layer masks of neurons to keep
    (when the chosen networks come from another decomposition).
    """
    if (threshold is None) == (target_ratio is None):
        raise ConfigError("give exactly one of threshold and target_ratio")
    if threshold is not None and (not np.isfinite(threshold) or threshold < 0):
        raise ConfigError(f"threshold must be a finite number ≥ 0, got {threshold!r}")
    if target_ratio is not None:
        target_ratio = check_target_ratio(target_ratio)
    check_uniform_protection(uniform, protected_layers)
    model = fn.info["model"]
    ppn = [int(p) for p in model["params_per_neuron"]]
    total, mlp = int(model["total_params"]), int(model["mlp_params"])
    sizes = [fn.width] * fn.n_layers
    protected = set() if uniform else protected_set(fn, protected_layers)
    sel = chosen_components(fn, networks)
    forced = forced_mask(fn, networks, key_threshold) if forced is None else np.asarray(forced, dtype=bool)
    scores = neuron_scores(fn, score)
    if uniform and threshold is not None:
        free = [lyr for lyr in range(fn.n_layers) if lyr not in protected_set(fn, protected_layers)]
        width = int(round(np.mean([(scores[lyr] > threshold).sum() for lyr in free]))) if free else fn.width
        if width < 1:
            raise ConfigError("uniform widths would remove every MLP neuron of the pruned layers; lower the threshold")
        keep_idx = keep_from_scores(list(scores), ppn, widths=[width] * fn.n_layers, forced=list(forced))
    elif threshold is not None:
        keep_idx = keep_from_scores(list(scores), ppn, threshold=float(threshold), protected_layers=sorted(protected),
                                    forced=list(forced))
    else:
        base = ratio_base(model, ratio_of)
        goal = int(round(target_ratio * base))
        if not uniform:
            check_budget(goal, sizes, ppn, protected, list(forced), total_params=base, base_name=ratio_of)
        keep_idx = keep_from_scores(list(scores), ppn, n_params_remove=goal, protected_layers=sorted(protected),
                                    uniform=uniform, forced=list(forced))
    keep = np.zeros((fn.n_layers, fn.width), dtype=bool)
    for layer, idx in enumerate(keep_idx):
        keep[layer, idx] = True
    if threshold is None:  # the score the allocation amounts to: the best removed neuron's
        removed = [scores[lyr][~keep[lyr]] for lyr in range(fn.n_layers) if not keep[lyr].all()]
        used_threshold = float(max(r.max() for r in removed)) if removed else None
    else:
        used_threshold = float(threshold)
    reachable_layers = protected_set(fn, protected_layers) if not uniform else set()
    reachable = sum(ppn[lyr] * (fn.width - max(1, int(forced[lyr].sum())))
                    for lyr in range(fn.n_layers) if lyr not in reachable_layers)
    return Plan(keep=keep, threshold=used_threshold, target_ratio=target_ratio, uniform=bool(uniform),
                networks=None if sel is None else [int(x) for x in sel], protected_layers=sorted(protected),
                original_widths=[int(w) for w in model["widths"]], total_params=total, mlp_params=mlp,
                params_per_neuron=ppn, forced_per_layer=[int(x) for x in forced.sum(axis=1)],
                max_ratio_total=reachable / total, ratio_of=ratio_of,
                max_ratio={b: reachable / ratio_base(model, b) for b in RATIO_BASES
                           if b != "non-embedding" or model.get("embedding_params") is not None},
                chosen=networks_kept(fn, networks, keep, key_threshold))
