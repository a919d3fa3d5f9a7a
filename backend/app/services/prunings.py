"""Prunings: keep the key neurons of an analysis, prune, save the model, evaluate dense vs pruned."""

from __future__ import annotations

import copy
import html
import json
import math
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fnprune.progress import report

from ..core.config import Settings
from ..core.errors import ApiError, not_found
from ..schemas import AnalysisRequest, PruningRequest
from . import analyses, catalog
from .jobs import JobStore

ARTIFACTS = ("model", "report", "masks")


# -- creating -----------------------------------------------------------------------------------------
def create(req: PruningRequest, settings: Settings, store: JobStore, enqueue) -> dict[str, Any]:
    if store.get(req.analysis_id, "analysis") is None:
        raise ApiError(404, f"analysis_id: no analysis with id {req.analysis_id!r}", "analysis_id")
    networks = analyses.load_networks(settings, store, req.analysis_id)
    analyses._check_choice(networks, req.networks, req.protected_layers)
    # Fails early (422) when the target cannot be reached, before a job is queued.
    threshold, target_ratio = analyses.default_choice(networks, req.threshold, req.target_ratio)
    networks.plan(threshold=threshold, target_ratio=target_ratio, networks=req.networks,
                  protected_layers=req.protected_layers, uniform=req.uniform)
    job = store.create("pruning", req.model_dump())
    enqueue(job["id"])
    return store.get(job["id"]) or job


# -- running (worker side) ------------------------------------------------------------------------------
def _stage(progress, stage: str):
    """A progress callback for a library call, renamed to ``stage``."""
    def inner(_stage: str, fraction: float, message: str = "") -> None:
        report(progress, stage, fraction, message)

    return inner


