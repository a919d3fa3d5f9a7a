"""Network fidelity: does a functional network still do what it did after pruning?

For each network (component) the dense and the pruned model read the same held-out documents.
The network's time course is computed as in the analysis -- the least-squares projection of the
standardised signals on the maps of its decomposition (:meth:`fnprune.analysis.ica.CanICA.transform`) --
in the pruned model over the neurons that remain (a removed neuron contributes nothing), with the
dense model's per-neuron scale on these documents. Reported per network:

- ``correlation``: Pearson correlation of the dense and the pruned time course over held-out tokens;
- ``output_change_top``: relative change of the network's layer output (the MLP's ``down`` output),
  ``sqrt(Σ ||y_pruned - y_dense||² / Σ ||y_dense||²)`` over the tokens where the network is most
  active in the dense model (its top ``top_fraction`` of tokens, at least 10);
- ``output_change_all``: the same over every held-out token (the reference for the line above);
- ``n_key`` / ``n_key_kept``: its key neurons (|z| above the analysis threshold) and how many remain.

Three passes over the documents, in two steps. :func:`dense_reference` reads them with the dense
model alone, twice: the per-neuron scale, then the time courses and the MLP outputs of the layers
the networks sit in. :func:`fidelity_against` then reads them with the pruned model. A pruning job
records the reference before it prunes its model in place, so fidelity never needs a second copy
of the dense model (issue 21.5). The reference holds, besides the time courses, the dense MLP
outputs of those layers: tokens x hidden x layers, in the model's dtype (for example 10,240 tokens
x 2,048 x 11 layers in float32 = 0.92 GB for a 1B-shaped model; a copy of that model is 4.0 GB).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, CorpusError
from ..models.loading import model_device
from ..models.mlp import backbone, find_mlps
from ..progress import ProgressCallback, report
from ..pruning.selection import component_key_masks
from ..tokens import encode_documents, padded_batches

DEFAULT_TOP_FRACTION = 0.05


@dataclass
class NetworkFidelity:
    id: int
    layer: int
    correlation: float
    output_change_top: float
    output_change_all: float
    n_key: int
    n_key_kept: int
    n_tokens: int


def _projections(fn, components: Sequence[int]) -> dict[int, np.ndarray]:
    """Per component: its column of the pseudo-inverse of its decomposition's maps,
    ``(n_map_layers, n_signals, width)`` float64 -- the analysis' time-course projection."""
    out: dict[int, np.ndarray] = {}
    for unit in np.unique(fn.component_unit[list(components)]):
        members = np.flatnonzero(fn.component_unit == unit)
        M = fn.maps[members].reshape(len(members), -1).astype(np.float64)   # (k, N)
        P = np.linalg.solve(M @ M.T, M).T                                   # (N, k)
        for col, c in enumerate(members):
            if c in components:
                out[int(c)] = P[:, col].reshape(fn.maps.shape[1:])
    return out


class _Recorder:
    """Forward hooks on one model: per batch, each component's time course and each layer's MLP output."""

    def __init__(self, model: nn.Module, keep: Sequence[np.ndarray] | None, layers: list[int], signals: list[str],
                 weights: dict[int, dict[int, torch.Tensor]], out_layers: list[int], scale_only: bool = False):
        self.adapters = {a.layer: a for a in find_mlps(model)}
        self.keep = keep
        self.signals = signals
        self.weights = weights                 # layer -> signal index -> (width, n_comp) projection / scale
        self.scale_only = scale_only
        self.mask: torch.Tensor | None = None
        self.tc: torch.Tensor | None = None    # (real tokens, n_comp)
        self.outputs: dict[int, torch.Tensor] = {}
        self.sums: dict[tuple[int, int], torch.Tensor] = {}
        self.handles = []
        for layer in layers:
            adapter = self.adapters[layer]
            self.handles += adapter.register_signal_hooks(tuple(signals), self._sink(layer))
        for layer in out_layers:
            self.handles.append(self.adapters[layer].down.register_forward_hook(self._out_hook(layer)))

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, x.shape[-1])
        return x[self.mask.to(x.device)].double().cpu()

    def _sink(self, layer: int):
        def sink(signal: str, x: torch.Tensor, post=None) -> None:
            x = self._rows(x)                                   # (real tokens, width of this model)
            if post is not None:
                x = post(x)
            s = self.signals.index(signal)
            if self.scale_only:
                acc = self.sums.setdefault((layer, s), torch.zeros((2, x.shape[1]), dtype=torch.float64))
                acc[0] += x.sum(0)
                acc[1] += (x * x).sum(0)
                return
            W = self.weights[layer][s]                          # (dense width, n_comp)
            if self.keep is not None:
                W = W[torch.as_tensor(self.keep[layer], dtype=torch.long)]
            contribution = x @ W                                # (real tokens, n_comp)
            self.tc = contribution if self.tc is None else self.tc + contribution
        return sink

    def _out_hook(self, layer: int):
        def hook(module, inputs, output):   # the model's dtype: float64 only where compared
            self.outputs[layer] = output.reshape(-1, output.shape[-1])[self.mask.to(output.device)].cpu()
        return hook

    def start_batch(self, mask: torch.Tensor) -> None:
        self.mask = mask.reshape(-1).bool()
        self.tc = None
        self.outputs = {}

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@dataclass
class DenseReference:
    """What :func:`fidelity_against` compares a pruned model with, recorded from the dense model
    (:func:`dense_reference`): the networks, their scaled projections, the token batches, the dense
    time courses ``(tokens, n_comp)`` and, per output layer, the dense MLP output per batch
    ``(real tokens, hidden)`` in the model's dtype."""
    fn: Any
    components: list[int]
    layers: list[int]
    out_layers: list[int]
    weights: dict[int, dict[int, torch.Tensor]]
    batches: list
    time_courses: np.ndarray
    outputs: dict[int, list[torch.Tensor]]


