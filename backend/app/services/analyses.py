"""Analyses: create the job, run it in the worker, and serve its networks, maps, previews and exports."""

from __future__ import annotations

import fcntl
import html
import json
import math
import shutil
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config import Settings
from ..core.errors import ApiError
from ..schemas import AnalysisRequest, PreviewRequest
from . import catalog, encoding
from .jobs import JobStore
from .lookup import succeeded_or_409

TIME_COURSE_POINTS = 1000  # default subsampling of a component's time course
ARTIFACTS = {"masks": ("masks.json", "application/json"), "maps": ("maps.nii.gz", "application/gzip"),
             "labels": ("labels.txt", "text/plain"), "report": ("report.html", "text/html")}


# -- creating and running -------------------------------------------------------------------------
def create(req: AnalysisRequest, settings: Settings, store: JobStore, enqueue) -> dict[str, Any]:
    catalog.resolve_model(req.model, settings)
    catalog.resolve_corpus(req.corpus, settings)
    if req.genres:  # the library's rule (fnprune.corpus.check_genres), before a job is queued: 422, field genres
        from fnprune.corpus import check_genres

        check_genres(req.genres, catalog.corpus_info(req.corpus, settings)["labels"], req.corpus)
    job = store.create("analysis", req.model_dump())
    enqueue(job["id"])
    return store.get(job["id"]) or job


def run_analysis(settings: Settings, job_id: str, params: dict[str, Any], progress) -> dict[str, Any]:
    """Worker side: the library's analysis job (:func:`fnprune.analysis.job.analyze_job`) with this
    server's model loading and paths; the networks are saved atomically under ``<job dir>/run``."""
    from fnprune.analysis.job import analyze_job

    req = AnalysisRequest(**params)
    job_dir = settings.job_dir("analysis", job_id)
    job_dir.mkdir(parents=True, exist_ok=True)
    work_dir = job_dir / "work"
    try:
        done = analyze_job(
            req.model, catalog.resolve_corpus(req.corpus, settings), job_dir / "run", n_texts=req.n_texts,
            genres=req.genres, sampling=req.sampling, device=settings.DEVICE, corpus_name=req.corpus,
            load_model=lambda _: catalog.load_model(req.model, settings),
            n_components=req.n_components, mode=req.mode, n_runs=req.n_runs, max_tokens=req.max_tokens,
            random_state=req.seed, work_dir=work_dir, check_seeds=req.check_seeds, progress=progress)
        return summary(done.networks, n_documents=done.n_documents)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def summary(networks, n_documents: int | None = None) -> dict[str, Any]:
    out = {"n_layers": int(networks.n_layers), "width": int(networks.width), "signals": list(networks.signals),
           "mode": networks.mode, "threshold": float(networks.threshold),
           "n_components": int(networks.n_components), "n_tokens": len(networks.tokens)}
    if n_documents is not None:
        out["n_documents"] = n_documents
    return out


# -- loading a finished analysis ------------------------------------------------------------------
_cache: OrderedDict[tuple[str, float], Any] = OrderedDict()
_cache_lock = threading.Lock()
CACHE_SIZE = 4


def finished_job(store: JobStore, job_id: str) -> dict[str, Any]:
    return succeeded_or_409(store, job_id, "analysis", "its networks")


def for_worker(settings: Settings, analysis_id: str):
    """Worker side: ``(request, networks)`` of a succeeded analysis that a queued job builds on; a
    :class:`fnprune.errors.RunDirError` (the job fails with it) when it is gone or did not succeed."""
    from fnprune.analysis.networks import FunctionalNetworks
    from fnprune.errors import RunDirError

    analysis = JobStore(settings.jobs_path, settings.HEARTBEAT_TIMEOUT_S).get(analysis_id, "analysis")
    if analysis is None or analysis["status"] != "succeeded":
        raise RunDirError(f"analysis {analysis_id} is gone or has not succeeded")
    return AnalysisRequest(**analysis["params"]), FunctionalNetworks.load(settings.job_dir("analysis", analysis_id) / "run")


