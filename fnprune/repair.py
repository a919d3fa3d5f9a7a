"""Repair of a pruned MLP layer: re-fit ``down`` on the kept neurons by least squares.

After a layer's kept neurons ``K`` are chosen, its output ``y = W x (+ b0)`` (``W``: ``down``'s
weight ``(hidden, I)``, ``x``: ``down``'s input over calibration tokens) is re-fitted from the kept
inputs alone::

    min over W', b   E_t || W x_t - W' x_t[K] - b ||²  +  λ ||W'||²_F

which has the closed form ``[W' b] = W [Σ[:, K]  μ] · [[Σ[K, K] + λ I, μ[K]], [μ[K]ᵀ, 1]]⁻¹`` from the
calibration second moment ``Σ = E[x xᵀ]`` and mean ``μ = E[x]`` (float64; ``λ`` = ``ridge`` × the
mean of ``diag Σ[K, K]``; the bias is not penalised). FLAP's bias compensation is the special case
that keeps ``W' = W[:, K]`` and sets ``b = W[:, pruned] μ[pruned]``; this is the full layer-wise
reconstruction of SlimGPT/ZipLM-style pruners (METHOD §2, "Repair").

Selection by the same objective (``obs``, ZipLM/SlimGPT-style structured Optimal Brain Surgeon):
:func:`obs_removal_order` removes neurons greedily, each time the one whose removal -- with the
other columns and the bias re-fitted as above -- raises that error least: with ``H⁻¹`` the inverse
of the (ridged, augmented) second moment and ``W`` the current re-fitted map, removing ``j`` costs
``‖W[:, j]‖² / H⁻¹[j, j]`` and updates ``W -= W[:, j] H⁻¹[j, :] / H⁻¹[j, j]`` (and ``H⁻¹`` likewise).
Neurons are removed ``block`` at a time (the lowest costs, one joint update), which changes the
order little and makes it ~10x faster on a CPU.

The functions here compute; :func:`fnprune.prune.prune_model` applies them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .mlp import MLPAdapter, _is_conv1d

DEFAULT_RIDGE = 1e-4  # chosen on validation documents (BENCHMARKS.md §3b)
OBS_BLOCK = 16


def down_weight_by_neuron(adapter: MLPAdapter) -> torch.Tensor:
    """``down``'s weight as ``(hidden, I)`` (a view for nn.Linear, a transpose view for Conv1D)."""
    w = adapter.down.weight
    return w.t() if _is_conv1d(adapter.down) else w


