"""Repair of a pruned MLP layer and the structured-OBS order of its neurons: one objective.

A layer's output is ``y = W x (+ b0)`` (``W``: ``down``'s weight ``(hidden, I)``, ``x``: ``down``'s
input over calibration tokens). Keeping only the neurons ``K``, its ``down`` is re-fitted on them by
ridge least squares, the ridge pulling the new columns toward the dense ones::

    F(K) = min over W', b   E_t || W x_t - W' x_t[K] - b ||²  +  λ || Ŵ - W ||²_F

with ``Ŵ`` the pruned ``(hidden, I)`` weight (``W'`` on ``K``, zero elsewhere; the bias is not
penalised), so ``λ||Ŵ - W||²_F = λ||W' - W[:, K]||²_F + λ||W[:, pruned]||²_F`` -- the second term
does not depend on ``W'``, so the fitted weights are those of the ridge pulled toward ``W[:, K]``,
and ``F(all) = 0``. ``λ`` = ``ridge`` × the mean of ``diag Σ`` over **all** ``I`` neurons, whatever
``K`` is; ``ridge = 0`` is the plain least squares (and an error where the kept moments are
singular). With ``z = [x; 1]``, ``G = E[z zᵀ]`` (built from ``Σ = E[x xᵀ]`` and ``μ = E[x]``) and
``H = G + λ diag(1, …, 1, 0)``, the fit has the closed form ``[W' b] = W H[:I, K+] H[K+, K+]⁻¹``
(``K+``: ``K`` and the bias column) and ``F(K) = tr(Wz (H - H[:, K+] H[K+, K+]⁻¹ H[K+, :]) Wzᵀ)``,
``Wz = [W 0]``. The moments may use any token weighting (``obs`` uses the residual-weighted ones),
as long as ``Σ`` and ``μ`` use the same. FLAP's bias compensation is the special case that keeps
``W' = W[:, K]`` and sets ``b = W[:, pruned] μ[pruned]``; this is the layer-wise reconstruction of
SlimGPT/ZipLM-style pruners (METHOD §2, "Repair"). :func:`refit_down` computes it.

Selection by the same objective (``obs``, ZipLM/SlimGPT-style structured Optimal Brain Surgeon):
:func:`obs_removal_order` removes neurons one at a time, each time the one whose removal raises
``F`` least, and reports that rise exactly: with ``P = H[L, L]⁻¹`` over the live columns ``L`` and
``V`` the current re-fitted map, removing ``j`` raises ``F`` by ``‖V[:, j]‖² / P[j, j]`` and updates
``V -= V[:, j] P[j, :] / P[j, j]`` and ``P -= P[:, j] P[j, :] / P[j, j]``. So the greedy stopped at
``K`` ends at ``F(K)`` (the sum of its costs), and :func:`refit_down` on ``K`` returns the weights it
ends with -- greedy and repair share the objective, ridge included; the repair is recomputed from
the moments rather than carried over, so that any kept set (another method's, a width the greedy
was not stopped at) gets the same fit. Why the ridge pulls toward ``W`` (not toward zero): it is
there to keep ``H`` invertible, not to shrink; toward zero it shrinks the columns of kept neurons
with little calibration variance (which the calibration error barely constrains) for nothing, and
the OBS update above is the fit with the pull toward ``W`` (``H`` in place of ``G``) by construction.

Exactness and speed: every removal is chosen by its exact current cost -- the order is the
one-at-a-time greedy's, whatever the block size (:func:`obs_block`) is -- but the ``(I+1)²`` updates
are batched.
Within a block, the two diagonals that set the costs (``diag P`` and ``diag Q``, ``Q = VᵀV``) get
rank-1 updates from the removed neuron's current rows of ``P`` and ``Q`` (computed from the
block-start matrices and the block's updates so far, ``O(I b)``; the block's map ``M`` is kept as
its removals' vectors and a ``b × b`` triangular factor, so a removal costs no ``O(I b)`` update of
it); at the block's end ``P`` gets one rank-``b`` product and ``Q`` two. ``V`` itself is never formed: keeping ``V`` ``(hidden, I+1)``
instead of ``Q`` would need ``Vᵀ V[:, j]``, a memory-bound ``(hidden, I)`` product, at every removal,
which measured 1.4× slower at I = 4096. The block size changes the speed, not the order (beyond
round-off ties). Removed rows and columns are masked where they are read (their entries are zero in
exact arithmetic; round-off is never read into a live one, and they are not zeroed: zeroing a
column is a strided pass over the matrix), and the matrices are compacted to the live rows, in their
own storage, once a quarter of them is dead.

Memory: the greedy holds two ``(I+1)²`` matrices, ``P`` and ``Q``: ``H``, its Cholesky factor and
``H⁻¹`` share one storage (BENCHMARKS.md §12). :func:`refit_down` derives the fit and its four
error figures from three products on the blocks of ``H`` (kept × kept, pruned × kept, pruned ×
pruned), never the full ``(hidden, I+1)`` product ``Wz H``.

Numerics: Cholesky factorisations (``H``; the kept block in :func:`refit_down`), ``H⁻¹`` by
``cholesky_inverse``. ``P`` and ``Q`` are symmetric by construction: only their lower triangles are
ever read (row ``j`` is read as ``X[j, :j]`` then ``X[j:, j]``) and only they are updated (column
panel by column panel: half the work of a full update), so the round-off of the updates cannot make
them asymmetric. A moment that is not positive definite to working precision (a failed Cholesky,
or a pivot ``L[i, i]²`` below ``size · eps · max diag``) raises :class:`~fnprune.errors.ConfigError`
naming the layer -- at ``ridge = 0`` too: nothing is added behind the user's back. ``P[k, k]`` is
at least ``1/H[k, k]`` exactly: in the costs a smaller value (round-off) is raised to that floor
(the cost is then its upper bound ``Q[k, k] · H[k, k]``); a removal whose pivot ``P[j, j]`` is below
the floor by more than a relative ``√eps`` (``dtype``'s) stops the greedy with a
:class:`~fnprune.errors.ConfigError` naming the layer (precision is lost: raise the ridge, use
float64). ``Q[k, k] = ‖V[:, k]‖²`` is clamped at 0 in the costs. The maths runs on the moments'
device (CPU or CUDA, one code path) in ``dtype``, float64 by default (moments and weights in
another dtype are converted there).

The functions here compute; :func:`fnprune.pruning.surgery.prune_model` applies them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from ..models.mlp import MLPAdapter, _is_conv1d

DEFAULT_RIDGE = 1e-4  # chosen on validation documents (BENCHMARKS.md §3b)
LOWER_PANEL = 512  # columns per product of the greedy's lower-triangle updates (speed only)


def obs_block(m: int) -> int:
    """Removals per batched update of the greedy's ``m × m`` matrices (speed only: the order is the
    one-at-a-time greedy's). Each block costs one pass over the matrices (``∝ m²``, memory-bound) and
    its removals ``∝ m · b²``, so the best ``b`` grows like ``√m``: ``2√m`` in ``[16, 256]`` was the
    fastest or within noise of it at I = 1536, 4096 and 8192 (BENCHMARKS §12). Re-sized at every block,
    as the matrices shrink."""
    return max(16, min(256, int(math.sqrt(4 * m))))
_SHRINK_AT = 0.75  # the greedy's matrices are cut to the live rows once fewer than this share is live


def down_weight_by_neuron(adapter: MLPAdapter) -> torch.Tensor:
    """``down``'s weight as ``(hidden, I)`` (a view for nn.Linear, a transpose view for Conv1D)."""
    w = adapter.down.weight
    return w.t() if _is_conv1d(adapter.down) else w


