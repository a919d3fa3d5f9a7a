"""fnprune: functional networks (ICA over MLP neurons) of a language model, and pruning that keeps them.

The library is in four rooms, one per job (ARCHITECTURE.md has the map): :mod:`fnprune.models`
(loading, MLP adapters, pruned model directories, GGUF export), :mod:`fnprune.analysis` (capture,
CanICA, functional networks, run directories), :mod:`fnprune.pruning` (the method registry,
statistics, budgets, surgery, repair, the recipe) and :mod:`fnprune.evaluation` (perplexity,
fidelity, compare). The names below are the ones a user starts from; importing them is lazy.
"""

from ._lazy import lazy_exports

_PUBLIC = {
    "load_model": "models.loading",
    "load_pruned": "models.pruned_io",
    "save_pruned": "models.pruned_io",
    "analyze": "analysis.networks",
    "FunctionalNetworks": "analysis.networks",
    "Calibration": "pruning.calibration",
    "PruningSpec": "pruning.spec",
    "prune_with_networks": "pruning.recipe",
    "analyze_job": "analysis.job",
    "PruneJob": "pruning.job",
    "prune_job": "pruning.job",
}
__all__ = list(_PUBLIC)
__getattr__ = lazy_exports(__name__, _PUBLIC)
