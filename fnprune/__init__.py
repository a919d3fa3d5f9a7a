"""fnprune: functional networks (ICA over MLP neurons) of a language model, and pruning that keeps them."""

__all__ = ["load_pruned", "save_pruned"]


def __getattr__(name: str):
    # Lazy: importing fnprune must stay cheap (no torch/transformers until needed).
    if name in ("load_pruned", "save_pruned"):
        from . import pruned_io

        return getattr(pruned_io, name)
    raise AttributeError(f"module 'fnprune' has no attribute {name!r}")
