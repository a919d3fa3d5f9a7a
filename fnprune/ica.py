"""FastICA in torch and the CanICA estimator (METHOD.md §1.3-1.4).

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
   ICA at all) is the matching control; ``fnprune.stability`` reports both next to the networks that
   are reproduced across seeds.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.base import BaseEstimator, TransformerMixin

from .devices import resolve_device
from .errors import ConfigError
from .options import DEFAULT_N_COMPONENTS, DEFAULT_N_INIT  # why 32 x 16: see fnprune.options
from .progress import ProgressCallback, report

ArrayLike = np.ndarray | torch.Tensor
_EXACT_LIMIT = 12288  # largest covariance / Gram side diagonalised exactly


# -- the standardised data as a streamed operator --------------------------------------------------
class StandardizedBlocks:
    """``Xs = (X - mean) / scale`` as a linear operator, read ``chunk_size`` rows at a time.

    ``X (n_rows, n_cols)`` is given as column blocks with the same rows (numpy arrays, memmaps,
    capture ``LayerMatrix`` objects or tensors), so it never has to fit in memory at once. Every
    chunk is read into a new float32 (or float64) tensor on ``device``: the caller's data is never
    written. ``mean`` and ``scale`` (float64 ``(n_cols,)`` tensors, a zero-variance column gets
    scale 1) come from :meth:`standardize` or :meth:`correlation`, or are given for a fitted model.
    """

    def __init__(self, X: ArrayLike | Sequence[ArrayLike], *, chunk_size: int = 4096, device="cpu",
                 mean: np.ndarray | None = None, scale: np.ndarray | None = None):
        blocks = [_as_block(b) for b in (X if isinstance(X, list | tuple) else [X])]
        if not blocks:
            raise ConfigError("no data given to CanICA")
        rows = {b.shape[0] for b in blocks}
        if len(rows) != 1:
            raise ConfigError(f"column blocks have different numbers of rows: {sorted(rows)}")
        self.blocks = blocks
        self.n_rows = int(blocks[0].shape[0])
        self.widths = [int(b.shape[1]) for b in blocks]
        self.offsets = np.cumsum([0] + self.widths)
        self.n_cols = int(self.offsets[-1])
        self.chunk_size = int(chunk_size)
        self.device = torch.device(device)
        self.mean = self.scale = None
        self.n_constant = 0
        if mean is not None and scale is not None:
            self.mean = torch.as_tensor(np.asarray(mean), dtype=torch.float64).to(self.device)
            self.scale = torch.as_tensor(np.asarray(scale), dtype=torch.float64).to(self.device)

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_rows, self.n_cols

    # -- reading ---------------------------------------------------------------------------------
    def _row_chunks(self) -> Iterator[tuple[int, int]]:
        for r0 in range(0, self.n_rows, self.chunk_size):
            yield r0, min(self.n_rows, r0 + self.chunk_size)

    def _cols(self, b: int) -> slice:
        return slice(int(self.offsets[b]), int(self.offsets[b + 1]))

    def read(self, b: int, r0: int, r1: int, dtype=torch.float32) -> torch.Tensor:
        """Raw rows ``r0:r1`` of block ``b`` as a new tensor (never a view of the caller's data)."""
        part = self.blocks[b][r0:r1]
        if isinstance(part, torch.Tensor):
            return part.detach().to(device=self.device, dtype=dtype, copy=True)
        if hasattr(part, "to_tensor"):                  # a capture LayerMatrix: read and convert in one go
            return part.to_tensor(dtype).to(self.device)
        return torch.from_numpy(np.array(part, copy=True)).to(device=self.device, dtype=dtype)

    def standardized(self, b: int, r0: int, r1: int) -> torch.Tensor:
        """Standardised rows ``r0:r1`` of block ``b``, float32 ``(r1 - r0, width_b)``."""
        cols = self._cols(b)
        x = self.read(b, r0, r1)
        return (x - self.mean[cols].float()) / self.scale[cols].float()

    # -- statistics ------------------------------------------------------------------------------
    def _set_scale(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        std = var.sqrt()
        constant = std <= 1e-8 * (1 + mean.abs())
        self.n_constant = int(constant.sum())
        std[constant] = 1.0
        self.mean, self.scale = mean, std

    def standardize(self) -> None:
        """Column means and scales in one float64 pass."""
        mean = torch.zeros(self.n_cols, dtype=torch.float64, device=self.device)
        sq = torch.zeros_like(mean)
        for b in range(len(self.blocks)):
            cols = self._cols(b)
            for r0, r1 in self._row_chunks():
                x = self.read(b, r0, r1, torch.float64)
                if not bool(torch.isfinite(x).all()):
                    raise _non_finite_error(x, r0)
                mean[cols] += x.sum(0)
                sq[cols] += (x * x).sum(0)
        mean /= self.n_rows
        self._set_scale(mean, (sq / self.n_rows - mean * mean).clamp_min(0))

    def correlation(self) -> torch.Tensor:
        """One streamed pass: ``mean``, ``scale`` and ``Xsᵀ Xs`` ``(n_cols, n_cols)`` float32 (the
        correlation matrix times ``n_rows``).

        Each float32 chunk is shifted by the first chunk's column means (so large means do not cancel
        the variance) and its cross-product accumulated in float32 (column sums in float64); on CPU
        the cross-product is a BLAS ``syrk`` updating the accumulator in place (half a GEMM's flops).
        """
        from scipy.linalg.blas import ssyrk

        n, p = self.n_rows, self.n_cols
        cpu = self.device.type == "cpu"
        # float32 accumulator; on CPU a Fortran-ordered array that ssyrk updates in place
        C = np.zeros((p, p), np.float32, order="F") if cpu else torch.zeros((p, p), device=self.device)
        sums = torch.zeros(p, dtype=torch.float64, device=self.device)
        shift = None
        n_blocks = len(self.blocks)
        for r0, r1 in self._row_chunks():
            # (r1 - r0, n_cols), a fresh tensor: shifted in place below
            x = torch.cat([self.read(b, r0, r1) for b in range(n_blocks)], 1) if n_blocks > 1 \
                else self.read(0, r0, r1)
            if shift is None:
                shift = x.mean(0)
                shift[~torch.isfinite(shift)] = 0
            x -= shift
            col = x.sum(0)
            if not bool(torch.isfinite(col).all()):     # NaN/inf anywhere in the chunk shows in its sums
                raise _non_finite_error(x, r0)
            sums += col.double()
            if cpu:
                C = ssyrk(1.0, x.numpy().T, beta=1.0, c=C, trans=0, lower=0, overwrite_c=1)
            else:
                C += x.T @ x
        C = torch.from_numpy(C) if cpu else C.triu()
        C += C.triu(1).T                                 # mirror the upper triangle into the lower
        mean_y = sums / n
        var = (torch.diagonal(C).double() / n - mean_y * mean_y).clamp_min(0)
        self._set_scale(shift.double() + mean_y, var)
        # correlation of the standardised data times n: (C - n m mᵀ) / (s sᵀ), in place
        m = mean_y.float()
        inv = (1.0 / self.scale).float()
        C.addr_(m, m, alpha=-float(n))
        C.mul_(inv[:, None]).mul_(inv[None, :])
        return C

    # -- products (need mean and scale) ----------------------------------------------------------
    def gram(self) -> torch.Tensor:
        """``Xs Xsᵀ`` ``(n_rows, n_rows)`` float64 (float32 products, float64 accumulation)."""
        n = self.n_rows
        G = torch.zeros((n, n), dtype=torch.float64, device=self.device)
        for b in range(len(self.blocks)):
            for r0, r1 in self._row_chunks():
                xa = self.standardized(b, r0, r1)
                for s0 in range(r0, n, self.chunk_size):
                    s1 = min(n, s0 + self.chunk_size)
                    xb = xa if s0 == r0 else self.standardized(b, s0, s1)
                    block = (xa @ xb.T).double()
                    G[r0:r1, s0:s1] += block
                    if s0 != r0:
                        G[s0:s1, r0:r1] += block.T
        return G

    def rmatmul(self, V: torch.Tensor) -> torch.Tensor:
        """``Xsᵀ V`` for ``V (n_rows, r)``: ``(n_cols, r)`` float64."""
        out = torch.zeros((self.n_cols, V.shape[1]), dtype=torch.float64, device=self.device)
        for b in range(len(self.blocks)):
            cols = self._cols(b)
            for r0, r1 in self._row_chunks():
                out[cols] += (self.standardized(b, r0, r1).T @ V[r0:r1].float()).double()
        return out

    def matmul(self, Q: torch.Tensor) -> torch.Tensor:
        """``Xs Q`` for ``Q (n_cols, r)``: ``(n_rows, r)`` float64."""
        out = torch.zeros((self.n_rows, Q.shape[1]), dtype=torch.float64, device=self.device)
        for b in range(len(self.blocks)):
            Qb = Q[self._cols(b)].float()
            for r0, r1 in self._row_chunks():
                out[r0:r1] += (self.standardized(b, r0, r1) @ Qb).double()
        return out

    def project(self, P: torch.Tensor) -> torch.Tensor:
        """``Xs P`` for ``P (n_cols, r)``: ``(n_rows, r)`` float32 in one pass over the raw chunks,
        as ``X (P / scale) - (mean / scale) P`` (no chunk is standardised)."""
        P = P.to(self.device, torch.float64)
        Ps = (P / self.scale[:, None]).float()
        offset = ((self.mean / self.scale) @ P).float()
        out = torch.empty((self.n_rows, P.shape[1]), dtype=torch.float32, device=self.device)
        for r0, r1 in self._row_chunks():
            acc = offset.neg().expand(r1 - r0, -1).clone()
            for b in range(len(self.blocks)):
                x = self.read(b, r0, r1)
                if not bool(torch.isfinite(x).all()):
                    raise _non_finite_error(x, r0)
                acc += x @ Ps[self._cols(b)]
            out[r0:r1] = acc
        return out


def _as_block(b):
    """One column block, checked: dense, 2-D, real numbers (an object with ``__array__`` is converted)."""
    import scipy.sparse

    if scipy.sparse.issparse(b):
        raise ConfigError("sparse input is not supported: CanICA needs dense activations")
    if getattr(b, "ndim", None) is None and hasattr(b, "__array__"):
        b = np.asarray(b)
    if getattr(b, "ndim", None) != 2:
        raise ConfigError(f"CanICA needs 2-D data (n_tokens, n_neurons), got shape {getattr(b, 'shape', None)}")
    dtype = b.dtype
    if dtype.is_complex if isinstance(dtype, torch.dtype) else np.issubdtype(dtype, np.complexfloating):
        raise ConfigError("Complex data not supported: CanICA needs real activations")
    if not isinstance(dtype, torch.dtype) and not np.issubdtype(dtype, np.number) and dtype != np.bool_:
        raise ConfigError(f"CanICA needs numeric data, got dtype {dtype}")
    return b


def _non_finite_error(x: torch.Tensor, r0: int) -> ConfigError:
    """The error for a chunk of rows ``r0..`` that holds NaN or inf."""
    bad = int((~torch.isfinite(x)).sum())
    return ConfigError(f"activations contain {bad} non-finite values (NaN/inf) in rows {r0}..{r0 + x.shape[0]}; "
                       "CanICA needs finite data")


# -- eigenpairs ------------------------------------------------------------------------------------
def _top_eigh_exact(M: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest ``k`` eigenpairs by a dense solver (MRRR on CPU: only the wanted pairs)."""
    n = M.shape[0]
    if M.device.type == "cpu":
        import scipy.linalg

        vals, vecs = scipy.linalg.eigh(M.numpy(), subset_by_index=[n - k, n - 1], driver="evr")
        vals, vecs = torch.from_numpy(vals.copy()), torch.from_numpy(vecs.copy())
    else:
        vals, vecs = torch.linalg.eigh(M)
        vals, vecs = vals[-k:], vecs[:, -k:]
    return vals.flip(-1), vecs.flip(-1)


def _top_eigh(M: torch.Tensor, k: int, *, random_state: int = 0, tol: float = 1e-3,
              max_depth: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest ``k`` eigenpairs of a symmetric positive semi-definite matrix, descending.

    Block Krylov with Rayleigh-Ritz (block ``b = k + k/4``, seeded start): the basis
    ``[M Ω, M² Ω, ...]`` grows one block at a time until every Ritz pair has relative residual
    ``‖M u − θ u‖ / θ ≤ tol`` (four or five blocks on the default model: principal angles to the
    dense solver's eigenvectors below 1e-3 rad, for a third of its time). Small matrices, and a
    basis that would grow past half of ``n``, use the dense solver.
    """
    n = M.shape[0]
    b = k + max(16, k // 4)
    if 4 * b > n:
        return _top_eigh_exact(M, k)
    gen = torch.Generator(device="cpu").manual_seed(int(random_state))
    Y = torch.randn((n, b), generator=gen, dtype=M.dtype).to(M.device)
    blocks = []
    for depth in range(1, max_depth + 1):
        Y, _ = torch.linalg.qr(M @ Y)
        blocks.append(Y)
        if depth < 3:
            continue
        if (depth + 1) * b > n // 2:
            break
        Q, _ = torch.linalg.qr(torch.cat(blocks, 1))
        theta, V = torch.linalg.eigh(Q.T @ M @ Q)
        theta, U = theta[-k:].flip(-1), (Q @ V[:, -k:]).flip(-1)
        if float(theta[-1]) <= 0:
            break
        residual = torch.linalg.vector_norm(M @ U - U * theta, dim=0) / theta
        if float(residual.max()) <= tol:
            return theta, U
    return _top_eigh_exact(M, k)


# -- FastICA ---------------------------------------------------------------------------------------
def _sym_decorrelation(W: torch.Tensor) -> torch.Tensor:
    """``(W Wᵀ)^(-1/2) W`` for a batch of square matrices ``(R, k, k)``."""
    s, u = torch.linalg.eigh(W @ W.transpose(-1, -2))
    s = s.clamp_min(torch.finfo(W.dtype).tiny)
    return (u * s.rsqrt().unsqueeze(-2)) @ u.transpose(-1, -2) @ W


def fastica(X: torch.Tensor, n_init: int = 1, *, max_iter: int = 300, tol: float = 1e-4,
            random_state: int = 0, warn: bool = True) -> tuple[torch.Tensor, np.ndarray]:
    """Symmetric FastICA with the ``cube`` nonlinearity, ``n_init`` seeded restarts run as a batch.

    Parameters
    ----------
    X : (n_samples, n_features) tensor; whitened internally (in its own dtype).
    warn : warn when a restart stops at ``max_iter`` before converging

    Returns
    -------
    sources : (n_init, n_samples, n_features) tensor, unit variance per source
    n_iter : (n_init,) iterations each restart ran (``max_iter`` means not converged)

    The products with the data run in float32 (twice as fast on CPU, with the sources laid out
    ``(restarts * k, n)``, BLAS's fast layout); the unmixing matrices and their symmetric
    decorrelation stay float64 (the FastICA update is a difference of nearly equal terms for
    near-Gaussian directions, which float32 decorrelation can turn singular).
    """
    n, k = X.shape
    Xc = X - X.mean(0, keepdim=True)
    cov = Xc.T @ Xc / n
    d, E = torch.linalg.eigh(cov)
    if float(d.min()) <= 1e-12 * float(d.max()):
        raise ConfigError("FastICA input is rank-deficient: fewer independent directions than components "
                          "(lower n_components or add data)")
    Xw = Xc @ (E * d.rsqrt())  # (n, k), identity covariance
    Xw32 = Xw.float()
    Xw32t = Xw32.T.contiguous()
    gen = torch.Generator(device="cpu").manual_seed(int(random_state))
    W = torch.randn((n_init, k, k), generator=gen, dtype=torch.float64).to(X.device)
    W = _sym_decorrelation(W)
    n_iter = np.full(n_init, max_iter)
    active = np.arange(n_init)                      # restarts still iterating
    for it in range(1, max_iter + 1):
        Wa = W[active]
        R = len(active)
        # every active restart in one GEMM: sources, transposed (R*k, n) (the fast layout for BLAS)
        St = Wa.reshape(R * k, k).float() @ Xw32t
        S2 = St * St
        g_prime = S2.mean(1).reshape(R, k, 1).double()                         # E[g'(wᵀx)] / 3
        W_new = (S2.mul_(St) @ Xw32).reshape(R, k, k).double() / n             # E[g(wᵀx) x], g(u) = u³
        W_new = _sym_decorrelation(W_new - 3.0 * g_prime * Wa)
        lim = (torch.diagonal(W_new @ Wa.transpose(-1, -2), dim1=-2, dim2=-1).abs() - 1).abs().amax(-1)
        W[active] = W_new
        done = (lim < tol).cpu().numpy()
        n_iter[active[done]] = it
        active = active[~done]
        if len(active) == 0:
            break
    if len(active) and warn:
        warnings.warn(f"FastICA: {len(active)} of {n_init} restarts did not converge in {max_iter} "
                      "iterations; their maps are used as they are", RuntimeWarning, stacklevel=2)
    R = n_init
    return (Xw @ W.reshape(R * k, k).T).reshape(n, R, k).permute(1, 0, 2), n_iter


def zscore_maps(maps: torch.Tensor) -> torch.Tensor:
    """z-score each map (last dim = neurons) and flip its sign so its heavy tail is positive."""
    z = (maps - maps.mean(-1, keepdim=True)) / maps.std(-1, keepdim=True).clamp_min(1e-12)
    skew_sign = torch.sign((z ** 3).sum(-1, keepdim=True))
    return z * torch.where(skew_sign == 0, torch.ones_like(skew_sign), skew_sign)


def expected_max_fraction(d: int, n_samples: int = 4000) -> float:
    """``E[max_i |g_i| / ||g||]`` for ``g ~ N(0, I_d)`` (a constant, estimated with a fixed seed)."""
    if d <= 0:
        return 0.0
    g = np.random.default_rng(12345).standard_normal((n_samples, d))
    return float((np.abs(g).max(1) / np.linalg.norm(g, axis=1)).mean())


def consensus(maps: torch.Tensor) -> tuple[np.ndarray, np.ndarray, int]:
    """Average matched maps across restarts.

    Parameters
    ----------
    maps : (R, k, n) z-scored maps of R restarts

    Returns
    -------
    consensus_maps : (k, n) float32, stability : (k,) mean matched |corr|, reference : restart index
    """
    R, k, n = maps.shape
    Z = maps.to(torch.float32)
    if R == 1:
        return Z[0].cpu().numpy(), np.ones(k, dtype=np.float32), 0
    corr = torch.einsum("rkn,sjn->rskj", Z, Z) / n             # (R, R, k, k)
    best = corr.abs().amax(-1).mean(-1)                        # (R, R) mean best-match |corr|
    reference = int((best.sum(1) - best.diagonal()).argmax())
    total = Z[reference].clone()
    stability = torch.zeros(k)
    for r in range(R):
        if r == reference:
            continue
        c = corr[reference, r].cpu().numpy()
        rows, cols = linear_sum_assignment(-np.abs(c))
        perm = torch.as_tensor(cols[np.argsort(rows)])
        matched = c[np.arange(k), perm.numpy()]
        signs = torch.as_tensor(np.sign(matched) + (matched == 0), dtype=torch.float32)
        total += signs[:, None].to(Z.device) * Z[r][perm.to(Z.device)]
        stability += torch.as_tensor(np.abs(matched), dtype=torch.float32)
    return (total / R).cpu().numpy(), (stability / (R - 1)).numpy(), reference



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
        if min(data.n_cols, data.n_rows) > _EXACT_LIMIT:
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
            evals, evecs = _top_eigh(C, k, random_state=self.random_state)
            return evecs.double(), evals.double() / n
        data.standardize()
        if self.subspace_ == "gram":
            lam, V = _top_eigh(data.gram(), k, random_state=self.random_state)   # (n_tokens, n_tokens)
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
