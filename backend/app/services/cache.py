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

    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]
    path = settings.data_dir / "cache" / f"{prefix}-{digest}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text()), True
        except (OSError, ValueError):
            pass
    value = compute()
    atomic_write_json(path, value)
    return value, False
