"""Ablations: what does a network do? Zero its key neurons in the dense model (the analysis' model) and score
held-out documents of the analysis' corpus next to a same-size random-neuron control.

The work is the library's (:func:`fnprune.evaluation.ablation.ablate`, also ``fnprune ablate``); this module
validates a request before queueing, runs the job in the worker and shapes the result. A finished (or
queued, or running) ablation with the same analysis and parameters is answered again instead of recomputed.
"""

from __future__ import annotations

from typing import Any

from ..core.config import Settings
from ..core.errors import ApiError
from ..schemas import AblationRequest, AnalysisRequest
from . import analyses, catalog
from .jobs import JobStore

KIND = "ablation"


def _params(analysis_id: str, req: AblationRequest) -> dict[str, Any]:
    """The job's params: the request with its networks sorted and unique (equal choices, one cache entry)."""
    return {"analysis_id": analysis_id, **req.model_dump(), "networks": sorted(set(req.networks))}


def create(analysis_id: str, req: AblationRequest, settings: Settings, store: JobStore, enqueue
           ) -> tuple[dict[str, Any], bool]:
    """``(the job, whether it was already there)``; every check that needs no model answers 4xx first."""
    from fnprune.pruning.selection import component_key_masks

    analysis = store.get(analysis_id, "analysis")
    if analysis is None:
        raise ApiError(404, f"analysis_id: no analysis with id {analysis_id!r}", "analysis_id")
    networks = analyses.load_networks(settings, store, analysis_id)  # 409 unfinished, 410 gone
    analyses.check_choice(networks, req.networks, None)               # 422 networks: an id out of range
    params = _params(analysis_id, req)
    keys = component_key_masks(networks, params["networks"], float(networks.threshold))  # (k, n_layers, width)
    empty = [c for c, mask in zip(params["networks"], keys, strict=True) if not mask.any()]
    if empty:
        raise ApiError(422, f"networks: {', '.join(map(str, empty))} {'has' if len(empty) == 1 else 'have'} no key "
                            f"neurons (|z| > {networks.threshold:g}); zeroing {'it' if len(empty) == 1 else 'them'} "
                            f"would change nothing", "networks")
    a_req = AnalysisRequest(**analysis["params"])
    n_docs = catalog.corpus_info(a_req.corpus, settings).get("n_documents")
    if n_docs is not None and n_docs < 10:
        raise ApiError(422, f"texts: corpus {a_req.corpus!r} has {n_docs} documents and the analysis read them all: "
                            "none is held out to score", "texts")
    return store.reuse_or_create(KIND, params, enqueue)


def list_for(store: JobStore, analysis_id: str) -> list[dict[str, Any]]:
    """The ablations of one analysis, newest first."""
    return [j for j in store.list_jobs(KIND) if j["params"].get("analysis_id") == analysis_id]


# -- running (worker side) ------------------------------------------------------------------------------
def run_ablation(settings: Settings, job_id: str, params: dict[str, Any], progress) -> dict[str, Any]:
    """Worker side: the analysis' model and networks, the held-out documents of its corpus (those it did not
    read: :func:`fnprune.corpus.load_split`), then :func:`fnprune.evaluation.ablation.ablate`."""
    from fnprune.errors import CorpusError
    from fnprune.evaluation.ablation import ablate
    from fnprune.progress import report

    analysis_id = params["analysis_id"]
    req = AblationRequest(**{k: v for k, v in params.items() if k != "analysis_id"})
    report(progress, "load", 0.0, "loading the networks and the held-out documents")
    a_req, networks = analyses.for_worker(settings, analysis_id)
    docs = heldout_documents(settings, a_req, req.texts)
    if not docs:
        raise CorpusError(f"corpus {a_req.corpus!r} has no document held out from the analysis", field="texts")
    report(progress, "load", 0.5, "loading the model")
    model, tokenizer = catalog.load_model(a_req.model, settings)
    result = ablate(model, tokenizer, networks, req.networks, docs, window=req.max_tokens, seed=req.seed,
                    n_tokens=req.top_tokens, progress=progress)
    return api_result(analysis_id, result)


def heldout_documents(settings: Settings, a_req: AnalysisRequest, n: int):
    """The first ``n`` held-out documents of the analysis' corpus (its genres and sampling): none of them
    was among the documents the analysis read."""
    from fnprune.corpus import load_split

    return load_split(catalog.resolve_corpus(a_req.corpus, settings), a_req.n_texts, n, genres=a_req.genres,
                      sampling=a_req.sampling)[1]


def api_result(analysis_id: str, result: dict[str, Any]) -> dict[str, Any]:
    """:func:`fnprune.evaluation.ablation.ablate`'s dict -> the API's :class:`AblationResult`."""
    out = {k: result[k] for k in ("networks", "threshold", "n_neurons", "neurons_per_layer", "window", "seed")}
    out["analysis_id"] = analysis_id
    out["genres"] = [{"genre": label, **row} for label, row in result["by_label"].items()]
    out["all"] = {"genre": "all", **result["all"]}
    out["top_tokens"] = result["top_tokens"]
    return analyses.plain(out)
