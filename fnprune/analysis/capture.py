"""Activation capture: MLP neuron signals of every real token, streamed to a per-layer store on disk.

The store is a directory::

    meta.json            n_tokens, layers, width, signals, dtype, documents (id, label, n_tokens)
    tokens.npz           per token: doc index, position, token id (int32 arrays)
    token_text.json      per token: its decoded text
    layer_NNN_SIGNAL.npy (n_tokens, width) float16/float32, one file per layer and signal

Memory does not grow with the number of tokens: the token count is known after tokenisation, the
layer files are pre-allocated, and each forward hook writes its batch's real (non-padded) positions
straight into them as one contiguous block (``os.pwrite``; no memory map is held while capturing). Special tokens (BOS and the like) are fed to the model but not
recorded: their massive activations would otherwise dominate every decomposition.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from ..corpus import Document
from ..errors import ConfigError, CorpusError, FnpruneError, RunDirError
from ..models.loading import model_device
from ..models.mlp import SIGNALS, MLPAdapter, backbone, find_mlps
from ..progress import ProgressCallback, report
from ..tokens import encode_documents, padded_batches

_DTYPES = {"float16": np.float16, "float32": np.float32}
_F16_MAX = float(np.finfo(np.float16).max)


class ActivationStore:
    """Read access to a captured activation directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_file = self.path / "meta.json"
        if not meta_file.exists():
            raise RunDirError(f"{self.path} is not an activation store (no meta.json)")
        self.meta = json.loads(meta_file.read_text())
        with np.load(self.path / "tokens.npz") as arrays:
            self.token_doc = arrays["doc"]
            self.token_pos = arrays["pos"]
            self.token_ids = arrays["token_id"]
        self._text: list[str] | None = None

    @classmethod
    def open(cls, path: str | Path) -> ActivationStore:
        return cls(path)

    @property
    def n_tokens(self) -> int:
        return int(self.meta["n_tokens"])

    @property
    def layers(self) -> list[int]:
        return list(self.meta["layers"])

    @property
    def width(self) -> int:
        return int(self.meta["width"])

    @property
    def signals(self) -> list[str]:
        return list(self.meta["signals"])

    @property
    def documents(self) -> list[dict]:
        return self.meta["documents"]

    @property
    def token_text(self) -> list[str]:
        if self._text is None:
            self._text = json.loads((self.path / "token_text.json").read_text())
        return self._text

    @property
    def token_labels(self) -> list[str | None]:
        labels = [d["label"] for d in self.documents]
        return [labels[i] for i in self.token_doc]

    def layer_matrix(self, layer: int) -> LayerMatrix:
        """``(n_tokens, n_signals * width)`` view of decoder layer ``layer`` (rows read on demand)."""
        if layer not in self.layers:
            raise ConfigError(f"layer {layer} was not captured (captured: {self.layers})")
        return LayerMatrix([self.path / f"layer_{layer:03d}_{s}.npy" for s in self.signals])