def _augmented_moment(second_moment: torch.Tensor, mean: torch.Tensor, dtype: torch.dtype = torch.float64
                      ) -> torch.Tensor:
    """``E[z zᵀ]`` of ``z = [x; 1]``: ``[[Σ, μ], [μᵀ, 1]]`` ``(I+1, I+1)`` in ``dtype`` on ``Σ``'s device."""
    n = second_moment.shape[0]
    g = torch.empty((n + 1, n + 1), dtype=dtype, device=second_moment.device)
    g[:n, :n] = second_moment
    g[:n, n] = mean
    g[n, :n] = mean
    g[n, n] = 1.0
    return g


def _dense_map_on_z(W: torch.Tensor) -> torch.Tensor:
    """``down``'s ``(hidden, I)`` map as one on ``z = [x; 1]``: ``[W 0]`` ``(hidden, I+1)`` (no bias)."""
    return torch.cat([W, W.new_zeros((W.shape[0], 1))], dim=1)


def ridge_lambda(second_moment: torch.Tensor, ridge: float) -> float:
    """``λ`` of the objective: ``ridge`` × the mean of ``diag Σ`` over all the layer's neurons."""
    if not (math.isfinite(ridge) and ridge >= 0):
        raise ConfigError(f"ridge must be a finite number ≥ 0, got {ridge!r}")
    n = second_moment.shape[0]
    return float(ridge) * float(torch.diagonal(second_moment).double().mean()) if n and ridge else 0.0