def load_networks(settings: Settings, store: JobStore, job_id: str):
    finished_job(store, job_id)
    run_dir = settings.job_dir("analysis", job_id) / "run"
    if not run_dir.is_dir():
        raise ApiError(410, f"analysis {job_id}: its run directory is gone")
    key = (str(run_dir), run_dir.stat().st_mtime)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    from fnprune.analysis.networks import FunctionalNetworks

    networks = FunctionalNetworks.load(run_dir)
    with _cache_lock:
        _cache[key] = networks
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return networks


def _threshold(networks, threshold: float | None) -> float:
    return float(networks.threshold if threshold is None else threshold)


# -- labels -----------------------------------------------------------------------------------------
def _labels_path(settings: Settings, job_id: str) -> Path:
    return settings.job_dir("analysis", job_id) / "labels.json"


def get_labels(settings: Settings, job_id: str) -> dict[str, str]:
    path = _labels_path(settings, job_id)
    if not path.is_file():
        return {}
    return json.loads(path.read_text())


def _names_path(settings: Settings, job_id: str) -> Path:
    return settings.job_dir("analysis", job_id) / "names.json"


def get_names(settings: Settings, job_id: str) -> dict[str, str]:
    """The names the user gave to networks (``{id: name}``); the others keep their automatic name."""
    path = _names_path(settings, job_id)
    return json.loads(path.read_text()) if path.is_file() else {}


def _merge(stored: dict[str, str], changes: dict[str, str], n: int, field: str, drop_empty: bool = False
           ) -> dict[str, str]:
    merged = dict(stored)
    for key, value in changes.items():
        if not key.lstrip("-").isdigit() or not 0 <= int(key) < n:
            raise ApiError(422, f"{field}.{key}: no component {key!r} (ids are 0..{n - 1})", f"{field}.{key}")
        if drop_empty and not value.strip():
            merged.pop(str(int(key)), None)       # an empty name gives the automatic name back
        else:
            merged[str(int(key))] = value.strip() if drop_empty else value
    return merged


def _write_json(path: Path, value: dict) -> None:
    from fnprune.io import atomic_write_json

    atomic_write_json(path, value, sort_keys=True)


