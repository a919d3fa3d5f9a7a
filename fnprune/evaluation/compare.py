"""Compare the functional-network pruning with baselines at the same budgets (METHOD §2, §3).

:func:`compare` prunes a fresh copy of the model for every (ratio, method, allocation, repair)
through the one recipe (:func:`fnprune.pruning.recipe.prune_with_networks`) and measures held-out
perplexity, with a 95% bootstrap interval over held-out windows (documents in the per-document
protocol) and a paired interval of the ratio to a reference row; the fidelity of the chosen (or the
20 most stable) networks; and the calibration output error of the repaired layers. It writes
``results.json``, ``report.md`` and ``ppl_vs_ratio.html`` (Plotly) to ``out_dir``.

Rows: ``paper``, ``fn``, ``fn-flap`` (networks' widths), every baseline with its own global
allocation and, when networks are available, inside the networks' widths; ``controls`` add FLAP in
the widths of the unresolved-subspace energy alone and in uniform widths. Each row runs with every
repair in ``repairs``: ``native`` (the method's own compensation: FLAP's bias for fn-flap and flap,
the least-squares fit for obs, none otherwise), ``lstsq`` (least-squares repair), ``bias`` or ``none``.

``split="validation"`` scores on validation documents (disjoint from calibration and held-out:
:func:`fnprune.corpus.split_validation`) -- where defaults are chosen; ``"test"`` on held-out ones.

:func:`ablate_networks` is the predecessor paper's check: zero (not remove) the neurons of the
top-k networks vs as many random neurons in the same layers.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..io import atomic_write_text
from ..models.mlp import find_mlps, total_parameters
from ..options import (  # noqa: F401
    DEFAULT_CALIBRATION_DOCS,
    DEFAULT_MAX_TOKENS,
    DEFAULT_RECOVER_EPOCHS,
    DEFAULT_RECOVER_LR,
)
from ..progress import ProgressCallback, report
from ..pruning.budget import check_target_ratio
from ..pruning.calibration import Calibration
from ..pruning.methods import METHODS, NETWORK_METHODS  # noqa: F401
from ..pruning.methods import get as get_method
from ..pruning.recipe import check_networks_match, prune_with_networks
from ..pruning.spec import PruningSpec
from .metrics import concatenated_ids, per_document_perplexity, perplexity
from .report import markdown_report, plotly_chart

DEFAULT_METHODS = METHODS  # every registered method (a live view of fnprune.pruning.methods' registry)
REPAIR_CHOICES = ("native", "lstsq", "sequential", "bias", "none")
DEFAULT_REPAIRS = ("native", "lstsq")
N_BOOTSTRAP = 2000

__all__ = ["compare", "check_networks_match", "parse_methods", "parse_ratios", "ablate_networks"]


def _parse_names(value: str | Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    items = [m.strip() for m in value.split(",")] if isinstance(value, str) else list(value)
    items = [m for m in items if m]
    unknown = [m for m in items if m not in allowed]
    if unknown or not items:
        raise ConfigError(f"unknown {what}(s) {unknown or '(none)'}; choose from {', '.join(allowed)}")
    return items


def parse_methods(methods: str | Sequence[str]) -> list[str]:
    return _parse_names(methods, METHODS, "method")


def parse_repairs(repairs: str | Sequence[str]) -> list[str]:
    return _parse_names(repairs, REPAIR_CHOICES, "repair")


def parse_ratios(ratios: str | Sequence[float]) -> list[float]:
    try:
        items = [float(r) for r in ratios.split(",") if r.strip()] if isinstance(ratios, str) else list(ratios)
    except ValueError as err:
        raise ConfigError(f"ratios must be numbers separated by commas, got {ratios!r}") from err
    if not items:
        raise ConfigError("no target ratio given")
    return [check_target_ratio(r) for r in items]


def _jobs(methods, ratios, repairs, have_fn: bool, controls: bool) -> list[tuple[float, str, str, str]]:
    """``(ratio, method, allocation, repair)`` rows in report order."""
    out = []
    for ratio in ratios:
        pairs = []
        for method in methods:
            record = get_method(method)
            if record.needs_networks:
                pairs.append((method, record.default_allocation))
            else:
                pairs.append((method, "own"))
                if have_fn and record.network_widths_alias is None:  # flap in the networks' widths is fn-flap
                    pairs.append((method, "networks"))
        if controls and have_fn:
            pairs += [("flap", "unresolved"), ("flap", "uniform")]
        for method, allocation in pairs:
            for repair in dict.fromkeys(get_method(method).native_repair if r == "native" else r for r in repairs):
                out.append((ratio, method, allocation, repair))
    return out


def bootstrap_ppl(unit_nll: Sequence[float], unit_tokens: Sequence[int], n: int = N_BOOTSTRAP,
                  seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the perplexity, resampling windows (or documents) with replacement."""
    nll, tok = np.asarray(unit_nll, float), np.asarray(unit_tokens, float)
    idx = np.random.default_rng(seed).integers(0, len(nll), size=(n, len(nll)))
    ppl = np.exp(nll[idx].sum(1) / tok[idx].sum(1))
    return float(np.percentile(ppl, 2.5)), float(np.percentile(ppl, 97.5))