def _where(layer: int | None) -> str:
    return "" if layer is None else f"layer {layer}: "


def _cholesky(M: torch.Tensor, layer: int | None, what: str, *, overwrite: bool = False) -> torch.Tensor:
    """Lower Cholesky factor of the symmetric ``M``; :class:`ConfigError` naming ``layer`` when ``M``
    is not positive definite to working precision (a failed factorisation, or a pivot ``L[i, i]²``
    below ``size · eps · max diag M``). ``overwrite``: the factor replaces ``M`` in its storage (one
    ``(I+1)²`` matrix fewer alive afterwards; ``M`` is then garbage)."""
    if not math.isfinite(float(M.sum())) and not bool(torch.isfinite(M).all()):  # a finite sum: all finite
        raise ConfigError(f"{_where(layer)}{what} has non-finite entries (NaN or inf activations in calibration?)")
    scale = float(torch.diagonal(M).abs().max()) if M.numel() else 0.0
    tiny = M.shape[0] * torch.finfo(M.dtype).eps * scale
    if overwrite:
        L, info = torch.linalg.cholesky_ex(M, out=(M, torch.empty((), dtype=torch.int32, device=M.device)))
    else:
        L, info = torch.linalg.cholesky_ex(M)
    if int(info) != 0 or not float(torch.diagonal(L).min()) ** 2 > tiny:
        raise ConfigError(f"{_where(layer)}{what} is singular to working precision ({M.dtype}): the calibration "
                          "moments do not determine the fit; use a ridge > 0 (or a larger one) or more calibration "
                          "tokens")
    return L