class LayerMatrix:
    """The signals of one layer side by side, ``(n_tokens, n_signals * width)``, read lazily.

    Supports ``.shape``, ``.ndim``, ``.dtype``, row slicing (``m[a:b]`` returns a view over those
    rows, ``m[a:b][c:d]`` too) and ``np.asarray(m)``; columns are ``[signal0 | signal1 | ...]``.
    """

    def __init__(self, files: list[Path], rows: slice = slice(None)):
        self.files = files
        first = np.load(files[0], mmap_mode="r")
        start, stop, _ = rows.indices(first.shape[0])
        self.rows = slice(start, max(start, stop))
        self.shape = (self.rows.stop - self.rows.start, first.shape[1] * len(files))
        self.dtype = first.dtype
        self.ndim = 2

    def __getitem__(self, key) -> LayerMatrix | np.ndarray:
        if isinstance(key, slice) and key.step in (None, 1):
            start, stop, _ = key.indices(self.shape[0])
            return LayerMatrix(self.files, slice(self.rows.start + start, self.rows.start + max(start, stop)))
        return np.asarray(self)[key]

    def to_tensor(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """These rows as a new ``dtype`` tensor, each file's rows converted straight into place."""
        out = torch.empty(self.shape, dtype=dtype)
        c0 = 0
        for f in self.files:
            part = np.array(np.load(f, mmap_mode="r")[self.rows])      # one contiguous read
            out[:, c0:c0 + part.shape[1]] = torch.from_numpy(part)
            c0 += part.shape[1]
        return out

    def __array__(self, dtype=None, copy=None):
        parts = [np.load(f, mmap_mode="r")[self.rows] for f in self.files]
        out = np.hstack(parts)
        return out if dtype is None else out.astype(dtype)


class _StopForward(Exception):
    """Raised by a hook after the last captured layer: the rest of the forward pass is skipped."""


def _pwrite_all(fd: int, block: np.ndarray, offset: int) -> None:
    """Write a contiguous array at ``offset`` (no intermediate bytes copy; loops on short writes)."""
    view = memoryview(block).cast("B")
    while len(view):
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _check_options(docs: list[Document], max_tokens: int, batch_size: int, dtype: str,
                   signals: tuple[str, ...]) -> None:
    if not docs:
        raise CorpusError("no documents to capture")
    if max_tokens < 2:
        raise ConfigError(f"max_tokens must be at least 2, got {max_tokens}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if not signals or set(signals) - set(SIGNALS):
        raise ConfigError(f"signals must be a non-empty subset of {SIGNALS}, got {signals}")


def _captured_layers(adapters: list[MLPAdapter], layers: list[int] | None) -> tuple[list[int], int]:
    """The sorted layers to capture and their (common) MLP width."""
    all_layers = [a.layer for a in adapters]
    layers = all_layers if layers is None else sorted(set(int(x) for x in layers))
    if not layers or set(layers) - set(all_layers):
        raise ConfigError(f"layers must be a non-empty subset of 0..{len(adapters) - 1}, got {layers}")
    width = adapters[layers[0]].width
    if any(adapters[lyr].width != width for lyr in layers):
        raise ConfigError("captured layers have different MLP widths; capture them separately")
    return layers, width


class _LayerFiles:
    """The pre-allocated ``layer_NNN_SIGNAL.npy`` files of a store being written, open for ``pwrite``."""

    def __init__(self, directory: Path, layers: list[int], signals: tuple[str, ...], n_tokens: int, width: int,
                 dtype: str):
        self.width, self.dtype = width, dtype
        self.itemsize = np.dtype(_DTYPES[dtype]).itemsize
        self.files: dict[tuple[int, str], tuple[int, int]] = {}  # (layer, signal) -> (descriptor, data offset)
        try:
            for lyr in layers:
                for sig in signals:
                    path = directory / f"layer_{lyr:03d}_{sig}.npy"
                    header = np.lib.format.open_memmap(path, mode="w+", dtype=_DTYPES[dtype], shape=(n_tokens, width))
                    offset = header.offset
                    del header
                    self.files[(lyr, sig)] = (os.open(path, os.O_WRONLY), offset)
        except BaseException:
            self.close()
            raise

    def write(self, layer: int, signal: str, values: torch.Tensor, row0: int) -> None:
        """Store ``values`` ``(rows, width)`` from row ``row0`` on; non-finite values are an error."""
        lo, hi = (float(v) for v in torch.aminmax(values))     # NaN propagates; one pass, no copy
        if not (math.isfinite(lo) and math.isfinite(hi)):
            bad = int((~torch.isfinite(values)).sum())
            raise FnpruneError(f"layer {layer} signal {signal}: {bad} non-finite activations (NaN/inf); "
                               "the model produces them on this text (try float32 weights)")
        if self.dtype == "float16" and max(-lo, hi) > _F16_MAX:
            values = values.clamp(-_F16_MAX, _F16_MAX)
        block = values.to(torch.float16 if self.dtype == "float16" else torch.float32).cpu().contiguous().numpy()
        fd, offset = self.files[(layer, signal)]
        _pwrite_all(fd, block, offset + row0 * self.width * self.itemsize)

    def close(self) -> None:
        for fd, _ in self.files.values():
            os.close(fd)
        self.files = {}


def _forward_batches(model, adapters: list[MLPAdapter], layers: list[int], signals: tuple[str, ...],
                     token_ids: list[list[int]], recorded: list[list[int]], files: _LayerFiles, *,
                     batch_size: int, pad_id: int, progress: ProgressCallback | None) -> None:
    """Run the backbone over right-padded batches; hooks write the recorded positions' signals in order."""
    device = model_device(model)
    n_tokens = sum(len(r) for r in recorded)
    batch: dict = {}  # flat (batch*seq) indices of the recorded positions, and the store row of the first

    def sink_for(layer: int):
        def sink(signal: str, tensor: torch.Tensor, post=None) -> None:
            flat = tensor.reshape(-1, tensor.shape[-1])  # (batch*seq, I)
            values = flat if batch["dense"] else flat.index_select(0, batch["flat_idx"])  # (recorded, I)
            files.write(layer, signal, values if post is None else post(values), batch["row0"])

        return sink

    def stop(module, inputs, output):  # nothing after the last captured layer is needed
        raise _StopForward

    handles = []
    try:
        for lyr in layers:
            handles += adapters[lyr].register_signal_hooks(signals, sink_for(lyr))
        handles.append(adapters[layers[-1]].module.register_forward_hook(stop))
        forward = backbone(model)
        row = 0
        n_batches = math.ceil(len(token_ids) / batch_size)
        for b, (input_ids, attention) in enumerate(padded_batches(token_ids, batch_size, pad_id)):
            seq = input_ids.shape[1]
            flat_idx = [i * seq + p for i, rec in enumerate(recorded[b * batch_size:(b + 1) * batch_size])
                        for p in rec]
            batch.update(flat_idx=torch.tensor(flat_idx, dtype=torch.long, device=device),
                         dense=len(flat_idx) == input_ids.numel(), row0=row)
            if flat_idx:
                try:
                    forward(input_ids=input_ids.to(device), attention_mask=attention.to(device), use_cache=False)
                except _StopForward:
                    pass
            row += len(flat_idx)
            report(progress, "capture", (b + 1) / n_batches, f"{row}/{n_tokens} tokens")
    finally:
        for h in handles:
            h.remove()


def _write_token_table(directory: Path, tokenizer, token_ids: list[list[int]], recorded: list[list[int]]) -> None:
    """``tokens.npz`` (document index, position, token id per recorded token) and ``token_text.json``."""
    doc_idx = np.concatenate([np.full(len(r), i, dtype=np.int32) for i, r in enumerate(recorded)])
    pos = np.concatenate([np.asarray(r, dtype=np.int32) for r in recorded])
    tok = np.concatenate([np.asarray(ids, dtype=np.int32)[r] for ids, r in zip(token_ids, recorded, strict=True)
                          if len(r)])
    np.savez(directory / "tokens.npz", doc=doc_idx, pos=pos, token_id=tok)
    vocab_text: dict[int, str] = {}
    texts = []
    for t in tok.tolist():
        if t not in vocab_text:
            vocab_text[t] = tokenizer.decode([t])
        texts.append(vocab_text[t])
    (directory / "token_text.json").write_text(json.dumps(texts))


@torch.inference_mode()
def capture_activations(model, tokenizer, docs: list[Document], out_dir: str | Path, *,
                        max_tokens: int = 512, batch_size: int = 4, layers: list[int] | None = None,
                        signals: tuple[str, ...] = ("act", "up"), dtype: str = "float16",
                        progress: ProgressCallback | None = None) -> ActivationStore:
    """Run ``model`` over ``docs`` and store the MLP signals of every real token in ``out_dir``.

    The store appears atomically: it is written to ``out_dir.partial`` and renamed when complete.
    """
    signals = tuple(signals)
    _check_options(docs, max_tokens, batch_size, dtype, signals)
    adapters = find_mlps(model)
    layers, width = _captured_layers(adapters, layers)

    # every document keeps its place (min_tokens=0); special tokens are fed to the model, never recorded
    token_ids = encode_documents(tokenizer, docs, max_tokens, min_tokens=0)
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    recorded = [[p for p, t in enumerate(ids) if t not in special] for ids in token_ids]
    n_tokens = sum(len(r) for r in recorded)
    if n_tokens == 0:
        raise CorpusError("the documents hold no tokens to record (empty after tokenisation)")

    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        files = _LayerFiles(partial, layers, signals, n_tokens, width, dtype)
        try:
            pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            _forward_batches(model, adapters, layers, signals, token_ids, recorded, files, batch_size=batch_size,
                             pad_id=pad_id, progress=progress)
        finally:
            files.close()
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise

    _write_token_table(partial, tokenizer, token_ids, recorded)
    meta = {"n_tokens": n_tokens, "layers": layers, "width": width, "signals": list(signals), "dtype": dtype,
            "max_tokens": max_tokens,
            "documents": [{"id": d.id, "label": d.label, "n_tokens": len(r)} for d, r in zip(docs, recorded, strict=True)]}
    (partial / "meta.json").write_text(json.dumps(meta))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(partial, out_dir)
    return ActivationStore(out_dir)
