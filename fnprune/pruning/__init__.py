"""Pruning: the method registry, calibration statistics, budgets and allocations, scores, surgery
(index_select), repair and structured OBS, attention heads, recovery by distillation, and the recipe that
joins them."""

from .._lazy import lazy_exports

_PUBLIC = {
    "Method": "methods",
    "register": "methods",
    "Calibration": "calibration",
    "PruningSpec": "spec",
    "default_target": "spec",
    "PruningOutcome": "recipe",
    "prune_with_networks": "recipe",
    "DownInputStats": "statistics",
    "collect_down_input_stats": "statistics",
    "prune_model": "surgery",
    "distill": "recover",
}
__all__ = list(_PUBLIC)
__getattr__ = lazy_exports(__name__, _PUBLIC)