def run_pruning(settings: Settings, job_id: str, params: dict[str, Any], progress) -> dict[str, Any]:
    from fnprune import evaluate
    from fnprune.corpus import load_corpus, split_heldout
    from fnprune.models import load_model
    from fnprune.networks import FunctionalNetworks
    from fnprune.prune import (
        collect_down_input_stats,
        flap_scores,
        keep_from_scores,
        prune_baseline,
        prune_model,
        total_parameters,
    )
    from fnprune.pruned_io import save_pruned

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
    threshold, target_ratio = analyses.default_choice(networks, req.threshold, req.target_ratio)
    choice = {"threshold": threshold, "target_ratio": target_ratio, "networks": req.networks,
              "protected_layers": req.protected_layers, "uniform": req.uniform}
    plan = analyses._plain(networks.plan(**choice))
    keep = networks.key_mask(**choice)  # (n_layers, width) bool, True = key neuron = kept
    report(progress, "load", 0.3, f"loading model {a_req.model}")
    model, tokenizer = load_model(catalog.resolve_model(a_req.model, settings), device=settings.DEVICE,
                                  trust_remote_code=settings.TRUST_REMOTE_CODE, allowed_dirs=settings.MODEL_DIRS)
    report(progress, "load", 0.7, "loading the corpus")
    limit = max(math.ceil(a_req.n_texts * 10 / 9) + 1, 10 * req.n_heldout)
    calibration, heldout = split_heldout(load_corpus(catalog.resolve_corpus(a_req.corpus, settings), limit=limit,
                                                     genres=a_req.genres))
    calibration, heldout = calibration[: a_req.n_texts], heldout[: req.n_heldout]
    report(progress, "load", 1.0, f"{len(calibration)} calibration, {len(heldout)} held-out documents")

    use_flap = req.method == "fn-flap"
    bias = req.bias or use_flap
    stats = None
    if bias or {"wanda-sp", "flap"} & set(req.baselines):
        stats = collect_down_input_stats(model, tokenizer, calibration, max_tokens=a_req.max_tokens,
                                         progress=_stage(progress, "calibrate"))

    pruned = copy.deepcopy(model)
    kv_heads = None
    if req.heads_fraction:
        from fnprune.prune import (
            collect_attention_stats,
            head_group_scores,
            keep_heads_from_scores,
            prune_heads,
        )

        att_stats = collect_attention_stats(model, tokenizer, calibration, a_req.max_tokens,
                                            progress=_stage(progress, "calibrate heads"))
        keep_heads = keep_heads_from_scores(head_group_scores(model, att_stats), req.heads_fraction,
                                            plan["protected_layers"])
        report(progress, "prune", 0.0, "pruning attention heads")
        prune_heads(pruned, keep_heads, bias=att_stats if req.bias else None)
        kv_heads = [len(k) for k in keep_heads]
    if use_flap:  # the networks' per-layer widths, FLAP's fluctuation score within each layer
        import numpy as np

        from fnprune.mlp import find_mlps

        ppn = [a.params_per_neuron for a in find_mlps(model)]
        chosen = keep_from_scores(flap_scores(model, stats), ppn, widths=plan["widths"])
        keep = np.zeros_like(keep)
        for layer, idx in enumerate(chosen):
            keep[layer, np.asarray(idx, dtype=np.int64)] = True
    report(progress, "prune", 0.2, "pruning MLP neurons")
    pruned = prune_model(pruned, keep, bias=stats if bias else None)
    report(progress, "prune", 0.5, "saving the pruned model")
    model_dir = save_pruned(pruned, tokenizer, job_dir / "model", info={
        "source_model": a_req.model, "analysis_id": req.analysis_id, "pruning_id": job_id, **choice,
        "method": req.method, "bias": bias, "threshold_used": plan.get("threshold"),
        "heads_fraction": req.heads_fraction},
        overwrite=True)
    _write_masks(job_dir / "masks.json", keep, {"analysis_id": req.analysis_id, "pruning_id": job_id, **plan})
    report(progress, "prune", 1.0, "saved")

    result: dict[str, Any] = {"widths": plan["widths"], "ratio_total": plan["ratio_total"],
                              "ratio_mlp": plan["ratio_mlp"], "removed_params": plan["removed_params"],
                              "protected_layers": plan["protected_layers"]}
    if kv_heads is not None:
        # the plan counts MLP neurons only; with heads the saved model is the truth
        total_after = total_parameters(pruned)
        result.update({"heads_fraction": req.heads_fraction, "kv_heads": kv_heads,
                       "ratio_total": 1 - total_after / plan["total_params"],
                       "removed_params": plan["total_params"] - total_after})
    info = json.loads((model_dir / "pruning.json").read_text())
    result["architecture"] = info.get("architecture")
    result["load_snippet"] = _load_snippet(info)
    if req.evaluate:
        dense_eval = evaluate.evaluate_model(model, tokenizer, heldout, batch_sizes=(1,),
                                             progress=_stage(progress, "evaluate dense"))
        pruned_eval = evaluate.evaluate_model(pruned, tokenizer, heldout, batch_sizes=(1,), model_dir=model_dir,
                                              progress=_stage(progress, "evaluate pruned"))
        result["dense"] = _measures(dense_eval, size_bytes=_param_bytes(model))
        result["pruned"] = _measures(pruned_eval, size_bytes=pruned_eval.get("size_on_disk_bytes"))
        completions = {g["prompt"]: g["completion"] for g in pruned_eval.get("generations", [])}
        result["generations"] = [{"prompt": g["prompt"], "dense": g["completion"],
                                  "pruned": completions.get(g["prompt"], "")}
                                 for g in dense_eval.get("generations", [])]
    del pruned
    result["baselines"] = []
    steps = [(m, alloc) for m in req.baselines for alloc in ("own", "fn")]
    for i, (method, allocation) in enumerate(steps):
        report(progress, "baselines", i / len(steps), f"{method} ({allocation} allocation)")
        baseline = prune_baseline(copy.deepcopy(model), method, plan["ratio_total"] if allocation == "own" else None,
                                  stats=stats, widths=plan["widths"] if allocation == "fn" else None,
                                  protected_layers=plan["protected_layers"], seed=a_req.seed)
        ppl = evaluate.perplexity(baseline, tokenizer, heldout)["ppl"]
        result["baselines"].append({"method": method, "allocation": allocation, "ppl": ppl,
                                    "ratio_total": 1 - total_parameters(baseline) / plan["total_params"]})
        del baseline
    if steps:
        report(progress, "baselines", 1.0, "done")
    _write_report(job_dir, job_id, req, result)
    return analyses._plain(result)


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
            f'tokenizer = AutoTokenizer.from_pretrained("./model")')


