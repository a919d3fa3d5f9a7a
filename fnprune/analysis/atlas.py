"""The functional atlas: where each neuron is drawn, and what each network is called.

Neuron index has no spatial meaning, so a map drawn by index looks like scattered noise
(METHOD.md §4). The atlas layout places, per layer, the neurons of one network next to each other:

1. each neuron belongs to the network (component) where its |z| (max over signals) is largest, if
   that |z| is above the run's threshold; otherwise it is *background*;
2. the networks are ordered by the similarity of their time courses (average-linkage clustering of
   ``1 - |corr|``, optimal leaf order), so related networks are neighbours too;
3. the slice is filled along a space-filling curve (a generalised Hilbert curve for any rectangle):
   the first network's neurons (strongest first), then the next network's, ..., background last.
   A run of consecutive cells on the curve is a compact region, so each network becomes one.

Positions are flat cells ``row * cols + col`` of the layer's grid ``neuron_grid(width)``; the index
layout is ``position[j] = j``. Everything here is a pure, deterministic function of the maps and
time courses; ``FunctionalNetworks.layout`` stores the result in the run directory.

Network names: a short label from the tokens at which a network is most active, e.g.
``"was · had · were"``.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError

LAYOUTS = ("atlas", "index")
BACKGROUND = -1
MAX_ORDER_TOKENS = 50_000   # time-course rows used to order the networks (evenly spaced)


def neuron_grid(width: int) -> tuple[int, int]:
    """A fixed near-square ``(rows, cols)`` grid that holds ``width`` neurons (``cols = ceil(sqrt(width))``)."""
    cols = int(np.ceil(np.sqrt(width)))
    return int(np.ceil(width / cols)), cols


# -- the space-filling curve -----------------------------------------------------------------------
def space_filling_curve(rows: int, cols: int) -> np.ndarray:
    """``(rows * cols,)`` flat cells ``row * cols + col`` in the order of a generalised Hilbert curve.

    Consecutive cells are grid neighbours (one diagonal step may occur when both sides are odd).
    Algorithm: "gilbert2d" by Jakub Červený (BSD-2-Clause), written iteratively.
    """
    if rows < 1 or cols < 1:
        raise ConfigError(f"grid must be at least 1 x 1, got {rows} x {cols}")
    out: list[int] = []
    # (x, y, ax, ay, bx, by): fill the rectangle spanned by the major (a) and minor (b) axes
    stack = [(0, 0, cols, 0, 0, rows) if cols >= rows else (0, 0, 0, rows, cols, 0)]
    while stack:
        x, y, ax, ay, bx, by = stack.pop()
        w, h = abs(ax + ay), abs(bx + by)
        dax, day = int(np.sign(ax)), int(np.sign(ay))
        dbx, dby = int(np.sign(bx)), int(np.sign(by))
        if h == 1 or w == 1:
            step = (dax, day) if h == 1 else (dbx, dby)
            for _ in range(w if h == 1 else h):
                out.append(y * cols + x)
                x, y = x + step[0], y + step[1]
            continue
        ax2, ay2, bx2, by2 = ax // 2, ay // 2, bx // 2, by // 2
        w2, h2 = abs(ax2 + ay2), abs(bx2 + by2)
        if 2 * w > 3 * h:  # long rectangle: two halves along the major axis
            if w2 % 2 and w > 2:
                ax2, ay2 = ax2 + dax, ay2 + day
            parts = [(x, y, ax2, ay2, bx, by), (x + ax2, y + ay2, ax - ax2, ay - ay2, bx, by)]
        else:  # up the minor axis, along the major axis, back down
            if h2 % 2 and h > 2:
                bx2, by2 = bx2 + dbx, by2 + dby
            parts = [(x, y, bx2, by2, ax2, ay2), (x + bx2, y + by2, ax, ay, bx - bx2, by - by2),
                     (x + (ax - dax) + (bx2 - dbx), y + (ay - day) + (by2 - dby), -bx2, -by2, -(ax - ax2), -(ay - ay2))]
        stack.extend(reversed(parts))
    return np.asarray(out, dtype=np.int64)


# -- one layer ----------------------------------------------------------------------------------------
def assign_neurons(scores: np.ndarray, threshold: float) -> np.ndarray:
    """``(width,)`` index of the network (row of ``scores (k, width)``, |z| per neuron) where each
    neuron's score is largest, or ``BACKGROUND`` when that score is not above ``threshold``."""
    scores = np.asarray(scores, dtype=np.float32)
    if scores.shape[0] == 0:
        return np.full(scores.shape[1], BACKGROUND, np.int64)
    best = scores.argmax(axis=0)
    top = scores[best, np.arange(scores.shape[1])]
    return np.where(top > threshold, best, BACKGROUND).astype(np.int64)


