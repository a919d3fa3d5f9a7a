"""What to prune and how: :class:`PruningSpec`, validated once before any model work
(:meth:`PruningSpec.validated`), the target a request without one gets (:func:`default_target`) and
the calibration statistics a spec needs (:func:`stats_needed`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..errors import ConfigError
from ..options import (
    ALLOCATIONS,
    DEFAULT_METHOD,
    DEFAULT_RECOVER_EPOCHS,
    DEFAULT_RECOVER_LR,
    DEFAULT_RIDGE,
    DEFAULT_TARGET_RATIO,
    MAX_RECOVER_EPOCHS,
    RATIO_BASES,
    REPAIRS,
    SEQUENTIAL_REPAIR,
)
from .budget import check_target_ratio, check_uniform_protection
from .methods import PER_NEURON, SECOND_MOMENTS, WEIGHTED_MOMENTS
from .methods import get as get_method


def native_repair(method: str) -> str:
    """The compensation a method comes with (:attr:`fnprune.pruning.methods.Method.native_repair`: FLAP's mean
    bias for flap and fn-flap, the least-squares fit for obs -- its selection is that fit -- nothing otherwise)."""
    return get_method(method).native_repair


def unrepaired(method: str) -> str:
    """The repair ``--no-repair`` means (:attr:`fnprune.pruning.methods.Method.unrepaired`: FLAP's mean bias for
    flap and fn-flap, nothing otherwise)."""
    return get_method(method).unrepaired


@dataclass(frozen=True)
class PruningSpec:
    """What to prune and how; validated by :meth:`validated` before any model work starts.

    ``target_ratio``: fraction of ``ratio_of`` parameters to remove (``all`` by default, ``mlp`` or
    ``non-embedding``; only MLP neurons are removed);
    ``threshold``: instead, keep neurons whose network score (|z|) is above it.
    ``recover_epochs``: passes of recovery by distillation after the repair (0: none;
    :mod:`fnprune.pruning.recover`), at learning rate ``recover_lr``; ``seed`` seeds the random
    baseline and the recovery's batch order.
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
    recover_epochs: int = DEFAULT_RECOVER_EPOCHS
    recover_lr: float = DEFAULT_RECOVER_LR

    @property
    def method_record(self):
        """The :class:`fnprune.pruning.methods.Method` of :attr:`method` (:class:`ConfigError` if unknown)."""
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
        _check_recovery(self.recover_epochs, self.recover_lr)
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
                       recover_epochs=int(self.recover_epochs), recover_lr=float(self.recover_lr),
                       protected_layers=None if self.protected_layers is None
                       else tuple(int(x) for x in self.protected_layers))


def _check_recovery(epochs, lr) -> None:
    """Refuse a recovery setting that is not a whole number of epochs in range or a learning rate in (0, 1)."""
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or not 0 <= epochs <= MAX_RECOVER_EPOCHS:
        raise ConfigError(f"recover_epochs must be a whole number from 0 to {MAX_RECOVER_EPOCHS}, got {epochs!r}",
                          field="recover_epochs")
    if isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating)) or not (np.isfinite(lr) and 0 < lr < 1):
        raise ConfigError(f"recover_lr must be a number between 0 and 1 (exclusive), got {lr!r}", field="recover_lr")


_OPTION_NAMES = {"sequential": "sequential calibration", "heads_fraction": "pruning attention heads"}


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


def stats_needed(spec: PruningSpec) -> tuple[bool, bool, bool]:
    """(calibration statistics at all, plain second moments, residual-weighted moments) ``spec`` needs:
    what its method's scores read (:attr:`fnprune.pruning.methods.Method.statistics`) and what the one-pass
    least-squares repair re-fits on (``repair_moments``; the sequential repair collects its own)."""
    method = spec.method_record
    one_pass_lstsq = spec.repair == "lstsq" and not spec.sequential
    needs = method.statistics in (PER_NEURON, SECOND_MOMENTS, WEIGHTED_MOMENTS) or spec.repair != "none"
    second = method.statistics == SECOND_MOMENTS or (one_pass_lstsq and method.repair_moments == "plain")
    weighted = method.statistics == WEIGHTED_MOMENTS or (one_pass_lstsq and method.repair_moments == "weighted")
    return needs, second, weighted