def _augmented_moment(second_moment: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """``E[z zᵀ]`` of ``z = [x; 1]``: ``[[Σ, μ], [μᵀ, 1]]`` ``(I+1, I+1)``."""
    n = second_moment.shape[0]
    g = torch.empty((n + 1, n + 1), dtype=torch.float64)
    g[:n, :n] = second_moment
    g[:n, n] = mean
    g[n, :n] = mean
    g[n, n] = 1.0
    return g


def _dense_map_on_z(W: torch.Tensor) -> torch.Tensor:
    """``down``'s ``(hidden, I)`` map as one on ``z = [x; 1]``: ``[W 0]`` ``(hidden, I+1)`` (no bias)."""
    return torch.cat([W, torch.zeros((W.shape[0], 1), dtype=W.dtype)], dim=1)


@dataclass
class LayerFit:
    """A re-fitted layer: new kept columns, bias delta and the calibration output errors.

    ``weight``: ``(hidden, |K|)`` float64 new ``down`` columns of the kept neurons; ``bias``:
    ``(hidden,)`` float64 to add to ``down``'s bias. Errors are ``E||y_dense - y||² / E||y_dense||²``
    on the calibration tokens (from the moments): ``error_pruned`` (kept columns, no bias),
    ``error_bias`` (FLAP's mean bias), ``error_repaired`` (this fit).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    error_pruned: float
    error_bias: float
    error_repaired: float


@torch.no_grad()
def refit_down(adapter: MLPAdapter, keep_idx: torch.Tensor, second_moment: torch.Tensor, mean: torch.Tensor,
               ridge: float = DEFAULT_RIDGE) -> LayerFit:
    """Least-squares ``down`` columns and bias for the kept neurons ``keep_idx`` of a dense layer."""
    W = down_weight_by_neuron(adapter).detach().double().cpu()         # (hidden, I)
    S = second_moment.double().cpu()                                    # (I, I)
    mu = mean.double().cpu()                                            # (I,)
    K = keep_idx.long().cpu()
    n_k = K.numel()
    G = _augmented_moment(S, mu)                                        # (I+1, I+1)
    Kz = torch.cat([K, torch.tensor([S.shape[0]])])                     # kept columns of z = [x; 1]
    M = G[Kz][:, Kz].clone()                                            # (|K|+1, |K|+1)
    diag = torch.diagonal(M)[:n_k]
    lam = float(ridge) * float(diag.mean()) if n_k else 0.0
    M[range(n_k), range(n_k)] += lam
    Wz = _dense_map_on_z(W)                                             # dense map on z
    C = Wz @ G[:, Kz]                                                   # (hidden, |K|+1)
    # M is symmetric positive definite (ridge); solve M Xᵀ = Cᵀ
    L, info = torch.linalg.cholesky_ex(M)
    sol = torch.cholesky_solve(C.T.contiguous(), L).T if int(info) == 0 else torch.linalg.lstsq(M, C.T).solution.T
    new_w, bias = sol[:, :n_k], sol[:, n_k]

    ref = float(torch.einsum("hi,ij,hj->", Wz, G, Wz))

    def error(cols: torch.Tensor, b: torch.Tensor) -> float:
        A = Wz.clone()
        A[:, K] -= cols
        A[:, -1] -= b
        return float(torch.einsum("hi,ij,hj->", A, G, A)) / max(ref, 1e-300)

    pruned = torch.ones(S.shape[0], dtype=torch.bool)
    pruned[K] = False
    flap_bias = W[:, pruned] @ mu[pruned]
    zero = torch.zeros(W.shape[0], dtype=torch.float64)
    return LayerFit(weight=new_w, bias=bias, error_pruned=error(W[:, K], zero),
                    error_bias=error(W[:, K], flap_bias), error_repaired=error(new_w, bias))


@torch.no_grad()
def obs_removal_order(weight: torch.Tensor, second_moment: torch.Tensor, mean: torch.Tensor,
                      forced: np.ndarray | None = None, ridge: float = DEFAULT_RIDGE, block: int = OBS_BLOCK,
                      min_width: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Greedy structured-OBS removal order of one layer's neurons and the cost of each removal.

    ``weight``: ``down``'s ``(hidden, I)`` weight; ``second_moment``/``mean``: its input's calibration
    moments (any token weighting, as long as both use the same). ``forced``: bool ``(I,)`` of neurons
    never removed. Removes until ``max(min_width, forced.sum())`` neurons are left.

    Returns ``(order, cost)``: neuron indices in removal order and, for each, the rise of
    ``E||y_dense - y||²`` (in the moments' units) its removal was estimated to cost when it was
    removed (the costs of a block are their individual costs before the block's joint update).
    """
    W = weight.detach().double().cpu()
    S = second_moment.double().cpu()
    n = S.shape[0]
    G = _augmented_moment(S, mean.double().cpu())
    lam = float(ridge) * float(torch.diagonal(S).mean()) if n else 0.0
    lam = lam if lam > 0 else 1e-12 * max(float(torch.diagonal(S).max()), 1.0)  # keep H invertible
    G[range(n), range(n)] += lam
    Hinv = torch.linalg.inv(G)
    Wz = _dense_map_on_z(W)
    forced_z = torch.zeros(n + 1, dtype=torch.bool)
    if forced is not None:
        forced_z[:n] = torch.as_tensor(np.asarray(forced, dtype=bool))
    forced_z[n] = True                      # the bias column is never removed
    idx = torch.arange(n + 1)               # original index of each row still in H⁻¹
    n_remove = n - max(int(min_width), int(forced_z[:n].sum()))
    order: list[int] = []
    costs: list[float] = []
    while len(order) < n_remove:
        cost = (Wz ** 2).sum(0) / torch.diagonal(Hinv).clamp_min(1e-300)
        cost[forced_z[idx]] = float("inf")
        b = min(int(block), n_remove - len(order))
        cb, B = torch.topk(cost, b, largest=False)
        order += idx[B].tolist()
        costs += cb.tolist()
        X = torch.linalg.solve(Hinv[B][:, B], Hinv[B])                    # (b, live)
        Wz -= Wz[:, B] @ X
        Hinv -= Hinv[:, B] @ X
        live = torch.ones(idx.numel(), dtype=torch.bool)
        live[B] = False
        Hinv, Wz, idx = Hinv[live][:, live].contiguous(), Wz[:, live].contiguous(), idx[live]
    return np.asarray(order, dtype=np.int64), np.asarray(costs, dtype=np.float64)
