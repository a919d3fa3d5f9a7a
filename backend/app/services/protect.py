"""Protect a capability (issue 22): a pruning's ``protect`` checked before it is queued, the worker's hooks
around :func:`fnprune.pruning.protect.apply_protection` (the CLI's ``--protect`` runs the same function), the
result's ``protect`` block, and the networks proposal.

The proposal (``POST /api/analyses/{id}/protect-proposal``) is a job of kind ``proposal``, like an ablation:
checked here before it is queued, run by the worker (it loads the analysis' model, which the API process
never does), cancellable, and answered again instead of recomputed for the same request. It reads a few
short documents (:data:`PROPOSAL_CALIBRATION_DOCS` of the calibration text, at most ``docs`` of the
protected one). The pruning proposes again on its whole calibration (what it forced is in the result's
block), so the proposal is a preview on fewer documents, and says so.
"""

from __future__ import annotations

from typing import Any

from ..core.config import Settings
from ..core.errors import ApiError
from ..schemas import (
    AnalysisRequest,
    ProtectProposal,
    ProtectRequest,
    ProtectResult,
    ProtectSource,
    PruningRequest,
)
from . import catalog
from .jobs import JobStore

PROPOSAL_CALIBRATION_DOCS = 8  # calibration documents the proposal measures
PROPOSAL_KIND = "proposal"


# -- before a job is queued ---------------------------------------------------------------------------
def check_source(source: ProtectSource, settings: Settings, networks, by: str = "networks") -> None:
    """The protected text exists (corpus, genres) and N fits the analysis: 4xx naming ``protect.<field>``."""
    from fnprune.corpus import check_genres
    from fnprune.errors import CorpusError

    if source.corpus is not None:
        try:
            catalog.resolve_corpus(source.corpus, settings)
        except ApiError as exc:
            raise ApiError(exc.status_code, f"protect.{exc.detail}", "protect.corpus") from exc
        try:
            check_genres(source.genres, catalog.corpus_info(source.corpus, settings)["labels"], source.corpus)
        except CorpusError as exc:
            raise ApiError(422, f"protect.{exc}", "protect.genres") from exc
    if by == "networks" and source.networks > networks.n_components:
        raise ApiError(422, f"protect.networks: the analysis has {networks.n_components} networks, "
                            f"{source.networks} asked for", "protect.networks")


def check(req: PruningRequest, settings: Settings, networks, n_calibration: int) -> None:
    """Everything about ``req.protect`` that can be refused before the job is queued."""
    p = req.protect
    if p is None:
        return
    check_source(p, settings, networks, p.by)
    if p.compare_unconstrained and not req.evaluate:
        raise ApiError(422, "protect.compare_unconstrained: needs evaluate (the comparison is held-out perplexity)",
                       "protect.compare_unconstrained")
    if p.by == "calibration" and n_calibration < 2:
        raise ApiError(422, "calibration_texts: mixing the protected text into the calibration needs at least 2 "
                            "calibration documents", "calibration_texts")


# -- the protected documents ------------------------------------------------------------------------------
def source_name(p: ProtectSource) -> str:
    if p.corpus is not None:
        return p.corpus + (f":{','.join(p.genres)}" if p.genres else "")
    return f"{len(p.texts)} pasted text{'s' if len(p.texts) != 1 else ''}"


def documents(p: ProtectSource, settings: Settings) -> tuple[list, list]:
    """``(selection, heldout)``: :func:`fnprune.pruning.protect.protect_corpus` / ``protect_texts``."""
    from fnprune.pruning.protect import protect_corpus, protect_texts

    if p.corpus is not None:
        return protect_corpus(catalog.resolve_corpus(p.corpus, settings), p.genres, p.docs)
    return protect_texts(p.texts, p.docs)


