"""Prunings: keep the key neurons of an analysis, prune, save the model, evaluate dense vs pruned."""

from __future__ import annotations

import html
import json
import shutil
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fnprune.options import DEFAULT_CALIBRATION_DOCS, DEFAULT_CALIBRATION_TOKENS
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
    else the default target ratio (:func:`fnprune.pruning.spec.default_target`), so the defaults always
    work together."""
    from fnprune.pruning.spec import PruningSpec, default_target

    spec = PruningSpec(method=req.method, target_ratio=req.target_ratio, threshold=req.threshold,
                       networks=None if req.networks is None else tuple(req.networks),
                       allocation="uniform" if req.uniform else "default",
                       protected_layers=None if req.protected_layers is None else tuple(req.protected_layers),
                       repair=req.repair, sequential=req.sequential, heads_fraction=req.heads_fraction,
                       ratio_of=req.ratio_of, recover_epochs=req.recover_epochs, recover_lr=req.recover_lr)
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
    if req.protect is not None:
        from . import protect

        a_req = AnalysisRequest(**store.get(req.analysis_id, "analysis")["params"])
        protect.check(req, settings, networks, calibration_size(req, a_req)[0])
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


def run_pruning(settings: Settings, job_id: str, params: dict[str, Any], progress) -> dict[str, Any]:
    """Worker side: the library's pruning job (:func:`fnprune.pruning.job.prune_job`) with this server's
    model loading, paths and dense-evaluation cache; then the API's result, masks and HTML report."""
    from fnprune.pruning.job import PruneJob, prune_job
    from fnprune.pruning.recipe import keep_to_mask

    req = PruningRequest(**params)
    report(progress, "load", 0.0, "loading the networks")
    a_req, networks = analyses.for_worker(settings, req.analysis_id)
    job_dir = settings.job_dir("pruning", job_id)
    job_dir.mkdir(parents=True, exist_ok=True)
    spec, target_source = _spec(req, networks)
    notes = []
    if target_source == "analysis threshold":
        notes.append(f"no threshold or target ratio given: the analysis' threshold |z| > {spec.threshold:g}")
    elif target_source == "default target ratio":
        notes.append(f"no threshold or target ratio given: removing {spec.target_ratio:.0%} of all parameters (the "
                     f"default target ratio; method {spec.method!r} does not size layers by a |z| threshold)")
    n_calib, calib_tokens = calibration_size(req, a_req)
    dense_cached = []

    def dense_evaluation(model, tokenizer, heldout, stage_progress) -> dict[str, Any]:
        dense, cached = _dense_evaluation(settings, a_req, model, tokenizer, heldout, stage_progress)
        dense_cached.append(cached)
        return dense

    protecting = None
    if req.protect is not None:  # keep another text working (services/protect.py)
        from .protect import ProtectRun

        protecting = ProtectRun(req.protect, settings, networks, a_req, req.n_heldout)

    job = PruneJob(
        model_spec=a_req.model, corpus=catalog.resolve_corpus(a_req.corpus, settings), out=job_dir / "model",
        n_calibration=n_calib, calibration_tokens=calib_tokens, n_heldout=req.n_heldout, genres=a_req.genres,
        sampling=a_req.sampling, overwrite=True, fidelity="chosen" if req.evaluate else None,
        fidelity_tokens=a_req.max_tokens, evaluate=req.evaluate, dense_evaluation=dense_evaluation,
        unrepaired=req.evaluate, baselines=req.baselines,
        load_model=lambda _: catalog.load_model(a_req.model, settings),
        describe=lambda done: {"source_model": a_req.model, "analysis_id": req.analysis_id, "pruning_id": job_id,
                               **done.outcome.info(), "notes": list(done.notes), "target_source": target_source,
                               "heads_fraction": req.heads_fraction,
                               "protect": protecting.info if protecting else None},
        adjust=protecting.adjust if protecting else None,
        measure=protecting.measure if protecting and req.evaluate else None)
    done = prune_job(networks, spec, job, progress, notes=notes)
    outcome = done.outcome
    info = outcome.info()
    _write_masks(job_dir / "masks.json", keep_to_mask(outcome.keep, networks.width),
                 {"analysis_id": req.analysis_id, "pruning_id": job_id, **analyses.plain(info)})

    mixing = protecting.info if protecting and (protecting.info or {}).get("by") == "calibration" else None
    mixed_in = int(mixing["protect_docs"]) if mixing else 0  # of the calibration texts, from the protected text
    result: dict[str, Any] = {
        "method": spec.method, "allocation": spec.resolved_allocation, "repair": spec.repair,
        "widths": outcome.widths, "original_widths": outcome.original_widths, "ratio_total": outcome.removed_fraction,
        "ratio_mlp": outcome.removed_mlp_fraction,
        "removed_params": info["removed_params"], "protected_layers": outcome.protected_layers,
        "threshold": outcome.threshold, "chosen_networks": info["chosen_networks"], "keep_digest": outcome.keep_digest,
        "repair_errors": info["repair_errors"], "head_repair_errors": info["head_repair_errors"],
        "recovery": info["recovery"],
        "target": {"threshold": spec.threshold, "target_ratio": spec.target_ratio, "ratio_of": spec.ratio_of,
                   "source": target_source},
        "calibration": {"texts": len(done.calibration), "requested_texts": n_calib, "tokens_per_text": calib_tokens,
                        "protected_texts": mixed_in},
        "notes": done.notes}
    if outcome.kv_heads is not None:
        result.update({"heads_fraction": req.heads_fraction, "kv_heads": outcome.kv_heads})
    saved = json.loads((done.model_dir / "pruning.json").read_text())
    result["architecture"] = saved.get("architecture")
    result["load_snippet"] = _load_snippet(saved)
    if req.evaluate:
        dense_eval, pruned_eval = done.dense_eval, done.pruned_eval
        result["dense_cached"] = dense_cached[0]
        result["dense"] = _measures(dense_eval, size_bytes=done.dense_param_bytes)
        result["pruned"] = _measures(pruned_eval, size_bytes=pruned_eval.get("size_on_disk_bytes"))
        dense_by, pruned_by = dense_eval["perplexity_by_label"], pruned_eval["perplexity_by_label"]
        result["ppl_by_genre"] = [{"genre": g, "n_docs": d["n_docs"], "dense": d["ppl"], "pruned": pruned_by[g]["ppl"]}
                                  for g, d in dense_by.items() if g in pruned_by]
        completions = {g["prompt"]: g["completion"] for g in pruned_eval.get("generations", [])}
        result["generations"] = [{"prompt": g["prompt"], "dense": g["completion"],
                                  "pruned": completions.get(g["prompt"], "")}
                                 for g in dense_eval.get("generations", [])]
        result["fidelity_scope"] = done.fidelity_scope
        result["fidelity"] = [asdict(f) for f in done.fidelity]
    if done.baseline_budget is not None:
        result["baseline_budget"] = done.baseline_budget
    result["baselines"] = []
    for row in done.comparisons:
        if row["name"] == "without repair":
            result["repair_comparison"] = {"repaired_ppl": result["pruned"]["ppl"], "unrepaired_ppl": row["ppl"],
                                           "unrepaired_repair": row["repair"]}
        else:
            result["baselines"].append(row)
    if protecting is not None:
        result["protect"] = protecting.result(done.measured)
    _write_report(job_dir, job_id, req, result)
    return analyses.plain(result)


