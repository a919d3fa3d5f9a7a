"""Analysis: capture the MLP activations, decompose them with CanICA, the functional networks and
their run directory, stability checks, the atlas and the descriptions for people."""

from .._lazy import lazy_exports

_PUBLIC = {
    "ActivationStore": "capture",
    "capture_activations": "capture",
    "CanICA": "ica",
    "FunctionalNetworks": "networks",
    "analyze": "networks",
    "seed_check": "stability",
}
__all__ = list(_PUBLIC)
__getattr__ = lazy_exports(__name__, _PUBLIC)
