"""The pruning methods: one record each, in a registry. The only place a method's name is compared.

A method chooses the neurons to keep *inside* a layer by a score (higher = keep); the recipe
(:func:`fnprune.pruning.recipe.prune_with_networks`) sizes the layers (the allocation), keeps the chosen
networks' key neurons, prunes and repairs. A :class:`Method` says everything the recipe, ``compare``,
the CLI and the web app need to know about one:

- ``name``, ``label`` (the web form's short name) and ``help`` (one line: ``fnprune prune --help``,
  the web form, ``GET /api/options``);
- ``scores``: its within-layer score function, ``ScoreInputs -> list of (I_l,) arrays`` (comparable
  across layers when the method ranks the layers together, its own allocation);
- ``statistics``: what its scores read from the calibration documents: nothing, per-neuron
  statistics of ``down``'s input (mean, variance, L2 norm), plus their plain second moments, or plus
  the residual-weighted moments (:class:`fnprune.pruning.statistics.DownInputStats`); ``repair_moments``: which
  second moments its least-squares repair re-fits on (obs: the weighted ones it selected with);
- ``native_repair`` (the compensation it comes with: ``compare``'s "native"), ``unrepaired`` (what
  ``--no-repair`` means for it), ``default_allocation``;
- ``needs_networks`` (it reads the functional networks), ``network_score`` (the method *is* that
  network score, so a |z| threshold sizes its layers and the plan's key mask is its choice),
  ``one_run_networks`` (``compare`` analyses once more with one FastICA run for it: the paper's rule),
  ``network_widths_alias`` (the method it is inside the networks' widths, so ``compare`` does not run
  that row twice), ``baseline`` (one of METHOD.md §2's baselines, offered as comparisons);
- ``refuses``: the spec options it refuses, each with the reason (obs: ``sequential``).

A new method is one :class:`Method` record, :func:`register`-ed, and its score function: it then is
a choice of the CLI, of ``compare``, of the web API (``GET /api/options``, ``POST /api/prunings``)
and of the web form, with no other edit (tests/fnprune/test_methods.py registers a toy one).

This module imports no torch at import time (the score functions import the maths when called), so
the CLI's parser and the web API's schemas can list the methods (:data:`METHODS`) without loading it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..errors import ConfigError
from ..options import ALLOCATIONS, DEFAULT_RIDGE, REPAIRS

# what a method's scores read from the calibration documents (all collected on the dense model)
NO_STATISTICS = "none"
PER_NEURON = "per-neuron"  # mean, variance and L2 norm of each neuron's output (down's input)
SECOND_MOMENTS = "second-moments"  # and E[x xᵀ] per layer
WEIGHTED_MOMENTS = "weighted-moments"  # and the residual-weighted E_w[x xᵀ], E_w[x] (DownInputStats.weighted)
STATISTICS = (NO_STATISTICS, PER_NEURON, SECOND_MOMENTS, WEIGHTED_MOMENTS)
REPAIR_MOMENTS = ("plain", "weighted")
NETWORK_SCORES = ("networks", "paper")  # fnprune.pruning.selection.neuron_scores' kinds a method can be
REFUSABLE = ("sequential", "heads_fraction")  # PruningSpec options a method may refuse


@dataclass
class ScoreInputs:
    """What a score function may read. ``stats``: :class:`fnprune.pruning.statistics.DownInputStats` holding what
    the method's ``statistics`` asked for (None for ``"none"``); ``forced``: per layer, bool masks of
    the neurons that must stay (the chosen networks' key neurons) or None; ``protected``: layers kept
    whole (a method may skip scoring them); ``calibration``: the :class:`fnprune.pruning.calibration.Calibration`
    the statistics came from (its caches), or None."""

    model: Any
    networks: Any = None
    stats: Any = None
    forced: list | None = None
    protected: Sequence[int] = ()
    ridge: float = DEFAULT_RIDGE
    seed: int = 0
    calibration: Any = None
    progress: Any = None


ScoreFunction = Callable[[ScoreInputs], list]


@dataclass(frozen=True)
class Method:
    """One pruning method (see the module docstring for each field)."""

    name: str
    label: str
    help: str
    scores: ScoreFunction
    statistics: str = NO_STATISTICS
    repair_moments: str = "plain"
    native_repair: str = "none"
    unrepaired: str = "none"
    default_allocation: str = "own"
    needs_networks: bool = False
    network_score: str | None = None
    one_run_networks: bool = False
    network_widths_alias: str | None = None
    baseline: bool = False
    refuses: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def takes_threshold(self) -> bool:
        """Whether a |z| threshold sizes this method's layers in its own allocation (it is a network score)."""
        return self.network_score is not None

    @property
    def needs_calibration(self) -> bool:
        """Whether its scores read calibration statistics."""
        return self.statistics != NO_STATISTICS


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry (a name already registered is refused: :func:`unregister` it
    first); every field is checked here, so a bad record fails at import, not in a pruning."""
    problems = []
    if not method.name or not method.name.replace("-", "").replace("_", "").isalnum():
        problems.append("name: letters, digits, '-' and '_' only (compare reads comma-separated names)")
    if method.name in _REGISTRY:
        problems.append(f"name: {method.name!r} is already registered")
    if method.statistics not in STATISTICS:
        problems.append(f"statistics: one of {STATISTICS}")
    if method.repair_moments not in REPAIR_MOMENTS:
        problems.append(f"repair_moments: one of {REPAIR_MOMENTS}")
    for name in ("native_repair", "unrepaired"):
        if getattr(method, name) not in REPAIRS:
            problems.append(f"{name}: one of {REPAIRS}")
    if method.default_allocation not in ALLOCATIONS or method.default_allocation == "default":
        problems.append(f"default_allocation: one of {ALLOCATIONS[1:]}")
    if method.network_score is not None and (method.network_score not in NETWORK_SCORES or not method.needs_networks):
        problems.append(f"network_score: None or one of {NETWORK_SCORES}, with needs_networks")
    if method.default_allocation in ("networks", "unresolved") and not method.needs_networks:
        problems.append("default_allocation: a network allocation needs needs_networks")
    unknown = [k for k in method.refuses if k not in REFUSABLE]
    if unknown:
        problems.append(f"refuses: options among {REFUSABLE}, not {unknown}")
    if not callable(method.scores):
        problems.append("scores: a function ScoreInputs -> per-layer scores")
    if problems:
        raise ConfigError(f"method {method.name!r}: " + "; ".join(problems), field="method")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method (a test's toy one); unknown names are ignored."""
    _REGISTRY.pop(name, None)


def registered() -> Mapping[str, Method]:
    """``{name: Method}`` of every registered method, in registration order (a read-only live view)."""
    return MappingProxyType(_REGISTRY)


def get(name: str) -> Method:
    """The method called ``name``; :class:`ConfigError` (field ``method``) naming the choices otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(f"method: unknown {name!r}; choose from {', '.join(_REGISTRY)}", field="method") from None


# -- the methods' names: live views of the registry (argparse's choices, the API's validation and
# GET /api/options read them when they run, so a method registered at run time is in them at once)
class LiveNames(Sequence[str]):
    """A read-only, tuple-like view of names that can grow (the method registry): ``in``, iteration,
    ``len``, indexing, ``", ".join(...)`` and ``==`` with a tuple all see the current names."""

    def __init__(self, names: Callable[[], Iterable[str]]):
        self._names = names

    def _now(self) -> tuple[str, ...]:
        return tuple(self._names())

    def __getitem__(self, index):
        return self._now()[index]

    def __len__(self) -> int:
        return len(self._now())

    def __iter__(self) -> Iterator[str]:
        return iter(self._now())

    def __contains__(self, name: object) -> bool:
        return name in self._now()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, str):
            return self._now() == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # it changes

    def __repr__(self) -> str:
        return repr(self._now())


class _LiveHelp(Mapping[str, str]):
    """``{method name: help}`` of the registered methods (a live view)."""

    def __getitem__(self, name: str) -> str:
        return _REGISTRY[name].help

    def __iter__(self) -> Iterator[str]:
        return iter(_REGISTRY)

    def __len__(self) -> int:
        return len(_REGISTRY)


METHODS = LiveNames(lambda: _REGISTRY)
NETWORK_METHODS = LiveNames(lambda: (n for n, m in _REGISTRY.items() if m.needs_networks))
BASELINES = LiveNames(lambda: (n for n, m in _REGISTRY.items() if m.baseline))  # METHOD.md §2's baselines
METHOD_HELP: Mapping[str, str] = _LiveHelp()


# -- the score functions (higher = keep) ------------------------------------------------------------
def _zscored(scores: list) -> list:
    """Each layer's scores z-scored, so one ranking across layers compares them (the own allocation)."""
    return [(s - s.mean()) / (s.std() if s.std() > 0 else 1.0) for s in scores]


def _network_scores(kind: str) -> ScoreFunction:
    def scores(inputs: ScoreInputs) -> list:
        from .selection import neuron_scores

        return list(neuron_scores(inputs.networks, kind))

    return scores


def _obs(inputs: ScoreInputs) -> list:
    from .scores import obs_scores

    cal = inputs.calibration
    if cal is not None and cal._down is inputs.stats:  # the calibration's cache of greedy orders
        return cal.obs_scores(inputs.model, inputs.forced, inputs.ridge, skip=inputs.protected,
                              progress=inputs.progress)
    return obs_scores(inputs.model, inputs.stats, inputs.forced, inputs.ridge, skip=inputs.protected)


def _flap(inputs: ScoreInputs) -> list:
    from .scores import flap_scores

    return flap_scores(inputs.model, inputs.stats)  # z-scored within each layer


def _random(inputs: ScoreInputs) -> list:
    from .scores import random_scores

    return random_scores(inputs.model, inputs.seed)


def _magnitude(inputs: ScoreInputs) -> list:
    from .scores import magnitude_scores

    return _zscored(magnitude_scores(inputs.model))


def _wanda_sp(inputs: ScoreInputs) -> list:
    from .scores import wanda_sp_scores

    return _zscored(wanda_sp_scores(inputs.model, inputs.stats))


# Registration order is the order of every list of methods (CLI choices, compare's rows, the API).
register(Method(
    "paper", "paper: the authors' rule",
    "the paper's rule: any |z| above the threshold in one FastICA run's maps (no unresolved-subspace energy)",
    _network_scores("paper"), needs_networks=True, network_score="paper", one_run_networks=True))
register(Method(
    "fn", "fn: network score",
    "the seed-robust network score: max |z| over the stable networks, else the unresolved-subspace energy",
    _network_scores("networks"), default_allocation="networks", needs_networks=True, network_score="networks"))
register(Method(
    "fn-flap", "fn-flap: FLAP in the networks' widths",
    "FLAP's fluctuation score inside the functional networks' per-layer widths",
    _flap, statistics=PER_NEURON, native_repair="bias", unrepaired="bias", default_allocation="networks",
    needs_networks=True))
register(Method(
    "obs", "structured OBS",
    "structured Optimal Brain Surgeon: in each layer, greedily remove the neuron whose removal, with the "
    "least-squares repair, least raises the layer's output error relative to the residual stream on the "
    "calibration tokens; those costs ranked across layers decide the widths",
    _obs, statistics=WEIGHTED_MOMENTS, repair_moments="weighted", native_repair="lstsq"))
register(Method(
    "random", "random", "uniformly random neurons (seeded)", _random, baseline=True))
register(Method(
    "magnitude", "magnitude", "the L2 norm of each neuron's weights", _magnitude, baseline=True))
register(Method(
    "wanda-sp", "Wanda-SP", "structured Wanda: sum of |W_down| times the neuron's input norm",
    _wanda_sp, statistics=PER_NEURON, baseline=True))
register(Method(
    "flap", "FLAP", "FLAP: input variance times the squared norm of the neuron's down-projection column, "
    "ranked across layers (the previous default)",
    _flap, statistics=PER_NEURON, native_repair="bias", unrepaired="bias", network_widths_alias="fn-flap",
    baseline=True))