def network_order(time_courses: np.ndarray) -> np.ndarray:
    """Permutation of the ``k`` columns of ``time_courses (n_tokens, k)`` that puts networks with
    correlated time courses next to each other (average linkage on ``1 - |corr|``, optimal leaf order)."""
    tc = np.asarray(time_courses)
    k = tc.shape[1]
    if k <= 2:
        return np.arange(k)
    step = max(1, tc.shape[0] // MAX_ORDER_TOKENS)
    x = np.asarray(tc[::step], dtype=np.float64)
    x = x - x.mean(axis=0)
    norm = np.sqrt((x * x).sum(axis=0))
    x = x / np.where(norm > 0, norm, 1.0)
    corr = np.clip(np.abs(x.T @ x), 0.0, 1.0)                      # (k, k)
    dist = 1.0 - corr
    np.fill_diagonal(dist, 0.0)
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    tree = linkage(squareform(np.round(dist, 9), checks=False), method="average", optimal_ordering=True)
    return leaves_list(tree).astype(np.int64)


def layer_atlas(scores: np.ndarray, threshold: float, order: np.ndarray, grid: tuple[int, int]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Atlas of one layer: ``(positions, network)``, both ``(width,)``.

    ``scores (k, width)`` |z| of each network at each neuron; ``order`` the networks' order on the
    curve. ``positions[j]`` is the flat grid cell of neuron ``j``, ``network[j]`` its network (row of
    ``scores``) or ``BACKGROUND``. Within a network the strongest neurons come first; background
    neurons follow in index order.
    """
    scores = np.asarray(scores, dtype=np.float32)
    width = scores.shape[1]
    rows, cols = grid
    if rows * cols < width:
        raise ConfigError(f"grid {rows} x {cols} cannot hold {width} neurons")
    network = assign_neurons(scores, threshold)
    strength = scores.max(axis=0) if scores.shape[0] else np.zeros(width, np.float32)
    sequence = []
    for c in np.asarray(order, dtype=np.int64):
        members = np.flatnonzero(network == c)
        sequence.append(members[np.argsort(-strength[members], kind="stable")])
    sequence.append(np.flatnonzero(network == BACKGROUND))
    placed = np.concatenate(sequence)                               # neuron at each curve step
    positions = np.empty(width, np.int64)
    positions[placed] = space_filling_curve(rows, cols)[:width]
    return positions, network


# -- a whole run ----------------------------------------------------------------------------------------
def functional_atlas(maps_absmax: np.ndarray, component_layer: np.ndarray, layers: list[int], n_layers: int,
                     time_courses: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """The atlas of a run: ``{"positions", "network"}``, both ``(n_layers, width)`` int32.

    ``maps_absmax (n_components, n_map_layers, width)`` is each map's |z| (max over signals);
    ``component_layer[c]`` the layer of component ``c``, or -1 when its map covers every analysed
    layer (whole-model mode, ``n_map_layers == len(layers)``). ``network`` holds component ids, -1
    for background neurons and for layers that were not analysed (drawn in index order).
    """
    absmax = np.asarray(maps_absmax, dtype=np.float32)
    component_layer = np.asarray(component_layer, dtype=np.int64)
    n_comp, _, width = absmax.shape
    grid = neuron_grid(width)
    positions = np.tile(np.arange(width, dtype=np.int32), (n_layers, 1))
    network = np.full((n_layers, width), BACKGROUND, np.int32)
    whole = bool((component_layer < 0).any())
    if whole:
        global_order = network_order(time_courses)
    for pos, layer in enumerate(layers):
        if whole:
            ids = np.arange(n_comp)
            scores, order = absmax[:, pos], global_order
        else:
            ids = np.flatnonzero(component_layer == layer)
            scores = absmax[ids, 0]
            order = network_order(np.asarray(time_courses)[:, ids]) if ids.size else ids
        p, net = layer_atlas(scores, threshold, order, grid)
        positions[layer] = p
        network[layer] = np.where(net >= 0, ids[np.maximum(net, 0)], BACKGROUND)
    return {"positions": positions, "network": network}


def index_layout(n_layers: int, width: int) -> np.ndarray:
    """``(n_layers, width)``: neuron ``j`` at cell ``j`` (row-major by index)."""
    return np.tile(np.arange(width, dtype=np.int32), (n_layers, 1))


# -- how compact the maps are -------------------------------------------------------------------------------
def compactness(positions: np.ndarray, key: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Per network, the mean over its key neurons of the fraction of their 4-neighbours on the grid
    that are key in the same network (NaN for a network with fewer than two key neurons).

    ``positions (width,)`` the layout of the layer, ``key (k, width)`` bool key neurons per network.
    A layout that scatters a network scores about its density ``n_key / width``; one region, near 1.
    """
    rows, cols = grid
    key = np.asarray(key, dtype=bool)
    positions = np.asarray(positions, dtype=np.int64)
    cell_neuron = np.full(rows * cols, -1, np.int64)
    cell_neuron[positions] = np.arange(positions.size)
    r, c = np.divmod(positions, cols)
    neighbours = []                                                 # (4, width) neuron index or -1
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        rr, cc = r + dr, c + dc
        inside = (rr >= 0) & (rr < rows) & (cc >= 0) & (cc < cols)
        cell = np.where(inside, rr * cols + cc, 0)
        neighbours.append(np.where(inside, cell_neuron[cell], -1))
    neighbours = np.stack(neighbours)
    exists = neighbours >= 0
    out = np.full(key.shape[0], np.nan)
    for k in range(key.shape[0]):
        members = np.flatnonzero(key[k])
        if members.size < 2:
            continue
        nb = neighbours[:, members]
        hit = exists[:, members] & key[k][np.maximum(nb, 0)]
        out[k] = float(np.mean(hit.sum(axis=0) / np.maximum(exists[:, members].sum(axis=0), 1)))
    return out


# -- names -------------------------------------------------------------------------------------------------
def _display(token: str) -> str:
    text = token.strip()
    if not text:
        return "⏎" if "\n" in token else "␣"
    return text.lower() if text[:1].isalpha() else text


def name_from_words(words: list[str], n_words: int = 3) -> str:
    """A network's short name from its :func:`top_words`: the first ``n_words``, e.g. ``"was · had · were"``."""
    return " · ".join(words[:n_words])


def auto_names(time_courses: np.ndarray, tokens: list[str], n_top: int = 30, n_words: int = 3,
               block: int = 256) -> list[str]:
    """A short name per network from the tokens where its time course is highest
    (:func:`name_from_words` of :func:`top_words`)."""
    return [name_from_words(words, n_words) for words in top_words(time_courses, tokens, n_top, block=block)]


def top_words(time_courses: np.ndarray, tokens: list[str], n_top: int = 30, n_words: int | None = None,
              block: int = 256) -> list[list[str]]:
    """Per network, the distinct token texts among the ``n_top`` tokens where its time course is highest.

    ``time_courses (n_tokens, k)``; texts are stripped, words lower-cased; ordered by how often they
    occur there (ties: the higher activation first); at most ``n_words`` (None: all of them).
    """
    tc = time_courses
    n_tokens, k = tc.shape
    if len(tokens) != n_tokens:
        raise ConfigError(f"{len(tokens)} tokens for time courses of {n_tokens} tokens")
    n_top = max(1, min(n_top, n_tokens))
    shown = [_display(t) for t in tokens]
    names = []
    for c0 in range(0, k, block):
        x = np.asarray(tc[:, c0:c0 + block], dtype=np.float32)       # (n_tokens, <=block)
        top = np.argpartition(-x, n_top - 1, axis=0)[:n_top] if n_top < n_tokens else \
            np.broadcast_to(np.arange(n_tokens)[:, None], x.shape)
        for j in range(x.shape[1]):
            idx = top[:, j][np.argsort(-x[top[:, j], j], kind="stable")]
            counts: dict[str, int] = {}
            for i in idx.tolist():
                counts[shown[i]] = counts.get(shown[i], 0) + 1
            # dict keeps first-seen (= highest activation) order; sort is stable
            names.append(sorted(counts, key=lambda w: -counts[w])[:n_words])
    return names


def layout_compactness(networks, layout: str = "atlas", threshold: float | None = None) -> float:
    """Mean :func:`compactness` over every network of a ``FunctionalNetworks`` run (and every layer
    its map covers) with at least two key neurons (|z| above ``threshold``, default the run's)."""
    threshold = networks.threshold if threshold is None else float(threshold)
    positions = networks.layout(layout)
    key = np.abs(networks.maps).max(axis=2) > threshold               # (n_comp, n_map_layers, width)
    grid = networks.grid
    values = []
    for c in range(networks.n_components):
        for pos, layer in enumerate(networks.map_layers(c)):
            values.append(compactness(positions[layer], key[c, pos][None], grid)[0])
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