@dataclass
class LayerFit:
    """A re-fitted layer: new kept columns, bias delta, the objective and the calibration output errors.

    ``weight``: ``(hidden, |K|)`` new ``down`` columns of the kept neurons; ``bias``: ``(hidden,)``
    to add to ``down``'s bias (both in the fit's dtype, float64 by default, on the moments' device).
    ``objective``: ``F(K)`` of the module docstring at this fit (moments' units), what
    :func:`obs_removal_order`'s costs add up to. Errors are ``E||y_dense - y||² / E||y_dense||²`` on
    the calibration tokens (from the moments, no ridge term): ``error_pruned`` (kept columns, no
    bias), ``error_bias`` (FLAP's mean bias), ``error_repaired`` (this fit).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    objective: float
    error_pruned: float
    error_bias: float
    error_repaired: float


@torch.no_grad()
def refit_down(adapter: MLPAdapter, keep_idx: torch.Tensor, second_moment: torch.Tensor, mean: torch.Tensor,
               ridge: float = DEFAULT_RIDGE, *, layer: int | None = None, dtype: torch.dtype = torch.float64
               ) -> LayerFit:
    """The ``down`` columns and bias minimising ``F(keep_idx)`` (module docstring) for a dense layer.

    ``second_moment`` ``(I, I)`` and ``mean`` ``(I,)``: ``down``'s input moments; the maths runs on
    their device in ``dtype``. ``layer`` (default ``adapter.layer`` where it has one) names the layer
    in errors: a kept block that is singular at this ridge raises :class:`ConfigError`.
    """
    layer = getattr(adapter, "layer", None) if layer is None else layer
    device = second_moment.device
    W = down_weight_by_neuron(adapter).detach().to(device=device, dtype=dtype)    # (hidden, I)
    n = W.shape[1]
    lam = ridge_lambda(second_moment, ridge)
    mu = mean.to(device=device, dtype=dtype)
    K = keep_idx.to(device=device, dtype=torch.long)
    n_k = K.numel()
    pruned = torch.ones(n, dtype=torch.bool, device=device)
    pruned[K] = False
    Pz = torch.nonzero(pruned).squeeze(1)
    # Every figure below is a trace tr(A H Aᵀ) of a map A = Wz - Â with Â on the kept columns K+ only
    # (H = G + λD, the ridged augmented moment of the module docstring):
    #   tr(Wz H Wzᵀ) - 2 tr(Â_K+ Cᵀ) + tr(Â_K+ H[K+, K+] Â_K+ᵀ),  C = (Wz H)[:, K+] = T + X,
    # T = [W_K 0] H[K+, K+] and X = W_P H[P, K+] (P: the pruned neurons), and
    #   tr(Wz H Wzᵀ) = tr(T[:, K] W_Kᵀ) + 2 tr(X[:, K] W_Kᵀ) + tr(W_P H[P, P] W_Pᵀ),
    # so three products on the blocks of H (never H itself, never the full (hidden, I) product Wz H) give the
    # fit's right-hand side C and all four figures; the fit's own quadratic term is tr(sol Cᵀ) by its normal
    # equations (sol H[K+, K+] = C).
    W_K, W_P = W.index_select(1, K), W.index_select(1, Pz)
    rows_K = second_moment.index_select(0, K)                                      # Σ[K, :] (moments' dtype)
    M = _augmented_moment(rows_K.index_select(1, K), mu[K], dtype)
    M.diagonal()[:n_k] += lam                                                      # H[K+, K+]: (|K|+1, |K|+1)
    H_PK = torch.cat([rows_K.index_select(1, Pz).T.to(dtype), mu[Pz][:, None]], dim=1)   # H[P, K+] (Σ symmetric)
    del rows_K
    X = W_P @ H_PK                                                                 # (hidden, |K|+1)
    del H_PK
    T = W_K @ M[:n_k]                                                              # [W_K 0] H[K+, K+]
    C = T + X                                                                      # (Wz H)[:, K+]
    H_PP = second_moment.index_select(0, Pz).index_select(1, Pz).to(dtype)
    H_PP.diagonal().add_(lam)
    pruned_quad = float(((W_P @ H_PP) * W_P).sum())                                # tr(W_P H[P, P] W_Pᵀ)
    del H_PP
    L = _cholesky(M, layer, "the kept neurons' (ridged) second moment")
    sol = torch.cholesky_solve(C.T, L).T
    del L, M
    new_w, bias = sol[:, :n_k], sol[:, n_k]
    dense_kept = float((T[:, :n_k] * W_K).sum())                                   # tr([W_K 0] H [W_K 0]ᵀ)
    total = dense_kept + 2 * float((X[:, :n_k] * W_K).sum()) + pruned_quad         # tr(Wz H Wzᵀ)
    cross_kept = float((C[:, :n_k] * W_K).sum())                                   # tr([W_K 0] Cᵀ)
    pruned_sq = float(W_P.pow(2).sum())                                            # ||W[:, pruned]||²

    def squared_error(cols: torch.Tensor, b: torch.Tensor, quad: float, cross: float) -> float:
        """E||(Wz - [Ŵ b]) z||² = tr(A H Aᵀ) - λ||W - Ŵ||² (no ridge term) for Ŵ = ``cols`` on K."""
        h = total - 2 * (cross + float(b @ C[:, n_k])) + quad
        ridge_term = lam * (pruned_sq + float((W_K - cols).pow(2).sum()))
        return max(h - ridge_term, 0.0)  # a difference of traces: round-off may leave a tiny negative

    def kept_columns_with(b: torch.Tensor) -> tuple[float, float]:  # Â = [W_K b]: its quad and cross terms
        return (dense_kept + 2 * float(b @ T[:, n_k]) + float(b @ b), cross_kept)  # H[bias, bias] = 1

    ref = max(total - lam * float(W.pow(2).sum()), 1e-300)                         # E||Wz z||²
    flap_bias = W_P @ mu[Pz]
    zero = W.new_zeros(W.shape[0])
    fit_quad = float((sol * C).sum())
    fitted_error = squared_error(new_w, bias, fit_quad, fit_quad - float(bias @ C[:, n_k]))
    return LayerFit(weight=new_w, bias=bias,
                    objective=fitted_error + lam * (float((W_K - new_w).pow(2).sum()) + pruned_sq),
                    error_pruned=squared_error(W_K, zero, *kept_columns_with(zero)) / ref,
                    error_bias=squared_error(W_K, flap_bias, *kept_columns_with(flap_bias)) / ref,
                    error_repaired=fitted_error / ref)


@torch.no_grad()
def obs_removal_order(weight: torch.Tensor, second_moment: torch.Tensor, mean: torch.Tensor,
                      forced: np.ndarray | None = None, ridge: float = DEFAULT_RIDGE, block: int | None = None,
                      min_width: int = 1, *, layer: int | None = None, dtype: torch.dtype = torch.float64
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Greedy structured-OBS removal order of one layer's neurons and the exact cost of each removal.

    ``weight``: ``down``'s ``(hidden, I)`` weight; ``second_moment`` ``(I, I)`` / ``mean`` ``(I,)``:
    its input's calibration moments (any token weighting, as long as both use the same); the maths
    runs on their device in ``dtype``. ``forced``: bool ``(I,)`` of neurons never removed. Removes
    until ``max(min_width, forced.sum())`` neurons are left, each time the neuron whose removal
    raises ``F`` (module docstring) least. ``block``: removals per batched update (speed only).
    ``layer`` names the layer in errors.

    Returns ``(order, cost)``: neuron indices in removal order and, for each, the exact rise of ``F``
    (moments' units) its removal caused, so ``cost[:k].sum()`` is ``F`` of the neurons left after
    ``k`` removals (what :func:`refit_down` on them reaches).
    """
    if block is not None and int(block) < 1:
        raise ConfigError(f"block must be ≥ 1, got {block}")
    device = second_moment.device
    W = weight.detach().to(device=device, dtype=dtype)                 # (hidden, I)
    n = W.shape[1]
    forced_z = torch.zeros(n + 1, dtype=torch.bool, device=device)
    if forced is not None:
        forced_z[:n] = torch.as_tensor(np.asarray(forced, dtype=bool), device=device)
    forced_z[n] = True                                                  # the bias column is never removed
    n_remove = n - max(int(min_width), int(forced_z[:n].sum()))
    if n_remove <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    H = _augmented_moment(second_moment, mean.to(device), dtype)
    H.diagonal()[:n] += ridge_lambda(second_moment, ridge)
    floor = 1.0 / torch.diagonal(H)                                     # P[k, k] ≥ 1 / H[k, k], exactly
    # H, then its Cholesky factor, then H⁻¹, all in H's storage: one (I+1)² matrix until Q is formed
    L = _cholesky(H, layer, "the (ridged) second moment of down's input", overwrite=True)
    P = torch.cholesky_inverse(L, out=L)                                # H⁻¹ (its lower triangle is read)
    del H, L
    Wz = _dense_map_on_z(W)
    Q = addmm_lower_(Wz.new_zeros((n + 1, n + 1)), Wz.T, Wz)            # VᵀV of the current re-fitted map V
    greedy = _Greedy(P, Q, floor, forced_z, n_remove, layer)
    while greedy.n_removed < n_remove:
        size = int(block) if block is not None else obs_block(greedy.P.shape[0])
        greedy.remove_block(min(size, n_remove - greedy.n_removed))
    return greedy.order.cpu().numpy(), greedy.cost.double().cpu().numpy()


