"""FastICA in torch (symmetric, ``cube``, batched seeded restarts in float64), z-scored maps and the
ICASSO-style consensus across restarts (METHOD.md §1.3-1.4)."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..errors import ConfigError

ArrayLike = np.ndarray | torch.Tensor


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
