"""Prunings: keep the key neurons of an analysis, prune, save the model, evaluate dense vs pruned."""

from __future__ import annotations

import copy
import html
import json
import math
import shutil
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fnprune.options import DEFAULT_CALIBRATION_DOCS, DEFAULT_CALIBRATION_TOKENS, DEFAULT_MAX_TOKENS
from fnprune.progress import report

from ..core.config import Settings
from ..core.errors import ApiError
from ..schemas import AnalysisRequest, PruningRequest
from . import analyses, catalog
from .jobs import JobStore
from .lookup import succeeded_or_409

ARTIFACTS = ("model", "report", "masks")


# -- creating -----------------------------------------------------------------------------------------
def _spec(req: PruningRequest, networks):
    """``(the library's PruningSpec for a request, where its target came from)``. Neither threshold
    nor target ratio: the analysis' threshold where the method sizes layers by the network score,
    else the default target ratio (:func:`fnprune.recipe.default_target`), so the defaults always
    work together."""
    from fnprune.recipe import PruningSpec, default_target

    spec = PruningSpec(method=req.method, target_ratio=req.target_ratio, threshold=req.threshold,
                       networks=None if req.networks is None else tuple(req.networks),
                       allocation="uniform" if req.uniform else "default",
                       protected_layers=None if req.protected_layers is None else tuple(req.protected_layers),
                       repair=req.repair, sequential=req.sequential, heads_fraction=req.heads_fraction,
                       ratio_of=req.ratio_of)
    return default_target(spec, networks.threshold)


# PruningSpec fields named differently in the request
_REQUEST_FIELD = {"allocation": "uniform", "heads_fraction": "heads"}


def request_field(field: str | None) -> str | None:
    """The request field a library error's ``field`` is about (None when the request has no such field)."""
    field = _REQUEST_FIELD.get(field, field)
    return field if field in PruningRequest.model_fields else None


def create(req: PruningRequest, settings: Settings, store: JobStore, enqueue) -> dict[str, Any]:
    from fnprune.errors import ConfigError

    if store.get(req.analysis_id, "analysis") is None:
        raise ApiError(404, f"analysis_id: no analysis with id {req.analysis_id!r}", "analysis_id")
    networks = analyses.load_networks(settings, store, req.analysis_id)
    analyses.check_choice(networks, req.networks, req.protected_layers)
    # Everything the recipe checks before touching a model fails here (422), before a job is queued.
    spec, _ = _spec(req, networks)
    try:
        spec.validated(have_networks=True)
        networks.plan(threshold=spec.threshold, target_ratio=spec.target_ratio, networks=req.networks,
                      protected_layers=req.protected_layers, uniform=req.uniform, ratio_of=req.ratio_of)
    except ConfigError as exc:
        raise ApiError(422, str(exc), request_field(exc.field)) from exc
    job = store.create("pruning", req.model_dump())
    enqueue(job["id"])
    return store.get(job["id"]) or job


# -- running (worker side) ------------------------------------------------------------------------------
MIN_CALIBRATION = (DEFAULT_CALIBRATION_DOCS, DEFAULT_CALIBRATION_TOKENS)  # the CLI's --calib-docs / --max-tokens


def calibration_size(req: PruningRequest, a_req: AnalysisRequest) -> tuple[int, int]:
    """(documents, tokens per document) the pruning calibrates on: the request's, else the analysis'
    own but at least :data:`MIN_CALIBRATION`."""
    return (req.calibration_texts or max(a_req.n_texts, MIN_CALIBRATION[0]),
            req.calibration_tokens or max(a_req.max_tokens, MIN_CALIBRATION[1]))


def _stage(progress, stage: str, dense_ppl: dict[str, float] | None = None):
    """A progress callback for a library call, renamed to ``stage``. ``dense_ppl`` (window -> PPL):
    the library's running perplexity messages (stage ``ppl@<window>``) also name the dense model's."""
    def inner(lib_stage: str, fraction: float, message: str = "") -> None:
        window = lib_stage.removeprefix("ppl@")
        if dense_ppl and message and window in dense_ppl:
            message = f"{message}; dense model {dense_ppl[window]:.2f}"
        report(progress, stage, fraction, message)

    return inner


