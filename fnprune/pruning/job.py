"""One pruning job, start to end: load -> split -> evaluate dense -> fidelity's dense reference -> calibrate
-> prune -> fidelity -> save -> evaluate pruned -> measure -> comparisons. ``fnprune prune`` and the web app's worker both call :func:`prune_job`; they only turn
their input into a :class:`~fnprune.pruning.spec.PruningSpec` and a :class:`PruneJob`, and report
the :class:`PruneJobResult` (text for the CLI; the API's JSON, masks and HTML report for the worker).

What differs between them is passed in, not re-implemented: how the model is loaded (the worker's
device, allowed directories, remote code), what ``pruning.json`` records besides the outcome
(``describe``, given the :class:`PruneJobResult` so far), the dense model's evaluation (the worker caches it per model and documents), and
progress and cancellation (the progress callback may raise :class:`fnprune.progress.Cancelled`).
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..corpus import load_split
from ..evaluation import metrics
from ..evaluation.fidelity import dense_reference, fidelity_against, most_stable_networks
from ..models.mlp import find_mlps
from ..models.pruned_io import save_pruned
from ..options import DEFAULT_MAX_TOKENS
from ..progress import ProgressCallback, report
from .calibration import Calibration
from .recipe import PruningOutcome, prune_with_networks
from .spec import PruningSpec, unrepaired

EVAL_TOKENS_PER_DOC = DEFAULT_MAX_TOKENS  # METHOD.md §2: each held-out document's first 512 tokens
LoadModel = Callable[[str], tuple[Any, Any]]
# A dense model whose parameters take at most this is copied in memory for what compares with it after the
# pruning; a larger one is reloaded instead (the default model: 0.54 GB in float32, 1.3 s to copy, 15 s to
# reload from its GGUF; a 1B model: 4.0 GiB, which a second copy would add to the job's peak).
DENSE_COPY_MAX_BYTES = 2**30
Describe = Callable[["PruneJobResult"], dict]


@dataclass
class PruneJob:
    """Everything a pruning job needs besides the networks and the spec.

    ``corpus``/``genres``/``sampling``: where the documents come from; ``n_calibration`` documents x
    ``calibration_tokens`` tokens are calibrated on, ``n_heldout`` held-out ones evaluated on (the
    corpus' 1-in-10 split, :func:`fnprune.corpus.load_split`). ``fidelity``: None (none), ``"chosen"``
    (the chosen networks, else the 20 most stable) or a number N (the chosen networks, else the N most
    stable); measured on ``fidelity_docs`` held-out documents (default all) with ``fidelity_tokens``.
    ``evaluate``: perplexity, size, speed, memory and generations of both models (dense by
    ``dense_evaluation`` when given); ``unrepaired`` / ``baselines``: prune copies of the dense model
    without the repair / with each baseline at the method's MLP budget, and measure their perplexity.
    A job holds one large model at a time (:class:`JobModels`): what compares with the dense model gets a
    copy kept in memory where the model's parameters take at most ``dense_copy_max_bytes``, otherwise
    the dense model reloaded by ``load_model`` once the pruned one is released.
    ``adjust(spec, model, tokenizer, calibration, progress) -> (spec, calibration)``: called once the model
    and the calibration documents are loaded, before the recipe (the CLI's ``--protect`` adds networks or
    mixes the calibration documents there). ``measure(models, tokenizer, result, progress) -> dict``: called
    after the evaluation with the job's :class:`JobModels` (the web app measures a protection there: the
    pruned model first, then fresh dense ones); what it returns is ``result.measured``.
    """

    model_spec: str
    corpus: str
    out: str | Path
    n_calibration: int
    calibration_tokens: int = DEFAULT_MAX_TOKENS
    n_heldout: int = 0
    genres: list[str] | None = None
    sampling: str = "first"
    batch_size: int = 4
    load_model: LoadModel | None = None
    describe: Describe | None = None
    overwrite: bool = False
    fidelity: str | int | None = None
    fidelity_docs: int | None = None
    fidelity_tokens: int = DEFAULT_MAX_TOKENS
    evaluate: bool = False
    dense_evaluation: Callable[..., dict] | None = None
    unrepaired: bool = False
    baselines: Sequence[str] = ()
    adjust: Callable[..., tuple] | None = None
    measure: Callable[..., dict] | None = None
    dense_copy_max_bytes: int = DENSE_COPY_MAX_BYTES


@dataclass
class PruneJobResult:
    """What :func:`prune_job` did: the outcome, where the model went, what was measured."""

    spec: PruningSpec
    outcome: PruningOutcome
    model_dir: Path
    n_calibration: int
    heldout: list
    calibration: list
    notes: list[str] = field(default_factory=list)
    fidelity: list | None = None
    fidelity_scope: str | None = None
    dense_eval: dict | None = None
    pruned_eval: dict | None = None
    dense_param_bytes: int | None = None
    comparisons: list[dict] = field(default_factory=list)
    baseline_budget: dict | None = None
    measured: dict | None = None


def prune_job(networks, spec: PruningSpec, job: PruneJob, progress: ProgressCallback | None = None,
              notes: Sequence[str] = ()) -> PruneJobResult:
    """Run one pruning job (see the module docstring); ``notes``: the caller's notes on the request
    (added before the recipe's and announced, with them, as ``prune`` progress)."""
    from ..models.loading import load_model

    spec = spec.validated(have_networks=True)  # refused before the corpus or the model is loaded
    report(progress, "load", 0.0, "loading the corpus")
    calibration, heldout = load_split(job.corpus, job.n_calibration, job.n_heldout, genres=job.genres,
                                      sampling=job.sampling)
    report(progress, "load", 0.3, f"loading model {job.model_spec}")
    loader = job.load_model or load_model
    model, tokenizer = loader(job.model_spec)
    report(progress, "load", 1.0, f"{len(calibration)} calibration documents"
                                  + (f" (of {job.n_calibration} requested: the corpus has no more)"
                                     if len(calibration) < job.n_calibration else "")
                                  + f" x {job.calibration_tokens} tokens, {len(heldout)} held-out documents")
    models = None  # only where something compares with the dense model after the pruning
    if job.unrepaired or job.baselines or job.measure:
        models = JobModels(model, lambda: loader(job.model_spec)[0], job.dense_copy_max_bytes)
        if models.copied:
            report(progress, "load", 1.0, "kept a copy of the dense model for the comparisons")
    # The dense model is measured before it is pruned in place: its evaluation, and what fidelity compares with.
    dense_eval = _evaluate_dense(job, model, tokenizer, heldout, progress) if job.evaluate else None
    calib = Calibration(tokenizer, calibration, job.calibration_tokens, job.batch_size,
                        requested_docs=job.n_calibration)
    if job.adjust is not None:  # e.g. ``--protect``: networks proposed on the loaded model, or mixed calibration
        spec, calib = job.adjust(spec, model, tokenizer, calib, progress)
    reference, fidelity_scope = None, None
    if job.fidelity:
        ids, fidelity_scope = _fidelity_ids(networks, spec, job.fidelity)
        docs = heldout if job.fidelity_docs is None else heldout[:job.fidelity_docs]
        reference = dense_reference(model, tokenizer, docs, networks, ids, max_tokens=job.fidelity_tokens,
                                    batch_size=job.batch_size, progress=stage_progress(progress, "fidelity"))
    outcome = prune_with_networks(model, networks, spec, calib, progress=progress)
    result = PruneJobResult(spec=outcome.spec, outcome=outcome, model_dir=Path(job.out), heldout=heldout,
                            calibration=list(calib.docs), n_calibration=job.n_calibration,
                            notes=[*notes, *outcome.notes], fidelity_scope=fidelity_scope)
    for note in result.notes:  # announced in the progress too, not only in the result
        report(progress, "prune", 1.0, f"note: {note}")

    if reference is not None:
        result.fidelity = fidelity_against(reference, model, outcome.keep, progress=stage_progress(progress, "fidelity"))
        del reference
    report(progress, "save", 0.0, "saving the pruned model")
    info = job.describe(result) if job.describe else outcome.info()
    result.model_dir = save_pruned(model, tokenizer, job.out, info, overwrite=job.overwrite)
    report(progress, "save", 1.0, "saved")

    if job.evaluate:
        result.dense_eval, result.dense_param_bytes = dense_eval
        dense_ppl = {w: p["ppl"] for w, p in result.dense_eval["perplexity"].items()}
        result.pruned_eval = evaluate_for_job(model, tokenizer, heldout, stage_progress(progress, "evaluate pruned", dense_ppl),
                                              model_dir=result.model_dir)
    if models is None:
        return result
    models.hold_pruned(model)
    del model  # from here on the pruned model lives in ``models`` alone, which releases it before a reload
    if job.measure is not None:
        result.measured = job.measure(models, tokenizer, result, progress)
    if job.unrepaired or job.baselines:
        result.comparisons, result.baseline_budget = comparisons(
            models, networks, outcome, calib, tokenizer, heldout, unrepaired_row=job.unrepaired and spec.repair == "lstsq",
            baselines=job.baselines, progress=progress)
        if job.baselines and result.baseline_budget["mlp_neurons_removed"] == 0:
            result.notes.append("no baseline was run: the method removed no MLP neuron")
    return result


class JobModels:
    """The models a job compares after it pruned its own in place, never two large ones alive at once.

    :meth:`dense` gives a fresh dense model its caller may prune in place: a deep copy of a copy taken
    before the pruning where the parameters take at most ``copy_max_bytes``, otherwise the dense model
    reloaded by ``load_dense()``. The first call releases the pruned model (:meth:`pruned`): ask for
    it first."""

    def __init__(self, dense_model, load_dense: Callable[[], Any], copy_max_bytes: int):
        self.params_per_neuron = [a.params_per_neuron for a in find_mlps(dense_model)]
        self.copied = param_bytes(dense_model) <= copy_max_bytes
        self._copy = copy.deepcopy(dense_model) if self.copied else None
        self._load = load_dense
        self._pruned = None
        self._released = False

    def hold_pruned(self, model) -> None:
        self._pruned = model

    def pruned(self):
        """The job's pruned model (in memory)."""
        if self._released:
            raise RuntimeError("the pruned model was released to reload the dense one: ask for it before dense()")
        return self._pruned

    def dense(self):
        """A fresh dense model, the caller's to prune in place and drop."""
        self._pruned, self._released = None, True
        if self._copy is not None:
            return copy.deepcopy(self._copy)
        gc.collect()
        return self._load()


def param_bytes(model) -> int:
    """Bytes of ``model``'s parameters."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _evaluate_dense(job: PruneJob, dense, tokenizer, heldout: list, progress: ProgressCallback | None
                    ) -> tuple[dict, int]:
    """The dense model's evaluation (the job's cached one where it has one) and its parameter bytes."""
    evaluate = job.dense_evaluation or evaluate_for_job
    return (evaluate(dense, tokenizer, heldout, stage_progress(progress, "evaluate dense")),
            param_bytes(dense))


def evaluate_for_job(model, tokenizer, heldout: list, progress: ProgressCallback | None = None,
                     model_dir: Path | None = None) -> dict:
    """A job's evaluation (METHOD.md §2's protocol): per-genre perplexity at 512 and 128 token windows
    on each held-out document's first :data:`EVAL_TOKENS_PER_DOC` tokens, batch-1 speed, memory,
    generations (:func:`fnprune.evaluation.metrics.evaluate_model`)."""
    return metrics.evaluate_model(model, tokenizer, heldout, batch_sizes=(1,), model_dir=model_dir, per_label=True,
                                  max_tokens_per_doc=EVAL_TOKENS_PER_DOC, progress=progress)


def heldout_perplexity(model, tokenizer, docs: list) -> float:
    """Perplexity by the jobs' protocol (512-token windows over each document's first
    :data:`EVAL_TOKENS_PER_DOC` tokens): :func:`evaluate_for_job`'s ``perplexity["512"]["ppl"]``."""
    return metrics.perplexity(model, tokenizer, docs, max_tokens_per_doc=EVAL_TOKENS_PER_DOC)["ppl"]


