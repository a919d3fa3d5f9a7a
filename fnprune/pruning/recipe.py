"""The one pruning recipe: networks + choice -> widths -> scores -> keep -> (heads) -> prune -> repair.

``fnprune prune``, ``fnprune compare`` and the web app's worker all call
:func:`prune_with_networks` with a :class:`PruningSpec`; they only parse arguments and report.

Methods (``PruningSpec.method``; one record each in :mod:`fnprune.pruning.methods`, where a new one is added),
each choosing neurons *within* a layer by its own score:

- ``obs`` (default, chosen on validation documents, BENCHMARKS.md §3b: it beat FLAP + least squares
  at 20% and 30%), see below;
- ``flap`` (the previous default: with the least-squares repair FLAP's own allocation beat FLAP
  inside the networks' widths at 20% and 30%, BENCHMARKS.md §3);
- ``fn-flap``: FLAP's fluctuation score inside the functional networks' layer widths;
- ``fn``: the seed-robust network score (max |z| over stable networks, or the unresolved-subspace
  energy where restarts did not resolve the subspace; :func:`fnprune.pruning.selection.neuron_scores`);
- ``paper``: the authors' rule, the largest |z| over every map (no unresolved-energy term); exact on
  a run analysed with one FastICA run per layer (``n_init=1``);
- ``obs`` (the default): structured Optimal Brain Surgeon (ZipLM/SlimGPT-style): in each layer, greedily remove
  the neuron whose removal, with the least-squares repair, least raises the layer's output error
  relative to the residual stream on the calibration tokens (:func:`fnprune.pruning.scores.obs_scores`);
  its own allocation ranks those costs across layers. Selection and repair use the
  residual-weighted moments (:class:`fnprune.pruning.statistics.DownInputStats`);
- ``random``, ``magnitude``, ``wanda-sp``: the other baselines of METHOD §2.

Allocations (``PruningSpec.allocation``: how many neurons each layer keeps):

- ``networks``: the layer widths of the network score at the budget (fn, fn-flap; default for them);
- ``own``: the method's own scores ranked across the unprotected layers (default for the rest;
  for ``paper`` this is the threshold rule);
- ``unresolved``: widths from the unresolved-subspace energy alone (a control);
- ``uniform``: the same width in every layer, protected layers included (a stock architecture):
  explicitly given protected layers are refused, and the outcome notes that no layer was protected.

Chosen networks (``PruningSpec.networks``) are constraints: every key neuron of every chosen network
is kept whatever the method and the allocation; the rest of the budget is filled by the method.

Repair (``PruningSpec.repair``): ``lstsq`` (default) re-fits each pruned layer's ``down`` columns and
bias by ridge least squares to the dense layer's output on the calibration tokens
(:mod:`fnprune.pruning.repair`); ``sequential=True`` calibrates layer l on the already pruned and repaired
layers below it. ``bias`` is FLAP's mean compensation only; ``none`` changes no weight.
Pruned attention heads (``heads_fraction``) get the same repair: ``lstsq`` re-fits ``o_proj``'s
columns of the kept heads and a bias to the dense ``o_proj`` output (its input's second moment over
the calibration tokens, the same closed form and ridge), ``bias`` the mean compensation.

Recovery (``PruningSpec.recover_epochs``, off by default): after the repair, the pruned model's MLP
weights are trained to match the dense model's next-token distributions on the calibration documents
(:mod:`fnprune.pruning.recover`); the dense model is copied before pruning to be the teacher.

Nothing is substituted silently: what the recipe decides for the user (no layer protected under
``uniform``, fewer calibration documents than requested) is in :attr:`PruningOutcome.notes`, which
the CLI prints and ``pruning.json`` and the web app's result record.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from torch import nn

from ..errors import ConfigError, RunDirError
from ..models.mlp import default_protected_layers, find_mlps, parameter_counts
from ..progress import ProgressCallback, renamed, report
from .budget import keep_from_scores, params_to_remove, resolve_protected
from .calibration import Calibration
from .heads import head_group_scores, keep_heads_from_scores, prune_heads
from .layerwise import streamed_repair
from .methods import WEIGHTED_MOMENTS, ScoreInputs
from .recover import Recovery, distill
from .repair import LayerFit, down_weight_by_neuron, obs_removal_order
from .selection import NetworkKept, forced_mask, networks_kept, plan, protected_set
from .spec import PruningSpec, stats_needed
from .statistics import DownInputStats
from .surgery import prune_model


@dataclass
class PruningOutcome:
    """What :func:`prune_with_networks` did. ``keep[l]``: original indices of the kept neurons."""

    spec: PruningSpec
    keep: list[np.ndarray]
    widths: list[int]
    original_widths: list[int]
    dense_total_params: int
    dense_mlp_params: int
    total_params: int
    mlp_params: int
    protected_layers: list[int]
    chosen: list[NetworkKept]
    layer_fits: dict[int, LayerFit]
    threshold: float | None = None
    kv_heads: list[int] | None = None
    head_fits: dict[int, LayerFit] = field(default_factory=dict)
    calibration_docs: dict | None = None
    notes: list[str] = field(default_factory=list)
    recovery: Recovery | None = None

    @property
    def removed_fraction(self) -> float:
        return 1 - self.total_params / self.dense_total_params

    @property
    def removed_mlp_fraction(self) -> float:
        return 1 - self.mlp_params / self.dense_mlp_params

    @property
    def keep_digest(self) -> str:
        """sha256 of the ``(n_layers, width)`` keep mask: equal digests = the same neurons kept."""
        return hashlib.sha256(np.packbits(keep_to_mask(self.keep, max(self.original_widths))).tobytes()).hexdigest()

    def repair_summary(self, heads: bool = False) -> dict | None:
        """Mean relative output error of the pruned layers on calibration tokens, before/after repair
        (``heads``: of the attention output projections whose heads were pruned and re-fitted)."""
        by_layer = self.head_fits if heads else self.layer_fits
        if not by_layer:
            return None
        fits = list(by_layer.values())
        return {"layers": sorted(by_layer),
                "error_pruned": float(np.mean([f.error_pruned for f in fits])),
                "error_bias": float(np.mean([f.error_bias for f in fits])),
                "error_repaired": float(np.mean([f.error_repaired for f in fits]))}

    def info(self) -> dict:
        """JSON-ready record for ``pruning.json`` and the web app's result."""
        spec = asdict(self.spec)
        spec["networks"] = None if self.spec.networks is None else list(self.spec.networks)
        spec["protected_layers"] = None if self.spec.protected_layers is None else list(self.spec.protected_layers)
        return {"spec": spec, "method": self.spec.method, "allocation": self.spec.resolved_allocation,
                "repair": self.spec.repair, "threshold_used": self.threshold,
                "widths": self.widths, "original_widths": self.original_widths,
                "protected_layers": self.protected_layers, "kv_heads": self.kv_heads,
                "dense_total_params": self.dense_total_params, "dense_mlp_params": self.dense_mlp_params,
                "removed_params": self.dense_total_params - self.total_params,
                "removed_fraction": self.removed_fraction, "removed_mlp_fraction": self.removed_mlp_fraction,
                "keep_digest": self.keep_digest, "chosen_networks": [asdict(c) for c in self.chosen],
                "repair_errors": self.repair_summary(), "head_repair_errors": self.repair_summary(heads=True),
                "calibration_docs": self.calibration_docs, "notes": list(self.notes),
                "recovery": None if self.recovery is None else asdict(self.recovery)}