def _write_masks(path: Path, keep, info: dict[str, Any]) -> None:
    from fnprune import io as fio

    tmp = path.with_name(".tmp-" + path.name)
    fio.export_mask_json(keep, tmp, info)
    os.replace(tmp, path)


def _write_report(job_dir: Path, job_id: str, req: PruningRequest, result: dict[str, Any]) -> None:
    def row(name: str, d: dict | None) -> str:
        if not d:
            return ""
        return (f"<tr><td>{name}</td><td>{d.get('ppl', float('nan')):.2f}</td><td>{d.get('params', 0):,}</td>"
                f"<td>{d.get('size_bytes', 0) / 2**20:.1f} MB</td><td>{d.get('tokens_per_s', 0):.1f}</td></tr>")

    baselines = "".join(f"<tr><td>{html.escape(b['method'])} ({b['allocation']})</td><td>{b['ppl']:.2f}</td>"
                        f"<td colspan=3>{b['ratio_total']:.1%} removed</td></tr>" for b in result["baselines"])
    gens = "".join(f"<h3>{html.escape(g['prompt'])}</h3><p><b>dense</b> {html.escape(g['dense'])}</p>"
                   f"<p><b>pruned</b> {html.escape(g['pruned'])}</p>" for g in result.get("generations", []))
    text = ("<!doctype html><meta charset='utf-8'><title>fnprune pruning " + html.escape(job_id) + "</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px}</style>"
            f"<h1>Pruning {html.escape(job_id)}</h1><pre>{html.escape(json.dumps(req.model_dump(), indent=1))}</pre>"
            f"<p>{result['ratio_total']:.1%} of all parameters removed ({result['ratio_mlp']:.1%} of MLP parameters)."
            f" Widths: {result['widths']}</p>"
            "<table><tr><th>model</th><th>held-out PPL</th><th>params</th><th>size</th><th>tokens/s</th></tr>"
            f"{row('dense', result.get('dense'))}{row('pruned', result.get('pruned'))}{baselines}</table>{gens}"
            f"<pre>{html.escape(result['load_snippet'])}</pre>")
    tmp = job_dir / ".tmp-report.html"
    tmp.write_text(text)
    os.replace(tmp, job_dir / "report.html")


# -- downloads ---------------------------------------------------------------------------------------------
def finished_dir(settings: Settings, store: JobStore, job_id: str) -> Path:
    job = store.get(job_id, "pruning")
    if job is None:
        raise not_found("pruning", job_id)
    if job["status"] != "succeeded":
        raise ApiError(409, f"pruning {job_id} is {job['status']}; its files exist once it has succeeded")
    return settings.job_dir("pruning", job_id)


def artifact_path(settings: Settings, store: JobStore, job_id: str, name: str) -> Path:
    if name not in ARTIFACTS:
        raise ApiError(404, f"no artifact {name!r}; choose one of {', '.join(ARTIFACTS)}", "artifact")
    job_dir = finished_dir(settings, store, job_id)
    path = job_dir / {"model": "model", "report": "report.html", "masks": "masks.json"}[name]
    if not path.exists():
        raise ApiError(410, f"pruning {job_id}: {name} is gone from the server")
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
