"""Descriptions of functional networks for people: the component table, one component's detail,
the overview, genre profiles. Pure functions of a :class:`fnprune.analysis.networks.FunctionalNetworks`
(its methods of the same names delegate here); the backend turns them into API responses."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError


def genre_profiles(fn) -> tuple[list[str], np.ndarray]:
    """``(labels, (n_labels, n_components))``: mean z-scored time course per document label."""
    if getattr(fn, "_genres", None) is None:
        doc_labels = [d.get("label") or "unlabelled" for d in fn.documents]
        names = sorted(set(doc_labels))
        token_label = np.asarray([names.index(x) for x in doc_labels], dtype=np.int64)[fn.token_doc]
        onehot = np.zeros((len(names), len(token_label)), dtype=np.float32)
        onehot[token_label, np.arange(len(token_label))] = 1.0
        onehot /= onehot.sum(1, keepdims=True)
        profiles = np.zeros((len(names), fn.n_components), dtype=np.float32)
        for c0 in range(0, fn.n_components, 256):  # float32 blocks: never the whole matrix at once
            tc = fn.time_courses[:, c0:c0 + 256].astype(np.float32)
            profiles[:, c0:c0 + 256] = (onehot @ tc - tc.mean(0)) / (tc.std(0) + 1e-12)
        fn._genres = (names, profiles)
    return fn._genres


def genre_profile(fn, component: int) -> dict:
    names, profiles = genre_profiles(fn)
    return {g: float(v) for g, v in zip(names, profiles[:, component], strict=True)}


def component_table(fn, threshold: float | None = None) -> list[dict]:
    threshold = fn.threshold if threshold is None else float(threshold)
    n_key = (fn.abs_max_maps > threshold).sum(axis=(1, 2))
    peak = fn.abs_max_maps.max(axis=(1, 2))
    names, profiles = genre_profiles(fn)
    rows = []
    for c in range(fn.n_components):
        values = profiles[:, c]
        top = names[int(values.argmax())] if len(names) else None
        layer = int(fn.component_layer[c])
        if layer < 0:  # whole-model: the layer where it peaks
            layer_pos = int(fn.abs_max_maps[c].max(axis=1).argmax())
            layer = fn.layers[layer_pos]
        rows.append({
            "id": c, "layer": layer, "index": int(fn.component_index[c]), "run": int(fn.component_run[c]),
            "n_key": int(n_key[c]), "peak_z": float(peak[c]), "stability": float(fn.stability[c]),
            "stable": bool(fn.stable[c]),
            "reproduced": None if fn.reproduced is None else int(fn.reproduced[c]),
            "top_genre": top,
            "genre_selectivity": float(values.max() - values.mean()) if values.size > 1 else 0.0,
            "label": fn.labels.get(c, "unknown"), "name": fn.name(c),
            "auto_name": fn.auto_names()[c], "top_words": fn.top_words()[c],
        })
    return rows


def component_detail(fn, component: int, n_top: int = 10, context: int = 8) -> dict:
    if not 0 <= int(component) < fn.n_components:
        raise ConfigError(f"component {component} does not exist (0..{fn.n_components - 1})")
    c = int(component)
    tc = fn.time_courses[:, c].astype(np.float32)
    top = np.argsort(-tc, kind="stable")[:n_top]
    top_tokens = []
    for i in top.tolist():
        doc = int(fn.token_doc[i])
        lo = i
        while lo > 0 and i - lo < context and fn.token_doc[lo - 1] == doc:
            lo -= 1
        hi = i
        while hi + 1 < len(tc) and hi - i < context and fn.token_doc[hi + 1] == doc:
            hi += 1
        top_tokens.append({"token": fn.token_text[i], "value": float(tc[i]), "doc": doc, "position": int(fn.token_pos[i]),
                           "label": fn.documents[doc].get("label"),
                           "left": "".join(fn.token_text[lo:i]), "right": "".join(fn.token_text[i + 1:hi + 1])})
    return {
        "id": c, "layer": int(fn.component_layer[c]), "index": int(fn.component_index[c]),
        "run": int(fn.component_run[c]), "label": fn.labels.get(c, "unknown"),
        "name": fn.name(c), "auto_name": fn.auto_names()[c], "stability": float(fn.stability[c]), "map": fn.maps[c], "map_layers": fn.map_layers(c),
        "signals": fn.signals, "time_course": tc, "top_tokens": top_tokens,
        "genre_profile": genre_profile(fn, c),
    }


def overview(fn, threshold: float | None = None) -> dict:
    """Key-neuron density (components in which a neuron is key) and max |z|, both (n_layers, width)."""
    threshold = fn.threshold if threshold is None else float(threshold)
    density = np.zeros((fn.n_layers, fn.width), dtype=np.int32)
    key = fn.abs_max_maps > threshold
    if fn.mode == "whole-model":
        density[fn.layers] = key.sum(axis=0)
    else:
        for layer in np.unique(fn.component_layer):
            density[layer] = key[fn.component_layer == layer, 0].sum(axis=0)
    return {"threshold": threshold, "density": density, "max_z": fn.neuron_scores()}
