"""Calibration one decoder layer at a time, on the layer's own device, holding one layer's statistics.

The all-at-once calibration (:func:`fnprune.pruning.statistics.collect_down_input_stats`) runs every batch through
the whole model and keeps every layer's ``(I, I)`` second moment until selection is done: 0.57 GB in
float64 for SmolLM2-135M, about 31 GB for an 8B-class model. Here the calibration batches are pushed
through the decoder layer by layer (the SparseGPT / SlimGPT scheme):

1. one cheap pass records, per batch, the residual stream entering the first decoder layer and the
   keyword arguments (attention mask, position embeddings, ...) each layer receives -- the layers
   themselves are replaced by an identity while recording, so this costs the embeddings only;
2. :meth:`LayerStream.run` evaluates one layer on every batch, a sink sees ``down``'s input (the
   neuron outputs) of the real tokens, and the layer's outputs replace its inputs: the next call
   gets the next layer's inputs. Whether the layer was pruned before its outputs are computed is the
   caller's choice (one-shot: after; sequential: before).

Peak memory is the model, one layer's statistics (:class:`LayerMoments`) and the calibration
activations ``(tokens, hidden)``, kept on the device of the layer that produced them.
:func:`streamed_layer_moments` is the driver every streamed user shares: it yields each layer's
moments, lets the caller act on the layer (score it, prune it), then advances. On a CPU the select
pass keeps each layer's moments on disk (:class:`MomentSpill`), so the one-shot repair reads them back
instead of running the calibration through the model a second time.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import CorpusError
from ..io import pid_alive
from ..models.loading import model_device
from ..models.mlp import MLPAdapter, backbone, decoder_layers, find_mlps
from ..progress import ProgressCallback, report
from ..tokens import encode_documents, padded_batches
from .repair import addmm_lower_, symmetrize_lower_

# The moments' sums over calibration tokens: float32 (BENCHMARKS.md §12, "Float32 or float64 moment
# sums": on the default model the kept neurons are identical and the perplexity equal to 1e-6; it
# halves the accumulators). The greedy and the repair form their matrices in float64 either way.
MOMENT_SUM_DTYPE = torch.float32

# every LayerMoments alive, so tests (and users who wonder) can count live statistics
_LIVE: weakref.WeakSet = weakref.WeakSet()


def live_moments() -> int:
    """How many :class:`LayerMoments` with a second moment are alive (a memory check for tests)."""
    return sum(1 for m in list(_LIVE) if m.holds_second_moment)


class _Recorded(Exception):
    """Raised by the recording stand-in of the last decoder layer: the pass has what it needs."""


class LayerMoments:
    """Statistics of one layer's ``down`` input ``x`` over real calibration tokens, accumulated on its device.

    ``mean``, ``var``, ``l2`` ``(I,)``; ``second_moment`` ``E[x xᵀ]`` ``(I, I)`` when ``plain``;
    ``weighted_second_moment``/``weighted_mean``/``weight_mean`` when ``weighted`` (each token weighs
    ``1 / mean_k h_k²`` of the residual stream entering the layer, see
    :class:`fnprune.pruning.statistics.DownInputStats`). Products are formed in float32 and summed in ``dtype``
    (default :data:`MOMENT_SUM_DTYPE`), on the lower triangle only (the moments are symmetric: half the
    flops; :meth:`finish` mirrors it, as the all-at-once pass does, so the two give the same moments). The sums live on the device where the layer computed ``x`` (allocated at
    the first batch: with accelerate's offloading that is the execution device, not where the
    weights rest).
    """

    def __init__(self, width: int, *, plain: bool, weighted: bool, dtype: torch.dtype = MOMENT_SUM_DTYPE):
        self.width, self.dtype, self.plain, self.weighted = int(width), dtype, plain, weighted
        self.device: torch.device | None = None
        self.n = 0
        self._sum = self._sumsq = self._gram = self._wgram = self._wsum = self._wtotal = None
        self.mean = self.var = self.l2 = None
        self.second_moment = self.weighted_second_moment = self.weighted_mean = None
        self.weight_mean: float | None = None
        _LIVE.add(self)

    def _allocate(self, device: torch.device) -> None:
        z = lambda *shape: torch.zeros(shape, dtype=self.dtype, device=device)  # noqa: E731
        self.device = device
        self._sum, self._sumsq = z(self.width), z(self.width)
        self._gram = z(self.width, self.width) if self.plain else None
        if self.weighted:
            self._wgram, self._wsum, self._wtotal = z(self.width, self.width), z(self.width), z()

    def add(self, x: torch.Tensor, w: torch.Tensor | None) -> None:
        """``x`` ``(tokens, I)`` real tokens only; ``w`` ``(tokens,)`` residual weights (when weighted)."""
        if self.device is None:
            self._allocate(x.device)
        xd = x.to(self.dtype)
        self._sum += xd.sum(0)
        self._sumsq += (xd * xd).sum(0)
        self.n += int(x.shape[0])
        xf = x.float()
        if self._gram is not None:       # the lower triangles only (half the flops); finish() mirrors them
            addmm_lower_(self._gram, xf.T, xf)
        if self._wgram is not None:
            addmm_lower_(self._wgram, (xf * w[:, None]).T, xf)
            wd = w.to(self.dtype)
            self._wsum += wd @ xd
            self._wtotal += wd.sum()

    def finish(self) -> LayerMoments:
        """Turn the sums into moments (in place); returns self."""
        if self.device is None:
            raise CorpusError("no calibration token reached this layer")
        n = self.n
        self.mean = self._sum / n
        self.var = (self._sumsq / n - self.mean * self.mean).clamp_min(0.0)
        self.l2 = self._sumsq.sqrt()
        if self._gram is not None:
            self.second_moment = symmetrize_lower_(self._gram).div_(n)
        if self._wgram is not None:
            total = float(self._wtotal)
            self.weighted_second_moment = symmetrize_lower_(self._wgram).div_(total)
            self.weighted_mean = self._wsum / total
            self.weight_mean = total / n
        self._sum = self._sumsq = self._gram = self._wgram = self._wsum = self._wtotal = None
        return self

    @property
    def holds_second_moment(self) -> bool:
        return any(t is not None for t in (self.second_moment, self.weighted_second_moment, self._gram, self._wgram))

    def free(self) -> None:
        """Drop the ``(I, I)`` moments (what a streamed pass does before the next layer)."""
        self.second_moment = self.weighted_second_moment = self._gram = self._wgram = None


def _execution_device(layer: nn.Module, default: torch.device) -> torch.device:
    """Where ``layer`` computes: accelerate's execution device when it dispatched the model (weights
    may rest on the meta device or on disk), else the device of its parameters."""
    hook = getattr(layer, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device(device) if not isinstance(device, torch.device) else device
    p = next(layer.parameters(), None)
    return p.device if p is not None and p.device.type != "meta" else default


@dataclass
class _Batch:
    hidden: torch.Tensor          # (batch, seq, hidden) residual stream entering the next layer to run
    mask: torch.Tensor            # (batch*seq,) bool real tokens
    kwargs: list[dict]            # per decoder layer: the keyword arguments the model passes it


class LayerStream:
    """The calibration batches, advanced through ``model``'s decoder layers one at a time.

    ``docs``: documents or strings (tokenised with :func:`fnprune.tokens.encode_documents`, as the
    all-at-once calibration does). :meth:`run` must be called for layers ``0, 1, 2, ...`` in order.
    """

    @torch.no_grad()
    def __init__(self, model: nn.Module, tokenizer, docs, max_tokens: int = 512, batch_size: int = 4):
        sequences = encode_documents(tokenizer, docs, max_tokens)
        if not sequences:
            raise CorpusError("no calibration document has at least 2 tokens")
        self.model = model
        self.layers = decoder_layers(model)
        self.n_tokens = sum(len(s) for s in sequences)
        self.next_layer = 0
        self.batches: list[_Batch] = []
        device = model_device(model)
        for ids, mask in padded_batches(sequences, batch_size):
            self.batches.append(self._record(ids.to(device), mask.to(device)))

    def _record(self, ids: torch.Tensor, mask: torch.Tensor) -> _Batch:
        """One pass with every decoder layer replaced by a recorder (an identity)."""
        n = len(self.layers)
        kwargs: list[dict | None] = [None] * n
        first: list[torch.Tensor] = []
        saved = [layer.__dict__.get("forward") for layer in self.layers]   # an instance forward (accelerate's)

        def recorder(i: int):
            def forward(hidden_states, *args, **kw):
                if args:  # positional extras: bind them as the layer would see them (rare)
                    kw = dict(kw, _positional=args)
                if i == 0:
                    first.append(hidden_states.detach())
                kwargs[i] = kw
                if i == n - 1:
                    raise _Recorded
                return hidden_states
            return forward

        was_training = self.model.training
        self.model.eval()
        try:
            for i, layer in enumerate(self.layers):
                layer.forward = recorder(i)
            try:
                backbone(self.model)(input_ids=ids, attention_mask=mask, use_cache=False)
            except _Recorded:
                pass
        finally:
            for layer, fwd in zip(self.layers, saved, strict=True):
                if fwd is None:
                    layer.__dict__.pop("forward", None)      # the class's forward again
                else:
                    layer.forward = fwd
            self.model.train(was_training)
        if not first or any(k is None for k in kwargs):
            raise RuntimeError("recording the decoder layers' inputs failed: the model did not call every layer")
        return _Batch(hidden=first[0], mask=mask.reshape(-1).bool(), kwargs=kwargs)

    @torch.no_grad()
    def run(self, layer: int, sink: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
            adapter: MLPAdapter | None = None, *, advance: bool = True) -> None:
        """Evaluate decoder layer ``layer`` on every batch; ``sink(x, h)`` gets ``down``'s input of the
        real tokens ``(tokens, I)`` and the residual stream entering the layer ``(tokens, hidden)``.
        ``advance``: the outputs replace the inputs (the next layer's inputs); else they are dropped
        (to collect statistics, then prune, then run again)."""
        if layer != self.next_layer:
            raise RuntimeError(f"layers must be run in order: expected layer {self.next_layer}, got {layer}")
        block = self.layers[layer]
        device = _execution_device(block, self.batches[0].hidden.device)
        state: dict = {}
        handles = []
        if sink is not None:
            def down_in(_signal, x, _post=None):
                x = x.reshape(-1, x.shape[-1])
                real = state["mask"].to(x.device)
                h = state["h"].reshape(-1, state["h"].shape[-1])[real.to(state["h"].device)]
                sink(x[real], h.to(x.device))
            handles = adapter.register_signal_hooks(("down_in",), down_in)
        was_training = self.model.training
        self.model.eval()
        try:
            for batch in self.batches:
                h = batch.hidden.to(device)
                state["mask"], state["h"] = batch.mask, h
                kw = dict(batch.kwargs[layer])
                args = kw.pop("_positional", ())
                out = block(h, *args, **kw)
                out = out[0] if isinstance(out, tuple) else out
                if advance:
                    batch.hidden = out
        finally:
            for handle in handles:
                handle.remove()
            self.model.train(was_training)
        if advance:
            self.next_layer += 1


def residual_weights(h: torch.Tensor) -> torch.Tensor:
    """``1 / mean_k h_k²`` per token of the residual stream ``h`` ``(tokens, hidden)``, float32."""
    ms = h.float().pow(2).mean(-1)
    return 1.0 / ms.clamp_min(torch.finfo(torch.float32).tiny)


def layer_moments(stream: LayerStream, adapter: MLPAdapter, *, plain: bool, weighted: bool,
                  dtype: torch.dtype = MOMENT_SUM_DTYPE) -> LayerMoments:
    """Run ``adapter``'s layer on the stream's current inputs (not advancing) and return its moments."""
    moments = LayerMoments(adapter.width, plain=plain, weighted=weighted, dtype=dtype)
    stream.run(adapter.layer, lambda x, h: moments.add(x, residual_weights(h) if weighted else None),
               adapter, advance=False)
    return moments.finish()


def streamed_layer_moments(model: nn.Module, tokenizer, docs, *, max_tokens: int = 512, batch_size: int = 4,
                           plain: bool = False, weighted: bool = False, layers: Sequence[int] | None = None,
                           sequential: bool = False, dtype: torch.dtype = MOMENT_SUM_DTYPE,
                           progress: ProgressCallback | None = None, stage: str = "calibrate"
                           ) -> Iterator[tuple[MLPAdapter, LayerMoments]]:
    """Yield ``(adapter, moments)`` for each decoder layer in ``layers`` (default all), in order.

    The caller may act on the layer before asking for the next one (score it; prune it in place).
    ``sequential=False``: the stream advances with the *dense* layer's outputs (computed while the
    moments are collected, before the caller's action); ``True``: with the layer as the caller left
    it, so each layer is calibrated on the already pruned layers below it. The previous layer's
    moments are freed before the next are collected: one layer's statistics are alive at a time.
    """
    adapters = find_mlps(model)
    wanted = sorted(range(len(adapters)) if layers is None else {int(x) for x in layers})
    stream = LayerStream(model, tokenizer, docs, max_tokens, batch_size)
    last = wanted[-1] if wanted else -1
    for i in range(last + 1):
        adapter = adapters[i]
        if i not in wanted:
            stream.run(i)
            continue
        moments = LayerMoments(adapter.width, plain=plain, weighted=weighted, dtype=dtype)
        sink = lambda x, h, m=moments: m.add(x, residual_weights(h) if weighted else None)  # noqa: E731
        if sequential:
            stream.run(i, sink, adapter, advance=False)
        else:
            stream.run(i, sink, adapter)           # the dense outputs go on to the next layer
        moments.finish()
        yield adapter, moments
        moments.free()
        del moments
        if sequential:
            stream.run(i)                          # the layer as the caller left it
        report(progress, stage, (wanted.index(i) + 1) / len(wanted), f"layer {i}")


class MomentSpill:
    """The residual-weighted moments the streamed select pass collected, one file per layer in a temporary
    directory, so that the one-shot prune pass reads them back instead of running the calibration through
    the model again: on a CPU that pass cost a 1B-shaped layer 15.7 s, its moments included (BENCHMARKS.md
    §12). The repair needs exactly these moments -- one-shot calibration on the dense model, the weighting
    obs selects with -- and a float32 file holds them bit for bit. Only moments on the CPU are spilled (on a
    GPU the pass costs less than the disk), and only when the disk has room (:meth:`fits`). The directory,
    ``$FNPRUNE_HOME/tmp/moments-<pid>-*`` by default (not ``/tmp``, which may be memory), is removed with
    this object or at exit; one left by a process that was killed is removed by the next spill."""

    def __init__(self, directory: str | os.PathLike | None = None):
        base = Path(directory) if directory is not None else spill_base()
        base.mkdir(parents=True, exist_ok=True)
        for old in base.glob("moments-*-*"):          # left by a killed process
            pid = old.name.split("-")[1]
            if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        self.dir = tempfile.mkdtemp(prefix=f"moments-{os.getpid()}-", dir=base)
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.dir, True)
        self.layers: set[int] = set()

    @staticmethod
    def nbytes(widths: Sequence[int], dtype: torch.dtype = MOMENT_SUM_DTYPE) -> int:
        """Bytes of the ``(I, I)`` moments of layers this wide."""
        return sum(int(w) ** 2 for w in widths) * torch.empty(0, dtype=dtype).element_size()

    @staticmethod
    def fits(need: int, directory=None) -> bool:
        """Whether ``need`` bytes fit the spill directory's disk with a quarter to spare."""
        base = Path(directory) if directory is not None else spill_base()
        while not base.exists():                      # the disk it will be on
            base = base.parent
        return shutil.disk_usage(base).free > 1.25 * need

    def _path(self, layer: int) -> str:
        return os.path.join(self.dir, f"layer{int(layer)}.pt")

    def save(self, layer: int, moments: LayerMoments) -> None:
        tmp = self._path(layer) + ".tmp"
        torch.save({"second_moment": moments.weighted_second_moment, "mean": moments.weighted_mean}, tmp)
        os.replace(tmp, self._path(layer))
        self.layers.add(int(layer))

    def load(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weighted second moment, weighted mean)`` of ``layer``, on the CPU."""
        d = torch.load(self._path(layer), map_location="cpu", weights_only=True)
        return d["second_moment"], d["mean"]


def spill_base() -> Path:
    """Where :class:`MomentSpill` directories go: ``$FNPRUNE_HOME/tmp``."""
    from ..corpus import fnprune_home

    return fnprune_home() / "tmp"


# -- the streamed uses: obs selection and the least-squares repair --------------------------------
def streamed_obs_scores(model: nn.Module, tokenizer, docs, *, forced=None, ridge: float, skip: Sequence[int] = (),
                        max_tokens: int = 512, batch_size: int = 4, dtype: torch.dtype = MOMENT_SUM_DTYPE,
                        progress: ProgressCallback | None = None, spill: MomentSpill | None = None) -> list:
    """:func:`fnprune.pruning.scores.obs_scores` with one layer's residual-weighted moments alive at a time (the
    dense model's, layer by layer); protected layers (``skip``) get ``+inf`` and no greedy. ``spill``: each
    layer's moments are also written there when they are on the CPU (for :func:`streamed_repair`)."""
    import numpy as np

    from .budget import forced_neuron_masks
    from .scores import obs_layer_scores

    adapters = find_mlps(model)
    masks = forced_neuron_masks(forced, [a.width for a in adapters])
    skip = {int(x) for x in skip}
    out = [np.full(a.width, np.inf) for a in adapters]
    todo = [a.layer for a in adapters if a.layer not in skip]
    if not todo:
        return out
    for adapter, m in streamed_layer_moments(model, tokenizer, docs, max_tokens=max_tokens, batch_size=batch_size,
                                             weighted=True, layers=todo, dtype=dtype, progress=progress):
        out[adapter.layer] = obs_layer_scores(adapter, m.weighted_second_moment, m.weighted_mean, m.weight_mean,
                                              masks[adapter.layer], ridge)
        if spill is not None and m.device.type == "cpu":
            spill.save(adapter.layer, m)
    return out


def streamed_repair(model: nn.Module, keep, tokenizer, docs, *, ridge: float, weighted: bool, sequential: bool,
                    max_tokens: int = 512, batch_size: int = 4, fits: dict | None = None,
                    dtype: torch.dtype = MOMENT_SUM_DTYPE, progress: ProgressCallback | None = None,
                    reselect=None, spilled: MomentSpill | None = None) -> list[np.ndarray]:
    """Prune every layer to ``keep`` and re-fit its ``down`` by least squares, one layer at a time.

    The moments are the plain ones, or the residual-weighted ones (``weighted``: what obs selects
    with); ``sequential``: each layer calibrated on the already pruned and repaired layers below it,
    else on the dense model (the same fit as :func:`fnprune.pruning.surgery.prune_model` with ``repair``).
    ``reselect(adapter, second_moment, mean, width) -> kept indices``: choose the layer's kept
    neurons again on the moments just collected, at the width ``keep`` gives it (sequential obs: the
    widths come from the dense pass, the choice inside each layer from its inputs after the layers
    below were pruned). ``spilled``: the select pass's moments (:class:`MomentSpill`); when it holds every
    layer to prune and the pass is one-shot and weighted, they are read back and nothing runs through the
    model. Returns the kept indices of every layer (``keep``'s, or the re-selected)."""
    from .surgery import finish_pruning, normalize_keep, repair_layer

    adapters = find_mlps(model)
    keep_idx = normalize_keep(keep, [a.width for a in adapters])
    todo = [a.layer for a, k in zip(adapters, keep_idx, strict=True) if k.numel() < a.width]
    read_back = (spilled is not None and weighted and not sequential and reselect is None
                 and set(todo) <= spilled.layers)

    def from_spill():
        for i, layer in enumerate(todo):
            yield (adapters[layer], *spilled.load(layer))
            report(progress, "prune", (i + 1) / len(todo), f"layer {layer} (the select pass's moments, read back)")

    def from_stream():
        for adapter, m in streamed_layer_moments(model, tokenizer, docs, max_tokens=max_tokens, batch_size=batch_size,
                                                 plain=not weighted, weighted=weighted, layers=todo,
                                                 sequential=sequential, dtype=dtype, progress=progress, stage="prune"):
            yield (adapter, *((m.weighted_second_moment, m.weighted_mean) if weighted else (m.second_moment, m.mean)))

    added = False
    for adapter, moment, mean in (from_spill() if read_back else from_stream()) if todo else ():
        added |= getattr(adapter.down, "bias", None) is None
        if reselect is not None:
            chosen = reselect(adapter, moment, mean, int(keep_idx[adapter.layer].numel()))
            keep_idx[adapter.layer] = torch.as_tensor(np.sort(np.asarray(chosen, dtype=np.int64)))
        fit = repair_layer(adapter, keep_idx[adapter.layer], moment, mean, ridge)
        del moment, mean  # before the next layer's moments are read or collected: one layer's alive
        if fits is not None:
            fits[adapter.layer] = fit
    finish_pruning(model, added)
    return [k.cpu().numpy().astype(np.int64) for k in keep_idx]