@contextmanager
def _labels_lock(settings: Settings, job_id: str) -> Iterator[None]:
    """Serialise the read-merge-write of labels and names (API processes and threads alike)."""
    with open(settings.job_dir("analysis", job_id) / ".labels.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def put_labels(settings: Settings, store: JobStore, job_id: str, labels: dict[str, str],
               names: dict[str, str] | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Merge label and name changes into labels.json / names.json (atomically); returns both, whole."""
    networks = load_networks(settings, store, job_id)
    n = int(networks.n_components)
    with _labels_lock(settings, job_id):
        merged = _merge(get_labels(settings, job_id), labels, n, "labels")
        merged_names = _merge(get_names(settings, job_id), names or {}, n, "names", drop_empty=True)
        if labels:
            _write_json(_labels_path(settings, job_id), merged)
        if names:
            _write_json(_names_path(settings, job_id), merged_names)
    return merged, merged_names


# -- views --------------------------------------------------------------------------------------------
def plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


_tables: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_map_sets: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _table(networks, threshold: float) -> list[dict[str, Any]]:
    """``component_table`` is O(components x tokens); keep it per loaded run and threshold."""
    with _cache_lock:
        per_run = _tables.setdefault(networks, OrderedDict())
        key = round(threshold, 6)
        if key in per_run:
            return per_run[key]
    rows = plain(networks.component_table(threshold=threshold))
    with _cache_lock:
        per_run[key] = rows
        while len(per_run) > 8:
            per_run.popitem(last=False)
    return rows


def networks_table(settings: Settings, store: JobStore, job_id: str, threshold: float | None) -> dict[str, Any]:
    networks = load_networks(settings, store, job_id)
    thr = _threshold(networks, threshold)
    labels, names = get_labels(settings, job_id), get_names(settings, job_id)
    components = [dict(row, label=labels.get(str(row["id"]), "unknown"),
                       name=names.get(str(row["id"])) or row["auto_name"]) for row in _table(networks, thr)]
    return {"threshold": thr, "n_layers": int(networks.n_layers), "width": int(networks.width),
            "signals": list(networks.signals), "mode": networks.mode,
            "check_seeds": int(networks.info.get("check_seeds", 0)), "components": components}


def _component(networks, k: int):
    n = int(networks.n_components)
    if not 0 <= k < n:
        raise ApiError(404, f"no component {k} (ids are 0..{n - 1})", "k")
    return networks.component_detail(k)


def component_map(settings: Settings, store: JobStore, job_id: str, k: int, threshold: float | None,
                  points: int = TIME_COURSE_POINTS) -> dict[str, Any]:
    networks = load_networks(settings, store, job_id)
    detail = _component(networks, k)
    zmap = np.asarray(detail["map"], dtype=np.float32)  # (n_map_layers, n_signals, width)
    width = int(zmap.shape[-1])
    tc = np.asarray(detail["time_course"], dtype=np.float32)  # (n_tokens,)
    idx = encoding.subsample_indices(len(tc), points)
    tokens = networks.tokens
    token_docs = np.asarray(networks.token_doc)
    labels = get_labels(settings, job_id)
    encoded = encoding.int8_array(zmap)
    encoded.update({"layers": [int(x) for x in detail["map_layers"]], "signals": list(networks.signals),
                    "width": width, "grid": list(networks.grid)})
    thr = _threshold(networks, threshold)
    source = networks.key_source(thr)[[int(x) for x in detail["map_layers"]]]   # (n_map_layers, width)
    return {
        "id": int(detail.get("id", k)), "layer": plain(detail.get("layer")), "index": plain(detail.get("index")),
        "label": labels.get(str(k), "unknown"), "stability": plain(detail.get("stability")),
        "stable": bool(networks.stable[k]), "key_source": encoding.uint8_array(source, quantise=False),
        "name": get_names(settings, job_id).get(str(k)) or detail["auto_name"], "auto_name": detail["auto_name"],
        "threshold": thr, "map": encoded,
        "histogram": encoding.histogram(zmap),
        "time_course": {"values": encoding.floats(tc[idx], 2), "tokens": [str(tokens[i]) for i in idx],
                        "docs": [int(token_docs[i]) for i in idx], "n_tokens": len(tc)},
        "top_tokens": plain(detail.get("top_tokens", [])),
        "genre_profile": plain(detail.get("genre_profile", {})),
    }


def overview(settings: Settings, store: JobStore, job_id: str, threshold: float | None) -> dict[str, Any]:
    networks = load_networks(settings, store, job_id)
    thr = _threshold(networks, threshold)
    ov = networks.overview(threshold=thr)
    width = int(networks.width)
    source = networks.key_source(thr)
    return {"n_layers": int(networks.n_layers), "width": width, "grid": list(networks.grid), "threshold": thr,
            "density": encoding.uint8_array(np.asarray(ov["density"]), quantise=False),
            "max_z": encoding.uint8_array(np.asarray(ov["max_z"]), quantise=True),
            "key_source": encoding.uint8_array(source, quantise=False),
            "key_sources": networks.key_source_summary(source)}


def map_set(settings: Settings, store: JobStore, job_id: str, threshold: float | None) -> dict[str, Any]:
    """Every component's map in one sparse payload (for galleries): the neurons with |z| > threshold.

    Per neuron the signal with the larger |z| is kept, signed. Component ``c``'s entries are
    ``index[offsets[c]:offsets[c+1]]`` (flat ``map_layer_position * width + neuron``) and
    ``values[...] * scale``.
    """
    networks = load_networks(settings, store, job_id)
    thr = _threshold(networks, threshold)
    with _cache_lock:
        cached = _map_sets.get(networks, {}).get(thr)
    if cached is not None:
        return cached
    maps = np.asarray(networks.maps, dtype=np.float32)  # (n_comp, n_map_layers, n_signals, width)
    signed = maps[:, :, 0, :]
    for s in range(1, maps.shape[2]):
        other = maps[:, :, s, :]
        signed = np.where(np.abs(other) > np.abs(signed), other, signed)
    signed = signed.reshape(maps.shape[0], -1)  # (n_comp, n_map_layers * width)
    comp, flat = np.nonzero(np.abs(signed) > thr)  # row-major: grouped by component, sorted
    offsets = np.searchsorted(comp, np.arange(maps.shape[0] + 1)).astype(np.uint32)
    values = encoding.int8_array(signed[comp, flat])
    layers = np.asarray(networks.component_layer)
    out = {"threshold": thr, "mode": networks.mode, "n_components": int(maps.shape[0]), "width": int(networks.width),
            "grid": list(networks.grid), "n_map_layers": int(maps.shape[1]),
            "map_layers": None if networks.mode == "per-layer" else [int(x) for x in networks.layers],
            "component_layer": [int(x) for x in layers],
            "offsets": encoding.raw_array(offsets), "index": encoding.raw_array(flat.astype(np.uint32)),
            "values": values}
    with _cache_lock:
        per_run = _map_sets.setdefault(networks, {})
        if len(per_run) > 4:
            per_run.clear()
        per_run[thr] = out
    return out


def layout(settings: Settings, store: JobStore, job_id: str, name: str) -> dict[str, Any]:
    """Where every neuron is drawn (``name``: "atlas" or "index") and, in the atlas, its network."""
    networks = load_networks(settings, store, job_id)
    positions = np.asarray(networks.layout(name), dtype=np.uint32)           # (n_layers, width)
    network = np.asarray(networks.atlas()["network"], dtype=np.int64) + 1      # 0 = background, either layout
    return {"name": name, "n_layers": int(networks.n_layers), "width": int(networks.width),
            "grid": list(networks.grid), "positions": encoding.raw_array(positions),
            "network": encoding.raw_array(network.astype(np.uint32))}


def check_choice(networks, networks_ids: list[int] | None, protected: list[int] | None) -> None:
    n = int(networks.n_components)
    for k in networks_ids or []:
        if not 0 <= k < n:
            raise ApiError(422, f"networks: no component {k} (ids are 0..{n - 1})", "networks")
    for layer in protected or []:
        if not 0 <= layer < networks.n_layers:
            raise ApiError(422, f"protected_layers: no layer {layer} (layers are 0..{networks.n_layers - 1})",
                           "protected_layers")


def preview(settings: Settings, store: JobStore, job_id: str, req: PreviewRequest) -> dict[str, Any]:
    networks = load_networks(settings, store, job_id)
    check_choice(networks, req.networks, req.protected_layers)
    threshold, target_ratio = default_choice(networks, req.threshold, req.target_ratio)
    # a ConfigError (e.g. the chosen networks exceed the budget, saying by how much) answers 422
    plan = networks.plan(threshold=threshold, target_ratio=target_ratio, networks=req.networks,
                         protected_layers=req.protected_layers, uniform=req.uniform, ratio_of=req.ratio_of)
    return plain(plan)


def default_choice(networks, threshold: float | None, target_ratio: float | None) -> tuple[float | None, float | None]:
    """Neither threshold nor target ratio means the analysis' own threshold."""
    if threshold is None and target_ratio is None:
        return float(networks.threshold), None
    return threshold, target_ratio


# -- downloads ---------------------------------------------------------------------------------------
def _write_report(path: Path, job: dict[str, Any], table: dict[str, Any]) -> None:
    rows = "".join(
        f"<tr><td>{c['id']}</td><td>{c['layer']}</td><td>{c['n_key']}</td><td>{c['peak_z']:.2f}</td>"
        f"<td>{c['stability']:.2f}</td><td>{html.escape(str(c['top_genre']))}</td>"
        f"<td>{html.escape(c['label'])}</td><td>{html.escape(c.get('name', ''))}</td></tr>"
        for c in table["components"])
    params = html.escape(json.dumps(job["params"], indent=1))
    path.write_text(
        "<!doctype html><meta charset='utf-8'><title>fnprune analysis " + html.escape(job["id"]) + "</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:right}</style>"
        f"<h1>Analysis {html.escape(job['id'])}</h1><pre>{params}</pre>"
        f"<p>{table['n_layers']} layers × {table['width']} neurons, mode {html.escape(table['mode'])}, "
        f"threshold |z| &gt; {table['threshold']:.2f}</p>"
        "<table><tr><th>id</th><th>layer</th><th>key neurons</th><th>peak z</th><th>stability</th>"
        f"<th>top genre</th><th>label</th><th>name</th></tr>{rows}</table>")


def _all_names(settings: Settings, job_id: str, networks) -> dict[str, str]:
    """Every network's name: the user's where given, else the automatic one."""
    user = get_names(settings, job_id)
    return {str(k): user.get(str(k)) or auto for k, auto in enumerate(networks.auto_names())}


def artifact(settings: Settings, store: JobStore, job_id: str, name: str, threshold: float | None = None,
             target_ratio: float | None = None, layout_name: str = "index") -> tuple[Path, str, str]:
    """Write (or reuse) an export; returns (path, media type, download filename)."""
    if name not in ARTIFACTS:
        raise ApiError(404, f"no artifact {name!r}; choose one of {', '.join(ARTIFACTS)}", "artifact")
    job = finished_job(store, job_id)
    networks = load_networks(settings, store, job_id)
    filename, media = ARTIFACTS[name]
    export_dir = settings.job_dir("analysis", job_id) / "exports"
    export_dir.mkdir(parents=True, exist_ok=True)
    suffix = ""
    if name == "masks":
        if threshold is not None and target_ratio is not None:
            raise ApiError(422, "give either threshold or target_ratio, not both", "threshold")
        suffix = f"-t{threshold}" if threshold is not None else (f"-r{target_ratio}" if target_ratio else "")
    if name == "maps" and layout_name != "index":
        suffix = f"-{layout_name}"
    path = export_dir / (Path(filename).stem.split(".")[0] + suffix + "".join(Path(filename).suffixes))
    if name == "maps" and path.exists():
        return path, media, f"fnprune-{job_id}-{path.name}"
    from fnprune.io import atomic_path

    with atomic_path(path) as tmp:  # two requests writing the same artifact at once each get their own
        _write_artifact(settings, store, job, networks, name, tmp, threshold, target_ratio, layout_name)
    return path, media, f"fnprune-{job_id}-{path.name}"


def _write_artifact(settings: Settings, store: JobStore, job: dict[str, Any], networks, name: str, tmp: Path,
                    threshold: float | None, target_ratio: float | None, layout_name: str) -> None:
    from fnprune import io as fio

    job_id = job["id"]
    if name == "masks":
        threshold, target_ratio = default_choice(networks, threshold, target_ratio)
        mask = networks.key_mask(threshold=threshold, target_ratio=target_ratio)
        plan = networks.plan(threshold=threshold, target_ratio=target_ratio)
        fio.export_mask_json(mask, tmp, plain({"analysis_id": job_id, **plan, "names": _all_names(settings, job_id,
                                                                                                    networks)}))
    elif name == "maps":
        fio.export_nifti(networks, tmp, layout=layout_name)
    elif name == "labels":
        labels = get_labels(settings, job_id)
        n = int(networks.n_components)
        names = _all_names(settings, job_id, networks)
        fio.export_fix_labels({k: labels.get(str(k), "unknown") for k in range(n)}, tmp, n,
                              names={k: names[str(k)] for k in range(n)})
    else:
        _write_report(tmp, job, networks_table(settings, store, job_id, None))