def paired_ratio(a: dict, b: dict, n: int = N_BOOTSTRAP, seed: int = 0) -> dict:
    """PPL(a) / PPL(b) on the same windows, with a paired 95% bootstrap interval."""
    na, nb = np.asarray(a["unit_nll"], float), np.asarray(b["unit_nll"], float)
    tok = np.asarray(a["unit_tokens"], float)
    idx = np.random.default_rng(seed).integers(0, len(na), size=(n, len(na)))
    ratios = np.exp((na[idx].sum(1) - nb[idx].sum(1)) / tok[idx].sum(1))
    return {"ratio": a["ppl"] / b["ppl"], "low": float(np.percentile(ratios, 2.5)),
            "high": float(np.percentile(ratios, 97.5))}


class _Scorer:
    """Perplexity of a model on one held-out set at every window length (units kept for bootstraps)."""

    def __init__(self, tokenizer, docs, max_tokens: int, batch_size: int, windows: Sequence[int], per_document: bool):
        self.tokenizer, self.docs, self.batch_size = tokenizer, docs, batch_size
        self.windows, self.per_document = list(windows), per_document
        self.ids = None if per_document else concatenated_ids(tokenizer, docs, max_tokens)

    def __call__(self, model: nn.Module) -> dict:
        out = {}
        for w in self.windows:
            if self.per_document:
                r = per_document_perplexity(model, self.tokenizer, self.docs, window=w, batch_size=self.batch_size,
                                            keep_units=True)
            else:
                r = perplexity(model, self.tokenizer, None, window=w, batch_size=self.batch_size, ids=self.ids,
                               keep_units=True)
            r["ci95"] = bootstrap_ppl(r["unit_nll"], r["unit_tokens"])
            out[str(w)] = r
        return out