def run_pruning(settings: Settings, job_id: str, params: dict[str, Any], progress) -> dict[str, Any]:
    from dataclasses import asdict, replace

    from fnprune import evaluate
    from fnprune.corpus import load_corpus, split_heldout
    from fnprune.fidelity import most_stable_networks, network_fidelity
    from fnprune.models import load_model
    from fnprune.networks import FunctionalNetworks
    from fnprune.pruned_io import save_pruned
    from fnprune.recipe import Calibration, keep_to_mask, prune_with_networks, unrepaired

    req = PruningRequest(**params)
    store = JobStore(settings.jobs_path, settings.HEARTBEAT_TIMEOUT_S)
    analysis = store.get(req.analysis_id, "analysis")
    if analysis is None or analysis["status"] != "succeeded":
        from fnprune.errors import RunDirError

        raise RunDirError(f"analysis {req.analysis_id} is gone or has not succeeded")
    a_req = AnalysisRequest(**analysis["params"])
    job_dir = settings.job_dir("pruning", job_id)
    job_dir.mkdir(parents=True, exist_ok=True)

    report(progress, "load", 0.0, "loading the networks")
    networks = FunctionalNetworks.load(settings.job_dir("analysis", req.analysis_id) / "run")
    spec, target_source = _spec(req, networks)
    notes = []
    if target_source == "analysis threshold":
        notes.append(f"no threshold or target ratio given: the analysis' threshold |z| > {spec.threshold:g}")
    elif target_source == "default target ratio":
        notes.append(f"no threshold or target ratio given: removing {spec.target_ratio:.0%} of all parameters (the "
                     f"default target ratio; method {spec.method!r} does not size layers by a |z| threshold)")
    report(progress, "load", 0.3, f"loading model {a_req.model}")
    model, tokenizer = load_model(catalog.resolve_model(a_req.model, settings), device=settings.DEVICE,
                                  trust_remote_code=settings.TRUST_REMOTE_CODE, allowed_dirs=settings.MODEL_DIRS)
    report(progress, "load", 0.7, "loading the corpus")
    n_calib, calib_tokens = calibration_size(req, a_req)
    limit = max(math.ceil(n_calib * 10 / 9) + 1, 10 * req.n_heldout)
    calibration, heldout = split_heldout(load_corpus(catalog.resolve_corpus(a_req.corpus, settings), limit=limit,
                                                     genres=a_req.genres, sampling=a_req.sampling))
    calibration, heldout = calibration[:n_calib], heldout[: req.n_heldout]
    report(progress, "load", 1.0, f"{len(calibration)} calibration documents"
                                  + (f" (of {n_calib} requested: the corpus has no more)" if len(calibration) < n_calib
                                     else "") + f" x {calib_tokens} tokens, {len(heldout)} held-out documents")

    calib = Calibration(tokenizer, calibration, calib_tokens, requested_docs=n_calib)
    pruned = copy.deepcopy(model)
    outcome = prune_with_networks(pruned, networks, spec, calib, progress=progress)
    notes += outcome.notes
    for note in notes:  # announced in the job's progress too, not only in the result
        report(progress, "prune", 1.0, f"note: {note}")
    report(progress, "save", 0.0, "saving the pruned model")
    model_dir = save_pruned(pruned, tokenizer, job_dir / "model", info={
        "source_model": a_req.model, "analysis_id": req.analysis_id, "pruning_id": job_id, **outcome.info(),
        "notes": notes, "target_source": target_source, "heads_fraction": req.heads_fraction}, overwrite=True)
    keep = keep_to_mask(outcome.keep, networks.width)
    info = outcome.info()
    _write_masks(job_dir / "masks.json", keep, {"analysis_id": req.analysis_id, "pruning_id": job_id,
                                                **analyses.plain(info)})
    report(progress, "save", 1.0, "saved")

    result: dict[str, Any] = {
        "method": spec.method, "allocation": spec.resolved_allocation, "repair": spec.repair,
        "widths": outcome.widths, "original_widths": outcome.original_widths, "ratio_total": outcome.removed_fraction, "ratio_mlp": outcome.removed_mlp_fraction,
        "removed_params": info["removed_params"], "protected_layers": outcome.protected_layers,
        "threshold": outcome.threshold, "chosen_networks": info["chosen_networks"], "keep_digest": outcome.keep_digest,
        "repair_errors": info["repair_errors"], "head_repair_errors": info["head_repair_errors"],
        "target": {"threshold": spec.threshold, "target_ratio": spec.target_ratio, "ratio_of": spec.ratio_of,
                   "source": target_source},
        "calibration": {"texts": len(calibration), "requested_texts": n_calib, "tokens_per_text": calib_tokens},
        "notes": notes}
    if outcome.kv_heads is not None:
        result.update({"heads_fraction": req.heads_fraction, "kv_heads": outcome.kv_heads})
    saved = json.loads((model_dir / "pruning.json").read_text())
    result["architecture"] = saved.get("architecture")
    result["load_snippet"] = _load_snippet(saved)
    if req.evaluate:
        dense_eval, result["dense_cached"] = _dense_evaluation(settings, a_req, model, tokenizer, heldout, progress)
        pruned_eval = evaluate.evaluate_model(pruned, tokenizer, heldout, batch_sizes=(1,), model_dir=model_dir,
                                              per_label=True, max_tokens_per_doc=EVAL_TOKENS_PER_DOC, progress=_stage(progress, "evaluate pruned", {
                                                  w: p["ppl"] for w, p in dense_eval["perplexity"].items()}))
        result["dense"] = _measures(dense_eval, size_bytes=_param_bytes(model))
        result["pruned"] = _measures(pruned_eval, size_bytes=pruned_eval.get("size_on_disk_bytes"))
        dense_by, pruned_by = dense_eval["perplexity_by_label"], pruned_eval["perplexity_by_label"]
        result["ppl_by_genre"] = [{"genre": g, "n_docs": d["n_docs"], "dense": d["ppl"], "pruned": pruned_by[g]["ppl"]}
                                  for g, d in dense_by.items() if g in pruned_by]
        completions = {g["prompt"]: g["completion"] for g in pruned_eval.get("generations", [])}
        result["generations"] = [{"prompt": g["prompt"], "dense": g["completion"],
                                  "pruned": completions.get(g["prompt"], "")}
                                 for g in dense_eval.get("generations", [])]
        ids = list(spec.networks) if spec.networks is not None else most_stable_networks(networks, 20)
        result["fidelity_scope"] = "chosen" if spec.networks is not None else "20 most stable"
        result["fidelity"] = [asdict(f) for f in network_fidelity(
            model, pruned, tokenizer, heldout, networks, ids, outcome.keep, max_tokens=a_req.max_tokens,
            progress=_stage(progress, "fidelity"))]
    del pruned
    # the same choice without the least-squares repair, and the baselines. A baseline removes the MLP neurons'
    # parameters the method removed (the same number of neurons) and no attention head, so it is compared on
    # the MLP choice alone, never with a larger MLP budget standing in for the method's pruned heads.
    steps: list[tuple[str, Any]] = []
    if req.evaluate and spec.repair == "lstsq":
        steps.append(("without repair", replace(spec, repair=unrepaired(spec.method), sequential=False)))
    removed_neurons, removed_neuron_params = _removed_neurons(outcome, model)
    if req.baselines:
        result["baseline_budget"] = {
            "mlp_neurons_removed": removed_neurons, "mlp_params_removed": removed_neuron_params, "heads": "not pruned",
            "description": "each baseline removes as many MLP neurons as the method"
                           + (" and no attention head (the method's pruned heads are not part of its budget)"
                              if outcome.kv_heads is not None else "")}
        if removed_neurons == 0:
            notes.append("no baseline was run: the method removed no MLP neuron")
    budget = {"target_ratio": removed_neuron_params / outcome.dense_mlp_params, "threshold": None, "ratio_of": "mlp"}
    for method in req.baselines if removed_neurons > 0 else ():
        for allocation in ("own", "networks"):
            steps.append((f"{method} ({allocation})", replace(spec, method=method, allocation=allocation,
                                                              heads_fraction=None, **budget)))
    result["baselines"] = []
    for i, (name, step_spec) in enumerate(steps):
        report(progress, "baselines", i / len(steps), name)
        other = copy.deepcopy(model)
        other_outcome = prune_with_networks(other, networks, step_spec, calib)
        ppl = evaluate.perplexity(other, tokenizer, heldout, max_tokens_per_doc=EVAL_TOKENS_PER_DOC)["ppl"]
        entry = {"name": name, "method": step_spec.method, "allocation": step_spec.resolved_allocation,
                 "repair": step_spec.repair, "ppl": ppl, "ratio_total": other_outcome.removed_fraction,
                 "ratio_mlp": other_outcome.removed_mlp_fraction,
                 "mlp_neurons_removed": _removed_neurons(other_outcome, model)[0]}
        if name == "without repair":
            result["repair_comparison"] = {"repaired_ppl": result["pruned"]["ppl"], "unrepaired_ppl": ppl,
                                           "unrepaired_repair": step_spec.repair}
        else:
            result["baselines"].append(entry)
        del other
    if steps:
        report(progress, "baselines", 1.0, "done")
    _write_report(job_dir, job_id, req, result)
    return analyses.plain(result)


