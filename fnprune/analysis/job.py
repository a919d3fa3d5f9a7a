"""One analysis job, start to end: documents -> model -> capture + CanICA -> run directory.
``fnprune analyze`` and the web app's worker both call :func:`analyze_job`; they pass what differs
(how the model is loaded, the device, where the activations are written, progress and cancellation)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..corpus import analysis_documents
from ..errors import CorpusError
from ..progress import ProgressCallback, report
from .networks import FunctionalNetworks, analyze


@dataclass
class AnalyzeJobResult:
    networks: FunctionalNetworks
    run_dir: Path
    n_documents: int


def analyze_job(model_spec: str, corpus: str, out: str | Path, *, n_texts: int, genres: list[str] | None = None,
                sampling: str = "first", device: str = "auto",
                load_model: Callable[[str], tuple[Any, Any]] | None = None, corpus_name: str | None = None,
                progress: ProgressCallback | None = None, **options) -> AnalyzeJobResult:
    """Analyse the first ``n_texts`` calibration documents of ``corpus``
    (:func:`fnprune.corpus.analysis_documents`) on ``model_spec`` and save the run directory ``out``
    (atomically). ``options``: :func:`fnprune.analysis.networks.analyze`'s keywords (components, mode,
    runs, restarts, tokens, seed, layers, threshold, seed check, batch size, ``work_dir``).
    ``load_model``: how ``model_spec`` becomes ``(model, tokenizer)`` (default
    :func:`fnprune.models.loading.load_model` on ``device``); ``corpus_name``: the corpus as the run
    records it (default ``corpus``). A corpus without calibration documents is a :class:`CorpusError`."""
    from ..models.loading import load_model as default_load

    report(progress, "load", 0.0, f"loading corpus {corpus_name or corpus}")
    docs = analysis_documents(corpus, n_texts, genres=genres, sampling=sampling)
    if not docs:
        raise CorpusError(f"corpus {corpus_name or corpus!r} has no calibration documents for these genres")
    report(progress, "load", 0.5, f"loading model {model_spec}")
    model, tokenizer = (load_model or (lambda spec: default_load(spec, device=device)))(model_spec)
    report(progress, "load", 1.0, f"{len(docs)} documents")
    networks = analyze(model, tokenizer, docs, device=device, model_spec=model_spec,
                       corpus_spec=corpus_name or corpus, progress=progress, **options)
    report(progress, "save", 0.0, "saving the networks")
    run_dir = networks.save(out)  # atomic (fnprune.analysis.rundir.save_run: a .partial directory renamed)
    report(progress, "save", 1.0, "saved")
    return AnalyzeJobResult(networks=networks, run_dir=Path(run_dir), n_documents=len(docs))
