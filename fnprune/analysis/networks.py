"""Functional networks: CanICA maps over MLP neurons, their statistics, and key-neuron masks.

``analyze`` captures activations, runs CanICA per layer (the paper's pruning mode) or on all layers
at once (whole-model mode), over ``n_runs`` disjoint batches of documents, and returns a
:class:`FunctionalNetworks`. That object answers everything the CLI and the web app ask without the
model: component tables and details, neuron scores, key-neuron masks for a threshold or a target
fraction of parameters removed, and projected per-layer widths.

Neuron scores (METHOD.md §1.5, §1.11): the score of neuron ``j`` of layer ``lyr`` is the largest
``|z|`` over the selected components and over its signals (``act`` and ``up``); it is key when the
score exceeds the threshold. With several runs a neuron key in any run is key (OR-union), since the
score is a max over every run's components.

Seed robustness: each decomposition ("unit": one layer of one run, or one run in whole-model mode)
splits its components into *stable* ones (found by every FastICA restart) and the rest, whose
rotation is an accident of the seed. When every unstable component of a unit is selected, their
contribution to the score is the seed-free *unresolved-subspace energy* computed by CanICA
(``CanICA.unresolved_energy_``) instead of their individual maps; see ``fnprune/analysis/ica.py`` step 6.
That energy is a PCA statistic, not a network: ``key_source`` says per neuron whether a stable
network or only that energy makes it key, and ``info["unit_stability"]`` holds per-unit statistics
(``fnprune.analysis.stability.fit_summary``).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..corpus import Document
from ..errors import ConfigError
from ..models.mlp import mlp_summary
from ..options import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_MODE,
    DEFAULT_N_COMPONENTS,
    DEFAULT_N_INIT,
    DEFAULT_THRESHOLD,
    MODES,
)
from ..progress import ProgressCallback, report
from . import atlas as _atlas
from .atlas import neuron_grid  # the one home of the neuron grid
from .capture import ActivationStore, capture_activations
from .ica import CanICA
from .stability import fit_summary, seed_check

NOT_KEY, KEY_NETWORK, KEY_UNRESOLVED = 0, 1, 2   # key_source: why a neuron is key


class FunctionalNetworks:
    """The result of an analysis (all arrays numpy; no model needed).

    Attributes
    ----------
    maps : (n_components, n_map_layers, n_signals, width) float32 z-maps. In per-layer mode each
        component covers one layer (``n_map_layers == 1``); in whole-model mode every analysed layer.
    component_layer : (n_components,) layer of each component, -1 in whole-model mode
    component_index, component_run : index within its (layer, run) and its run
    stability : (n_components,) mean matched |corr| across FastICA restarts
    time_courses : (n_tokens, n_components) float16
    token_text, token_doc, token_pos : per recorded token
    documents : list of {"id", "label", "n_tokens"}
    info : model summary, analysis parameters, corpus
    labels : {component id: "signal" | "noise" | "unknown"}
    names : {component id: name given by the user}; ``name(c)`` falls back to ``auto_names()``
    reproduced : (n_components,) int or None: in how many of ``info["check_seeds"]`` other seeds the
        component's map came back (``analyze(check_seeds=N)``); None when the run was not checked
    """

    def __init__(self, *, maps, component_layer, component_index, component_run, stability,
                 time_courses, token_text, token_doc, token_pos, documents, info, labels=None,
                 stable=None, component_unit=None, unit_unresolved=None, atlas=None, names=None, reproduced=None):
        # maps are stored as float16; round here too so a loaded run gives the very same masks
        self.maps = np.asarray(maps, dtype=np.float16).astype(np.float32)
        self.component_layer = np.asarray(component_layer, dtype=np.int64)
        self.component_index = np.asarray(component_index, dtype=np.int64)
        self.component_run = np.asarray(component_run, dtype=np.int64)
        self.stability = np.asarray(stability, dtype=np.float32)
        self.time_courses = np.asarray(time_courses, dtype=np.float16)   # float16: 2 bytes per token x component
        self.token_text = list(token_text)
        self.token_doc = np.asarray(token_doc, dtype=np.int64)
        self.token_pos = np.asarray(token_pos, dtype=np.int64)
        self.documents = list(documents)
        self.info = dict(info)
        self.labels = {int(k): v for k, v in (labels or {}).items()}
        self.names = {int(k): str(v) for k, v in (names or {}).items()}
        self._atlas = None if atlas is None else {k: np.asarray(v, np.int32) for k, v in atlas.items()}
        self._top_words = self._auto_names = None
        self._absmax = np.abs(self.maps).max(axis=2)          # (n_comp, n_map_layers, width)
        n = self.maps.shape[0]
        self.stable = np.ones(n, bool) if stable is None else np.asarray(stable, dtype=bool)
        # (n_components,) in how many of info["check_seeds"] other seeds each map came back; None: not checked
        self.reproduced = None if reproduced is None else np.asarray(reproduced, np.int64)
        if component_unit is None:  # one decomposition per (run, layer)
            component_unit = np.unique(np.stack([self.component_run, self.component_layer]), axis=1,
                                       return_inverse=True)[1].reshape(-1)
        self.component_unit = np.asarray(component_unit, np.int64)
        # (n_units, n_map_layers, width): seed-free expected max |z| over each unit's unstable components
        # (n_units, n_map_layers, width): each unit's unresolved-subspace energy (seed-free expected
        # max |z| over its unstable components; 0 for runs saved before it existed)
        self.unit_unresolved = (np.zeros((int(self.component_unit.max()) + 1,) + self._absmax.shape[1:], np.float32)
                                if unit_unresolved is None else
                                np.asarray(unit_unresolved, np.float16).astype(np.float32))

    # -- shape facts -----------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self.info["mode"]

    @property
    def n_layers(self) -> int:
        return int(self.info["model"]["n_layers"])

    @property
    def width(self) -> int:
        return int(self.maps.shape[-1])

    @property
    def signals(self) -> list[str]:
        return list(self.info["signals"])

    @property
    def layers(self) -> list[int]:
        """Analysed layers."""
        return list(self.info["layers"])

    @property
    def n_components(self) -> int:
        return int(self.maps.shape[0])

    @property
    def threshold(self) -> float:
        return float(self.info.get("threshold", DEFAULT_THRESHOLD))

    @property
    def tokens(self) -> list[str]:
        return self.token_text

    @property
    def grid(self) -> tuple[int, int]:
        return neuron_grid(self.width)

    # -- where neurons are drawn, and what networks are called (fnprune/analysis/atlas.py) ---------------------
    def atlas(self) -> dict[str, np.ndarray]:
        """The run's functional atlas: ``{"positions", "network"}``, both ``(n_layers, width)`` int32
        (stored in the run directory; computed here for runs saved without it)."""
        if self._atlas is None:
            self._atlas = _atlas.functional_atlas(self._absmax, self.component_layer, self.layers, self.n_layers,
                                                  self.time_courses, self.threshold)
        return self._atlas

    def layout(self, name: str = "atlas") -> np.ndarray:
        """``(n_layers, width)`` flat grid cell (``row * cols + col`` of ``grid``) of every neuron:
        ``"atlas"`` (networks as regions) or ``"index"`` (row-major by neuron index)."""
        if name == "atlas":
            return self.atlas()["positions"]
        if name == "index":
            return _atlas.index_layout(self.n_layers, self.width)
        raise ConfigError(f"layout must be one of {_atlas.LAYOUTS}, got {name!r}")

    def auto_names(self) -> list[str]:
        """Per component a short name from its top-activating tokens, e.g. ``"was · had · were"``."""
        if self._auto_names is None:     # cached: the table and name() ask once per component
            self._auto_names = [_atlas.name_from_words(words) for words in self.top_words()]
        return self._auto_names

    def top_words(self) -> list[list[str]]:
        """Per component the distinct texts of its 30 top-activating tokens, most frequent first
        (:func:`fnprune.analysis.atlas.top_words`); what a search for a word matches."""
        if self._top_words is None:
            self._top_words = _atlas.top_words(self.time_courses, self.token_text)
        return self._top_words

    def name(self, component: int) -> str:
        """The user's name of the component, else its automatic name."""
        return self.names.get(int(component)) or self.auto_names()[int(component)]

    def map_layers(self, component: int) -> list[int]:
        layer = int(self.component_layer[component])
        return [layer] if layer >= 0 else self.layers

    # -- selection and scores ----------------------------------------------------------------------
    def _selected(self, networks) -> np.ndarray:
        from ..pruning.selection import chosen_components

        sel = chosen_components(self, networks)
        return np.arange(self.n_components) if sel is None else sel

    def neuron_scores(self, networks=None) -> np.ndarray:
        """``(n_layers, width)`` largest |z| of each neuron over the selected components and signals."""
        sel = self._selected(networks)
        chosen = np.zeros(self.n_components, dtype=bool)
        chosen[sel] = True
        scores = np.zeros((self.n_layers, self.width), dtype=np.float32)
        for unit in np.unique(self.component_unit[sel]):
            in_unit = self.component_unit == unit
            unstable = in_unit & ~self.stable
            if unstable.any() and not (unstable & ~chosen).any():
                # every unstable component chosen: the unresolved-subspace energy replaces their maps
                parts = [self.unit_unresolved[unit]]
                use = in_unit & chosen & self.stable
            else:
                parts = []
                use = in_unit & chosen
            if use.any():
                parts.append(self._absmax[use].max(axis=0))
            unit_score = np.max(parts, axis=0)                      # (n_map_layers, width)
            rows = self.layers if self.mode == "whole-model" else [int(self.component_layer[in_unit][0])]
            scores[rows] = np.maximum(scores[rows], unit_score)
        return scores

    def key_source(self, threshold: float | None = None) -> np.ndarray:
        """``(n_layers, width)`` int8: why each neuron is key at ``threshold`` with every component
        chosen. ``KEY_NETWORK`` (1): a stable network's |z| exceeds it; ``KEY_UNRESOLVED`` (2): only the
        unresolved-subspace energy does (a PCA statistic, no network); ``NOT_KEY`` (0): neither, or
        the layer was not analysed. ``key_source(t) > 0`` is exactly ``neuron_scores() > t``."""
        threshold = self.threshold if threshold is None else float(threshold)
        network = np.zeros((self.n_layers, self.width), np.float32)
        unresolved = np.zeros_like(network)
        for unit in np.unique(self.component_unit):
            in_unit = self.component_unit == unit
            rows = self.layers if self.mode == "whole-model" else [int(self.component_layer[in_unit][0])]
            if (in_unit & self.stable).any():
                network[rows] = np.maximum(network[rows], self._absmax[in_unit & self.stable].max(axis=0))
            if (in_unit & ~self.stable).any():
                unresolved[rows] = np.maximum(unresolved[rows], self.unit_unresolved[unit])
        source = np.where(unresolved.astype(np.float64) > threshold, KEY_UNRESOLVED, NOT_KEY)
        return np.where(network.astype(np.float64) > threshold, KEY_NETWORK, source).astype(np.int8)

    def key_source_summary(self, source: np.ndarray | None = None, threshold: float | None = None) -> list[dict]:
        """Per analysed layer: stable networks of its components and its key neurons split by
        :meth:`key_source` (``source``, computed at ``threshold`` when not given): a stable network, or
        only the unresolved-subspace energy. Whole-model components count in the layer where their map peaks."""
        source = self.key_source(threshold) if source is None else source
        home = np.asarray([self.component_row_layer(c) for c in range(self.n_components)])
        rows = []
        for layer in self.layers:
            counts = np.bincount(source[layer].astype(np.int64), minlength=3)
            network, unresolved = int(counts[KEY_NETWORK]), int(counts[KEY_UNRESOLVED])
            rows.append({"layer": int(layer), "n_components": int((home == layer).sum()),
                         "n_stable": int((self.stable & (home == layer)).sum()),
                         "n_key": network + unresolved, "n_key_network": network, "n_key_unresolved": unresolved})
        return rows

    @property
    def abs_max_maps(self) -> np.ndarray:
        """``(n_components, n_map_layers, width)`` largest |z| of each neuron over the signals, per map."""
        return self._absmax

    def abs_max_map(self, component: int) -> np.ndarray:
        """``(n_map_layers, width)`` largest |z| of each neuron over the signals in one component's map."""
        return self._absmax[int(component)]

    def component_row_layer(self, component: int) -> int:
        """The layer a component belongs to (whole-model mode: the layer where its map peaks)."""
        layer = int(self.component_layer[component])
        if layer >= 0:
            return layer
        return self.layers[int(self._absmax[component].max(axis=1).argmax())]

    # -- plans and masks (the maths lives in fnprune.pruning.selection) -------------------------------------
    def key_mask(self, threshold: float | None = None, target_ratio: float | None = None, networks=None,
                 protected_layers=None, uniform: bool = False, ratio_of: str = "all") -> np.ndarray:
        """``(n_layers, width)`` bool, True = keep; see :func:`fnprune.pruning.selection.plan`."""
        from ..pruning.selection import plan

        return plan(self, threshold=threshold, target_ratio=target_ratio, networks=networks,
                    protected_layers=protected_layers, uniform=uniform, ratio_of=ratio_of).keep

    def plan(self, threshold: float | None = None, target_ratio: float | None = None, networks=None,
             protected_layers=None, uniform: bool = False, ratio_of: str = "all") -> dict:
        """Projected per-layer widths and parameter counts of a choice (no model needed); see
        :func:`fnprune.pruning.selection.plan`."""
        from ..pruning.selection import plan

        return plan(self, threshold=threshold, target_ratio=target_ratio, networks=networks,
                    protected_layers=protected_layers, uniform=uniform, ratio_of=ratio_of).as_dict()

    # -- descriptions (fnprune.analysis.describe) and the run directory (fnprune.analysis.rundir) ---------------------
    def genre_profiles(self) -> tuple[list[str], np.ndarray]:
        """``(labels, (n_labels, n_components))``: mean z-scored time course per document label."""
        from .describe import genre_profiles

        return genre_profiles(self)

    def component_table(self, threshold: float | None = None) -> list[dict]:
        from .describe import component_table

        return component_table(self, threshold)

    def component_detail(self, component: int, n_top: int = 10, context: int = 8) -> dict:
        from .describe import component_detail

        return component_detail(self, component, n_top, context)

    def overview(self, threshold: float | None = None) -> dict:
        """Key-neuron density (components in which a neuron is key) and max |z|, both (n_layers, width)."""
        from .describe import overview

        return overview(self, threshold)

    def save(self, run_dir: str | Path) -> Path:
        """Write the run directory atomically (safetensors + JSON, no pickle); see fnprune.analysis.rundir."""
        from .rundir import save_run

        return save_run(self, run_dir)

    @classmethod
    def load(cls, run_dir: str | Path) -> FunctionalNetworks:
        from .rundir import load_run

        return cls(**load_run(run_dir))