def _removed_neurons(outcome, dense_model) -> tuple[int, int]:
    """(MLP neurons removed, their parameters) -- without the biases a repair adds."""
    from fnprune.mlp import find_mlps

    per_neuron = [a.params_per_neuron for a in find_mlps(dense_model)]
    gone = [o - w for o, w in zip(outcome.original_widths, outcome.widths, strict=True)]
    return int(sum(gone)), int(sum(g * p for g, p in zip(gone, per_neuron, strict=True)))


DENSE_CACHE_VERSION = 2  # bump when what evaluate_model measures or how changes
# METHOD.md §2's protocol: each held-out document's first 512 tokens (concatenated, windows of 512 and 128)
EVAL_TOKENS_PER_DOC = DEFAULT_MAX_TOKENS


def _dense_evaluation(settings: Settings, a_req: AnalysisRequest, model, tokenizer, heldout, progress
                      ) -> tuple[dict[str, Any], bool]:
    """The dense model's evaluation on these held-out documents, computed once per model + documents +
    protocol and reused by every later pruning (``data_dir/cache/dense-<key>.json``, written atomically)."""
    import hashlib

    from fnprune import evaluate
    from fnprune.io import atomic_write_json

    key = hashlib.sha256(json.dumps({
        "version": DENSE_CACHE_VERSION, "model": a_req.model, "max_tokens": EVAL_TOKENS_PER_DOC, "windows": [512, 128],
        "docs": [[d.id, hashlib.sha256(d.text.encode()).hexdigest()] for d in heldout]}).encode()).hexdigest()[:32]
    path = settings.data_dir / "cache" / f"dense-{key}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text()), True
        except (OSError, ValueError):
            pass  # a damaged cache entry is recomputed
    dense = evaluate.evaluate_model(model, tokenizer, heldout, batch_sizes=(1,), per_label=True,
                                    max_tokens_per_doc=EVAL_TOKENS_PER_DOC, progress=_stage(progress, "evaluate dense"))
    atomic_write_json(path, dense)
    return dense, False


