"""Measurements of the dense model reused by every later job: ``data_dir/cache/<prefix>-<key>.json``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from ..core.config import Settings


def docs_key(docs) -> list[list[str]]:
    """Documents as part of a cache key: id and a hash of the text of each."""
    return [[d.id, hashlib.sha256(d.text.encode()).hexdigest()] for d in docs]


def cached_json(settings: Settings, prefix: str, key: dict[str, Any], compute: Callable[[], Any]) -> tuple[Any, bool]:
    """``(value, whether it came from the cache)``: ``compute()`` once per ``key`` (a JSON-able dict), written
    atomically; a damaged entry is recomputed."""
    from fnprune.io import atomic_write_json

    found = cached_value(settings, prefix, key)
    if found is not None:
        return found, True
    value = compute()
    atomic_write_json(_path(settings, prefix, key), value)
    return value, False


def cached_value(settings: Settings, prefix: str, key: dict[str, Any]) -> Any | None:
    """The cached value for ``key``, or None (none yet, or a damaged entry)."""
    path = _path(settings, prefix, key)
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    return None


def _path(settings: Settings, prefix: str, key: dict[str, Any]):
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]
    return settings.data_dir / "cache" / f"{prefix}-{digest}.json"