class _Greedy:
    """State of :func:`obs_removal_order` over the live columns (rows of ``P``, ``Q`` are indexed by
    position; ``index`` maps them to the columns of ``z``). See the module docstring for the maths."""

    def __init__(self, P: torch.Tensor, Q: torch.Tensor, floor: torch.Tensor, forced: torch.Tensor,
                 n_remove: int, layer: int | None):
        self.P, self.Q, self.floor, self.layer = P, Q, floor, layer
        self.index = torch.arange(P.shape[0], device=P.device)
        self.dead = torch.zeros(P.shape[0], dtype=torch.bool, device=P.device)  # removed: rows read as 0
        self.fixed = forced.clone()                                     # never removed (or already removed)
        self.d = torch.diagonal(P).clone()                             # diag P (current)
        self.q = torch.diagonal(Q).clone()                             # ‖V[:, k]‖² (current)
        self.tol = math.sqrt(torch.finfo(P.dtype).eps)
        self.order = torch.empty(n_remove, dtype=torch.long, device=P.device)
        self.cost = torch.empty(n_remove, dtype=P.dtype, device=P.device)
        self.n_removed = 0

    def remove_block(self, b: int) -> None:
        """Remove ``b`` neurons one at a time by exact cost, then update ``P`` and ``Q`` once."""
        P0, Q0, d, q, floor, dead = self.P, self.Q, self.d, self.q, self.floor, self.dead  # dead: before B
        m = P0.shape[0]
        U = P0.new_zeros((b, m))        # P = P0 - Uᵀ U: the block's rank-1 downdates of P
        C = P0.new_zeros((b, m))        # the removals' c = p / p_jj; V = V0 M, M = I - E_B R, R = T C:
        T = P0.new_zeros((b, b))        # unit upper triangular (R's rows are updated in T, O(b) per removal)
        QB = P0.new_zeros((b, m))       # Q0[B, :]
        pivot = P0.new_zeros(b)         # P[j, j] of each removal, before the floor
        B = torch.empty(b, dtype=torch.long, device=P0.device)
        done = self.n_removed
        for r in range(b):
            cost = q.clamp_min(0).div_(torch.maximum(d, floor)).masked_fill_(self.fixed, float("inf"))
            j = int(torch.argmin(cost))
            self.order[done + r] = self.index[j]
            self.cost[done + r] = cost[j]
            Qj = _row(Q0, j).masked_fill_(dead, 0)
            p = torch.addmv(_row(P0, j).masked_fill_(dead, 0), U[:r].T, U[:r, j], alpha=-1)  # row j of P: (m,)
            pivot[r] = p[j]
            pjj = torch.maximum(p[j], floor[j])
            Rj = T[:r, :r] @ C[:r, j]                                       # R[:r, j]
            w = torch.addmv(Qj, QB[:r].T, Rj, alpha=-1)                     # Q0 M e_j
            g = torch.addmv(w, C[:r].T, T[:r, :r].T @ w[B[:r]], alpha=-1)  # Mᵀ Q0 M e_j = Vᵀ V[:, j]: (m,)
            c = torch.div(p, pjj, out=C[r])
            d.addcmul_(p, c, value=-1)                                      # diag of P - p pᵀ / p_jj
            q.addcmul_(c, c * g[j]).addcmul_(c, g, value=-2)                # ‖V[:, k] - c_k V[:, j]‖²
            T[:r, r] = -Rj                                                  # R[:r] -= R[:r, j] cᵀ; R[r] = c
            T[r, r] = 1
            torch.mul(p, pjj.rsqrt(), out=U[r])
            QB[r] = Qj
            B[r] = j
            self.fixed[j] = True
        if bool((pivot < floor[B] * (1 - self.tol)).any()):
            raise ConfigError(f"{_where(self.layer)}the inverse second moment lost its precision during the OBS "
                              f"greedy (a diagonal below its exact floor by more than {self.tol:.1e}): use a larger "
                              "ridge or float64")
        self.n_removed += b
        dead[B] = True
        R = T @ C
        A = QB - QB[:, B] @ R                                              # Q0[B, :] - Q0[B, B] R: (b, m)
        addmm_lower_(P0, U.T, U, alpha=-1)                                 # P0 - Uᵀ U
        # Mᵀ Q0 M = Q0 - QBᵀ R - Rᵀ A, as one rank-2b product: one pass over Q0 (the update is memory-bound)
        addmm_lower_(Q0, torch.cat([QB, R], dim=0).T, torch.cat([R, A], dim=0), alpha=-1)
        self.d, self.q = torch.diagonal(P0).clone(), torch.diagonal(Q0).clone()
        if int(dead.sum()) >= (1 - _SHRINK_AT) * m:
            self._shrink()

    def _shrink(self) -> None:
        keep = torch.nonzero(~self.dead).squeeze(1)
        self.P, self.Q = _compact(self.P, keep), _compact(self.Q, keep)
        self.d, self.q, self.floor = self.d[keep], self.q[keep], self.floor[keep]
        self.index, self.fixed, self.dead = self.index[keep], self.fixed[keep], self.dead[keep]


