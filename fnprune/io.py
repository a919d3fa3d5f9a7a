"""Atomic writes and exports: NIfTI maps, FSL FIX labels, key-neuron masks as JSON; whether the process that left a file runs.

Every file fnprune and the backend write goes through :func:`atomic_path` (or its shorthands
:func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`atomic_write_json`): written to a
temporary ``.tmp-*`` name beside it and renamed into place (directories: ``rundir.save_run``,
``pruned_io.save_pruned``).

NIfTI layout (METHOD.md §4): x, y = the neuron grid (``neuron_grid(width)``; in the ``"index"``
layout neuron ``j`` sits at ``x = j % cols, y = j // cols``, in the ``"atlas"`` layout at cell
``networks.layout("atlas")[layer, j]``, same formula), z = layer, t = component, identity affine. In
per-layer mode component ``t`` of the volume holds component ``t`` of *every* layer (slice z is
layer z's own component ``t``), so 30 layers × 128 components make 128 volumes, not 3,840. Each
voxel is the neuron's signed z of the signal with the larger |z| (act or up).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError

LABELS = ("signal", "noise", "unknown")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A new temporary file beside ``path`` to write to (``.tmp-<random>-<name>``: same directory, so the
    rename is atomic; same suffix, for writers that read it, e.g. nibabel's ``.nii.gz``), renamed onto
    ``path`` when the block ends and removed if it raises. Concurrent writers of one path each get their
    own temporary file; the backend's leftover sweep removes ``.tmp-*`` names of a killed process."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".tmp-", suffix=f"-{path.name}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, value: Any, **dumps) -> Path:
    """``json.dumps(value, **dumps)`` written atomically."""
    return atomic_write_text(path, json.dumps(value, **dumps))


# -- safetensors, streamed ------------------------------------------------------------------------
_ST_DTYPES = {np.dtype(np.float16): "F16", np.dtype(np.float32): "F32", np.dtype(np.float64): "F64",
              np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.int16): "I16",
              np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8", np.dtype(np.bool_): "BOOL"}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


def write_safetensors(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` in the safetensors format, each array's bytes straight from its buffer.

    ``safetensors.numpy.save_file`` first copies every array into a ``bytes`` object, which doubles
    the peak memory of a run whose time courses are gigabytes; this writes the same format
    (8-byte little-endian header size, JSON header padded to 8 bytes, contiguous data) without it.
    """
    header, offset, ordered = {}, 0, []
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        if array.dtype not in _ST_DTYPES:
            raise ConfigError(f"safetensors: unsupported dtype {array.dtype} for {name!r}")
        header[name] = {"dtype": _ST_DTYPES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
        ordered.append(array)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for array in ordered:
            if array.nbytes:
                fh.write(memoryview(array.reshape(-1)).cast("B"))


def read_safetensors(path: str | Path, mmap: tuple[str, ...] = (), mmap_min_bytes: int = 0) -> dict[str, np.ndarray]:
    """Read a safetensors file; the arrays named in ``mmap`` that hold at least ``mmap_min_bytes``
    stay on disk as read-only memory maps (smaller ones are read: no page faults on access)."""
    path = Path(path)
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        if size <= 0 or size > 100_000_000:
            raise ValueError(f"{path}: not a safetensors file (header size {size})")
        header = json.loads(fh.read(size))
        start = 8 + size
        out = {}
        for name, spec in header.items():
            if name == "__metadata__":
                continue
            dtype = _ST_NAMES.get(spec["dtype"])
            if dtype is None:
                raise ValueError(f"{path}: unsupported dtype {spec['dtype']} for {name!r}")
            lo, hi = spec["data_offsets"]
            shape = tuple(spec["shape"])
            if hi - lo != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                raise ValueError(f"{path}: {name!r} has {hi - lo} bytes for shape {shape}")
            if name in mmap and hi > lo and hi - lo >= mmap_min_bytes:
                out[name] = np.memmap(path, dtype=dtype, mode="r", offset=start + lo, shape=shape)
            else:
                fh.seek(start + lo)
                out[name] = np.frombuffer(fh.read(hi - lo), dtype=dtype).reshape(shape).copy()
    return out


def _signed_neuron_maps(networks) -> np.ndarray:
    """(n_components, n_map_layers, width): per neuron the signal with the larger |z|, signed."""
    maps = networks.maps                                   # (c, m, s, w)
    pick = np.abs(maps).argmax(axis=2)[:, :, None, :]
    return np.take_along_axis(maps, pick, axis=2)[:, :, 0, :]


def nifti_volume(networks, layout: str = "index") -> np.ndarray:
    """``(cols, rows, n_layers, n_volumes)`` float32 array laid out as described in the module docstring."""
    rows, cols = networks.grid
    positions = networks.layout(layout)                   # (n_layers, width) grid cell of each neuron
    signed = _signed_neuron_maps(networks)
    if networks.mode == "whole-model":
        n_vol = networks.n_components
    else:
        n_vol = int(networks.component_index.max()) + 1 + int(networks.component_run.max()) * (
            int(networks.component_index.max()) + 1)
    vol = np.zeros((n_vol, networks.n_layers, rows * cols), dtype=np.float32)
    for c in range(networks.n_components):
        if networks.mode == "whole-model":
            for pos, layer in enumerate(networks.layers):
                vol[c, layer, positions[layer]] = signed[c, pos]
        else:
            t = int(networks.component_run[c]) * (int(networks.component_index.max()) + 1) + int(networks.component_index[c])
            layer = int(networks.component_layer[c])
            vol[t, layer, positions[layer]] = signed[c, 0]
    # (t, z, y*x) -> (x, y, z, t)
    return vol.reshape(n_vol, networks.n_layers, rows, cols).transpose(3, 2, 1, 0).copy()


def export_nifti(networks, path: str | Path, layout: str = "index") -> Path:
    """Write the maps as a 4-D NIfTI file (``.nii`` or ``.nii.gz``) that nilearn and FSLeyes open;
    ``layout``: ``"index"`` (neuron ``j`` at cell ``j``) or ``"atlas"`` (the run's functional atlas)."""
    import nibabel as nib

    path = Path(path)
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise ConfigError(f"NIfTI path must end in .nii or .nii.gz, got {path.name!r}")
    img = nib.Nifti1Image(nifti_volume(networks, layout), affine=np.eye(4))
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = b"fnprune z-maps; x,y neuron grid, z layer, t component"
    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return path


def fix_labels_text(labels: dict[int, str], n_components: int, source: str = "fnprune.analysis.ica",
                    names: dict[int, str] | None = None) -> str:
    """FSL FIX label file: a header line, ``k, Label, is_noise`` per component (1-based), then the noise list.

    With ``names`` each line also carries the network's name as a second label (FIX allows several:
    ``k, Label, name, is_noise``; commas in a name become semicolons).
    """
    lines = [source]
    noise = []
    for c in range(n_components):
        label = labels.get(c, "unknown")
        if label not in LABELS:
            raise ConfigError(f"label of component {c} must be one of {LABELS}, got {label!r}")
        fix_label = {"signal": "Signal", "noise": "Unclassified noise", "unknown": "Unknown"}[label]
        is_noise = label == "noise"
        if is_noise:
            noise.append(c + 1)
        name = (names or {}).get(c, "").replace(",", ";").replace("\n", " ").strip()
        lines.append(f"{c + 1}, {fix_label}, {name + ', ' if name else ''}{'True' if is_noise else 'False'}")
    lines.append("[" + ", ".join(str(n) for n in noise) + "]")
    return "\n".join(lines) + "\n"


def export_fix_labels(labels: dict[int, str], path: str | Path, n_components: int,
                      names: dict[int, str] | None = None) -> Path:
    return atomic_write_text(path, fix_labels_text(labels, n_components, names=names))


def mask_json(mask: np.ndarray, info: dict | None = None) -> str:
    """Key-neuron mask as JSON: per layer the kept neuron indices, plus ``info``."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ConfigError(f"mask must be 2-D (n_layers, width), got shape {mask.shape}")
    return json.dumps({
        "format": "fnprune-mask-1", "n_layers": int(mask.shape[0]), "width": int(mask.shape[1]),
        "widths": [int(x) for x in mask.sum(axis=1)],
        "keep": [np.flatnonzero(row).tolist() for row in mask], **(info or {}),
    })


def export_mask_json(mask: np.ndarray, path: str | Path, info: dict | None = None) -> Path:
    return atomic_write_text(path, mask_json(mask, info))


def load_mask_json(path: str | Path) -> np.ndarray:
    data = json.loads(Path(path).read_text())
    if data.get("format") != "fnprune-mask-1":
        raise ConfigError(f"{path}: not an fnprune mask file")
    mask = np.zeros((data["n_layers"], data["width"]), dtype=bool)
    for layer, keep in enumerate(data["keep"]):
        mask[layer, keep] = True
    return mask


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs (a zombie, killed but not yet reaped, does not): whether what
    it left behind -- a job, a temporary directory -- still has an owner."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
