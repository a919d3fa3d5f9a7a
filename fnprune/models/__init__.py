"""Models: loading (named models, HF directories, GGUF), the MLP adapters (where the neurons are and
how to slice them), pruned model directories and the GGUF export."""

from .._lazy import lazy_exports

_PUBLIC = {
    "DEFAULT_MODEL": "loading",
    "load_model": "loading",
    "list_models": "loading",
    "model_device": "loading",
    "MLPAdapter": "mlp",
    "find_mlps": "mlp",
    "parameter_counts": "mlp",
    "save_pruned": "pruned_io",
    "load_pruned": "pruned_io",
    "export_gguf": "export_gguf",
}
__all__ = list(_PUBLIC)
__getattr__ = lazy_exports(__name__, _PUBLIC)
