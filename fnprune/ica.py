"""FastICA in torch and the CanICA estimator (METHOD.md §1.3-1.4).

CanICA treats neurons as voxels and tokens as time points: ``X`` is ``(n_tokens, n_neurons)``.

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
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .errors import ConfigError
from .models import resolve_device
from .progress import ProgressCallback, report

ArrayLike = np.ndarray | torch.Tensor
_EXACT_LIMIT = 12288  # largest covariance / Gram side diagonalised exactly


# -- column blocks ---------------------------------------------------------------------------------
class _Blocks:
    """A ``(n_rows, sum of widths)`` matrix given as column blocks with the same rows (memmaps ok)."""

    def __init__(self, X: ArrayLike | Sequence[ArrayLike]):
        blocks = list(X) if isinstance(X, list | tuple) else [X]
        if not blocks:
            raise ConfigError("no data given to CanICA")
        for b in blocks:
            if getattr(b, "ndim", None) != 2:
                raise ConfigError(f"CanICA needs 2-D data (n_tokens, n_neurons), got shape {getattr(b, 'shape', None)}")
        rows = {b.shape[0] for b in blocks}
        if len(rows) != 1:
            raise ConfigError(f"column blocks have different numbers of rows: {sorted(rows)}")
        self.blocks = blocks
        self.n_rows = blocks[0].shape[0]
        self.widths = [b.shape[1] for b in blocks]
        self.offsets = np.cumsum([0] + self.widths)
        self.n_cols = int(self.offsets[-1])


def _chunk(block: ArrayLike, r0: int, r1: int, device, dtype=torch.float32) -> torch.Tensor:
    part = block[r0:r1]
    if isinstance(part, torch.Tensor):
        return part.to(device=device, dtype=dtype)
    if hasattr(part, "to_tensor"):                  # a capture LayerMatrix: read and convert in one go
        return part.to_tensor(dtype).to(device)
    return torch.from_numpy(np.array(part, copy=True)).to(device=device, dtype=dtype)


def _non_finite_error(x: torch.Tensor, r0: int) -> ConfigError:
    """The error for a chunk of rows ``r0..`` that holds NaN or inf."""
    bad = int((~torch.isfinite(x)).sum())
    return ConfigError(f"activations contain {bad} non-finite values (NaN/inf) in rows {r0}..{r0 + x.shape[0]}; "
                       "CanICA needs finite data")


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


# -- CanICA ----------------------------------------------------------------------------------------
class CanICA:
    """Canonical ICA over neurons, scikit-learn style.

    Parameters
    ----------
    n_components : number of spatial maps k
    n_init : FastICA restarts combined by consensus (1 = the paper's single run)
    subspace : "auto" | "covariance" | "gram" | "randomized"
    max_iter, tol : FastICA stopping rule. ``max_iter=None``: 300 for a single run (the paper's), 50
        per restart when ``n_init > 1``. In a flat spectrum the symmetric iteration never converges as
        a whole: the components every restart finds converge within a few tens of iterations, the
        rest keep rotating in their subspace, which step 6 replaces by a seed-free expectation
        anyway (BENCHMARKS.md §2 measures 50 against 300).
    n_power_iter : power iterations of the randomized subspace
    chunk_size : rows streamed at a time
    random_state : seed of every random step
    device : "auto" | "cpu" | "cuda"

    Attributes (after ``fit``)
    --------------------------
    components_ : (k, n_neurons) float32 consensus z-maps, ordered by decreasing stability·kurtosis
    stability_ : (k,) mean matched |correlation| across restarts (1.0 when ``n_init == 1``)
    stable_ : (k,) bool, stability ≥ ``stable_threshold``
    key_score_ : (n_neurons,) seed-robust key score (module docstring, step 6)
    residual_score_ : (n_neurons,) its part from the unstable subspace, ``m(d) · r``
    explained_variance_ : (k,) variance of the standardised data along each subspace direction
    mean_, scale_ : (n_neurons,) standardisation
    n_iter_ : (n_init,) FastICA iterations per restart
    subspace_ : the subspace method used
    """

    _SUBSPACES = ("auto", "covariance", "gram", "randomized")

    def __init__(self, n_components: int = 128, *, n_init: int = 8, subspace: str = "auto",
                 max_iter: int | None = None, tol: float = 1e-4, n_power_iter: int = 6, chunk_size: int = 4096,
                 stable_threshold: float = 0.9, random_state: int = 0, device: str = "auto"):
        self.n_components = n_components
        self.stable_threshold = stable_threshold
        self.n_init = n_init
        self.subspace = subspace
        self.max_iter = max_iter
        self.tol = tol
        self.n_power_iter = n_power_iter
        self.chunk_size = chunk_size
        self.random_state = random_state
        self.device = device

    # -- validation ------------------------------------------------------------------------------
    def _validate(self, data: _Blocks) -> None:
        k = self.n_components
        if not isinstance(k, int | np.integer) or k < 1:
            raise ConfigError(f"n_components must be a positive integer, got {k!r}")
        if not isinstance(self.n_init, int | np.integer) or self.n_init < 1:
            raise ConfigError(f"n_init must be a positive integer, got {self.n_init!r}")
        if self.max_iter is not None and (not isinstance(self.max_iter, int | np.integer) or self.max_iter < 1):
            raise ConfigError(f"max_iter must be None or a positive integer, got {self.max_iter!r}")
        if self.subspace not in self._SUBSPACES:
            raise ConfigError(f"subspace must be one of {self._SUBSPACES}, got {self.subspace!r}")
        if data.n_rows < 3:
            raise ConfigError(f"need at least 3 tokens, got {data.n_rows}")
        if k >= data.n_rows:
            raise ConfigError(f"n_components={k} must be smaller than the number of tokens ({data.n_rows}); "
                              "lower n_components or capture more text")
        if k > data.n_cols:
            raise ConfigError(f"n_components={k} is larger than the number of neuron signals ({data.n_cols})")

    # -- steps -----------------------------------------------------------------------------------
    def _standardise(self, data: _Blocks, device) -> None:
        n = data.n_rows
        mean = torch.zeros(data.n_cols, dtype=torch.float64, device=device)
        sq = torch.zeros_like(mean)
        for b, block in enumerate(data.blocks):
            c0, c1 = data.offsets[b], data.offsets[b + 1]
            for r0 in range(0, n, self.chunk_size):
                x = _chunk(block, r0, min(n, r0 + self.chunk_size), device, torch.float64)
                if not bool(torch.isfinite(x).all()):
                    raise _non_finite_error(x, r0)
                mean[c0:c1] += x.sum(0)
                sq[c0:c1] += (x * x).sum(0)
        mean /= n
        self._set_scale(mean, (sq / n - mean * mean).clamp_min(0))

    def _std_chunk(self, data: _Blocks, b: int, r0: int, r1: int, device) -> torch.Tensor:
        c0, c1 = data.offsets[b], data.offsets[b + 1]
        x = _chunk(data.blocks[b], r0, r1, device)
        return (x - self._mean_t[c0:c1].float()) / self._scale_t[c0:c1].float()

    def _covariance_pass(self, data: _Blocks, device) -> torch.Tensor:
        """One streamed pass: column means and scales (``mean_``, ``scale_``) and the correlation
        matrix of the standardised data ``(n_cols, n_cols)`` float32, times ``n_tokens``.

        Each float32 chunk is shifted by the first chunk's column means (so large means do not cancel
        the variance) and its cross-product accumulated in float32 (column sums in float64); on CPU
        the cross-product is a BLAS ``syrk`` updating the accumulator in place (half a GEMM's flops).
        """
        from scipy.linalg.blas import ssyrk

        n, p = data.n_rows, data.n_cols
        cpu = torch.device(device).type == "cpu"
        # float32 accumulator; on CPU a Fortran-ordered array that ssyrk updates in place
        C = np.zeros((p, p), np.float32, order="F") if cpu else torch.zeros((p, p), device=device)
        sums = torch.zeros(p, dtype=torch.float64, device=device)
        shift = None
        for r0 in range(0, n, self.chunk_size):
            r1 = min(n, r0 + self.chunk_size)
            x = torch.cat([_chunk(b, r0, r1, device) for b in data.blocks], 1) if len(data.blocks) > 1 \
                else _chunk(data.blocks[0], r0, r1, device)
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
        mean = shift.double() + mean_y
        var = (torch.diagonal(C).double() / n - mean_y * mean_y).clamp_min(0)
        self._set_scale(mean, var)
        # correlation of the standardised data times n: (C - n m mᵀ) / (s sᵀ), in place
        m = mean_y.float()
        inv = (1.0 / self._scale_t).float()
        C.addr_(m, m, alpha=-float(n))
        C.mul_(inv[:, None]).mul_(inv[None, :])
        return C

    def _set_scale(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        std = var.sqrt()
        constant = std <= 1e-8 * (1 + mean.abs())
        self.n_constant_ = int(constant.sum())
        std[constant] = 1.0
        self._mean_t, self._scale_t = mean, std
        self.mean_, self.scale_ = mean.cpu().numpy(), std.cpu().numpy()

    def _subspace_exact(self, data: _Blocks, device, method: str) -> tuple[torch.Tensor, torch.Tensor]:
        n, k = data.n_rows, self.n_components
        if method == "covariance":
            C = self._covariance_pass(data, device)
            # float32 eigenpairs: only the span of the top k matters downstream
            evals, evecs = _top_eigh(C, k, random_state=self.random_state)
            return evecs.double(), evals.double() / n
        self._standardise(data, device)
        # gram: (n_tokens, n_tokens)
        G = torch.zeros((n, n), dtype=torch.float64, device=device)
        for b in range(len(data.blocks)):
            for r0 in range(0, n, self.chunk_size):
                r1 = min(n, r0 + self.chunk_size)
                xa = self._std_chunk(data, b, r0, r1, device)
                for s0 in range(r0, n, self.chunk_size):
                    s1 = min(n, s0 + self.chunk_size)
                    xb = xa if s0 == r0 else self._std_chunk(data, b, s0, s1, device)
                    block = (xa @ xb.T).double()
                    G[r0:r1, s0:s1] += block
                    if s0 != r0:
                        G[s0:s1, r0:r1] += block.T
        lam, V = _top_eigh(G, k, random_state=self.random_state)
        lam = lam.clamp_min(1e-12)
        U = self._xt_times(data, V, device) / lam.sqrt()
        return U, lam / n

    def _xt_times(self, data: _Blocks, V: torch.Tensor, device) -> torch.Tensor:
        """``Xsᵀ V`` streamed: (n_neurons, r) float64."""
        out = torch.zeros((data.n_cols, V.shape[1]), dtype=torch.float64, device=device)
        for b in range(len(data.blocks)):
            c0, c1 = data.offsets[b], data.offsets[b + 1]
            for r0 in range(0, data.n_rows, self.chunk_size):
                r1 = min(data.n_rows, r0 + self.chunk_size)
                out[c0:c1] += (self._std_chunk(data, b, r0, r1, device).T @ V[r0:r1].float()).double()
        return out

    def _x_times(self, data: _Blocks, Q: torch.Tensor, device) -> torch.Tensor:
        """``Xs Q`` streamed: (n_tokens, r) float64."""
        out = torch.zeros((data.n_rows, Q.shape[1]), dtype=torch.float64, device=device)
        for b in range(len(data.blocks)):
            c0, c1 = data.offsets[b], data.offsets[b + 1]
            Qb = Q[c0:c1].float()
            for r0 in range(0, data.n_rows, self.chunk_size):
                r1 = min(data.n_rows, r0 + self.chunk_size)
                out[r0:r1] += (self._std_chunk(data, b, r0, r1, device) @ Qb).double()
        return out

    def _subspace_randomized(self, data: _Blocks, device, progress) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.n_components
        r = min(k + max(10, k // 2), data.n_cols, data.n_rows)
        gen = torch.Generator(device="cpu").manual_seed(int(self.random_state))
        Q = torch.randn((data.n_cols, r), generator=gen, dtype=torch.float64).to(device)
        Y = self._x_times(data, Q, device)
        for it in range(self.n_power_iter):
            Q, _ = torch.linalg.qr(Y)
            Z, _ = torch.linalg.qr(self._xt_times(data, Q, device))
            Y = self._x_times(data, Z, device)
            report(progress, "ica", 0.1 + 0.5 * (it + 1) / (self.n_power_iter + 1), "randomized subspace")
        Q, _ = torch.linalg.qr(Y)                        # (n_tokens, r) range of Xs
        B = self._xt_times(data, Q, device).T            # (r, n_neurons) = Qᵀ Xs
        _, s, Vh = torch.linalg.svd(B, full_matrices=False)
        return Vh[:k].T.contiguous(), (s[:k] ** 2) / data.n_rows

    def _choose_subspace(self, data: _Blocks) -> str:
        if self.subspace != "auto":
            return self.subspace
        side = min(data.n_cols, data.n_rows)
        if side > _EXACT_LIMIT:
            return "randomized"
        return "covariance" if data.n_cols <= data.n_rows else "gram"

    # -- API -------------------------------------------------------------------------------------
    def fit(self, X: ArrayLike | Sequence[ArrayLike], y=None, progress: ProgressCallback | None = None) -> CanICA:
        """Fit on ``X (n_tokens, n_neurons)`` (or a list of column blocks with the same rows)."""
        data = _Blocks(X)
        self._validate(data)
        device = resolve_device(self.device)
        self.subspace_ = self._choose_subspace(data)
        report(progress, "ica", 0.0, f"{self.subspace_} subspace")
        if self.subspace_ == "randomized":
            self._standardise(data, device)
            U, explained = self._subspace_randomized(data, device, progress)
        else:
            U, explained = self._subspace_exact(data, device, self.subspace_)
        self.explained_variance_ = explained.float().cpu().numpy()
        report(progress, "ica", 0.7, f"FastICA x{self.n_init}")
        self._decompose(U)
        report(progress, "ica", 1.0, "done")
        return self

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
        residual = np.sqrt(np.clip(energy - (stable_maps ** 2).sum(0), 0, None))
        n_unstable = int((~self.stable_).sum())
        self.residual_score_ = (expected_max_fraction(n_unstable) * residual).astype(np.float32)
        stable_max = np.abs(stable_maps).max(0) if len(stable_maps) else np.zeros(residual.shape)
        self.key_score_ = np.maximum(stable_max, self.residual_score_).astype(np.float32)

    def transform(self, X: ArrayLike | Sequence[ArrayLike]) -> np.ndarray:
        """Time courses ``(n_tokens, k)``: least-squares regression of the standardised data on the maps."""
        if not hasattr(self, "components_"):
            raise ConfigError("CanICA is not fitted yet; call fit first")
        data = _Blocks(X)
        if data.n_cols != self.components_.shape[1]:
            raise ConfigError(f"X has {data.n_cols} neuron columns, the maps have {self.components_.shape[1]}")
        device = resolve_device(self.device)
        M = torch.from_numpy(self.components_).to(device, torch.float64)          # (k, n)
        proj = torch.linalg.solve(M @ M.T, M).T                                    # (n, k) pseudo-inverse
        # ((X - mean) / scale) @ proj = X @ (proj / scale) - (mean / scale) @ proj: raw chunks only
        scale = torch.from_numpy(self.scale_).to(device, torch.float64)
        mean = torch.from_numpy(self.mean_).to(device, torch.float64)
        P = (proj / scale[:, None]).float()
        offset = ((mean / scale) @ proj).float()
        out = torch.empty((data.n_rows, P.shape[1]), dtype=torch.float32, device=device)
        for r0 in range(0, data.n_rows, self.chunk_size):
            r1 = min(data.n_rows, r0 + self.chunk_size)
            acc = offset.neg().expand(r1 - r0, -1).clone()
            for b, block in enumerate(data.blocks):
                c0, c1 = data.offsets[b], data.offsets[b + 1]
                acc += _chunk(block, r0, r1, device) @ P[c0:c1]
            out[r0:r1] = acc
        return out.cpu().numpy()