def compare(model_spec: str | None, corpus: str | None, ratios, methods=DEFAULT_METHODS,
            out_dir: str | os.PathLike | None = None, *, run_dir: str | os.PathLike | None = None,
            networks: Sequence[int] | None = None, protected_layers: Sequence[int] | None = None,
            n_calib: int = DEFAULT_CALIBRATION_DOCS, n_heldout: int = 20, max_tokens: int = DEFAULT_MAX_TOKENS, batch_size: int = 4,
            windows: Sequence[int] = (512, 128), per_document: bool = False, seed: int = 0,
            repairs: Sequence[str] | str = DEFAULT_REPAIRS, controls: bool = False,
            extra_corpora: Sequence[str] = (), split: str = "test", fidelity: int | None = 20,
            reference: tuple[str, str, str] | None = ("flap", "own", "bias"),
            analyze_kwargs: dict | None = None, paper_run_dir: str | os.PathLike | None = None,
            model: nn.Module | None = None, tokenizer=None, docs=None, fn=None, paper_fn=None,
            recover_epochs: int = DEFAULT_RECOVER_EPOCHS, recover_lr: float = DEFAULT_RECOVER_LR,
            progress: ProgressCallback | None = None) -> dict:
    """Prune with every method at every ratio and measure held-out perplexity and network fidelity.

    ``model``/``tokenizer``/``docs``/``fn`` may be given directly (tests, the web app); otherwise
    they are loaded from ``model_spec`` and ``corpus``, and the networks from ``run_dir`` or, when
    none is given, computed with :func:`fnprune.analysis.networks.analyze` on the calibration documents.
    ``paper`` uses ``paper_fn`` / ``paper_run_dir`` (a run with ``n_init=1``), computed with one
    FastICA run per layer when not given. ``networks``: chosen networks, kept by every method.
    ``ratios``: fractions of all parameters to remove. ``extra_corpora``: more held-out sets
    (e.g. ``pydoc``; their own held-out split). ``fidelity``: score the chosen networks, or this
    many of the most stable ones (None: no fidelity). ``reference``: the (method, allocation,
    repair) row every other row of the same ratio is paired with. ``recover_epochs`` / ``recover_lr``:
    recovery by distillation after every row's pruning (:mod:`fnprune.pruning.recover`; 0: none).
    """
    ratios = parse_ratios(ratios)
    methods = parse_methods(methods)
    repairs = parse_repairs(repairs)
    if split not in ("test", "validation"):
        raise ConfigError(f"split must be 'test' or 'validation', got {split!r}")
    PruningSpec(recover_epochs=recover_epochs, recover_lr=recover_lr).validated(have_networks=False)  # refused now
    if out_dir is not None:
        out_dir = Path(out_dir)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot create report directory {out_dir}: {err.strerror or err}") from err
        if not os.access(out_dir, os.W_OK):
            raise ConfigError(f"report directory {out_dir} is not writable")
    from ..corpus import load_corpus, split_heldout, split_validation

    if model is None:
        from ..models.loading import load_model

        model, tokenizer = load_model(model_spec)
    if docs is None:
        docs = load_corpus(corpus or "brown")
    docs = list(docs)
    calib, heldout = split_heldout(docs)
    calib = calib[:n_calib]
    evaluated = split_validation(docs, n_calib) if split == "validation" else heldout
    eval_sets = {corpus or "corpus": evaluated[:n_heldout]}
    for name in extra_corpora:
        other = load_corpus(name)
        eval_sets[name] = (split_validation(other, 0) if split == "validation" else split_heldout(other)[1])[:n_heldout]

    empty = [name for name, d in eval_sets.items() if not d]
    if empty:
        raise ConfigError(f"no {split} documents in {', '.join(empty)} (the {split} split is disjoint from the "
                          f"{len(calib)} calibration documents): use a larger corpus or fewer calibration documents")
    fn = _networks(fn, run_dir, methods, networks, model, tokenizer, calib, model_spec, corpus, max_tokens, seed,
                   analyze_kwargs, out_dir, None, progress)
    one_run = [m for m in methods if get_method(m).one_run_networks]  # the paper's rule: one FastICA run
    if one_run:
        paper_fn = _networks(paper_fn, paper_run_dir, one_run, None, model, tokenizer, calib, model_spec, corpus,
                             max_tokens, seed, {**(analyze_kwargs or {}), "n_init": 1}, out_dir, "paper-networks",
                             progress)
    calibration = Calibration(tokenizer, calib, max_tokens, batch_size)
    scorers = {name: _Scorer(tokenizer, d, max_tokens, batch_size, windows, per_document)
               for name, d in eval_sets.items()}
    fidelity_ids = _fidelity_networks(fn, networks, fidelity, protected_layers)
    fidelity_docs = next(iter(eval_sets.values()))

    total = total_parameters(model)
    rows = [{"method": "dense", "allocation": "-", "repair": "-", "ratio": 0.0, "removed_fraction": 0.0,
             "removed_mlp_fraction": 0.0, "widths": [a.width for a in find_mlps(model)],
             "ppl": {name: score(model) for name, score in scorers.items()}}]
    jobs = _jobs(methods, ratios, repairs, fn is not None, controls)
    specs = [PruningSpec(method=method, target_ratio=ratio, networks=None if networks is None else tuple(networks),
                         allocation=allocation, repair="lstsq" if repair == "sequential" else repair,
                         sequential=repair == "sequential", seed=seed, recover_epochs=recover_epochs,
                         recover_lr=recover_lr,
                         # uniform protects no layer (a stock architecture): the control row never takes them
                         protected_layers=None if protected_layers is None or allocation == "uniform"
                         else tuple(protected_layers))
             for ratio, method, allocation, repair in jobs]
    calibration.prepare(model, specs, progress)  # one pass for every row's statistics
    for i, ((ratio, method, allocation, repair), spec) in enumerate(zip(jobs, specs, strict=True)):
        report(progress, "compare", i / len(jobs), f"{method} ({allocation}, {repair}) at {ratio:.0%}")
        rows.append(_run_job(model, tokenizer, paper_fn if get_method(method).one_run_networks else fn, fn, spec,
                             calibration,
                             scorers, fidelity_ids, fidelity_docs, max_tokens, batch_size))
    report(progress, "compare", 1.0, "done")
    _pair_with_reference(rows, reference)
    result = {"model": model_spec, "corpus": corpus, "run_dir": str(run_dir) if run_dir else None,
              "networks": list(networks) if networks is not None else None,
              "fidelity_networks": fidelity_ids, "split": split,
              "protected_layers": list(protected_layers) if protected_layers is not None else "default",
              "n_calib_docs": len(calib), "eval_sets": {k: len(v) for k, v in eval_sets.items()},
              "max_tokens": max_tokens, "ppl_protocol": "per-document" if per_document else "concatenated windows",
              "total_params": total, "reference": list(reference) if reference else None,
              "recovery": {"epochs": int(recover_epochs), "lr": float(recover_lr)} if recover_epochs else None,
              "rows": rows}
    if out_dir is not None:
        atomic_write_text(out_dir / "results.json", json.dumps(result, indent=1) + "\n")
        atomic_write_text(out_dir / "report.md", markdown_report(result))
        atomic_write_text(out_dir / "ppl_vs_ratio.html", plotly_chart(result))
    return result