@torch.no_grad()
def network_fidelity(dense: nn.Module, pruned: nn.Module, tokenizer, docs, fn, components: Sequence[int],
                     keep: Sequence[np.ndarray], *, max_tokens: int = 512, batch_size: int = 4,
                     top_fraction: float = DEFAULT_TOP_FRACTION,
                     progress: ProgressCallback | None = None) -> list[NetworkFidelity]:
    """Fidelity of ``components`` (network ids of ``fn``) in ``pruned`` vs ``dense`` on ``docs``:
    :func:`dense_reference` then :func:`fidelity_against`.

    ``keep``: per layer, the original indices of the neurons ``pruned`` kept (in order), as
    returned by :func:`fnprune.pruning.recipe.prune_with_networks`.
    """
    reference = dense_reference(dense, tokenizer, docs, fn, components, max_tokens=max_tokens,
                                batch_size=batch_size, progress=progress)
    return fidelity_against(reference, pruned, keep, top_fraction=top_fraction, progress=progress)


@torch.no_grad()
def dense_reference(dense: nn.Module, tokenizer, docs, fn, components: Sequence[int], *, max_tokens: int = 512,
                    batch_size: int = 4, progress: ProgressCallback | None = None) -> DenseReference:
    """Read ``docs`` with ``dense`` (two passes: the per-neuron scale, then the networks' time courses
    and their layers' MLP outputs). Call it before the model is pruned in place."""
    components = [int(c) for c in components]
    bad = [c for c in components if not 0 <= c < fn.n_components]
    if bad:
        raise ConfigError(f"networks: component ids must be in 0..{fn.n_components - 1}, got {bad[:5]}")
    layers = sorted({lyr for c in components for lyr in fn.map_layers(c)})
    out_layers = sorted({fn.component_row_layer(c) for c in components})
    if not components:
        return DenseReference(fn, [], [], [], {}, [], np.zeros((0, 0)), {})
    sequences = encode_documents(tokenizer, docs, max_tokens)
    if not sequences:
        raise CorpusError("no held-out document has at least 2 tokens")
    batches = list(padded_batches(sequences, batch_size))
    weights = _scaled_projections(dense, fn, components, layers, batches, progress)
    tc, outputs = _record(dense, None, fn.signals, layers, weights, out_layers, batches,
                          lambda b: report(progress, "fidelity", 0.3 + 0.35 * b,
                                           f"dense model, batch {round(b * len(batches))}/{len(batches)}"))
    return DenseReference(fn, components, layers, out_layers, weights, batches, tc, outputs)