DENSE_CACHE_VERSION = 2  # bump when what evaluate_model measures or how changes


def _dense_evaluation(settings: Settings, a_req: AnalysisRequest, model, tokenizer, heldout, progress
                      ) -> tuple[dict[str, Any], bool]:
    """The dense model's evaluation on these held-out documents, computed once per model + documents +
    protocol and reused by every later pruning (``data_dir/cache/dense-<key>.json``, written atomically)."""
    from fnprune.pruning.job import EVAL_TOKENS_PER_DOC, evaluate_for_job

    from .cache import cached_json, docs_key

    key = {"version": DENSE_CACHE_VERSION, "model": a_req.model, "max_tokens": EVAL_TOKENS_PER_DOC,
           "windows": [512, 128], "docs": docs_key(heldout)}
    return cached_json(settings, "dense", key, lambda: evaluate_for_job(model, tokenizer, heldout, progress))


def _measures(evaluation: dict[str, Any], size_bytes: int | None) -> dict[str, Any]:
    """fnprune.evaluation.metrics.evaluate_model's dict -> the API's ``{"ppl", "ppl_128", "params", ...}``."""
    ppl = evaluation["perplexity"]
    speed = evaluation.get("speed", {}).get("batch_1", {})
    return {"ppl": ppl["512"]["ppl"], "ppl_128": ppl["128"]["ppl"], "params": evaluation["params"]["total_params"],
            "mlp_params": evaluation["params"]["mlp_params"], "size_bytes": size_bytes,
            "tokens_per_s": speed.get("decode_tokens_per_s"), "prefill_ms": speed.get("prefill_ms"),
            "peak_rss_bytes": evaluation.get("memory", {}).get("peak_rss_bytes")}


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
    """The pruned model as one GGUF file of ``out_type`` (``fnprune.models.export_gguf``), exported on the first
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
        from fnprune.models.export_gguf import export_gguf

        try:
            export_gguf(model_dir, path, out_type=out_type, overwrite=True)  # written atomically
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
