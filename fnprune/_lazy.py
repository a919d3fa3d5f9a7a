"""Lazy re-exports for package ``__init__`` modules: importing a package stays cheap (no torch or
transformers until a name is used), and no package imports its own modules at import time (so no
module's import runs through a package ``__init__`` back into itself)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping


def lazy_exports(package: str, names: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` that imports ``package + "." + names[name]`` when ``name`` is first read."""

    def __getattr__(name: str) -> object:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{names[name]}"), name)

    return __getattr__
