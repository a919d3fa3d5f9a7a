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
one-at-a-time greedy's, whatever :data:`OBS_BLOCK` is -- but the ``(I+1)²`` updates are batched.
Within a block, the two diagonals that set the costs (``diag P`` and ``diag Q``, ``Q = VᵀV``) get
rank-1 updates from the removed neuron's current rows of ``P`` and ``Q`` (computed from the
block-start matrices and the block's updates so far, ``O(I b)``); at the block's end ``P`` gets one
rank-``b`` product and ``Q`` two. ``V`` itself is never formed: keeping ``V`` ``(hidden, I+1)``
instead of ``Q`` would need ``Vᵀ V[:, j]``, a memory-bound ``(hidden, I)`` product, at every removal,
which measured 1.4× slower at I = 4096. The block size changes the speed, not the order (beyond
round-off ties). Removed rows and columns are zeroed and masked, and the matrices are compacted to
the live rows, in their own storage, once a quarter of them is dead.

Memory: the greedy holds two ``(I+1)²`` matrices, ``P`` and ``Q``: ``H``, its Cholesky factor and
``H⁻¹`` share one storage (BENCHMARKS.md §12). :func:`refit_down` derives the fit and its four
error figures from one ``(hidden, I+1)`` product ``Wz H`` and the kept block ``H[K+, K+]``.

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
OBS_BLOCK = 32  # removals per batched update of H⁻¹ (speed only: the order is the one-at-a-time greedy's;
#               32 was the fastest or within 1% of it at I = 1536 and 4096, BENCHMARKS §12)
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


def _times_moment(W: torch.Tensor, second_moment: torch.Tensor, dtype: torch.dtype, cols: int = 1024
                  ) -> torch.Tensor:
    """``W Σ`` ``(hidden, I)`` in ``dtype``, ``Σ`` converted ``cols`` columns at a time (no ``dtype`` copy of it)."""
    n = second_moment.shape[1]
    return torch.cat([W @ second_moment[:, c:c + cols].to(dtype) for c in range(0, n, cols)], dim=1) if n \
        else W.new_zeros((W.shape[0], 0))


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
    if not bool(torch.isfinite(M).all()):
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
    #   tr(Wz H Wzᵀ) - 2 tr(Â_K+ Cᵀ) + tr(Â_K+ H[K+, K+] Â_K+ᵀ),  C = (Wz H)[:, K+],
    # so one (hidden, I+1) product S = Wz H serves the fit (C is its right-hand side) and all four
    # figures; [W_K 0] H[K+, K+] = C - W[:, pruned] H[pruned, K+] (the pruned share only), and the
    # fit's own quadratic term is tr(sol Cᵀ) by its normal equations (sol H[K+, K+] = C). H itself is
    # never formed: only its kept block M, and S from column blocks of the moment.
    S = torch.cat([_times_moment(W, second_moment, dtype) + lam * W, (W @ mu)[:, None]], dim=1)
    Kz = torch.cat([K, torch.tensor([n], device=device)])                          # kept columns of z = [x; 1]
    C = S.index_select(1, Kz)                                                      # (hidden, |K|+1)
    M = _augmented_moment(second_moment.index_select(0, K).index_select(1, K), mu[K], dtype)
    M.diagonal()[:n_k] += lam                                                      # H[K+, K+]: (|K|+1, |K|+1)
    H_PK = torch.cat([second_moment.index_select(0, Pz).index_select(1, K).to(dtype), mu[Pz][:, None]], dim=1)
    T = C - W.index_select(1, Pz) @ H_PK                                           # [W_K 0] H[K+, K+]
    del H_PK
    L = _cholesky(M, layer, "the kept neurons' (ridged) second moment", overwrite=True)
    sol = torch.cholesky_solve(C.T, L).T
    del L, M
    new_w, bias = sol[:, :n_k], sol[:, n_k]
    W_K = W.index_select(1, K)
    total = float((S[:, :n] * W).sum())                                            # tr(Wz H Wzᵀ)
    dense_kept = float((T[:, :n_k] * W_K).sum())                                   # tr([W_K 0] H [W_K 0]ᵀ)
    cross_kept = float((C[:, :n_k] * W_K).sum())                                   # tr([W_K 0] Cᵀ)
    pruned_sq = float(W.index_select(1, Pz).pow(2).sum())                          # ||W[:, pruned]||²

    def squared_error(cols: torch.Tensor, b: torch.Tensor, quad: float, cross: float) -> float:
        """E||(Wz - [Ŵ b]) z||² = tr(A H Aᵀ) - λ||W - Ŵ||² (no ridge term) for Ŵ = ``cols`` on K."""
        h = total - 2 * (cross + float(b @ C[:, n_k])) + quad
        ridge_term = lam * (pruned_sq + float((W_K - cols).pow(2).sum()))
        return max(h - ridge_term, 0.0)  # a difference of traces: round-off may leave a tiny negative

    def kept_columns_with(b: torch.Tensor) -> tuple[float, float]:  # Â = [W_K b]: its quad and cross terms
        return (dense_kept + 2 * float(b @ T[:, n_k]) + float(b @ b), cross_kept)  # H[bias, bias] = 1

    ref = max(total - lam * float(W.pow(2).sum()), 1e-300)                         # E||Wz z||²
    flap_bias = W.index_select(1, Pz) @ mu[Pz]
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
                      forced: np.ndarray | None = None, ridge: float = DEFAULT_RIDGE, block: int = OBS_BLOCK,
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
    if int(block) < 1:
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
    Q = Wz.T @ Wz                                                       # VᵀV of the current re-fitted map V
    greedy = _Greedy(P, Q, floor, forced_z, n_remove, layer)
    while greedy.n_removed < n_remove:
        greedy.remove_block(min(int(block), n_remove - greedy.n_removed))
    return greedy.order.cpu().numpy(), greedy.cost.double().cpu().numpy()


