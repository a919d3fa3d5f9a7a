"""The one pruning recipe: networks + choice -> widths -> scores -> keep -> (heads) -> prune -> repair.

``fnprune prune``, ``fnprune compare`` and the web app's worker all call
:func:`prune_with_networks` with a :class:`PruningSpec`; they only parse arguments and report.

Methods (``PruningSpec.method``; one record each in :mod:`fnprune.methods`, where a new one is added),
each choosing neurons *within* a layer by its own score:

- ``obs`` (default, chosen on validation documents, BENCHMARKS.md §3b: it beat FLAP + least squares
  at 20% and 30%), see below;
- ``flap`` (the previous default: with the least-squares repair FLAP's own allocation beat FLAP
  inside the networks' widths at 20% and 30%, BENCHMARKS.md §3);
- ``fn-flap``: FLAP's fluctuation score inside the functional networks' layer widths;
- ``fn``: the seed-robust network score (max |z| over stable networks, or the unresolved-subspace
  energy where restarts did not resolve the subspace; :func:`fnprune.selection.neuron_scores`);
- ``paper``: the authors' rule, the largest |z| over every map (no unresolved-energy term); exact on
  a run analysed with one FastICA run per layer (``n_init=1``);
- ``obs`` (the default): structured Optimal Brain Surgeon (ZipLM/SlimGPT-style): in each layer, greedily remove
  the neuron whose removal, with the least-squares repair, least raises the layer's output error
  relative to the residual stream on the calibration tokens (:func:`fnprune.prune.obs_scores`);
  its own allocation ranks those costs across layers. Selection and repair use the
  residual-weighted moments (:class:`fnprune.prune.DownInputStats`);
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
(:mod:`fnprune.repair`); ``sequential=True`` calibrates layer l on the already pruned and repaired
layers below it. ``bias`` is FLAP's mean compensation only; ``none`` changes no weight.
Pruned attention heads (``heads_fraction``) get the same repair: ``lstsq`` re-fits ``o_proj``'s
columns of the kept heads and a bias to the dense ``o_proj`` output (its input's second moment over
the calibration tokens, the same closed form and ridge), ``bias`` the mean compensation.

Nothing is substituted silently: what the recipe decides for the user (no layer protected under
``uniform``, fewer calibration documents than requested) is in :attr:`PruningOutcome.notes`, which
the CLI prints and ``pruning.json`` and the web app's result record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from torch import nn

from .errors import ConfigError, RunDirError
from .layerwise import streamed_obs_scores, streamed_repair
from .methods import PER_NEURON, SECOND_MOMENTS, WEIGHTED_MOMENTS, ScoreInputs
from .methods import get as get_method
from .mlp import default_protected_layers, find_mlps, parameter_counts
from .options import (  # noqa: F401  (METHODS, NETWORK_METHODS, METHOD_HELP: re-exported under their old home)
    ALLOCATIONS,
    DEFAULT_CALIBRATION_DOCS,
    DEFAULT_METHOD,
    DEFAULT_RIDGE,
    DEFAULT_TARGET_RATIO,
    METHOD_HELP,
    METHODS,
    NETWORK_METHODS,
    RATIO_BASES,
    REPAIRS,
    SEQUENTIAL_REPAIR,
)
from .progress import ProgressCallback, report
from .prune import (
    DownInputStats,
    check_target_ratio,
    check_uniform_protection,
    collect_attention_stats,
    collect_down_input_stats,
    head_group_scores,
    keep_from_scores,
    keep_heads_from_scores,
    obs_scores,
    params_to_remove,
    prune_heads,
    prune_model,
)
from .repair import LayerFit
from .selection import NetworkKept, forced_mask, networks_kept, plan, protected_set

STREAM_ABOVE_BYTES = 2 * 1024 ** 3  # every layer's float64 (I, I) moments above this: calibrate layer by layer


def native_repair(method: str) -> str:
    """The compensation a method comes with (:attr:`fnprune.methods.Method.native_repair`: FLAP's mean
    bias for flap and fn-flap, the least-squares fit for obs -- its selection is that fit -- nothing otherwise)."""
    return get_method(method).native_repair


def unrepaired(method: str) -> str:
    """The repair ``--no-repair`` means (:attr:`fnprune.methods.Method.unrepaired`: FLAP's mean bias for
    flap and fn-flap, nothing otherwise)."""
    return get_method(method).unrepaired


@dataclass(frozen=True)
class PruningSpec:
    """What to prune and how; validated by :meth:`validated` before any model work starts.

    ``target_ratio``: fraction of ``ratio_of`` parameters to remove (``all`` by default, ``mlp`` or
    ``non-embedding``; only MLP neurons are removed);
    ``threshold``: instead, keep neurons whose network score (|z|) is above it.
    """

    method: str = DEFAULT_METHOD
    target_ratio: float | None = DEFAULT_TARGET_RATIO
    threshold: float | None = None
    networks: tuple[int, ...] | None = None
    allocation: str = "default"
    protected_layers: tuple[int, ...] | None = None
    repair: str = "lstsq"
    sequential: bool = False
    ridge: float = DEFAULT_RIDGE
    heads_fraction: float | None = None
    seed: int = 0
    ratio_of: str = "all"

    @property
    def method_record(self):
        """The :class:`fnprune.methods.Method` of :attr:`method` (:class:`ConfigError` if unknown)."""
        return get_method(self.method)

    @property
    def resolved_allocation(self) -> str:
        if self.allocation != "default":
            return self.allocation
        return self.method_record.default_allocation

    @property
    def takes_threshold(self) -> bool:
        """Whether a |z| threshold can size this spec's layers (its method or allocation uses the
        network score); else only a target ratio can."""
        return self.method_record.takes_threshold or self.resolved_allocation in ("networks", "unresolved")

    @property
    def score_kind(self) -> str:
        """The network score that sizes the layers (for allocations that use one)."""
        alloc = self.resolved_allocation
        if alloc == "unresolved":
            return "unresolved"
        return self.method_record.network_score or "networks"

    def validated(self, have_networks: bool) -> PruningSpec:
        """This spec with tuples normalised; raises :class:`ConfigError` naming the field."""
        method = get_method(self.method)  # ConfigError naming the choices when unknown
        if self.allocation not in ALLOCATIONS:
            raise ConfigError(f"allocation: unknown {self.allocation!r}; choose from {', '.join(ALLOCATIONS)}",
                              field="allocation")
        if self.ratio_of not in RATIO_BASES:
            raise ConfigError(f"ratio_of: unknown {self.ratio_of!r}; choose from {', '.join(RATIO_BASES)}",
                              field="ratio_of")
        if self.repair not in REPAIRS:
            raise ConfigError(f"repair: unknown {self.repair!r}; choose from {', '.join(REPAIRS)}", field="repair")
        if (self.threshold is None) == (self.target_ratio is None):
            raise ConfigError("give exactly one of target_ratio and threshold", field="target_ratio")
        if self.target_ratio is not None:
            check_target_ratio(self.target_ratio)
        if self.threshold is not None and (not np.isfinite(self.threshold) or self.threshold < 0):
            raise ConfigError(f"threshold must be a finite number ≥ 0, got {self.threshold!r}", field="threshold")
        if not (np.isfinite(self.ridge) and self.ridge >= 0):
            raise ConfigError(f"ridge must be a finite number ≥ 0, got {self.ridge!r}", field="ridge")
        if self.sequential and self.repair != SEQUENTIAL_REPAIR:
            raise ConfigError(f"sequential calibration is a mode of the least-squares repair (repair="
                              f"'{SEQUENTIAL_REPAIR}')", field="sequential")
        for option, reason in method.refuses.items():
            if getattr(self, option):
                raise ConfigError(f"{_OPTION_NAMES.get(option, option)} is not available for method "
                                  f"{self.method!r} ({reason})", field=option)
        if self.heads_fraction is not None and not 0 < float(self.heads_fraction) < 1:
            raise ConfigError(f"heads fraction must be strictly between 0 and 1, got {self.heads_fraction}",
                              field="heads_fraction")
        alloc = self.resolved_allocation
        check_uniform_protection(alloc == "uniform", self.protected_layers)
        needs_networks = (method.needs_networks or alloc in ("networks", "unresolved")
                          or self.networks is not None or self.threshold is not None)
        if needs_networks and not have_networks:
            raise ConfigError(f"method {self.method!r} with allocation {alloc!r}"
                              + (" and chosen networks" if self.networks is not None else "")
                              + " needs functional networks (a run directory)")
        if self.threshold is not None and not self.takes_threshold:
            raise ConfigError(f"threshold: method {self.method!r} with allocation {alloc!r} does not size the layers "
                              "by the network score, so a |z| threshold has no meaning: use allocation 'networks' "
                              "(or a target ratio)", field="threshold")
        return replace(self, networks=None if self.networks is None else tuple(int(x) for x in self.networks),
                       protected_layers=None if self.protected_layers is None
                       else tuple(int(x) for x in self.protected_layers))


_OPTION_NAMES = {"sequential": "sequential calibration", "heads_fraction": "pruning attention heads"}


@dataclass
class Calibration:
    """Calibration documents and the statistics gathered on the *dense* model (computed once, reused).

    ``compare`` shares one instance across every method, so the calibration pass runs once.
    ``requested_docs``: how many documents the user asked for, when the corpus may hold fewer
    (recorded with the number used in :meth:`PruningOutcome.info`, and a note when fewer were used).

    ``streamed``: collect the ``(I, I)`` moments that obs and the least-squares repair need one
    decoder layer at a time (:mod:`fnprune.layerwise`: one layer's statistics alive, on the layer's
    device) instead of every layer's in one pass. None (default): stream when every layer's float64
    moments together would exceed :data:`STREAM_ABOVE_BYTES` (an 8B-class model: ~31 GB), so small
    models keep the single pass ``compare`` shares across its rows. Both give the same numbers.
    """

    tokenizer: object
    docs: Sequence
    max_tokens: int = 512
    batch_size: int = 4
    requested_docs: int | None = None
    streamed: bool | None = None
    _down: DownInputStats | None = field(default=None, repr=False)
    _attention: object = field(default=None, repr=False)
    _obs: dict = field(default_factory=dict, repr=False)

    def prepare(self, model: nn.Module, specs: Sequence[PruningSpec], progress=None) -> None:
        """Collect, in one pass, every statistic these specs will ask for (``compare`` prunes many)."""
        needs = [_stats_needed(s) for s in specs]
        if any(n for n, _, _ in needs):
            self.down_stats(model, second_moments=any(s for _, s, _ in needs), progress=_renamed(progress, "calibrate"),
                            weighted=any(w for _, _, w in needs))

    def streams(self, model: nn.Module) -> bool:
        """Whether this calibration collects the ``(I, I)`` moments layer by layer (see ``streamed``)."""
        if self.streamed is not None:
            return bool(self.streamed)
        return sum(a.width ** 2 for a in find_mlps(model)) * 8 > STREAM_ABOVE_BYTES

    def obs_scores(self, model: nn.Module, forced: list[np.ndarray] | None, ridge: float,
                   skip: Sequence[int] = (), progress: ProgressCallback | None = None) -> list[np.ndarray]:
        """:func:`fnprune.prune.obs_scores` on these statistics, computed once per (forced, ridge, skip):
        the web app's "without repair" comparison and ``compare``'s rows reuse the greedy order.
        ``skip``: the protected layers (kept whole: no greedy runs for them)."""
        masks = None if forced is None else [np.asarray(f) for f in forced]
        key = (float(ridge), tuple(sorted(int(x) for x in skip)), None if masks is None else hashlib.sha256(
            b"".join(np.packbits(m.astype(bool)).tobytes() + str(m.shape).encode() for m in masks)).hexdigest())
        if key not in self._obs:
            if self.streams(model):
                self._obs[key] = streamed_obs_scores(model, self.tokenizer, self.docs, forced=masks, ridge=ridge,
                                                     skip=skip, max_tokens=self.max_tokens, batch_size=self.batch_size,
                                                     progress=_renamed(progress, "select"))
            else:
                self._obs[key] = obs_scores(model, self._down, masks, ridge, skip=skip,
                                            progress=_renamed(progress, "select"))
        return self._obs[key]

    def down_stats(self, model: nn.Module, second_moments: bool, progress=None, weighted: bool = False
                   ) -> DownInputStats:
        """The statistics (recollected, keeping what was there, when a requested part is missing).
        When :meth:`streams`, only the per-neuron ones: the ``(I, I)`` moments come layer by layer."""
        if self.streams(model):
            second_moments = weighted = False
        have = self._down
        if (have is None or (second_moments and have.second_moment is None)
                or (weighted and have.weighted_second_moment is None)):
            self._obs.clear()
            self._down = collect_down_input_stats(
                model, self.tokenizer, self.docs, self.max_tokens, self.batch_size, progress,
                second_moments=second_moments or (have is not None and have.second_moment is not None),
                weighted=weighted or (have is not None and have.weighted_second_moment is not None))
        return self._down

    def attention_stats(self, model: nn.Module, progress=None, second_moments: bool = False):
        """``o_proj``'s input statistics (recollected when ``second_moments`` are asked for and missing)."""
        if self._attention is None or (second_moments and self._attention.second_moment is None):
            self._attention = collect_attention_stats(model, self.tokenizer, self.docs, self.max_tokens,
                                                      self.batch_size, progress, second_moments=second_moments)
        return self._attention

    def docs_record(self, used: bool) -> dict:
        """``{"requested", "used", "tokens_per_doc"}``: documents asked for and calibrated on (0 when
        the spec needed no calibration)."""
        available = len(self.docs)
        return {"requested": int(self.requested_docs if self.requested_docs is not None else available),
                "used": available if used else 0, "tokens_per_doc": int(self.max_tokens)}


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
                "calibration_docs": self.calibration_docs, "notes": list(self.notes)}


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
    score function (:mod:`fnprune.methods`); ``protected`` layers are kept whole (a method may skip them)."""
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
        protected_set(fn, spec.protected_layers) if fn is not None else _default_protected(spec.protected_layers, n_layers))
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


def _default_protected(protected_layers, n_layers: int) -> set[int]:
    from .prune import _protected

    return _protected(protected_layers, n_layers)


def default_target(spec: PruningSpec, threshold: float) -> tuple[PruningSpec, str]:
    """``spec`` when it gives a target ratio or a threshold; else (neither given) with ``threshold``
    (an analysis' own |z| threshold) where a threshold sizes its layers (:attr:`PruningSpec.takes_threshold`),
    and :data:`DEFAULT_TARGET_RATIO` otherwise. Returns ``(spec, where the target came from)``:
    ``"request"``, ``"analysis threshold"`` or ``"default target ratio"``."""
    if spec.threshold is not None or spec.target_ratio is not None:
        return spec, "request"
    if spec.takes_threshold:
        return replace(spec, threshold=float(threshold)), "analysis threshold"
    return replace(spec, target_ratio=DEFAULT_TARGET_RATIO), "default target ratio"


def prune_with_networks(model: nn.Module, fn, spec: PruningSpec, calibration: Calibration | None = None,
                        progress: ProgressCallback | None = None, *, chosen_from=None,
                        forced: np.ndarray | None = None) -> PruningOutcome:
    """Prune ``model`` in place as ``spec`` says, keeping every key neuron of the chosen networks.

    ``fn``: the :class:`~fnprune.networks.FunctionalNetworks` of this (dense) model, or None for a
    baseline with its own allocation and no chosen networks. ``calibration``: the documents for
    the statistics FLAP, Wanda-sp, the bias and the repair need (required when the spec needs them).
    ``chosen_from``: the networks whose ids ``spec.networks`` names, when not ``fn`` (``compare``
    prunes ``paper`` with a one-run analysis but keeps the networks a user chose in the main one).
    ``forced``: ``(n_layers, width)`` bool, neurons kept whatever the method besides the chosen
    networks' key neurons (a control of :mod:`fnprune.protect`: neurons chosen without ICA).
    Every check runs before the model is touched.
    """
    spec = spec.validated(fn is not None)
    if fn is not None:
        check_networks_match(fn, model)
    if forced is not None and spec.sequential:
        raise ConfigError("forced neurons are not available with sequential calibration", field="forced")
    dense = parameter_counts(model)
    needs_stats, second_moments, weighted = _stats_needed(spec)
    if (needs_stats or spec.heads_fraction) and calibration is None:
        raise ConfigError(f"method {spec.method!r} with repair {spec.repair!r} needs calibration documents")
    stats = None
    if needs_stats:
        stats = calibration.down_stats(model, second_moments=second_moments, progress=_renamed(progress, "calibrate"),
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
        att = calibration.attention_stats(model, progress=_renamed(progress, "calibrate heads"),
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
                               batch_size=calibration.batch_size, fits=fits, progress=_renamed(progress, "prune"),
                               reselect=reselect)
    else:
        repair = None
        if spec.repair == "lstsq":
            repair = stats.weighted() if weighted_repair else stats
        prune_model(model, keep, bias=stats if spec.repair == "bias" else None, repair=repair,
                    ridge=spec.ridge, fits=fits)
    report(progress, "prune", 1.0, "done")
    after = parameter_counts(model)
    docs = None if calibration is None else calibration.docs_record(needs_stats or bool(spec.heads_fraction))
    return PruningOutcome(spec=spec, keep=[np.asarray(k, dtype=np.int64) for k in keep],
                          widths=after["widths"], original_widths=dense["widths"],
                          dense_total_params=dense["total_params"], dense_mlp_params=dense["mlp_params"],
                          total_params=after["total_params"], mlp_params=after["mlp_params"],
                          protected_layers=[int(x) for x in protected], chosen=chosen, layer_fits=fits,
                          threshold=threshold, kv_heads=kv_heads, head_fits=head_fits, calibration_docs=docs,
                          notes=_notes(spec, after["widths"], len(dense["widths"]), docs))


def _obs_reselect(model: nn.Module, owner, spec: PruningSpec):
    """Sequential obs: each layer's neurons chosen again by the greedy on the moments of its inputs
    after the layers below were pruned and repaired, at the width the dense pass gave it, never
    removing the chosen networks' key neurons (``owner``'s, as :func:`choose_keep` forces them)."""
    from .repair import down_weight_by_neuron, obs_removal_order

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


def _stats_needed(spec: PruningSpec) -> tuple[bool, bool, bool]:
    """(calibration statistics at all, plain second moments, residual-weighted moments) ``spec`` needs:
    what its method's scores read (:attr:`fnprune.methods.Method.statistics`) and what the one-pass
    least-squares repair re-fits on (``repair_moments``; the sequential repair collects its own)."""
    method = spec.method_record
    one_pass_lstsq = spec.repair == "lstsq" and not spec.sequential
    needs = method.statistics in (PER_NEURON, SECOND_MOMENTS, WEIGHTED_MOMENTS) or spec.repair != "none"
    second = method.statistics == SECOND_MOMENTS or (one_pass_lstsq and method.repair_moments == "plain")
    weighted = method.statistics == WEIGHTED_MOMENTS or (one_pass_lstsq and method.repair_moments == "weighted")
    return needs, second, weighted


def _renamed(progress: ProgressCallback | None, stage: str) -> ProgressCallback | None:
    if progress is None:
        return None

    def inner(_stage: str, fraction: float, message: str = "") -> None:
        progress(stage, fraction, message)

    return inner


def keep_to_mask(keep: Sequence[np.ndarray], width: int) -> np.ndarray:
    """``(n_layers, width)`` bool mask of per-layer kept indices."""
    mask = np.zeros((len(keep), width), dtype=bool)
    for layer, idx in enumerate(keep):
        mask[layer, np.asarray(idx, dtype=np.int64)] = True
    return mask


