"""The probes' greedy structured-OBS curve (before it moved into fnprune.pruning.repair.obs_removal_order)."""

import numpy as np
import torch

from fnprune.pruning.repair import _augmented_moment

RIDGE = 1e-3


def obs_curve(W, S, mu, max_remove, block, ridge=RIDGE):
    n = S.shape[0]
    G = _augmented_moment(S, mu)
    lam = ridge * float(torch.diagonal(S).mean())
    H = G.clone()
    H[range(n), range(n)] += lam
    Hinv = torch.linalg.inv(H)
    Wz = torch.cat([W, torch.zeros((W.shape[0], 1), dtype=torch.float64)], 1)
    ref = float(torch.einsum("hi,ij,hj->", Wz, G, Wz))
    idx = torch.arange(n + 1)  # original index of each live row (last = bias)
    order, costs = [], []
    while len(order) < max_remove:
        m = idx.numel() - 1
        d = torch.diagonal(Hinv)[:m]
        c = (Wz[:, :m] ** 2).sum(0) / d.clamp_min(1e-30)
        b = min(block, max_remove - len(order))
        cb, B = torch.topk(c, b, largest=False)
        order += idx[B].tolist()
        costs += cb.tolist()
        HBB = Hinv[B][:, B]
        X = torch.linalg.solve(HBB, Hinv[B])  # (b, m+1)
        Wz = Wz - Wz[:, B] @ X
        Hinv = Hinv - Hinv[:, B] @ X
        keep = torch.ones(m + 1, dtype=torch.bool)
        keep[B] = False
        Hinv = Hinv[keep][:, keep].contiguous()
        Wz = Wz[:, keep].contiguous()
        idx = idx[keep]
    return np.array(order), np.array(costs), ref
