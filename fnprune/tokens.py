"""Documents to token ids, and token ids to padded batches: the one tokenisation every pass shares.

Capture, calibration statistics, perplexity and network fidelity all feed a model the same way:
each document is tokenised with the tokenizer's special tokens (BOS and the like), cut to the first
``max_tokens`` ids, and batched right-padded with an attention mask. Cutting after adding the
special tokens means a truncated document does not end in an end-of-text token it never reached.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


def encode_documents(tokenizer, docs: Sequence, max_tokens: int | None, *,
                     min_tokens: int = 2) -> list[list[int]]:
    """Token ids per document, special tokens added, cut to the first ``max_tokens`` ids.

    ``docs``: :class:`fnprune.corpus.Document` objects or strings. Documents with fewer than
    ``min_tokens`` ids are dropped (``min_tokens=0`` keeps one list per document, in order).
    """
    out = []
    for doc in docs:
        text = doc if isinstance(doc, str) else doc.text
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        if max_tokens is not None:
            ids = ids[:max_tokens]
        if len(ids) >= min_tokens:
            out.append(list(ids))
    return out


def padded_batches(sequences: Sequence[Sequence[int]], batch_size: int,
                   pad_id: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(input_ids, attention_mask)`` LongTensors ``(batch, max_len)``, right-padded (``pad_id``)."""
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        length = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), length), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), length), dtype=torch.long)
        for row, seq in enumerate(chunk):
            ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            mask[row, :len(seq)] = 1
        yield ids, mask