def protection_comparison(models: JobModels, tokenizer, networks, heldout_a: list, heldout_b: list, *,
                          dense_a: float, pruned_a: float, dense_b: float | Callable[[Any], float] | None = None,
                          unconstrained: tuple | None = None, progress: ProgressCallback | None = None) -> dict:
    """Held-out perplexity of the calibration domain A and the protected domain B (issue 22): dense, pruned and,
    with ``unconstrained`` = ``(spec, calibration)`` before the protection, the same pruning without it (on a
    fresh dense model of ``models``). ``dense_a`` / ``pruned_a``: the job's own evaluation; ``dense_b``: a value,
    or a function of the dense model that measures it (the web app's cache). The pruned model is measured
    first, then one fresh dense model serves both the dense figure and the unconstrained pruning. Returns
    ``{"calibration": {n_docs, dense, pruned, unconstrained}, "protected": the same or None (no held-out
    document of B), "unconstrained_keep_digest": str or None}``."""
    report(progress, "protect", 0.0, "held-out perplexity of the protected text")
    protected = None
    if heldout_b:
        protected = {"n_docs": len(heldout_b), "unconstrained": None, "dense": dense_b,
                     "pruned": heldout_perplexity(models.pruned(), tokenizer, heldout_b)}
    out = {"calibration": {"n_docs": len(heldout_a), "dense": dense_a, "pruned": pruned_a, "unconstrained": None},
           "protected": protected, "unconstrained_keep_digest": None}
    needs_dense = protected is not None and (dense_b is None or callable(dense_b))
    if needs_dense or unconstrained is not None:
        other = models.dense()
        if needs_dense:
            protected["dense"] = (dense_b(other) if callable(dense_b)
                                  else heldout_perplexity(other, tokenizer, heldout_b))
        if unconstrained is not None:
            report(progress, "protect", 0.3, "the same pruning without the protection")
            spec, calibration = unconstrained
            out["unconstrained_keep_digest"] = prune_with_networks(other, networks, spec, calibration).keep_digest
            out["calibration"]["unconstrained"] = heldout_perplexity(other, tokenizer, heldout_a)
            if protected is not None:
                protected["unconstrained"] = heldout_perplexity(other, tokenizer, heldout_b)
        del other
    report(progress, "protect", 1.0, "done")
    return out


