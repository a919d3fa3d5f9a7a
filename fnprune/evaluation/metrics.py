"""Measure a (pruned) model: perplexity, parameter counts, size on disk, speed, memory, generations.

Protocol (METHOD §3): held-out documents are tokenized, concatenated (EOS between documents when
the tokenizer has one) and cut into non-overlapping windows of 512 tokens (and 128 to compare with
the literature); perplexity = exp(mean token NLL) over every predicted token. Every function
returns plain dicts of numbers and strings (JSON-ready).
"""

from __future__ import annotations

import math
import os
import platform
import resource
import time
from pathlib import Path

import torch
from torch import nn

from ..errors import CorpusError
from ..models.loading import model_device
from ..models.mlp import parameter_counts
from ..progress import ProgressCallback, report
from ..tokens import encode_documents, padded_batches

DEFAULT_PROMPTS = (
    "The capital of France is",
    "Once upon a time, there was a",
    "def fibonacci(n):",
)


def concatenated_ids(tokenizer, docs, max_tokens_per_doc: int | None = None) -> torch.Tensor:
    """One long 1-D LongTensor of the documents' tokens, EOS-separated when the tokenizer has one."""
    eos = getattr(tokenizer, "eos_token_id", None)
    ids: list[int] = []
    for seq in encode_documents(tokenizer, docs, max_tokens_per_doc):
        ids += seq
        if eos is not None:
            ids.append(int(eos))
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def per_document_perplexity(model: nn.Module, tokenizer, docs, *, window: int = 512, batch_size: int = 4,
                            keep_units: bool = False) -> dict:
    """Perplexity with every document scored separately on its first ``window`` tokens (padding
    masked) -- the protocol of METHOD §2's measured table. Same keys as :func:`perplexity`
    (``unit_nll``/``unit_tokens`` per document when ``keep_units``)."""
    sequences = encode_documents(tokenizer, docs, window)
    if not sequences:
        raise CorpusError("no held-out document has at least 2 tokens")
    unit_nll, unit_tokens = _row_nll(model, padded_batches(sequences, batch_size))
    return _ppl_result(unit_nll, unit_tokens, window, keep_units)


@torch.no_grad()
def _row_nll(model: nn.Module, batches, on_batch=None) -> tuple[list[float], list[int]]:
    """Summed next-token NLL and predicted-token count of every row of ``batches`` (``(ids, mask)``,
    mask None = every position real), in eval mode; ``on_batch(i, unit_nll, unit_tokens)`` after each
    batch, with the rows scored so far (a caller can report a running perplexity)."""
    device = model_device(model)
    was_training = model.training
    model.eval()
    unit_nll: list[float] = []
    unit_tokens: list[int] = []
    try:
        for i, (ids, mask) in enumerate(batches):
            ids = ids.to(device)
            mask = torch.ones_like(ids) if mask is None else mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()  # (b, len, vocab)
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
            real = mask[:, 1:].bool()  # (b, len-1): the predicted token is a real one
            unit_nll += (nll * real).sum(1).tolist()
            unit_tokens += real.sum(1).tolist()
            if on_batch is not None:
                on_batch(i, unit_nll, unit_tokens)
    finally:
        model.train(was_training)
    return unit_nll, unit_tokens


def _ppl_result(unit_nll: list[float], unit_tokens: list[int], window: int, keep_units: bool) -> dict:
    total_tokens = int(sum(unit_tokens))
    mean_nll = float(sum(unit_nll)) / total_tokens
    out = {"ppl": math.exp(mean_nll), "nll": mean_nll, "n_tokens": total_tokens,
           "n_windows": len(unit_nll), "window": window}
    if keep_units:
        out.update(unit_nll=[float(x) for x in unit_nll], unit_tokens=[int(x) for x in unit_tokens])
    return out