def check_networks_match(fn, model: nn.Module) -> None:
    """Raise :class:`RunDirError` when the networks were computed on a model of another shape."""
    widths = [a.width for a in find_mlps(model)]
    recorded = fn.info.get("model", {}).get("config_class")
    config_class = type(getattr(model, "config", None)).__name__
    if recorded and recorded != config_class:
        raise RunDirError(f"the functional networks were computed on a {recorded} model, this is a {config_class} "
                          "model: run directory from another model?")
    shape = (fn.n_layers, fn.width)
    if shape != (len(widths), max(widths)) or len(set(widths)) != 1:
        raise RunDirError(f"the functional networks are for {shape[0]} layers x {shape[1]} neurons, the model has "
                          f"{len(widths)} layers with widths {sorted(set(widths))}: run directory from another model?")


def _within_scores(spec: PruningSpec, model: nn.Module, fn, stats: DownInputStats | None,
                   forced: list[np.ndarray] | None, calibration: Calibration | None = None,
                   protected: Sequence[int] = (), progress: ProgressCallback | None = None) -> list[np.ndarray]:
    """Per-layer scores (higher = keep) the method uses to choose neurons inside a layer: its record's
    score function (:mod:`fnprune.pruning.methods`); ``protected`` layers are kept whole (a method may skip them)."""
    return spec.method_record.scores(ScoreInputs(model=model, networks=fn, stats=stats, forced=forced,
                                                 protected=protected, ridge=spec.ridge, seed=spec.seed,
                                                 calibration=calibration, progress=progress))


