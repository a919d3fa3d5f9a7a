"""Compare the functional-network pruning with baselines at the same budgets (METHOD §2).

:func:`compare` prunes a fresh copy of the model for every (ratio, method, allocation) and
measures held-out perplexity; it writes ``results.json``, ``report.md`` and ``ppl_vs_ratio.html``
(Plotly) to ``out_dir``. Methods:

- ``fn``: the paper, faithful -- keep the key neurons at the threshold that reaches the ratio;
- ``fn-bias``: the same plus FLAP-style bias compensation;
- ``fn-flap`` (recommended): the functional networks' per-layer widths, FLAP's score within each
  layer, bias compensation;
- ``random``, ``magnitude``, ``wanda-sp``, ``flap``: each with its own global allocation ("own")
  and with the functional networks' per-layer widths ("fn"). ``flap`` uses bias compensation.

:func:`ablate_networks` is the predecessor paper's check: zero (not remove) the neurons of the
top-k networks vs as many random neurons in the same layers.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import ConfigError, RunDirError
from .evaluate import concatenated_ids, per_document_perplexity, perplexity
from .mlp import find_mlps
from .progress import ProgressCallback, report
from .prune import (
    BASELINES,
    check_target_ratio,
    collect_down_input_stats,
    flap_scores,
    keep_from_scores,
    plan_keep,
    prune_model,
    resolve_layers,
    total_parameters,
)

FN_METHODS = ("fn", "fn-bias", "fn-flap")
METHODS = FN_METHODS + BASELINES
DEFAULT_METHODS = METHODS


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def parse_methods(methods: str | Sequence[str]) -> list[str]:
    items = [m.strip() for m in methods.split(",")] if isinstance(methods, str) else list(methods)
    items = [m for m in items if m]
    unknown = [m for m in items if m not in METHODS]
    if unknown or not items:
        raise ConfigError(f"unknown method(s) {unknown or '(none)'}; choose from {', '.join(METHODS)}")
    return items


def parse_ratios(ratios: str | Sequence[float]) -> list[float]:
    try:
        items = [float(r) for r in ratios.split(",") if r.strip()] if isinstance(ratios, str) else list(ratios)
    except ValueError as err:
        raise ConfigError(f"ratios must be numbers separated by commas, got {ratios!r}") from err
    if not items:
        raise ConfigError("no target ratio given")
    return [check_target_ratio(r) for r in items]


def check_networks_match(fn, model: nn.Module) -> None:
    """Raise :class:`RunDirError` when the networks were computed on a model of another shape."""
    widths = [a.width for a in find_mlps(model)]
    info = getattr(fn, "info", None)
    recorded = info.get("model", {}).get("config_class") if isinstance(info, dict) else None
    config_class = type(getattr(model, "config", None)).__name__
    if recorded and recorded != config_class:
        raise RunDirError(f"the functional networks were computed on a {recorded} model, this is a {config_class} "
                          "model: run directory from another model?")
    shape = tuple(np.asarray(fn.neuron_scores()).shape)
    if shape != (len(widths), max(widths)) or len(set(widths)) != 1:
        raise RunDirError(f"the functional networks are for {shape[0]} layers x {shape[1]} neurons, the model has "
                          f"{len(widths)} layers with widths {sorted(set(widths))}: run directory from another model?")


def _fn_keep(method: str, fn, model: nn.Module, ratio: float, stats, networks, protected_layers):
    """Keep indices and whether to compensate, for the functional-network methods."""
    if method in ("fn", "fn-bias"):
        mask = np.asarray(fn.key_mask(target_ratio=ratio, networks=networks, protected_layers=protected_layers))
        return [np.flatnonzero(row) for row in mask], method == "fn-bias"
    widths = fn.plan(target_ratio=ratio, networks=networks, protected_layers=protected_layers)["widths"]
    scores = flap_scores(model, stats)
    ppn = [a.params_per_neuron for a in find_mlps(model)]
    return keep_from_scores(scores, ppn, widths=widths), True


def compare(model_spec: str | None, corpus: str | None, ratios, methods=DEFAULT_METHODS,
            out_dir: str | os.PathLike | None = None, *, run_dir: str | os.PathLike | None = None,
            networks: Sequence[int] | None = None, protected_layers: Sequence[int] | None = None,
            n_calib: int = 40, n_heldout: int = 20, max_tokens: int = 512, batch_size: int = 4,
            windows: Sequence[int] = (512, 128), per_document: bool = False, seed: int = 0,
            analyze_kwargs: dict | None = None,
            model: nn.Module | None = None, tokenizer=None, docs=None, fn=None,
            progress: ProgressCallback | None = None) -> dict:
    """Prune with every method at every ratio and measure held-out perplexity.

    ``model``/``tokenizer``/``docs``/``fn`` may be given directly (tests, the web app); otherwise
    they are loaded from ``model_spec`` and ``corpus``, and the networks from ``run_dir`` or, when
    none is given, computed with ``fnprune.networks.analyze`` on the calibration documents.
    ``ratios``: fractions of all parameters to remove. ``per_document``: score each held-out
    document alone on its first ``window`` tokens (METHOD §2's table) instead of windows of the
    concatenated text (METHOD §3). Returns the results dict (also written to
    ``out_dir`` as JSON, Markdown and a Plotly chart when ``out_dir`` is given).
    """
    ratios = parse_ratios(ratios)
    methods = parse_methods(methods)
    if out_dir is not None:
        out_dir = Path(out_dir)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"cannot create report directory {out_dir}: {err.strerror or err}") from err
        if not os.access(out_dir, os.W_OK):
            raise ConfigError(f"report directory {out_dir} is not writable")
    if model is None:
        from .models import load_model

        model, tokenizer = load_model(model_spec)
    if docs is None:
        from .corpus import load_corpus

        docs = load_corpus(corpus or "brown")
    from .corpus import split_heldout

    protected_layers = resolve_layers(protected_layers, len(find_mlps(model)))
    calib, heldout = split_heldout(list(docs))
    calib, heldout = calib[:n_calib], heldout[:n_heldout]

    need_fn = any(m in FN_METHODS for m in methods) or any(m in BASELINES for m in methods)
    if fn is None and need_fn:
        if run_dir is not None:
            from .networks import FunctionalNetworks

            fn = FunctionalNetworks.load(run_dir)
        elif any(m in FN_METHODS for m in methods):
            from .networks import analyze

            kwargs = {"max_tokens": max_tokens, "random_state": seed, "model_spec": model_spec,
                      "corpus_spec": corpus, **(analyze_kwargs or {})}
            if out_dir is not None:
                kwargs.setdefault("work_dir", out_dir / "networks")
            fn = analyze(model, tokenizer, calib, progress=progress, **kwargs)
    if fn is not None:
        check_networks_match(fn, model)

    needs_stats = any(m in ("fn-bias", "fn-flap", "wanda-sp", "flap") for m in methods)
    stats = collect_down_input_stats(model, tokenizer, calib, max_tokens, batch_size, progress) if needs_stats else None
    ids = concatenated_ids(tokenizer, heldout, max_tokens)

    def measure(m: nn.Module) -> dict:
        if per_document:
            return {str(w): per_document_perplexity(m, tokenizer, heldout, window=w, batch_size=batch_size)["ppl"]
                    for w in windows}
        return {str(w): perplexity(m, tokenizer, None, window=w, batch_size=batch_size, ids=ids)["ppl"]
                for w in windows}

    total = total_parameters(model)
    dense_mlp = sum(a.n_params for a in find_mlps(model))
    rows = [{"method": "dense", "allocation": "-", "bias": False, "ratio": 0.0, "removed_fraction": 0.0,
             "removed_mlp_fraction": 0.0, "widths": [a.width for a in find_mlps(model)], "ppl": measure(model)}]
    jobs = []
    for ratio in ratios:
        for method in methods:
            if method in FN_METHODS:
                jobs.append((ratio, method, "fn"))
            else:
                jobs.append((ratio, method, "own"))
                if fn is not None:
                    jobs.append((ratio, method, "fn"))
    for i, (ratio, method, allocation) in enumerate(jobs):
        report(progress, "compare", i / len(jobs), f"{method} ({allocation}) at {ratio:.0%}")
        pruned = copy.deepcopy(model)
        try:
            if method in FN_METHODS:
                keep, bias = _fn_keep(method, fn, model, ratio, stats, networks, protected_layers)
            else:
                widths = None
                if allocation == "fn":
                    widths = fn.plan(target_ratio=ratio, networks=networks, protected_layers=protected_layers)["widths"]
                keep = plan_keep(model, method, ratio, stats=stats, widths=widths,
                                 protected_layers=protected_layers, seed=seed)
                bias = method == "flap"
            prune_model(pruned, keep, bias=stats if bias else None)
            adapters = find_mlps(pruned)
            row = {"method": method, "allocation": allocation, "bias": bias, "ratio": ratio,
                   "removed_fraction": 1 - total_parameters(pruned) / total,
                   "removed_mlp_fraction": 1 - sum(a.n_params for a in adapters) / dense_mlp,
                   "widths": [a.width for a in adapters], "ppl": measure(pruned)}
        except ConfigError as err:
            row = {"method": method, "allocation": allocation, "ratio": ratio, "error": str(err)}
        finally:
            del pruned
        rows.append(row)
    report(progress, "compare", 1.0, "done")
    result = {"model": model_spec, "corpus": corpus, "run_dir": str(run_dir) if run_dir else None,
              "networks": list(networks) if networks is not None else None,
              "protected_layers": list(protected_layers) if protected_layers is not None else "default",
              "n_calib_docs": len(calib), "n_heldout_docs": len(heldout), "max_tokens": max_tokens,
              "ppl_protocol": "per-document" if per_document else "concatenated windows",
              "heldout_tokens": int(len(ids)), "total_params": total, "rows": rows}
    if out_dir is not None:
        _atomic_write(out_dir / "results.json", json.dumps(result, indent=2) + "\n")
        _atomic_write(out_dir / "report.md", markdown_report(result))
        _atomic_write(out_dir / "ppl_vs_ratio.html", plotly_chart(result))
    return result


def markdown_report(result: dict) -> str:
    windows = list(result["rows"][0]["ppl"])
    lines = [f"# Pruning comparison: {result.get('model')} on {result.get('corpus')}", "",
             f"Calibration: {result['n_calib_docs']} documents; held-out: {result['n_heldout_docs']} documents "
             f"({result['heldout_tokens']} tokens), perplexity over {result.get('ppl_protocol', 'windows')}. Ratio = fraction of all {result['total_params']:,} parameters "
             "removed (MLP neurons only).", "",
             "| ratio | method | allocation | bias | removed (all) | removed (MLP) | "
             + " | ".join(f"PPL@{w}" for w in windows) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(windows)]
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['ratio']:.2f} | {row['method']} | {row['allocation']} | | | | "
                         + " | ".join("—" for _ in windows) + f" |  <!-- {row['error']} -->")
            continue
        lines.append(f"| {row['ratio']:.2f} | {row['method']} | {row['allocation']} | {'yes' if row['bias'] else 'no'} "
                     f"| {row['removed_fraction']:.1%} | {row['removed_mlp_fraction']:.1%} | "
                     + " | ".join(f"{row['ppl'][w]:.2f}" for w in windows) + " |")
    errors = [r for r in result["rows"] if "error" in r]
    if errors:
        lines += ["", "Failed:"] + [f"- {r['method']} ({r['allocation']}) at {r['ratio']:.2f}: {r['error']}" for r in errors]
    return "\n".join(lines) + "\n"


def plotly_chart(result: dict) -> str:
    import plotly.graph_objects as go

    window = list(result["rows"][0]["ppl"])[0]
    dense = result["rows"][0]["ppl"][window]
    fig = go.Figure()
    series: dict[str, list] = {}
    for row in result["rows"][1:]:
        if "error" not in row:
            series.setdefault(f"{row['method']} ({row['allocation']})", []).append(row)
    for name, rows in series.items():
        rows = sorted(rows, key=lambda r: r["ratio"])
        fig.add_trace(go.Scatter(x=[r["ratio"] for r in rows], y=[r["ppl"][window] for r in rows],
                                 mode="lines+markers", name=name))
    fig.add_hline(y=dense, line_dash="dot", annotation_text=f"dense {dense:.2f}")
    fig.update_layout(title=f"Held-out perplexity (window {window}) vs fraction of parameters removed",
                      xaxis_title="fraction of all parameters removed", yaxis_title=f"PPL@{window}",
                      yaxis_type="log", template="plotly_white")
    return fig.to_html(include_plotlyjs=True, full_html=True)


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


def _n_components(fn) -> int:
    for attr in ("n_components_", "n_components"):
        n = getattr(fn, attr, None)
        if isinstance(n, int):
            return n
    return len(fn.component_table())


def ablate_networks(model: nn.Module, tokenizer, heldout_docs, fn, *, top_k: int = 1,
                    threshold: float | None = None, networks: Sequence[int] | None = None,
                    window: int = 512, max_tokens: int | None = 512, seed: int = 0) -> dict:
    """Zero the neurons (|z| > threshold) of the ``top_k`` networks with the largest peak |z| (or of
    ``networks``) vs as many random neurons in the same layers; report both perplexities."""
    if threshold is None:
        threshold = float(getattr(fn, "threshold_", None) or getattr(fn, "threshold", None) or 3.46)
    if networks is None:
        peaks = [float(np.max(np.asarray(fn.neuron_scores(networks=[k])))) for k in range(_n_components(fn))]
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