def removed_neurons(outcome: PruningOutcome, per_neuron: Sequence[int]) -> tuple[int, int]:
    """(MLP neurons removed, their parameters) -- without the biases a repair adds; ``per_neuron``: the
    dense model's parameters per MLP neuron, per layer (:attr:`JobModels.params_per_neuron`)."""
    gone = [o - w for o, w in zip(outcome.original_widths, outcome.widths, strict=True)]
    return int(sum(gone)), int(sum(g * p for g, p in zip(gone, per_neuron, strict=True)))


def comparisons(models: JobModels, networks, outcome: PruningOutcome, calibration: Calibration, tokenizer, heldout: list, *,
                unrepaired_row: bool, baselines: Sequence[str], progress: ProgressCallback | None = None
                ) -> tuple[list[dict], dict | None]:
    """The same choice without the least-squares repair, and the baselines, each pruned on a fresh dense
    model of ``models`` with the same calibration and measured by held-out perplexity. A baseline removes the MLP
    neurons' parameters the method removed (the same number of neurons) and no attention head, so it is
    compared on the MLP choice alone, never with a larger MLP budget standing in for the method's pruned
    heads. Returns ``(rows, the baselines' budget or None)``; rows carry ``name`` ("without repair" or
    "<method> (<allocation>)"), method, allocation, repair, ppl, ratio_total, ratio_mlp, mlp_neurons_removed."""
    spec = outcome.spec
    steps: list[tuple[str, PruningSpec]] = []
    if unrepaired_row:
        steps.append(("without repair", replace(spec, repair=unrepaired(spec.method), sequential=False)))
    n_removed, removed_params = removed_neurons(outcome, models.params_per_neuron)
    budget_record = None
    if baselines:
        budget_record = {
            "mlp_neurons_removed": n_removed, "mlp_params_removed": removed_params, "heads": "not pruned",
            "description": "each baseline removes as many MLP neurons as the method"
                           + (" and no attention head (the method's pruned heads are not part of its budget)"
                              if outcome.kv_heads is not None else "")
                           + (f" and gets the same recovery by distillation ({spec.recover_epochs} epoch(s))"
                              if spec.recover_epochs else "")}
    budget = {"target_ratio": removed_params / outcome.dense_mlp_params, "threshold": None, "ratio_of": "mlp"}
    for method in baselines if n_removed > 0 else ():
        for allocation in ("own", "networks"):
            steps.append((f"{method} ({allocation})", replace(spec, method=method, allocation=allocation,
                                                              heads_fraction=None, **budget)))
    rows = []
    for i, (name, step_spec) in enumerate(steps):
        report(progress, "baselines", i / len(steps), name)
        other = models.dense()
        other_outcome = prune_with_networks(other, networks, step_spec, calibration)
        ppl = heldout_perplexity(other, tokenizer, heldout)
        rows.append({"name": name, "method": step_spec.method, "allocation": step_spec.resolved_allocation,
                     "repair": step_spec.repair, "recover_epochs": step_spec.recover_epochs,
                     "ppl": ppl, "ratio_total": other_outcome.removed_fraction,
                     "ratio_mlp": other_outcome.removed_mlp_fraction,
                     "mlp_neurons_removed": removed_neurons(other_outcome, models.params_per_neuron)[0]})
        del other
    if steps:
        report(progress, "baselines", 1.0, "done")
    return rows, budget_record


def _fidelity_ids(networks, spec: PruningSpec, fidelity: str | int) -> tuple[list[int], str]:
    """The networks whose fidelity is measured, and how they were chosen."""
    if spec.networks is not None:
        return list(spec.networks), "chosen"
    n = 20 if fidelity == "chosen" else int(fidelity)
    return most_stable_networks(networks, n), f"{n} most stable"


def stage_progress(progress: ProgressCallback | None, stage: str, dense_ppl: dict[str, float] | None = None):
    """``progress`` renamed to ``stage``; with ``dense_ppl`` (window -> PPL) the running perplexity
    messages (library stage ``ppl@<window>``) also name the dense model's."""
    if progress is None:
        return None

    def inner(lib_stage: str, fraction: float, message: str = "") -> None:
        window = lib_stage.removeprefix("ppl@")
        if dense_ppl and message and window in dense_ppl:
            message = f"{message}; dense model {dense_ppl[window]:.2f}"
        report(progress, stage, fraction, message)

    return inner