def choose_keep(spec: PruningSpec, model: nn.Module, fn, stats: DownInputStats | None, chosen_from=None,
                calibration: Calibration | None = None, progress: ProgressCallback | None = None,
                forced: np.ndarray | None = None) -> tuple[list[np.ndarray], list[int], float | None]:
    """Per-layer kept indices, the protected layers and the score threshold the allocation amounts to.

    ``chosen_from``: the networks the ids of ``spec.networks`` refer to (default ``fn``).
    ``calibration``: where ``stats`` came from (its cache of obs orders is used).
    ``forced``: ``(n_layers, width)`` bool, more neurons kept whatever the method (with the chosen
    networks' key neurons)."""
    adapters = find_mlps(model)
    ppn = [a.params_per_neuron for a in adapters]
    n_layers = len(adapters)
    owner = chosen_from if chosen_from is not None else fn
    chosen_forced = list(forced_mask(owner, spec.networks)) if owner is not None else None
    forced = _merge_forced(chosen_forced, forced, [a.width for a in adapters])
    alloc = spec.resolved_allocation
    protected = [] if alloc == "uniform" else sorted(
        protected_set(fn, spec.protected_layers) if fn is not None else resolve_protected(spec.protected_layers, n_layers))
    within = _within_scores(spec, model, fn, stats, forced, calibration, protected, progress)
    is_network_score = spec.method_record.takes_threshold  # the method is the network score the plan sizes by
    if alloc in ("networks", "unresolved") or (spec.threshold is not None and is_network_score):
        p = plan(fn, threshold=spec.threshold, target_ratio=spec.target_ratio, ratio_of=spec.ratio_of,
                 networks=spec.networks if owner is fn else None, forced=forced,
                 protected_layers=spec.protected_layers, uniform=alloc == "uniform", score=spec.score_kind)
        if is_network_score and alloc != "unresolved":
            keep = [np.flatnonzero(row) for row in p.keep]
        else:
            keep = keep_from_scores(within, ppn, widths=p.widths, forced=forced)
        return keep, p.protected_layers, p.threshold
    n_remove = params_to_remove(model, spec.target_ratio, spec.ratio_of)
    if alloc == "uniform":
        keep = keep_from_scores(within, ppn, n_params_remove=n_remove, uniform=True, forced=forced)
        return keep, [], None
    keep = keep_from_scores(within, ppn, n_params_remove=n_remove, protected_layers=protected, forced=forced)
    return keep, protected, None


def _merge_forced(chosen: list[np.ndarray] | None, extra: np.ndarray | None, widths: list[int]
                  ) -> list[np.ndarray] | None:
    """The chosen networks' key neurons OR ``extra`` (``(n_layers, width)`` bool), per layer."""
    if extra is None:
        return chosen
    extra = np.asarray(extra)
    if extra.dtype != bool or extra.shape != (len(widths), max(widths)):
        raise ConfigError(f"forced neurons must be a ({len(widths)}, {max(widths)}) bool mask, got "
                          f"{extra.dtype} {extra.shape}", field="forced")
    rows = [extra[layer, :w] for layer, w in enumerate(widths)]
    return rows if chosen is None else [c | e for c, e in zip(chosen, rows, strict=True)]


