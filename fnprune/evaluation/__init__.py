"""Evaluation: perplexity, size, memory, speed and generations; network fidelity after pruning; compare."""

from .._lazy import lazy_exports

_PUBLIC = {
    "perplexity": "metrics",
    "network_fidelity": "fidelity",
    "compare": "compare",
}
__all__ = list(_PUBLIC)
__getattr__ = lazy_exports(__name__, _PUBLIC)