@torch.no_grad()
def perplexity(model: nn.Module, tokenizer, docs, *, window: int = 512, batch_size: int = 4,
               max_tokens_per_doc: int | None = None, max_windows: int | None = None,
               ids: torch.Tensor | None = None, progress: ProgressCallback | None = None,
               keep_units: bool = False) -> dict:
    """Perplexity over non-overlapping windows of ``window`` tokens of the concatenated documents.

    Returns ``{"ppl", "nll", "n_tokens" (predicted tokens), "n_windows", "window"}`` and, when
    ``keep_units``, ``unit_nll``/``unit_tokens`` per window (for bootstrap intervals). The tail
    shorter than a window is dropped (unless it is the only window).
    """
    if ids is None:
        ids = concatenated_ids(tokenizer, docs, max_tokens_per_doc)
    n_windows = len(ids) // window
    if n_windows == 0:
        if len(ids) < 2:
            raise CorpusError("held-out text has fewer than 2 tokens")
        windows = ids[None, :]
    else:
        windows = ids[: n_windows * window].reshape(n_windows, window)  # (n_windows, window)
    if max_windows is not None:
        windows = windows[:max_windows]
    batches = [(windows[s:s + batch_size], None) for s in range(0, len(windows), batch_size)]
    def on_batch(i: int, nll: list[float], tokens: list[int]) -> None:
        # the partial result streams with the progress: the perplexity of the windows scored so far
        report(progress, f"ppl@{window}", (i + 1) / len(batches),
               f"PPL@{window} so far {math.exp(sum(nll) / max(1, sum(tokens))):.2f} "
               f"({len(nll)} of {len(windows)} windows, {sum(tokens):,} tokens)")

    unit_nll, unit_tokens = _row_nll(model, batches, on_batch)
    return _ppl_result(unit_nll, unit_tokens, window, keep_units)


def perplexity_by_label(model: nn.Module, tokenizer, docs, *, window: int = 512, batch_size: int = 4) -> dict:
    """``{label: {"ppl", "n_tokens", "n_docs"}}``: each document scored alone on its first ``window``
    tokens (the per-document protocol), pooled per document label (Brown: genre)."""
    kept = [d for d in docs if encode_documents(tokenizer, [d], window)]
    if not kept:
        raise CorpusError("no held-out document has at least 2 tokens")
    r = per_document_perplexity(model, tokenizer, kept, window=window, batch_size=batch_size, keep_units=True)
    out: dict = {}
    for doc, nll, n in zip(kept, r["unit_nll"], r["unit_tokens"], strict=True):
        label = getattr(doc, "label", None) or "unlabelled"
        acc = out.setdefault(label, {"nll": 0.0, "n_tokens": 0, "n_docs": 0})
        acc["nll"] += nll
        acc["n_tokens"] += n
        acc["n_docs"] += 1
    return {k: {"ppl": math.exp(v["nll"] / v["n_tokens"]), "n_tokens": v["n_tokens"], "n_docs": v["n_docs"]}
            for k, v in sorted(out.items())}