def _run_slices(store: ActivationStore, n_runs: int) -> list[slice]:
    """Contiguous token-row ranges of ``n_runs`` disjoint, near-equal groups of documents."""
    counts = [d["n_tokens"] for d in store.documents]
    n_docs = len(counts)
    if n_runs > n_docs:
        raise ConfigError(f"n_runs={n_runs} is larger than the number of documents ({n_docs})")
    bounds = np.linspace(0, n_docs, n_runs + 1).round().astype(int)
    starts = np.concatenate([[0], np.cumsum(counts)])
    return [slice(int(starts[a]), int(starts[b])) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def analyze(model, tokenizer, docs: list[Document], *, n_components: int = DEFAULT_N_COMPONENTS, mode: str = DEFAULT_MODE,
            n_runs: int = 1, n_init: int = DEFAULT_N_INIT, max_tokens: int = DEFAULT_MAX_TOKENS,
            signals: tuple[str, ...] = ("act", "up"), layers: list[int] | None = None, random_state: int = 0,
            check_seeds: int = 0,
            work_dir: str | Path | None = None, batch_size: int = 4, device: str = "auto",
            threshold: float = DEFAULT_THRESHOLD, model_spec: str | None = None, corpus_spec: str | None = None,
            progress: ProgressCallback | None = None) -> FunctionalNetworks:
    """Capture activations of ``docs`` and decompose them into functional networks.

    ``mode="per-layer"`` runs CanICA on each layer's ``(tokens, n_signals * width)`` matrix (the
    paper's pruning mode); ``"whole-model"`` on all analysed layers at once. ``n_runs`` disjoint
    batches of documents are analysed separately and their components pooled (OR-union of masks).
    The activation store lives in ``work_dir`` (a temporary directory when None) and is deleted
    at the end unless ``work_dir`` is given.

    ``check_seeds=N`` (per-layer mode) refits every layer with N other seeds
    (:func:`fnprune.analysis.stability.seed_check`, N + 1 times the decomposition time): each component's
    ``reproduced`` count (in how many of the N seeds its map comes back at |corr| ≥ 0.9) and, per
    layer in ``info["unit_stability"][i]["seeds"]``, the share of key neurons that reproduced networks
    make key, the masks' Jaccard across seeds and its leverage-only and chance controls.
    """
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    for name, value in (("n_components", n_components), ("n_runs", n_runs), ("n_init", n_init)):
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(check_seeds, int | np.integer) or isinstance(check_seeds, bool) or check_seeds < 0:
        raise ConfigError(f"check_seeds must be a non-negative integer, got {check_seeds!r}")
    if check_seeds and mode != "per-layer":
        raise ConfigError("check_seeds works in per-layer mode only (a whole-model fit per seed is too costly)")
    summary = mlp_summary(model)
    if len(set(summary["widths"])) != 1:
        raise ConfigError("the model's layers have different MLP widths (already pruned?); analyse the dense model")
    tmp = None
    if work_dir is None:
        tmp = tempfile.mkdtemp(prefix="fnprune-")
        work_dir = tmp
    try:
        store = capture_activations(model, tokenizer, docs, Path(work_dir) / "activations", max_tokens=max_tokens,
                                    batch_size=batch_size, layers=layers, signals=signals, progress=progress)
        runs = _run_slices(store, n_runs)
        for r, rows in enumerate(runs):
            if rows.stop - rows.start <= n_components:
                raise ConfigError(f"run {r} has {rows.stop - rows.start} tokens, not more than n_components="
                                  f"{n_components}; use fewer runs or components, or more text")
        maps, layer_of, index_of, run_of, stability, reproduced = [], [], [], [], [], []
        stable, unit_of, unresolved, unit_stats = [], [], [], []
        units = [(r, lyr) for r in range(len(runs)) for lyr in store.layers] if mode == "per-layer" \
            else [(r, None) for r in range(len(runs))]
        # the one token-sized result, filled in place; column-major so it is saved without a copy
        time_courses = np.empty((store.n_tokens, len(units) * n_components), np.float16, order="F")
        for u, (r, layer) in enumerate(units):
            rows = runs[r]
            seed = int(random_state) * 1_000_003 + r * 1009 + (0 if layer is None else layer)
            ica = CanICA(n_components, n_init=n_init, random_state=seed, device=device)
            if layer is None:
                blocks = [store.layer_matrix(lyr) for lyr in store.layers]
                ica.fit([b[rows] for b in blocks])
                time_courses[:, u * n_components:(u + 1) * n_components] = ica.transform(blocks)
                shape = (len(store.layers), len(signals), store.width)
                comp = ica.components_.reshape(n_components, *shape)
                layer_of.append(np.full(n_components, -1))
            else:
                matrix = store.layer_matrix(layer)
                ica.fit(matrix[rows])
                time_courses[:, u * n_components:(u + 1) * n_components] = ica.transform(matrix)
                shape = (1, len(signals), store.width)
                comp = ica.components_.reshape(n_components, *shape)
                layer_of.append(np.full(n_components, layer))
            maps.append(comp)
            index_of.append(np.arange(n_components))
            run_of.append(np.full(n_components, r))
            stability.append(ica.stability_)
            stable.append(ica.stable_)
            unit_of.append(np.full(n_components, u))
            unresolved.append(ica.unresolved_energy_.reshape(shape).max(axis=1))
            unit_stats.append({"run": r, "layer": layer} | fit_summary(ica, threshold, shape))
            if check_seeds:
                report(progress, "ica", u / len(units), f"layer {layer}: {check_seeds} more seeds")
                counts, seeds = seed_check(ica, matrix[rows], check_seeds, budget=unit_stats[-1]["n_key"],
                                           width=store.width)
                reproduced.append(counts)
                unit_stats[-1]["seeds"] = seeds
            report(progress, "ica", (u + 1) / len(units),
                   f"run {r + 1}/{len(runs)}" + ("" if layer is None else f", layer {layer}"))
        info = {
            "mode": mode, "signals": list(signals), "layers": store.layers, "threshold": float(threshold),
            "n_components": n_components, "n_runs": n_runs, "n_init": n_init, "max_tokens": max_tokens,
            "random_state": int(random_state), "n_tokens": store.n_tokens, "n_documents": len(docs),
            "model_spec": model_spec, "corpus_spec": corpus_spec, "unit_stability": unit_stats,
            "check_seeds": int(check_seeds),
            "model": {k: summary[k] for k in ("family", "n_layers", "widths", "hidden_size", "params_per_neuron",
                                              "mlp_params", "total_params", "embedding_params")}
                     | {"class": type(model).__name__, "config_class": type(model.config).__name__},
        }
        return FunctionalNetworks(
            maps=np.concatenate(maps), component_layer=np.concatenate(layer_of),
            component_index=np.concatenate(index_of), component_run=np.concatenate(run_of),
            stability=np.concatenate(stability), time_courses=time_courses,
            token_text=store.token_text, token_doc=store.token_doc, token_pos=store.token_pos,
            documents=store.documents, info=info, stable=np.concatenate(stable),
            component_unit=np.concatenate(unit_of), unit_unresolved=np.stack(unresolved),
            reproduced=np.concatenate(reproduced) if reproduced else None)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