def prune_with_networks(model: nn.Module, fn, spec: PruningSpec, calibration: Calibration | None = None,
                        progress: ProgressCallback | None = None, *, chosen_from=None,
                        forced: np.ndarray | None = None) -> PruningOutcome:
    """Prune ``model`` in place as ``spec`` says, keeping every key neuron of the chosen networks.

    ``fn``: the :class:`~fnprune.analysis.networks.FunctionalNetworks` of this (dense) model, or None for a
    baseline with its own allocation and no chosen networks. ``calibration``: the documents for
    the statistics FLAP, Wanda-sp, the bias and the repair need (required when the spec needs them).
    ``chosen_from``: the networks whose ids ``spec.networks`` names, when not ``fn`` (``compare``
    prunes ``paper`` with a one-run analysis but keeps the networks a user chose in the main one).
    ``forced``: ``(n_layers, width)`` bool, neurons kept whatever the method besides the chosen
    networks' key neurons (a control of :mod:`fnprune.pruning.protect`: neurons chosen without ICA).
    Every check runs before the model is touched.
    """
    spec = spec.validated(fn is not None)
    if fn is not None:
        check_networks_match(fn, model)
    if forced is not None and spec.sequential:
        raise ConfigError("forced neurons are not available with sequential calibration", field="forced")
    dense = parameter_counts(model)
    needs_stats, second_moments, weighted = stats_needed(spec)
    if (needs_stats or spec.heads_fraction) and calibration is None:
        raise ConfigError(f"method {spec.method!r} with repair {spec.repair!r} needs calibration documents")
    if spec.recover_epochs and calibration is None:
        raise ConfigError("recovery (recover_epochs) needs calibration documents", field="recover_epochs")
    teacher = copy.deepcopy(model) if spec.recover_epochs else None  # the dense model, before any change
    stats = None
    if needs_stats:
        stats = calibration.down_stats(model, second_moments=second_moments, progress=renamed(progress, "calibrate"),
                                       weighted=weighted)
    report(progress, "select", 0.0, f"{spec.method}: choosing neurons")
    keep, protected, threshold = choose_keep(spec, model, fn, stats, chosen_from, calibration, progress=progress,
                                             forced=forced)
    owner = chosen_from if chosen_from is not None else fn
    if chosen_from is not None:
        check_networks_match(chosen_from, model)
    chosen = networks_kept(owner, spec.networks, keep) if owner is not None else []
    lost = [c for c in chosen if c.n_kept < c.n_key]
    if lost:  # the recipe's promise: never reached unless a bug slipped in
        raise AssertionError(f"chosen networks lost key neurons: {lost}")
    if forced is not None and any(not np.isin(np.flatnonzero(np.asarray(forced)[layer]), k).all()
                                  for layer, k in enumerate(keep)):
        raise AssertionError("forced neurons were removed")
    report(progress, "select", 1.0, "done")

    kv_heads = None
    head_fits: dict[int, LayerFit] = {}
    if spec.heads_fraction:
        att = calibration.attention_stats(model, progress=renamed(progress, "calibrate heads"),
                                          second_moments=spec.repair == "lstsq")
        keep_heads = keep_heads_from_scores(head_group_scores(model, att), spec.heads_fraction, protected)
        prune_heads(model, keep_heads, bias=att if spec.repair == "bias" else None,
                    repair=att if spec.repair == "lstsq" else None, ridge=spec.ridge, fits=head_fits)
        kv_heads = [len(k) for k in keep_heads]

    fits: dict[int, LayerFit] = {}
    report(progress, "prune", 0.0, "pruning MLP neurons")
    weighted_repair = spec.method_record.repair_moments == "weighted"  # obs repairs with the moments it selected with
    if spec.repair == "lstsq" and (spec.sequential or calibration.streams(model)):
        reselect = _obs_reselect(model, owner, spec) if (
            spec.sequential and spec.method_record.statistics == WEIGHTED_MOMENTS) else None
        keep = streamed_repair(model, keep, calibration.tokenizer, calibration.docs, ridge=spec.ridge,
                               weighted=weighted_repair, sequential=spec.sequential, max_tokens=calibration.max_tokens,
                               batch_size=calibration.batch_size, fits=fits, dtype=calibration.moment_dtype,
                               progress=renamed(progress, "prune"), reselect=reselect,
                               # the select pass's moments are the repair's only while the attention is dense
                               spilled=calibration.spilled_moments if kv_heads is None else None)
    else:
        repair = None
        if spec.repair == "lstsq":
            repair = stats.weighted() if weighted_repair else stats
        prune_model(model, keep, bias=stats if spec.repair == "bias" else None, repair=repair,
                    ridge=spec.ridge, fits=fits)
    report(progress, "prune", 1.0, "done")
    recovery = None
    if teacher is not None:
        recovery = distill(model, teacher, calibration.tokenizer, calibration.docs, epochs=spec.recover_epochs,
                           lr=spec.recover_lr, max_tokens=calibration.max_tokens, batch_size=calibration.batch_size,
                           random_state=spec.seed, progress=progress)
        del teacher
    after = parameter_counts(model)
    docs = None if calibration is None else calibration.docs_record(
        needs_stats or bool(spec.heads_fraction) or recovery is not None)
    return PruningOutcome(spec=spec, keep=[np.asarray(k, dtype=np.int64) for k in keep],
                          widths=after["widths"], original_widths=dense["widths"],
                          dense_total_params=dense["total_params"], dense_mlp_params=dense["mlp_params"],
                          total_params=after["total_params"], mlp_params=after["mlp_params"],
                          protected_layers=[int(x) for x in protected], chosen=chosen, layer_fits=fits,
                          threshold=threshold, kv_heads=kv_heads, head_fits=head_fits, calibration_docs=docs,
                          notes=_notes(spec, after["widths"], len(dense["widths"]), docs), recovery=recovery)