def size_on_disk(path: str | os.PathLike) -> int:
    """Bytes of a file, or of every file under a directory."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def memory_usage() -> dict:
    """Current and peak resident memory of this process (bytes); GPU peak when CUDA is in use."""
    import psutil

    rss = psutil.Process().memory_info().rss
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak *= 1 if platform.system() == "Darwin" else 1024  # Linux reports KiB
    out = {"rss_bytes": int(rss), "peak_rss_bytes": int(peak)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["gpu_peak_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def speed(model: nn.Module, *, batch_sizes=(1, 8), prompt_tokens: int = 64, new_tokens: int = 32,
          repeats: int = 3, vocab_size: int | None = None, seed: int = 0) -> dict:
    """Latency of one forward pass over a ``prompt_tokens`` prompt and greedy generation throughput.

    Returns ``{"device", "batch_<b>": {"prefill_ms", "decode_tokens_per_s", "tokens_per_s"}}`` on random
    token ids (median of ``repeats``). ``decode_tokens_per_s`` counts generated tokens of all rows.
    """
    device = model_device(model)
    vocab = vocab_size or model.config.vocab_size
    gen = torch.Generator().manual_seed(seed)
    out: dict = {"device": str(device), "prompt_tokens": prompt_tokens, "new_tokens": new_tokens}
    was_training = model.training
    model.eval()
    try:
        for b in batch_sizes:
            ids = torch.randint(0, vocab, (b, prompt_tokens), generator=gen).to(device)
            mask = torch.ones_like(ids)
            model(input_ids=ids, attention_mask=mask, use_cache=False)  # warm-up
            prefill, decode = [], []
            for _ in range(repeats):
                _sync(device)
                t0 = time.perf_counter()
                model(input_ids=ids, attention_mask=mask, use_cache=False)
                _sync(device)
                prefill.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                               min_new_tokens=new_tokens, do_sample=False,
                               pad_token_id=getattr(model.config, "pad_token_id", None) or 0)
                _sync(device)
                decode.append(time.perf_counter() - t0)
            p, d = sorted(prefill)[len(prefill) // 2], sorted(decode)[len(decode) // 2]
            out[f"batch_{b}"] = {"prefill_ms": 1000 * p, "tokens_per_s": b * prompt_tokens / p,
                                 "decode_tokens_per_s": b * new_tokens / d}
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def generations(model: nn.Module, tokenizer, prompts=DEFAULT_PROMPTS, max_new_tokens: int = 30) -> list[dict]:
    """Greedy continuations: ``[{"prompt", "completion"}]``."""
    device = model_device(model)
    out = []
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt")
        ids = enc["input_ids"].to(device)
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id or 0)
        out.append({"prompt": prompt, "completion": tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)})
    return out


def lm_eval_tasks(model: nn.Module, tokenizer, tasks=("arc_easy", "hellaswag"), *, limit: int | None = None,
                  batch_size: int = 8) -> dict | None:
    """Zero-shot tasks through lm-evaluation-harness (``HFLM(pretrained=model)``); None if not installed."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        return None
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    result = simple_evaluate(model=lm, tasks=list(tasks), limit=limit)
    return {task: {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            for task, metrics in result.get("results", {}).items()}


def evaluate_model(model: nn.Module, tokenizer, heldout_docs, *, windows=(512, 128), batch_size: int = 4,
                   max_tokens_per_doc: int | None = None, with_speed: bool = True, batch_sizes=(1, 8),
                   with_generations: bool = True, prompts=DEFAULT_PROMPTS, model_dir: str | os.PathLike | None = None,
                   lm_eval: tuple[str, ...] | None = None, per_label: bool = False,
                   progress: ProgressCallback | None = None) -> dict:
    """Everything METHOD §3 asks for one model, as a plain dict (``per_label``: also the perplexity of
    each document label, e.g. Brown genre, see :func:`perplexity_by_label`)."""
    result: dict = {"params": parameter_counts(model)}
    ids = concatenated_ids(tokenizer, heldout_docs, max_tokens_per_doc)
    result["perplexity"] = {str(w): perplexity(model, tokenizer, None, window=w, batch_size=batch_size, ids=ids,
                                               progress=progress) for w in windows}
    if per_label:
        result["perplexity_by_label"] = perplexity_by_label(model, tokenizer, heldout_docs, window=windows[0],
                                                            batch_size=batch_size)
    if model_dir is not None:
        result["size_on_disk_bytes"] = size_on_disk(model_dir)
    if with_speed:
        report(progress, "speed", 0.0)
        result["speed"] = speed(model, batch_sizes=batch_sizes)
        report(progress, "speed", 1.0)
    if with_generations:
        result["generations"] = generations(model, tokenizer, prompts)
    if lm_eval:
        result["lm_eval"] = lm_eval_tasks(model, tokenizer, lm_eval)
    result["memory"] = memory_usage()
    return result