def _measures(evaluation: dict[str, Any], size_bytes: int | None) -> dict[str, Any]:
    """fnprune.evaluate.evaluate_model's dict -> the API's ``{"ppl", "ppl_128", "params", ...}``."""
    ppl = evaluation["perplexity"]
    speed = evaluation.get("speed", {}).get("batch_1", {})
    return {"ppl": ppl["512"]["ppl"], "ppl_128": ppl["128"]["ppl"], "params": evaluation["params"]["total_params"],
            "mlp_params": evaluation["params"]["mlp_params"], "size_bytes": size_bytes,
            "tokens_per_s": speed.get("decode_tokens_per_s"), "prefill_ms": speed.get("prefill_ms"),
            "peak_rss_bytes": evaluation.get("memory", {}).get("peak_rss_bytes")}


def _param_bytes(model) -> int:
    """float size of the dense model's parameters (what save_pretrained would write, tied ones once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _load_snippet(info: dict[str, Any]) -> str:
    remote = info.get("architecture") == "per-layer"
    extra = ", trust_remote_code=True" if remote else ""
    return (f'from transformers import AutoModelForCausalLM, AutoTokenizer\n'
            f'model = AutoModelForCausalLM.from_pretrained("./model"{extra})\n'
            f'tokenizer = AutoTokenizer.from_pretrained("./model"{extra})')


def _write_masks(path: Path, keep, info: dict[str, Any]) -> None:
    from fnprune import io as fio

    fio.export_mask_json(keep, path, info)  # atomic


def _write_report(job_dir: Path, job_id: str, req: PruningRequest, result: dict[str, Any]) -> None:
    def row(name: str, d: dict | None) -> str:
        if not d:
            return ""
        return (f"<tr><td>{name}</td><td>{d.get('ppl', float('nan')):.2f}</td><td>{d.get('params', 0):,}</td>"
                f"<td>{d.get('size_bytes', 0) / 2**20:.1f} MB</td><td>{d.get('tokens_per_s', 0):.1f}</td></tr>")

    baselines = "".join(f"<tr><td>{html.escape(b['name'])}</td><td>{b['ppl']:.2f}</td>"
                        f"<td colspan=3>{b['ratio_total']:.1%} removed ({b.get('ratio_mlp', 0):.1%} of MLP)</td></tr>"
                        for b in result["baselines"])
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.get("notes", []))
    chosen = "".join(f"<li>network {c['id']} (layer {c['layer']}): key neurons kept: {c['n_kept']} of {c['n_key']}</li>"
                     for c in result.get("chosen_networks", []))
    fidelity = "".join(f"<tr><td>{f['id']}</td><td>{f['layer']}</td><td>{f['correlation']:.3f}</td>"
                       f"<td>{f['output_change_top']:.3f}</td><td>{f['output_change_all']:.3f}</td>"
                       f"<td>{f['n_key_kept']} of {f['n_key']}</td></tr>" for f in result.get("fidelity", []))
    if fidelity:
        fidelity = ("<h2>Network fidelity on held-out text (" + html.escape(result.get("fidelity_scope", "")) + ")</h2>"
                    "<table><tr><th>network</th><th>layer</th><th>time-course r</th><th>output change (top tokens)"
                    "</th><th>output change (all)</th><th>key kept</th></tr>" + fidelity + "</table>")
    rc = result.get("repair_comparison")
    repair = (f"<p>Least-squares repair: held-out PPL {rc['repaired_ppl']:.2f} with, {rc['unrepaired_ppl']:.2f} "
              f"without (repair {html.escape(rc['unrepaired_repair'])}).</p>" if rc else "")
    gens = "".join(f"<h3>{html.escape(g['prompt'])}</h3><p><b>dense</b> {html.escape(g['dense'])}</p>"
                   f"<p><b>pruned</b> {html.escape(g['pruned'])}</p>" for g in result.get("generations", []))
    text = ("<!doctype html><meta charset='utf-8'><title>fnprune pruning " + html.escape(job_id) + "</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px}</style>"
            f"<h1>Pruning {html.escape(job_id)}</h1><pre>{html.escape(json.dumps(req.model_dump(), indent=1))}</pre>"
            f"<p>{result['ratio_total']:.1%} of all parameters removed ({result['ratio_mlp']:.1%} of MLP parameters)."
            f" Widths: {result['widths']}</p>"
            "<table><tr><th>model</th><th>held-out PPL</th><th>params</th><th>size</th><th>tokens/s</th></tr>"
            f"{row('dense', result.get('dense'))}{row('pruned', result.get('pruned'))}{baselines}</table>"
            f"{'<ul>' + chosen + '</ul>' if chosen else ''}{'<h2>Notes</h2><ul>' + notes + '</ul>' if notes else ''}"
            f"{repair}{fidelity}{gens}"
            f"<pre>{html.escape(result['load_snippet'])}</pre>")
    from fnprune.io import atomic_write_text

    atomic_write_text(job_dir / "report.html", text)


# -- downloads ---------------------------------------------------------------------------------------------
def finished_dir(settings: Settings, store: JobStore, job_id: str) -> Path:
    succeeded_or_409(store, job_id, "pruning", "its files")
    return settings.job_dir("pruning", job_id)


def artifact_path(settings: Settings, store: JobStore, job_id: str, name: str) -> Path:
    if name not in ARTIFACTS:
        raise ApiError(404, f"no artifact {name!r}; choose one of {', '.join((*ARTIFACTS, 'gguf'))}", "artifact")
    job_dir = finished_dir(settings, store, job_id)
    path = job_dir / {"model": "model", "report": "report.html", "masks": "masks.json"}[name]
    if not path.exists():
        raise ApiError(410, f"pruning {job_id}: {name} is gone from the server")
    return path


_gguf_locks: dict[Path, threading.Lock] = {}
_gguf_locks_guard = threading.Lock()


def gguf_path(settings: Settings, store: JobStore, job_id: str, out_type: str = "f16") -> Path:
    """The pruned model as one GGUF file of ``out_type`` (``fnprune.export_gguf``), exported on the first
    request into the job's directory (``model-<type>.gguf``, written to a temporary name and renamed) and
    reused after. One export at a time per file in this process; concurrent processes each write their
    own temporary file and the last rename wins (the files are equal). A model the export cannot write
    (not LLaMA-family, a tensor with no GGUF name) is refused with 400 and the library's reason."""
    model_dir = artifact_path(settings, store, job_id, "model")
    path = model_dir.parent / f"model-{out_type}.gguf"
    with _gguf_locks_guard:
        lock = _gguf_locks.setdefault(path, threading.Lock())
    with lock:
        if path.is_file():
            return path
        from fnprune.errors import FnpruneError
        from fnprune.export_gguf import export_gguf
        from fnprune.io import atomic_path

        try:
            with atomic_path(path) as tmp:
                export_gguf(model_dir, tmp, out_type=out_type, overwrite=True)
        except FnpruneError as err:
            raise ApiError(400, f"pruning {job_id} cannot be exported as GGUF: {err}", "artifact") from err
    return path


class _Chunks:
    """A write-only file object collecting what zipfile writes, drained by the streaming generator."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def drain(self) -> Iterator[bytes]:
        parts, self.parts = self.parts, []
        yield from parts


def zip_stream(model_dir: Path, prefix: str = "model") -> Iterator[bytes]:
    """Stream ``model_dir`` as a zip (stored, zip64) without building it on disk or in memory."""
    sink = _Chunks()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:  # type: ignore[arg-type]
        for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
            arcname = f"{prefix}/{path.relative_to(model_dir).as_posix()}"
            with open(path, "rb") as src, archive.open(arcname, "w", force_zip64=True) as dest:
                while chunk := src.read(1 << 20):
                    dest.write(chunk)
                    yield from sink.drain()
            yield from sink.drain()
    yield from sink.drain()


def remove(settings: Settings, job_id: str) -> None:
    shutil.rmtree(settings.job_dir("pruning", job_id), ignore_errors=True)