def _networks(fn, run_dir, methods, networks, model, tokenizer, calib, model_spec, corpus, max_tokens, seed,
              analyze_kwargs, out_dir, work_name, progress):
    """The functional networks: given, loaded from ``run_dir`` or computed on the calibration documents."""
    if fn is None and run_dir is not None:
        from ..analysis.networks import FunctionalNetworks

        fn = FunctionalNetworks.load(run_dir)
    elif fn is None and (any(get_method(m).needs_networks for m in methods) or networks is not None):
        from ..analysis.networks import analyze

        kwargs = {"max_tokens": max_tokens, "random_state": seed, "model_spec": model_spec, "corpus_spec": corpus,
                  **(analyze_kwargs or {})}
        if out_dir is not None:
            kwargs.setdefault("work_dir", Path(out_dir) / (work_name or "networks"))
        fn = analyze(model, tokenizer, calib, progress=progress, **kwargs)
    if fn is not None:
        check_networks_match(fn, model)
    return fn


def _fidelity_networks(fn, networks, fidelity, protected_layers) -> list[int]:
    if fn is None or fidelity is None:
        return []
    if networks is not None:
        return [int(c) for c in networks]
    from .fidelity import most_stable_networks

    return most_stable_networks(fn, int(fidelity), protected_layers)


def _run_job(model, tokenizer, fn, fidelity_fn, spec: PruningSpec, calibration: Calibration, scorers, fidelity_ids,
             fidelity_docs, max_tokens, batch_size) -> dict:
    base = {"method": spec.method, "allocation": spec.allocation,
            "repair": "sequential" if spec.sequential else spec.repair, "ratio": spec.target_ratio}
    pruned = copy.deepcopy(model)
    try:
        started = time.perf_counter()
        outcome = prune_with_networks(pruned, fn, spec, calibration,
                                      chosen_from=fidelity_fn if fidelity_fn is not fn else None)
        seconds = time.perf_counter() - started
        row = {**base, "removed_fraction": outcome.removed_fraction,
               "removed_mlp_fraction": outcome.removed_mlp_fraction, "widths": outcome.widths,
               "prune_seconds": seconds, "repair_errors": outcome.repair_summary(), "keep_digest": outcome.keep_digest,
               "chosen_networks": [asdict(c) for c in outcome.chosen],
               "recovery": None if outcome.recovery is None else asdict(outcome.recovery),
               "ppl": {name: score(pruned) for name, score in scorers.items()}}
        if fidelity_ids:
            from .fidelity import network_fidelity

            row["fidelity"] = [asdict(f) for f in network_fidelity(
                model, pruned, tokenizer, fidelity_docs, fidelity_fn, fidelity_ids, outcome.keep, max_tokens=max_tokens,
                batch_size=batch_size)]
        return row
    except ConfigError as err:
        return {**base, "error": str(err)}
    finally:
        del pruned