def addmm_lower_(X: torch.Tensor, left: torch.Tensor, right: torch.Tensor, *, alpha: float = 1.0,
                 panel: int | None = None) -> torch.Tensor:
    """``X += alpha · left @ right`` on the lower triangle of ``X`` (and the rest of its diagonal blocks),
    one column panel of ``panel`` (default :data:`LOWER_PANEL`) columns at a time, for a product known to be
    symmetric: about half the flops and half the memory traffic of the full product. The upper triangle
    is left as it was (stale); :func:`symmetrize_lower_` completes it where a reader needs it. A product in
    another dtype or on another device than ``X``'s is formed in the operands' and converted panel by panel
    (float32 products summed in float64 on the CPU, as the calibration statistics are). Returns ``X``."""
    m, panel = X.shape[0], panel or LOWER_PANEL
    for c0 in range(0, m, panel):
        c1 = min(c0 + panel, m)
        if left.dtype == X.dtype and left.device == X.device:
            X[c0:, c0:c1].addmm_(left[c0:], right[:, c0:c1], alpha=alpha)
        else:
            X[c0:, c0:c1].add_((left[c0:] @ right[:, c0:c1]).to(device=X.device, dtype=X.dtype), alpha=alpha)
    return X


def symmetrize_lower_(X: torch.Tensor, panel: int = 512) -> torch.Tensor:
    """Copy the strict lower triangle of the square ``X`` onto its upper one, in place; returns ``X``."""
    m = X.shape[0]
    for c0 in range(0, m, panel):
        c1 = min(c0 + panel, m)
        X[c0:c1, c1:] = X[c1:, c0:c1].T
        block = X[c0:c1, c0:c1]
        block.copy_(block.tril() + block.tril(-1).T)
    return X


def _compact(X: torch.Tensor, keep: torch.Tensor, rows: int = 256) -> torch.Tensor:
    """``X[keep][:, keep]`` (``keep`` ascending) written into the front of ``X``'s own storage, a block of
    ``rows`` rows at a time: no second matrix is allocated. Safe because new row ``r`` lands at flat
    offset ``r·k``, never past old row ``keep[r'] ≥ r'`` for any row ``r' > r`` not yet read."""
    m, k = X.shape[0], keep.numel()
    flat = X.view(-1)
    for r0 in range(0, k, rows):
        block = X.index_select(0, keep[r0:r0 + rows]).index_select(1, keep)      # (≤ rows, k), read first
        flat[r0 * k:r0 * k + block.numel()] = block.reshape(-1)
    return flat[:k * k].view(k, k) if m else X


def _row(X: torch.Tensor, j: int) -> torch.Tensor:
    """Row ``j`` of the symmetric matrix whose lower triangle ``X`` holds: ``(X[j, :j], X[j:, j])``."""
    return torch.cat([X[j, :j], X[j:, j]])
