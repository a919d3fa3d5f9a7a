"""The standardised data as a streamed operator (:class:`StandardizedBlocks`: one pass per product,
row chunks, the caller's data never written) and the top eigenpairs CanICA's subspace comes from
(exact below :data:`EXACT_LIMIT`, block Krylov above)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..errors import ConfigError

ArrayLike = np.ndarray | torch.Tensor

EXACT_LIMIT = 12288  # largest covariance / Gram side diagonalised exactly


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


def top_eigh(M: torch.Tensor, k: int, *, random_state: int = 0, tol: float = 1e-3,
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