def _pair_with_reference(rows: list[dict], reference) -> None:
    if not reference:
        return
    method, allocation, repair = reference
    for ref in rows:
        if (ref["method"], ref["allocation"], ref["repair"]) != (method, allocation, repair) or "error" in ref:
            continue
        for row in rows[1:]:
            if row.get("ratio") != ref["ratio"] or "error" in row or row is ref:
                continue
            row["vs_reference"] = {name: {w: paired_ratio(row["ppl"][name][w], ref["ppl"][name][w])
                                          for w in row["ppl"][name]} for name in row["ppl"]}


# -- ablation -------------------------------------------------------------------------------------
@torch.no_grad()
def zeroed_perplexity(model: nn.Module, tokenizer, docs, zero: Sequence[np.ndarray], *, window: int = 512,
                      ids: torch.Tensor | None = None, batch_size: int = 4) -> float:
    """Held-out perplexity with the neurons ``zero[l]`` (indices) of each layer silenced (not removed)."""
    handles = []
    for adapter in find_mlps(model):
        idx = np.asarray(zero[adapter.layer], dtype=np.int64)
        if idx.size == 0:
            continue
        mask = torch.ones(adapter.width)
        mask[torch.as_tensor(idx)] = 0.0

        def hook(module, inputs, mask=mask):
            x = inputs[0]
            return (x * mask.to(device=x.device, dtype=x.dtype),) + tuple(inputs[1:])
        handles.append(adapter.down.register_forward_pre_hook(hook))
    try:
        return perplexity(model, tokenizer, docs, window=window, ids=ids, batch_size=batch_size)["ppl"]
    finally:
        for h in handles:
            h.remove()


def ablate_networks(model: nn.Module, tokenizer, heldout_docs, fn, *, top_k: int = 1,
                    threshold: float | None = None, networks: Sequence[int] | None = None,
                    window: int = 512, max_tokens: int | None = 512, seed: int = 0) -> dict:
    """Zero the neurons (|z| > threshold) of the ``top_k`` networks with the largest peak |z| (or of
    ``networks``) vs as many random neurons in the same layers; report both perplexities."""
    if threshold is None:
        threshold = fn.threshold
    if networks is None:
        peaks = [float(fn.abs_max_map(k).max()) for k in range(fn.n_components)]
        networks = [int(k) for k in np.argsort(peaks)[::-1][:top_k]]
    scores = np.asarray(fn.neuron_scores(networks=list(networks)))  # (n_layers, I)
    chosen = [np.flatnonzero(row > threshold) for row in scores]
    rng = np.random.default_rng(seed)
    random = [np.sort(rng.choice(len(row), size=len(c), replace=False)) if len(c) else c
              for row, c in zip(scores, chosen, strict=True)]
    ids = concatenated_ids(tokenizer, heldout_docs, max_tokens)
    return {"networks": list(networks), "threshold": threshold,
            "n_neurons": int(sum(len(c) for c in chosen)),
            "neurons_per_layer": [int(len(c)) for c in chosen],
            "dense_ppl": perplexity(model, tokenizer, None, window=window, ids=ids)["ppl"],
            "network_ppl": zeroed_perplexity(model, tokenizer, None, chosen, window=window, ids=ids),
            "random_ppl": zeroed_perplexity(model, tokenizer, None, random, window=window, ids=ids)}