@torch.no_grad()
def fidelity_against(reference: DenseReference, pruned: nn.Module, keep: Sequence[np.ndarray], *,
                     top_fraction: float = DEFAULT_TOP_FRACTION,
                     progress: ProgressCallback | None = None) -> list[NetworkFidelity]:
    """Fidelity of the reference's networks in ``pruned`` (``keep``: per layer, the original indices
    of the neurons it kept, in order), read on the reference's documents."""
    ref = reference
    if not ref.components:
        return []
    if not 0 < top_fraction <= 1:
        raise ConfigError(f"top_fraction must be in (0, 1], got {top_fraction}")
    fn = ref.fn
    keep = [np.asarray(k, dtype=np.int64) for k in keep]
    widths = [a.width for a in find_mlps(pruned)]
    if [len(k) for k in keep] != widths:
        raise ConfigError(f"keep has {[len(k) for k in keep]} neurons per layer, the pruned model {widths}")
    n_batches = len(ref.batches)
    tc_p, outputs = _record(pruned, keep, fn.signals, ref.layers, ref.weights, ref.out_layers, ref.batches,
                            lambda b: report(progress, "fidelity", 0.65 + 0.35 * b,
                                             f"pruned model, batch {round(b * n_batches)}/{n_batches}"))
    err = {lyr: np.concatenate([((yp.double() - yd.double()) ** 2).sum(1).numpy()
                                for yp, yd in zip(outputs[lyr], ref.outputs[lyr], strict=True)])
           for lyr in ref.out_layers}
    sq = {lyr: np.concatenate([(yd.double() ** 2).sum(1).numpy() for yd in ref.outputs[lyr]]) for lyr in ref.out_layers}
    tc_d = ref.time_courses
    n_tokens = tc_d.shape[0]
    n_top = min(n_tokens, max(10, int(math.ceil(top_fraction * n_tokens))))
    key = component_key_masks(fn, ref.components, fn.threshold)
    kept = np.zeros((fn.n_layers, fn.width), dtype=bool)
    for layer, k in enumerate(keep):
        kept[layer, k] = True
    result = []
    for i, c in enumerate(ref.components):
        d, p = tc_d[:, i], tc_p[:, i]
        corr = float(np.corrcoef(d, p)[0, 1]) if d.std() > 0 and p.std() > 0 else float("nan")
        top = np.argsort(-d, kind="stable")[:n_top]
        row = fn.component_row_layer(c)
        e, r = err[row], sq[row]
        result.append(NetworkFidelity(
            id=c, layer=row, correlation=corr,
            output_change_top=float(np.sqrt(e[top].sum() / max(r[top].sum(), 1e-300))),
            output_change_all=float(np.sqrt(e.sum() / max(r.sum(), 1e-300))),
            n_key=int(key[i].sum()), n_key_kept=int((key[i] & kept).sum()), n_tokens=int(n_tokens)))
    return result


def _scaled_projections(dense: nn.Module, fn, components: list[int], layers: list[int], batches,
                        progress) -> dict[int, dict[int, torch.Tensor]]:
    """Pass 1: per layer and signal, the components' projection columns divided by the dense model's
    per-neuron std on these tokens (as the analysis standardises) -- ``(width, n_comp)`` each."""
    proj = _projections(fn, components)
    scaler = _Recorder(dense, None, layers, fn.signals, {}, [], scale_only=True)
    n = 0
    device = model_device(dense)
    try:
        for b, (ids, mask) in enumerate(batches):
            scaler.start_batch(mask)
            n += int(mask.sum())
            backbone(dense)(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            report(progress, "fidelity", 0.3 * (b + 1) / len(batches), "dense scale")
    finally:
        scaler.remove()
    weights: dict[int, dict[int, torch.Tensor]] = {}
    for layer in layers:
        weights[layer] = {}
        for s in range(len(fn.signals)):
            acc = scaler.sums[(layer, s)]
            std = (acc[1] / n - (acc[0] / n) ** 2).clamp_min(0).sqrt()
            std = torch.where(std > 0, std, torch.ones_like(std))
            cols = [torch.from_numpy(proj[c][fn.map_layers(c).index(layer), s]) if layer in fn.map_layers(c)
                    else torch.zeros(fn.width, dtype=torch.float64) for c in components]
            weights[layer][s] = torch.stack(cols, dim=1) / std[:, None]      # (width, n_comp)
    return weights


def _record(model, keep, signals, layers, weights, out_layers, batches, tick):
    """One model over ``batches``: its networks' time courses ``(tokens, n_comp)`` float64 and, per
    output layer, its MLP output per batch (model dtype). ``tick(fraction)`` after each batch."""
    rec = _Recorder(model, keep, layers, signals, weights, out_layers)
    tcs: list[torch.Tensor] = []
    outputs: dict[int, list[torch.Tensor]] = {lyr: [] for lyr in out_layers}
    dev = model_device(model)
    try:
        for b, (ids, mask) in enumerate(batches):
            rec.start_batch(mask)
            backbone(model)(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False)
            tcs.append(rec.tc)
            for lyr in out_layers:
                outputs[lyr].append(rec.outputs[lyr])
            tick((b + 1) / len(batches))
    finally:
        rec.remove()
    return torch.cat(tcs).numpy(), outputs


def most_stable_networks(fn, n: int = 20, protected_layers=None) -> list[int]:
    """The ``n`` most stable networks of the prunable layers (ties: larger peak |z|)."""
    from ..pruning.selection import protected_set

    protected = protected_set(fn, protected_layers)
    peak = np.array([fn.abs_max_map(c).max() for c in range(fn.n_components)])
    candidates = [c for c in range(fn.n_components) if fn.component_row_layer(c) not in protected]
    order = sorted(candidates, key=lambda c: (-float(fn.stability[c]), -float(peak[c]), c))
    return [int(c) for c in order[:n]]
