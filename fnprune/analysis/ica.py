"""The CanICA estimator (METHOD.md §1.3-1.4): :mod:`.blocks` streams the linear algebra, :mod:`.fastica` unmixes.

CanICA treats neurons as voxels and tokens as time points: ``X`` is ``(n_tokens, n_neurons)``.
:class:`StandardizedBlocks` holds the streamed linear algebra over ``X`` (one pass per product, row
chunks, the caller's data never written); :class:`CanICA` is the scikit-learn estimator on top.

1. z-score every column over tokens (a zero-variance column gets std 1);
2. subspace ``U (n_neurons, k)``: the top-``k`` left singular vectors of ``Xᵀ``. Computed exactly from
   the ``n_neurons²`` covariance (streamed in float32 chunks, accumulated and diagonalised in float64)
   or the ``n_tokens²`` Gram matrix, whichever is smaller; a streamed randomized range finder with
   power iterations only when both are too large (whole-model mode);
3. FastICA (symmetric, ``cube``) with neurons as samples and the ``k`` loadings as features, run
   ``n_init`` times from seeded starts (batched, float64);
4. every map z-scored across neurons, its sign fixed so its heavy tail is positive;
5. consensus across restarts (ICASSO-style): each component of the most central restart is matched
   (Hungarian, |correlation|) to one component of every other restart, the sign-aligned z-maps are
   averaged, and the mean matched |correlation| is its ``stability_``. A component found in every
   restart keeps its z-scale; an unstable one shrinks toward 0 and so protects fewer neurons.
6. a seed-robust key score (``key_score_``). With a flat spectrum most of the ``k`` directions are
   not identifiable: each restart rotates them differently, so a neuron's max |z| over them is an
   accident of the seed (METHOD.md §1.6). The components that every restart finds (stability ≥
   ``stable_threshold``) are kept as they are; for the rest we use the expectation of the max |z|
   over a random rotation of their subspace, which is ``m(d) · r_j``: ``r_j`` the norm of neuron
   ``j``'s loading in that ``d``-dimensional subspace (rotation-invariant: the whitened loading's
   squared norm minus its squared stable z's) and ``m(d) = E max_i |g_i| / ||g||`` for Gaussian
   ``g`` in ``d`` dimensions. ``key_score_ = max(max over stable maps |z|, m(d) · r)``.

   ``m(d) · r`` is the **unresolved-subspace energy** (``unresolved_energy_``): a neuron's energy in
   the part of the whitened top-``k`` subspace that the restarts did not resolve into networks. It is
   a rotation-invariant PCA statistic, not a network, and has no seed; where few components are
   stable it decides most of the key neurons (METHOD.md §1.12), which is why masks built on it agree
   across seeds. ``leverage_`` (a neuron's squared loading norm in the whole top-``k`` subspace, no
   ICA at all) is the matching control; ``fnprune.analysis.stability`` reports both next to the networks that
   are reproduced across seeds.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, TransformerMixin

from ..devices import resolve_device
from ..errors import ConfigError
from ..options import DEFAULT_N_COMPONENTS, DEFAULT_N_INIT  # why 32 x 16: see fnprune.options
from ..progress import ProgressCallback, report
from .blocks import EXACT_LIMIT, StandardizedBlocks, top_eigh
from .fastica import consensus, expected_max_fraction, fastica, zscore_maps

ArrayLike = np.ndarray | torch.Tensor


# -- parameter checks ------------------------------------------------------------------------------
def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_int(name: str, value, low: int, high: int | None = None, *, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if not _is_int(value) or value < low or (high is not None and value > high):
        bound = f"an integer ≥ {low}" if high is None else f"an integer in {low}..{high}"
        raise ConfigError(f"{name} must be {'None or ' if none_ok else ''}{bound}, got {value!r}")


def _check_real(name: str, value, low: float, high: float | None = None, *, low_open: bool = False) -> None:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        lower = f"> {low:g}" if low_open else f"≥ {low:g}"
        bound = f"a finite number {lower}" + ("" if high is None else f" and ≤ {high:g}")
        raise ConfigError(f"{name} must be {bound}, got {value!r}")


# -- CanICA ----------------------------------------------------------------------------------------
class CanICA(TransformerMixin, BaseEstimator):
    """Canonical ICA over neurons, a scikit-learn estimator (``clone``, ``get_params``, ``fit_transform``).

    Parameters
    ----------
    n_components : int, number of spatial maps k (default :data:`DEFAULT_N_COMPONENTS` = 32; the paper: 128)
    n_init : int, FastICA restarts combined by consensus (1 = the paper's single run)
    subspace : "auto" | "covariance" | "gram" | "randomized"
    max_iter : int or None, FastICA iterations. None: 300 for a single run (the paper's), 50 per
        restart when ``n_init > 1``. In a flat spectrum the symmetric iteration never converges as
        a whole: the components every restart finds converge within a few tens of iterations, the
        rest keep rotating in their subspace, which step 6 replaces by the unresolved-subspace
        energy anyway (BENCHMARKS.md §2 measures 50 against 300).
    tol : float > 0, FastICA stopping rule
    n_power_iter : int ≥ 0, power iterations of the randomized subspace
    chunk_size : int, rows streamed at a time
    stable_threshold : float in [0, 1], stability from which a component counts as stable (step 6)
    random_state : int, seed of every random step
    device : "auto" | "cpu" | "cuda" | "cuda:N" | torch.device

    Every parameter is validated in ``fit`` (``__init__`` only stores them); a bad one raises
    :class:`~fnprune.errors.ConfigError`. ``fit`` never writes to ``X``.

    Attributes (after ``fit``)
    --------------------------
    components_ : (k, n_neurons) float32 consensus z-maps, ordered by decreasing stability·kurtosis
    stability_ : (k,) mean matched |correlation| across restarts (1.0 when ``n_init == 1``)
    stable_ : (k,) bool, stability ≥ ``stable_threshold``
    key_score_ : (n_neurons,) seed-robust key score (module docstring, step 6)
    unresolved_energy_ : (n_neurons,) its part that is not a network: the unresolved-subspace energy
        ``m(d) · r`` (0 when every component is stable)
    leverage_ : (n_neurons,) PCA leverage, ``Σ_k U²``: each neuron's squared loading norm in the
        top-k subspace (sums to k; seed-free, no ICA), the control for the key score
    explained_variance_ : (k,) variance of the standardised data along each subspace direction
    mean_, scale_ : (n_neurons,) standardisation; n_constant_ : zero-variance columns
    n_iter_ : (n_init,) FastICA iterations per restart; reference_restart_ : the consensus's reference
    subspace_ : the subspace method used; n_features_in_ : number of neuron columns seen by ``fit``
    """

    _SUBSPACES = ("auto", "covariance", "gram", "randomized")

    def __init__(self, n_components: int = DEFAULT_N_COMPONENTS, *, n_init: int = DEFAULT_N_INIT, subspace: str = "auto",
                 max_iter: int | None = None, tol: float = 1e-4, n_power_iter: int = 6, chunk_size: int = 4096,
                 stable_threshold: float = 0.9, random_state: int = 0, device: str = "auto"):
        self.n_components = n_components
        self.n_init = n_init
        self.subspace = subspace
        self.max_iter = max_iter
        self.tol = tol
        self.n_power_iter = n_power_iter
        self.chunk_size = chunk_size
        self.stable_threshold = stable_threshold
        self.random_state = random_state
        self.device = device

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]     # time courses are float32
        return tags

    # -- validation ------------------------------------------------------------------------------
    def _check_params(self) -> torch.device:
        """Validate every constructor parameter; returns the resolved device."""
        _check_int("n_components", self.n_components, 1)
        _check_int("n_init", self.n_init, 1)
        if not isinstance(self.subspace, str) or self.subspace not in self._SUBSPACES:
            raise ConfigError(f"subspace must be one of {self._SUBSPACES}, got {self.subspace!r}")
        _check_int("max_iter", self.max_iter, 1, none_ok=True)
        _check_real("tol", self.tol, 0.0, low_open=True)
        _check_int("n_power_iter", self.n_power_iter, 0)
        _check_int("chunk_size", self.chunk_size, 1)
        _check_real("stable_threshold", self.stable_threshold, 0.0, 1.0)
        _check_int("random_state", self.random_state, -2 ** 63, 2 ** 64 - 1)
        return resolve_device(self.device)

    def _check_data(self, data: StandardizedBlocks) -> None:
        k = self.n_components
        if data.n_rows == 0 or data.n_cols == 0:
            which = "sample" if data.n_rows == 0 else "feature"
            raise ConfigError(f"0 {which}(s) (shape={data.shape}) while a minimum of 1 is required: "
                              "CanICA needs tokens and neuron signals")
        if data.n_rows < 3:
            raise ConfigError(f"need at least 3 tokens, got n_samples = {data.n_rows}")
        if data.n_cols < 2:
            raise ConfigError(f"need at least 2 neuron signals, got n_features = {data.n_cols}")
        if k >= data.n_rows:
            raise ConfigError(f"n_components={k} must be smaller than the number of tokens ({data.n_rows}); "
                              "lower n_components or capture more text")
        if k > data.n_cols:
            raise ConfigError(f"n_components={k} is larger than the number of neuron signals ({data.n_cols})")

    def _choose_subspace(self, data: StandardizedBlocks) -> str:
        if self.subspace != "auto":
            return self.subspace
        if min(data.n_cols, data.n_rows) > EXACT_LIMIT:
            return "randomized"
        return "covariance" if data.n_cols <= data.n_rows else "gram"

    # -- API -------------------------------------------------------------------------------------
    def fit(self, X: ArrayLike | Sequence[ArrayLike], y=None, progress: ProgressCallback | None = None) -> CanICA:
        """Fit on ``X (n_tokens, n_neurons)`` (or a list of column blocks with the same rows).

        ``y`` is ignored (scikit-learn's signature); ``progress`` receives ``("ica", fraction, message)``.
        """
        device = self._check_params()
        data = StandardizedBlocks(X, chunk_size=self.chunk_size, device=device)
        self._check_data(data)
        self.n_features_in_ = data.n_cols
        self.subspace_ = self._choose_subspace(data)
        report(progress, "ica", 0.0, f"{self.subspace_} subspace")
        U, explained = self._subspace(data, progress)
        self.mean_, self.scale_ = data.mean.cpu().numpy(), data.scale.cpu().numpy()
        self.n_constant_ = data.n_constant
        self.explained_variance_ = explained.float().cpu().numpy()
        report(progress, "ica", 0.7, f"FastICA x{self.n_init}")
        self.leverage_ = (U ** 2).sum(1).float().cpu().numpy()          # (n_neurons,) PCA leverage
        self._decompose(U)
        report(progress, "ica", 1.0, "done")
        return self

    def transform(self, X: ArrayLike | Sequence[ArrayLike]) -> np.ndarray:
        """Time courses ``(n_tokens, k)`` float32: least-squares regression of the standardised data on the maps."""
        if not hasattr(self, "components_"):
            raise ConfigError("CanICA is not fitted yet; call fit first")
        device = self._check_params()
        data = StandardizedBlocks(X, chunk_size=self.chunk_size, device=device, mean=self.mean_, scale=self.scale_)
        if data.n_cols != self.n_features_in_:
            raise ConfigError(f"X has {data.n_cols} features, but CanICA is expecting {self.n_features_in_} "
                              "features as input (the neuron signals it was fitted on)")
        M = torch.from_numpy(self.components_).to(device, torch.float64)          # (k, n)
        proj = torch.linalg.solve(M @ M.T, M).T                                    # (n, k) pseudo-inverse
        return data.project(proj).cpu().numpy()

    # -- steps -----------------------------------------------------------------------------------
    def _subspace(self, data: StandardizedBlocks, progress) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 2: the top-k loadings ``U (n_neurons, k)`` float64 and their explained variance."""
        n, k = data.n_rows, self.n_components
        if self.subspace_ == "covariance":
            C = data.correlation()
            # float32 eigenpairs: only the span of the top k matters downstream
            evals, evecs = top_eigh(C, k, random_state=self.random_state)
            return evecs.double(), evals.double() / n
        data.standardize()
        if self.subspace_ == "gram":
            lam, V = top_eigh(data.gram(), k, random_state=self.random_state)   # (n_tokens, n_tokens)
            lam = lam.clamp_min(1e-12)
            return data.rmatmul(V) / lam.sqrt(), lam / n
        return self._subspace_randomized(data, progress)

    def _subspace_randomized(self, data: StandardizedBlocks, progress) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.n_components
        r = min(k + max(10, k // 2), data.n_cols, data.n_rows)
        gen = torch.Generator(device="cpu").manual_seed(int(self.random_state))
        Q = torch.randn((data.n_cols, r), generator=gen, dtype=torch.float64).to(data.device)
        Y = data.matmul(Q)
        for it in range(self.n_power_iter):
            Q, _ = torch.linalg.qr(Y)
            Z, _ = torch.linalg.qr(data.rmatmul(Q))
            Y = data.matmul(Z)
            report(progress, "ica", 0.1 + 0.5 * (it + 1) / (self.n_power_iter + 1), "randomized subspace")
        Q, _ = torch.linalg.qr(Y)                        # (n_tokens, r) range of Xs
        B = data.rmatmul(Q).T                            # (r, n_neurons) = Qᵀ Xs
        _, s, Vh = torch.linalg.svd(B, full_matrices=False)
        return Vh[:k].T.contiguous(), (s[:k] ** 2) / data.n_rows

    def _decompose(self, U: torch.Tensor) -> None:
        """Steps 3-6 on the subspace ``U (n_neurons, k)``: FastICA restarts, consensus, key score."""
        max_iter = self.max_iter if self.max_iter is not None else (300 if self.n_init == 1 else 50)
        sources, self.n_iter_ = fastica(U, self.n_init, max_iter=max_iter, tol=self.tol,
                                        random_state=self.random_state, warn=self.n_init == 1)
        maps = zscore_maps(sources.transpose(-1, -2))    # (R, k, n)
        components, stability, self.reference_restart_ = consensus(maps)
        kurtosis = (components.astype(np.float64) ** 4).mean(1)
        order = np.lexsort((np.arange(len(kurtosis)), -(stability * kurtosis)))
        self.components_ = np.ascontiguousarray(components[order], dtype=np.float32)
        self.stability_ = stability[order].astype(np.float32)
        # seed-robust key score (step 6)
        energy = (maps.double() ** 2).sum(1).mean(0).cpu().numpy()          # (n,) rotation-invariant
        self.stable_ = self.stability_ >= self.stable_threshold if self.n_init > 1 else np.ones(len(order), bool)
        stable_maps = self.components_[self.stable_].astype(np.float64)
        unresolved_norm = np.sqrt(np.clip(energy - (stable_maps ** 2).sum(0), 0, None))    # r_j
        n_unstable = int((~self.stable_).sum())
        self.unresolved_energy_ = (expected_max_fraction(n_unstable) * unresolved_norm).astype(np.float32)
        stable_max = np.abs(stable_maps).max(0) if len(stable_maps) else np.zeros(unresolved_norm.shape)
        self.key_score_ = np.maximum(stable_max, self.unresolved_energy_).astype(np.float32)

    @property
    def residual_score_(self) -> np.ndarray:
        """The former name of ``unresolved_energy_`` (kept so older callers keep working)."""
        return self.unresolved_energy_
