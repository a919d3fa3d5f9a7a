"""Are the networks reproducible across seeds, or only the masks? (METHOD.md §1.12, issue 12)

Several decompositions of the same layer with different seeds ("fits") are compared:

- **reproducible networks**: a component of one fit is reproduced when, in every other fit, the
  component it is matched to (Hungarian assignment on the absolute correlation of the z-maps) has
  ``|corr| ≥ min_corr`` (0.9);
- **where key neurons come from**: a fit's key set is its top-``budget`` neurons by key score. A key
  neuron comes from a *reproducible network* when the largest ``|z|`` over the network components of
  the fit that are also reproduced reaches the key set's cutoff on its own; else from *another network*
  (a network component that other seeds do not reproduce); else only from the *unresolved-subspace
  energy* (``CanICA.unresolved_energy_``, a seed-free PCA statistic, not a network);
- **mask agreement**: the Jaccard index of the key sets over every pair of fits, next to two controls
  at the same budget: a PCA-leverage-only mask (``CanICA.leverage_``, no ICA) and the Jaccard index
  that two random sets of the same sizes have on average (``chance_jaccard``).

Scores are per neuron: a column of the maps is one signal of one neuron (``width`` neurons per
signal); a neuron's score is the largest over its signals, as in the masks.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from ..errors import ConfigError

DEFAULT_MIN_CORR = 0.9


@dataclass
class SeedFit:
    """One decomposition of one layer, as far as stability is concerned.

    maps : (k, n_columns) z-maps (``CanICA.components_``)
    networks : (k,) bool, components that count as networks in the key score (``CanICA.stable_``);
        all of them when None (the paper's algorithm)
    unresolved : (n_columns,) the unresolved-subspace energy term of the key score, or None
    leverage : (n_columns,) PCA leverage of the fit's subspace (for the leverage control), or None
    """

    maps: np.ndarray
    networks: np.ndarray | None = None
    unresolved: np.ndarray | None = None
    leverage: np.ndarray | None = None

    def __post_init__(self):
        self.maps = np.asarray(self.maps, dtype=np.float64)
        if self.maps.ndim != 2 or self.maps.shape[0] == 0:
            raise ConfigError(f"a fit's maps must be a non-empty (k, n_columns) array, got shape {self.maps.shape}")
        k, n = self.maps.shape
        self.networks = np.ones(k, bool) if self.networks is None else np.asarray(self.networks, bool)
        if self.networks.shape != (k,):
            raise ConfigError(f"networks must be a (k,) mask, got shape {self.networks.shape} for k={k}")
        for name in ("unresolved", "leverage"):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value, dtype=np.float64)
                if value.shape != (n,):
                    raise ConfigError(f"{name} must have one value per map column ({n}), got shape {value.shape}")
                setattr(self, name, value)

    @classmethod
    def from_canica(cls, ica) -> SeedFit:
        """From a fitted :class:`fnprune.analysis.ica.CanICA`."""
        return cls(maps=ica.components_, networks=ica.stable_, unresolved=ica.unresolved_energy_,
                   leverage=ica.leverage_)

    def network_part(self, components: np.ndarray | None = None) -> np.ndarray:
        """(n_columns,) largest |z| over the network components (restricted to ``components``)."""
        use = self.networks if components is None else self.networks & components
        return np.abs(self.maps[use]).max(0) if use.any() else np.zeros(self.maps.shape[1])

    def key_score(self) -> np.ndarray:
        """(n_columns,) the score its masks use: networks' |z|, and the unresolved energy where given."""
        score = self.network_part()
        return score if self.unresolved is None else np.maximum(score, self.unresolved)


@dataclass
class LayerStability:
    """Stability of one layer's networks across ``n_fits`` seeds at a key-neuron budget.

    Shares are fractions of the key neurons, averaged over fits; ``*_jaccard`` are
    ``{"mean", "min"}`` over pairs of fits (``leverage_jaccard``: each fit against the leverage mask).
    """

    n_fits: int
    n_components: int
    n_neurons: int
    budget: int
    min_corr: float
    n_reproducible: list[int]            # per fit: components reproduced in every other fit
    n_reproducible_networks: list[int]   # per fit: of those, the ones the key score uses as networks
    n_networks: list[int]                # per fit: components the key score uses as networks
    key_share_reproducible: float
    key_share_other_networks: float
    key_share_unresolved: float
    mask_jaccard: dict = field(default_factory=dict)
    leverage_jaccard: dict | None = None
    chance_jaccard: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def fold_signals(scores: np.ndarray, width: int | None) -> np.ndarray:
    """``(..., n_signals * width)`` → ``(..., width)``: the largest value over a neuron's signals."""
    scores = np.asarray(scores)
    if width is None or width == scores.shape[-1]:
        return scores
    if width < 1 or scores.shape[-1] % width:
        raise ConfigError(f"width={width} does not divide the {scores.shape[-1]} map columns")
    return scores.reshape(*scores.shape[:-1], -1, width).max(-2)


def top_set(scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` largest scores (ties: lower index first)."""
    return np.sort(np.argsort(-np.asarray(scores), kind="stable")[:n])


def jaccard(a, b) -> float:
    a, b = set(np.asarray(a).tolist()), set(np.asarray(b).tolist())
    return len(a & b) / max(1, len(a | b))


def chance_jaccard(a: int, b: int, n: int) -> float:
    """Jaccard index of two random subsets of sizes ``a`` and ``b`` of ``n`` items, from the expected
    intersection ``E|A∩B| = a b / n`` (the ratio of expectations; exact when the sets are large)."""
    if not 0 <= a <= n or not 0 <= b <= n or n < 1:
        raise ConfigError(f"set sizes must be in 0..n, got a={a}, b={b}, n={n}")
    inter = a * b / n
    union = a + b - inter
    return float(inter / union) if union > 0 else 1.0


def _abs_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|Pearson correlation| between the rows of ``a (k1, n)`` and ``b (k2, n)``."""
    za = a - a.mean(1, keepdims=True)
    zb = b - b.mean(1, keepdims=True)
    za /= np.maximum(np.linalg.norm(za, axis=1, keepdims=True), 1e-12)
    zb /= np.maximum(np.linalg.norm(zb, axis=1, keepdims=True), 1e-12)
    return np.abs(za @ zb.T)


def match_maps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each row of ``a``, the |corr| of its Hungarian match in ``b`` (0 when unmatched)."""
    c = _abs_corr(np.asarray(a, np.float64), np.asarray(b, np.float64))
    rows, cols = linear_sum_assignment(-c)
    best = np.zeros(len(a))
    best[rows] = c[rows, cols]
    return best


def reproducible_components(fits: Sequence[SeedFit], min_corr: float = DEFAULT_MIN_CORR) -> list[np.ndarray]:
    """Per fit, a ``(k,)`` bool: the component is matched at ``|corr| ≥ min_corr`` in every other fit."""
    out = [np.ones(len(f.maps), bool) for f in fits]
    for i, j in itertools.permutations(range(len(fits)), 2):
        out[i] &= match_maps(fits[i].maps, fits[j].maps) >= min_corr
    return out


def _pair_stats(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "min": float(np.min(values))}


def seed_stability(fits: Sequence[SeedFit], budget: int, *, width: int | None = None,
                   min_corr: float = DEFAULT_MIN_CORR) -> LayerStability:
    """Compare ``fits`` (the same layer, different seeds) at ``budget`` key neurons per fit.

    Parameters
    ----------
    fits : at least two :class:`SeedFit` (``SeedFit.from_canica(ica)`` for fnprune's CanICA)
    budget : number of key neurons per fit (e.g. the number over the paper's threshold in one fit)
    width : neurons per signal when the maps hold several signals side by side (folded by max)
    min_corr : matched |corr| from which a component counts as reproduced
    """
    fits = [f if isinstance(f, SeedFit) else SeedFit.from_canica(f) for f in fits]
    if len(fits) < 2:
        raise ConfigError("seed stability needs at least two fits")
    n_cols = {f.maps.shape[1] for f in fits}
    if len(n_cols) != 1:
        raise ConfigError(f"fits have maps over different numbers of columns: {sorted(n_cols)}")
    if not 0 < min_corr <= 1:
        raise ConfigError(f"min_corr must be in (0, 1], got {min_corr!r}")
    n_neurons = fold_signals(np.zeros(n_cols.pop()), width).shape[-1]
    if not isinstance(budget, int | np.integer) or not 0 < budget <= n_neurons:
        raise ConfigError(f"budget must be an integer in 1..{n_neurons}, got {budget!r}")
    budget = int(budget)
    reproducible = reproducible_components(fits, min_corr)
    key_sets, shares = [], []
    for fit, rep in zip(fits, reproducible, strict=True):
        score = fold_signals(fit.key_score(), width)
        key = top_set(score, budget)
        cutoff = score[key].min()
        from_rep = fold_signals(fit.network_part(rep), width)[key] >= cutoff
        from_net = fold_signals(fit.network_part(), width)[key] >= cutoff
        key_sets.append(key)
        shares.append((from_rep.mean(), (from_net & ~from_rep).mean(), (~from_net).mean()))
    shares = np.mean(shares, axis=0)
    leverage = None
    if all(f.leverage is not None for f in fits):
        leverage = _pair_stats([jaccard(top_set(fold_signals(f.leverage, width), budget), key)
                                for f, key in zip(fits, key_sets, strict=True)])
    return LayerStability(
        n_fits=len(fits), n_components=int(max(len(f.maps) for f in fits)), n_neurons=int(n_neurons),
        budget=budget, min_corr=float(min_corr),
        n_reproducible=[int(r.sum()) for r in reproducible],
        n_reproducible_networks=[int((r & f.networks).sum()) for r, f in zip(reproducible, fits, strict=True)],
        n_networks=[int(f.networks.sum()) for f in fits],
        key_share_reproducible=float(shares[0]), key_share_other_networks=float(shares[1]),
        key_share_unresolved=float(shares[2]),
        mask_jaccard=_pair_stats([jaccard(a, b) for a, b in itertools.combinations(key_sets, 2)]),
        leverage_jaccard=leverage, chance_jaccard=chance_jaccard(budget, budget, n_neurons))


def fit_summary(ica, threshold: float, shape: tuple[int, int, int] | None = None) -> dict:
    """Stability statistics of one fitted CanICA (one layer or one whole-model run, one seed) at
    ``threshold``, for a run's info.

    ``shape = (n_map_layers, n_signals, width)`` lays out the map columns (a neuron is key when any of
    its signals is); None: every column is a neuron. Returns ``{"n_components", "n_stable",
    "mean_stability", "unresolved_dim", "n_key", "key_from_networks", "key_from_unresolved"}``: the key
    neurons (score > threshold) and the shares of them that a stable network's |z| makes key, or only
    the unresolved-subspace energy.
    """
    fit = SeedFit.from_canica(ica)

    def per_neuron(values: np.ndarray) -> np.ndarray:
        values = values.astype(np.float64)
        return values if shape is None else values.reshape(shape).max(axis=1)

    key = per_neuron(fit.key_score()) > threshold
    from_net = per_neuron(fit.network_part()) > threshold
    n_key, n_net = int(key.sum()), int((key & from_net).sum())
    return {"n_components": int(len(ica.stable_)), "n_stable": int(ica.stable_.sum()),
            "mean_stability": float(np.mean(ica.stability_)), "unresolved_dim": int((~ica.stable_).sum()),
            "n_key": n_key, "key_from_networks": n_net / n_key if n_key else 0.0,
            "key_from_unresolved": (n_key - n_net) / n_key if n_key else 0.0}


def seed_check(ica, X, n_seeds: int, *, budget: int | None, width: int | None = None,
               min_corr: float = DEFAULT_MIN_CORR, seed_offset: int = 7919) -> tuple[np.ndarray, dict | None]:
    """Refit a fitted :class:`fnprune.analysis.ica.CanICA` on the same ``X`` with ``n_seeds`` other seeds.

    Returns ``(reproduced, stats)``: per component of ``ica``, in how many of the other seeds its
    Hungarian-matched map reaches ``|corr| ≥ min_corr`` (``n_seeds`` = reproduced in every one); and
    :func:`seed_stability` over all ``1 + n_seeds`` fits at ``budget`` key neurons as a dict (None
    when ``budget`` is None or 0). The other fits use ``ica``'s parameters with ``random_state`` moved
    by multiples of ``seed_offset``.
    """
    from sklearn.base import clone

    if not isinstance(n_seeds, int | np.integer) or isinstance(n_seeds, bool) or n_seeds < 1:
        raise ConfigError(f"the seed check needs a positive number of other seeds, got {n_seeds!r}")
    fits = [SeedFit.from_canica(ica)]
    for s in range(1, int(n_seeds) + 1):
        other = clone(ica).set_params(random_state=int(ica.random_state) + s * seed_offset).fit(X)
        fits.append(SeedFit.from_canica(other))
    reproduced = np.sum([match_maps(fits[0].maps, f.maps) >= min_corr for f in fits[1:]], axis=0).astype(np.int64)
    stats = None
    if budget:
        st = seed_stability(fits, int(budget), width=width, min_corr=min_corr)
        stats = {"n_seeds": 1 + int(n_seeds), "budget": st.budget, "n_reproducible": st.n_reproducible[0],
                 "key_share_reproducible": st.key_share_reproducible,
                 "key_share_other_networks": st.key_share_other_networks,
                 "key_share_unresolved": st.key_share_unresolved, "mask_jaccard": st.mask_jaccard,
                 "leverage_jaccard": st.leverage_jaccard, "chance_jaccard": st.chance_jaccard}
    return reproduced, stats