class _Greedy:
    """State of :func:`obs_removal_order` over the live columns (rows of ``P``, ``Q`` are indexed by
    position; ``index`` maps them to the columns of ``z``). See the module docstring for the maths."""

    def __init__(self, P: torch.Tensor, Q: torch.Tensor, floor: torch.Tensor, forced: torch.Tensor,
                 n_remove: int, layer: int | None):
        self.P, self.Q, self.floor, self.layer = P, Q, floor, layer
        self.index = torch.arange(P.shape[0], device=P.device)
        self.live = torch.ones(P.shape[0], dtype=torch.bool, device=P.device)
        self.fixed = forced.clone()                                     # never removed (or already removed)
        self.d = torch.diagonal(P).clone()                             # diag P (current)
        self.q = torch.diagonal(Q).clone()                             # ‖V[:, k]‖² (current)
        self.tol = math.sqrt(torch.finfo(P.dtype).eps)
        self.order = torch.empty(n_remove, dtype=torch.long, device=P.device)
        self.cost = torch.empty(n_remove, dtype=P.dtype, device=P.device)
        self.n_removed = 0

    def remove_block(self, b: int) -> None:
        """Remove ``b`` neurons one at a time by exact cost, then update ``P`` and ``Q`` once."""
        P0, Q0, d, q, floor = self.P, self.Q, self.d, self.q, self.floor
        m = P0.shape[0]
        U = P0.new_zeros((m, b))        # P = P0 - U Uᵀ: the block's rank-1 downdates of P
        R = P0.new_zeros((b, m))        # V = V0 M, M = I - E_B R: the block's updates of V
        QB = P0.new_zeros((m, b))       # Q0[:, B]
        pivot = P0.new_zeros(b)         # P[j, j] of each removal, before the floor
        B = torch.empty(b, dtype=torch.long, device=P0.device)
        done = self.n_removed
        for r in range(b):
            cost = q.clamp_min(0).div_(torch.maximum(d, floor)).masked_fill_(self.fixed, float("inf"))
            j = int(torch.argmin(cost))
            self.order[done + r] = self.index[j]
            self.cost[done + r] = cost[j]
            Qj = _row(Q0, j)
            p = torch.addmv(_row(P0, j), U[:, :r], U[j, :r], alpha=-1)      # row j of P: (m,)
            pivot[r] = p[j]
            pjj = torch.maximum(p[j], floor[j])
            w = torch.addmv(Qj, QB[:, :r], R[:r, j], alpha=-1)              # Q0 M e_j
            g = torch.addmv(w, R[:r].T, w[B[:r]], alpha=-1)                 # Mᵀ Q0 M e_j = Vᵀ V[:, j]: (m,)
            c = p / pjj
            d.addcmul_(p, c, value=-1)                                      # diag of P - p pᵀ / p_jj
            q.addcmul_(c, c * g[j]).addcmul_(c, g, value=-2)                # ‖V[:, k] - c_k V[:, j]‖²
            R[:r].addr_(R[:r, j].clone(), c, alpha=-1)
            R[r] = c
            torch.mul(p, pjj.rsqrt(), out=U[:, r])
            QB[:, r] = Qj
            B[r] = j
            self.fixed[j] = True
            self.live[j] = False
        if bool((pivot < floor[B] * (1 - self.tol)).any()):
            raise ConfigError(f"{_where(self.layer)}the inverse second moment lost its precision during the OBS "
                              f"greedy (a diagonal below its exact floor by more than {self.tol:.1e}): use a larger "
                              "ridge or float64")
        self.n_removed += b
        A = QB.T - QB[B] @ R                                               # Q0[B, :] - Q0[B, B] R: (b, m)
        _sub_lower_(P0, U, U.T)                                            # P0 - U Uᵀ
        # Mᵀ Q0 M = Q0 - QB R - Rᵀ A, as one rank-2b product: one pass over Q0 (the update is memory-bound)
        _sub_lower_(Q0, torch.cat([QB, R.T], dim=1), torch.cat([R, A], dim=0))
        for X in (P0, Q0):
            X.index_fill_(0, B, 0).index_fill_(1, B, 0)
        self.d, self.q = torch.diagonal(P0).clone(), torch.diagonal(Q0).clone()
        if int(self.live.sum()) <= _SHRINK_AT * m:
            self._shrink()

    def _shrink(self) -> None:
        keep = torch.nonzero(self.live).squeeze(1)
        self.P, self.Q = _compact(self.P, keep), _compact(self.Q, keep)
        self.d, self.q, self.floor = self.d[keep], self.q[keep], self.floor[keep]
        self.index, self.fixed, self.live = self.index[keep], self.fixed[keep], self.live[keep]


def _sub_lower_(X: torch.Tensor, left: torch.Tensor, right: torch.Tensor, panel: int | None = None) -> None:
    """``X -= left @ right`` where it is read: the lower triangle (and the rest of the diagonal blocks), one
    column panel at a time. The product is symmetric, so the upper triangle, which nothing reads, is left
    stale: about half the flops and half the memory traffic of the full update."""
    m, panel = X.shape[0], panel or LOWER_PANEL
    for c0 in range(0, m, panel):
        c1 = min(c0 + panel, m)
        X[c0:, c0:c1].addmm_(left[c0:], right[:, c0:c1], alpha=-1)


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