# -- the worker's side ------------------------------------------------------------------------------------
class ProtectRun:
    """One protected pruning: :class:`fnprune.pruning.job.PruneJob`'s ``adjust`` and ``measure``, then the
    result's block. ``n_heldout``: at most this many held-out documents of the protected text are evaluated."""

    def __init__(self, p: ProtectRequest, settings: Settings, networks, a_req: AnalysisRequest, n_heldout: int):
        from fnprune.pruning.protect import Protection

        self.p, self.settings, self.networks, self.a_req = p, settings, networks, a_req
        selection, heldout = documents(p, settings)
        self.protection = Protection(source_name(p), selection, heldout, by=p.by, networks=p.networks)
        self.heldout = heldout[:n_heldout]
        self.before: tuple | None = None
        self.info: dict[str, Any] | None = None

    def adjust(self, spec, model, tokenizer, calibration, progress):
        from fnprune.progress import report
        from fnprune.pruning.protect import apply_protection

        self.before = (spec, calibration)
        report(progress, "protect", 0.0, f"protecting {self.protection.source} ({self.p.by})")
        spec, calibration, self.info = apply_protection(self.protection, spec, model, tokenizer, self.networks,
                                                        calibration, progress)
        return spec, calibration

    def measure(self, models, tokenizer, done, progress) -> dict[str, Any]:
        """:class:`fnprune.pruning.job.PruneJob`'s ``measure``: the protected text's held-out perplexity, the
        dense model's from the cache where it is there (else measured and cached), and the unconstrained
        pruning when asked for (:func:`fnprune.pruning.job.protection_comparison`)."""
        from fnprune.pruning.job import EVAL_TOKENS_PER_DOC, heldout_perplexity, protection_comparison

        from .cache import cached_json, cached_value, docs_key

        dense_b, cached = None, None
        if self.heldout:
            key = {"version": 1, "model": self.a_req.model, "max_tokens": EVAL_TOKENS_PER_DOC, "window": 512,
                   "docs": docs_key(self.heldout)}
            dense_b = cached_value(self.settings, "dense-ppl", key)
            cached = dense_b is not None
            if dense_b is None:
                def dense_b(dense):
                    return cached_json(self.settings, "dense-ppl", key,
                                       lambda: heldout_perplexity(dense, tokenizer, self.heldout))[0]
        out = protection_comparison(
            models, tokenizer, self.networks, done.heldout, self.heldout,
            dense_a=done.dense_eval["perplexity"]["512"]["ppl"], pruned_a=done.pruned_eval["perplexity"]["512"]["ppl"],
            dense_b=dense_b, unconstrained=self.before if self.p.compare_unconstrained else None, progress=progress)
        return out | {"dense_cached": cached}

    def result(self, measured: dict[str, Any] | None) -> dict[str, Any]:
        """The result's ``protect`` block (:class:`~backend.app.schemas.ProtectResult`)."""
        info = dict(self.info or {})
        notes = []
        if measured is None:
            notes.append("not evaluated: evaluation was switched off for this pruning")
        elif measured["protected"] is None:
            notes.append(f"{self.protection.source} has no held-out document (it needs 10 or more documents: every "
                         "tenth is held out), so its perplexity was not measured")
        if self.p.by == "networks":
            notes.append("the networks were proposed on this pruning's whole calibration text")
        mixing = proposal = None
        if info.get("by") == "calibration":
            mixing = {k: info[k] for k in ("calibration_docs", "protect_docs", "protect_tokens", "tokens")}
        elif info:
            proposal = {k: info[k] for k in ("networks", "scores", "rule", "n_forced", "forced_per_layer", "docs")}
        block = {"source": self.protection.source, "by": self.p.by, "protect_docs": len(self.protection.documents),
                 "heldout_docs": len(self.heldout), "mixing": mixing, "proposal": proposal,
                 "calibration_domain": measured and measured["calibration"],
                 "protected_domain": measured and measured["protected"],
                 "unconstrained_keep_digest": measured and measured["unconstrained_keep_digest"],
                 "dense_cached": measured and measured["dense_cached"], "notes": notes}
        return ProtectResult.model_validate(block).model_dump()


# -- the proposal (a job) -------------------------------------------------------------------------------------
def _proposal_params(analysis_id: str, source: ProtectSource) -> dict[str, Any]:
    """The job's params: the request with its defaults and its genres sorted and unique (the protected
    documents do not depend on their order: :func:`fnprune.corpus.stratified_order`), so equal requests
    are one job."""
    params = {"analysis_id": analysis_id, **source.model_dump()}
    if params["genres"] is not None:
        params["genres"] = sorted(set(params["genres"]))
    return params


def create_proposal(analysis_id: str, source: ProtectSource, settings: Settings, store: JobStore, enqueue
                    ) -> tuple[dict[str, Any], bool]:
    """``(the job, whether it was already there)``: 404 no analysis, 409 unfinished, 410 its files gone,
    ``protect.<field>`` for the text and N, all before anything is queued."""
    from . import analyses

    networks = analyses.load_networks(settings, store, analysis_id)
    check_source(source, settings, networks)
    params = _proposal_params(analysis_id, source)
    return store.reuse_or_create(PROPOSAL_KIND, params, enqueue)


def run_proposal(settings: Settings, job_id: str, params: dict[str, Any], progress) -> dict[str, Any]:
    """Worker side: the ``networks`` networks most selective for the protected text against the first
    :data:`PROPOSAL_CALIBRATION_DOCS` calibration documents of the analysis' corpus
    (:func:`fnprune.pruning.protect.protect_proposal`), and the neurons they force
    (:class:`~backend.app.schemas.ProtectProposal`)."""
    from fnprune.corpus import load_split
    from fnprune.progress import report
    from fnprune.pruning.calibration import Calibration
    from fnprune.pruning.protect import protect_proposal

    from .analyses import for_worker, plain
    from .prunings import MIN_CALIBRATION

    source = ProtectSource(**{k: v for k, v in params.items() if k != "analysis_id"})
    report(progress, "load", 0.0, "loading the networks and the documents")
    a_req, networks = for_worker(settings, params["analysis_id"])
    docs_b, _ = documents(source, settings)
    calibration, _ = load_split(catalog.resolve_corpus(a_req.corpus, settings), PROPOSAL_CALIBRATION_DOCS,
                                genres=a_req.genres, sampling=a_req.sampling)
    report(progress, "load", 0.5, "loading the model")
    model, tokenizer = catalog.load_model(a_req.model, settings)
    tokens = max(a_req.max_tokens, MIN_CALIBRATION[1])
    proposal = protect_proposal(model, tokenizer, networks, Calibration(tokenizer, calibration, tokens), docs_b,
                                source.networks, progress=progress)
    out = plain(proposal.as_dict() | {"calibration_docs": len(calibration), "docs": len(docs_b)})
    return ProtectProposal.model_validate(out).model_dump()
