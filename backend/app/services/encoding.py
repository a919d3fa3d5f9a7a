"""Compact JSON encodings of arrays: int8 / uint8 quantised, base64, C order."""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np


def grid_shape(width: int) -> list[int]:
    """The fixed 2-D layout of a layer's neurons: ``cols = ceil(sqrt(width))``, row-major."""
    cols = max(1, math.ceil(math.sqrt(width)))
    return [max(1, math.ceil(width / cols)), cols]


def int8_array(values: np.ndarray) -> dict[str, Any]:
    """Symmetric int8 quantisation: ``value ≈ data * scale``, ``scale = max|value| / 127``."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float32))
    peak = float(np.abs(values).max()) if values.size else 0.0
    scale = peak / 127.0 if peak > 0 else 1.0
    data = np.clip(np.rint(values / scale), -127, 127).astype(np.int8)
    return {"dtype": "int8", "shape": list(values.shape), "scale": scale,
            "data": base64.b64encode(data.tobytes()).decode("ascii")}


def uint8_array(values: np.ndarray, *, quantise: bool) -> dict[str, Any]:
    """Counts clipped to 0..255 (``quantise=False``) or non-negative floats as ``data * scale``."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float64))
    out: dict[str, Any] = {"dtype": "uint8", "shape": list(values.shape)}
    if quantise:
        peak = float(np.abs(values).max()) if values.size else 0.0
        scale = peak / 255.0 if peak > 0 else 1.0
        data = np.clip(np.rint(np.abs(values) / scale), 0, 255).astype(np.uint8)
        out["scale"] = scale
    else:
        data = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    out["data"] = base64.b64encode(data.tobytes()).decode("ascii")
    return out


def raw_array(values: np.ndarray) -> dict[str, Any]:
    """An integer array as is (little-endian), base64."""
    values = np.ascontiguousarray(values)
    return {"dtype": values.dtype.name, "shape": list(values.shape),
            "data": base64.b64encode(values.astype(values.dtype.newbyteorder("<")).tobytes()).decode("ascii")}


def decode(encoded: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`int8_array` / :func:`uint8_array` (for tests and clients in Python)."""
    data = np.frombuffer(base64.b64decode(encoded["data"]), dtype=np.dtype(encoded["dtype"]))
    data = data.reshape(encoded["shape"])
    if encoded.get("scale") is None:
        return data.copy()
    return data.astype(np.float32) * encoded["scale"]


def histogram(values: np.ndarray, bins: int = 60) -> dict[str, list]:
    values = np.nan_to_num(np.asarray(values, dtype=np.float32)).ravel()
    if values.size == 0:
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(values, bins=bins)
    return {"edges": [round(float(e), 4) for e in edges], "counts": [int(c) for c in counts]}


def subsample_indices(n: int, max_points: int) -> np.ndarray:
    if n <= max_points:
        return np.arange(n)
    return np.linspace(0, n - 1, max_points).round().astype(np.int64)


def floats(values, digits: int = 4) -> list[float]:
    return [round(float(v), digits) for v in np.nan_to_num(np.asarray(values, dtype=np.float64)).ravel()]
