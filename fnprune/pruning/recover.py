"""Recovery by distillation: after pruning, train the pruned MLPs to match the dense model's predictions.

The least-squares repair (:mod:`fnprune.pruning.repair`) is layer-local: each pruned layer's ``down``
is re-fitted to the dense layer's output, never to the model's output, so the errors of the layers
add up. :func:`distill` then trains the pruned model's MLP weights (every layer's in-projections --
gate / up or fc1 -- and ``down``, with their biases; attention, embeddings and norms stay frozen) so
that its next-token distribution matches the *dense* model's on the calibration tokens::

    minimise  mean over real tokens t of  KL(p_dense(· | x_<t) || p_pruned(· | x_<t))

The target is the dense model's distribution, not the text's next token: the pruned model is pulled
back toward the model it came from, not adapted to the calibration corpus (a fine-tune on the text's
own tokens would also make the dense model better on that text, and a "× dense" figure would then
flatter the pruning). AdamW without weight decay, a linear warm-up over the first tenth of the steps
then a cosine decay to 0, batches of the calibration documents in an order drawn from
``random_state``. The default learning rate was chosen on validation documents, for one epoch
(BENCHMARKS.md §3b, "Recovery by distillation"); other epoch counts were not measured.

Memory: the dense model (the teacher, in eval mode, no gradients), the pruned model, the gradients
and AdamW's two moments of the MLP weights (float32), and one batch of activations with their
gradients and two ``(tokens, vocabulary)`` distributions. Runs on the pruned model's device; the
teacher's batches go to the teacher's device.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError, CorpusError
from ..models.loading import model_device
from ..models.mlp import find_mlps
from ..progress import ProgressCallback, report
from ..tokens import encode_documents, padded_batches

WARMUP_SHARE = 0.1  # of the steps: the learning rate rises linearly, then decays along a cosine to 0


@dataclass
class Recovery:
    """What :func:`distill` did: ``steps`` optimiser steps over ``epochs`` passes of ``documents``
    documents; ``kl_first`` / ``kl_last``: the mean KL (nats per token) of the first and the last
    quarter of the steps; ``seconds``: wall time."""

    epochs: int
    lr: float
    documents: int
    tokens: int
    steps: int
    kl_first: float
    kl_last: float
    seconds: float


def mlp_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every MLP weight and bias (in-projections and ``down``) of every layer, once each."""
    seen, out = set(), []
    for adapter in find_mlps(model):
        for module in (*adapter.in_projs, adapter.down):
            for p in module.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
    return out


def _lr_factor(steps: int):
    warm = max(1, int(round(steps * WARMUP_SHARE)))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))
    return factor


def _log_probs(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    device = model_device(model)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
    return torch.log_softmax(logits.reshape(-1, logits.shape[-1])[real.to(device)].float(), dim=-1)


def distill(student: nn.Module, teacher: nn.Module, tokenizer, docs, *, epochs: int, lr: float,
            max_tokens: int = 512, batch_size: int = 4, random_state: int = 0,
            progress: ProgressCallback | None = None) -> Recovery:
    """Train ``student``'s MLP weights in place toward ``teacher``'s next-token distributions on ``docs``.

    ``teacher`` is not changed (no gradient reaches it). Every parameter of ``student`` that is not
    an MLP weight keeps its value and its ``requires_grad`` flag; the MLP weights get theirs back
    too. ``progress`` gets ``("recover", fraction, "step s/n, KL k")`` after each step.
    """
    if int(epochs) < 1:
        raise ConfigError(f"recovery needs at least one epoch, got {epochs}", field="recover_epochs")
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"the recovery learning rate must be a finite number > 0, got {lr!r}", field="recover_lr")
    sequences = encode_documents(tokenizer, docs, max_tokens)
    if not sequences:
        raise CorpusError("no calibration document has at least 2 tokens to recover on")
    params = mlp_parameters(student)
    flags = {id(p): p.requires_grad for p in student.parameters()}
    steps = int(epochs) * math.ceil(len(sequences) / batch_size)
    generator = torch.Generator().manual_seed(int(random_state))
    t0 = time.perf_counter()
    kls: list[float] = []
    was_training = student.training, teacher.training
    try:
        for p in student.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        optimiser = torch.optim.AdamW(params, lr=float(lr), weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, _lr_factor(steps))
        student.eval()  # no dropout: the same function the teacher computes, only the weights differ
        teacher.eval()
        for _ in range(int(epochs)):
            order = torch.randperm(len(sequences), generator=generator).tolist()
            for ids, mask in padded_batches([sequences[i] for i in order], batch_size):
                real = mask.reshape(-1).bool()
                with torch.no_grad():
                    target = _log_probs(teacher, ids, mask, real)
                pred = _log_probs(student, ids, mask, real)
                loss = nn.functional.kl_div(pred, target.to(pred.device), log_target=True, reduction="batchmean")
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                kls.append(float(loss.detach()))
                del target, pred, loss
                report(progress, "recover", len(kls) / steps, f"step {len(kls)}/{steps}, KL {kls[-1]:.4f}")
    finally:
        for p in student.parameters():
            p.requires_grad_(flags[id(p)])
            p.grad = None
        student.train(was_training[0])
        teacher.train(was_training[1])
    quarter = max(1, len(kls) // 4)
    return Recovery(epochs=int(epochs), lr=float(lr), documents=len(sequences), tokens=sum(len(s) for s in sequences),
                    steps=len(kls), kl_first=sum(kls[:quarter]) / quarter, kl_last=sum(kls[-quarter:]) / quarter,
                    seconds=time.perf_counter() - t0)