def _obs_reselect(model: nn.Module, owner, spec: PruningSpec):
    """Sequential obs: each layer's neurons chosen again by the greedy on the moments of its inputs
    after the layers below were pruned and repaired, at the width the dense pass gave it, never
    removing the chosen networks' key neurons (``owner``'s, as :func:`choose_keep` forces them)."""
    forced = list(forced_mask(owner, spec.networks)) if owner is not None else [None] * len(find_mlps(model))

    def reselect(adapter, second_moment, mean, width: int) -> np.ndarray:
        if width >= adapter.width:
            return np.arange(adapter.width)
        order, _ = obs_removal_order(down_weight_by_neuron(adapter), second_moment, mean,
                                     forced=forced[adapter.layer], ridge=spec.ridge, min_width=width,
                                     layer=adapter.layer)
        return np.setdiff1d(np.arange(adapter.width), order)

    return reselect


def _notes(spec: PruningSpec, widths: list[int], n_layers: int, docs: dict | None) -> list[str]:
    """What the recipe decided that the user may not expect, one line each (printed and saved)."""
    notes = []
    defaults = default_protected_layers(n_layers)
    if spec.resolved_allocation == "uniform" and defaults:
        notes.append(f"uniform allocation: every layer keeps {widths[0]} MLP neurons"
                     + (" (and the same share of attention heads)" if spec.heads_fraction else "")
                     + f"; no layer is protected (the default protected layers {defaults} apply to the "
                     "other allocations)")
    if docs is not None and 0 < docs["used"] < docs["requested"]:
        notes.append(f"calibration: {docs['used']} documents used of the {docs['requested']} requested (the "
                     "corpus has no more calibration documents)")
    return notes


def keep_to_mask(keep: Sequence[np.ndarray], width: int) -> np.ndarray:
    """``(n_layers, width)`` bool mask of per-layer kept indices."""
    mask = np.zeros((len(keep), width), dtype=bool)
    for layer, idx in enumerate(keep):
        mask[layer, np.asarray(idx, dtype=np.int64)] = True
    return mask


