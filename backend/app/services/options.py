"""GET /api/options: fnprune's vocabulary, read from fnprune.options and the method registry when asked."""

from __future__ import annotations

from typing import Any

from fnprune import options
from fnprune.pruning.methods import registered


def vocabulary() -> dict[str, Any]:
    """The :class:`~backend.app.schemas.Options` reply (methods as registered now)."""
    return {
        "methods": [{"name": m.name, "label": m.label, "help": m.help, "default_allocation": m.default_allocation,
                     "native_repair": m.native_repair, "unrepaired": m.unrepaired,
                     "needs_networks": m.needs_networks, "takes_threshold": m.takes_threshold,
                     "baseline": m.baseline, "refuses": dict(m.refuses)} for m in registered().values()],
        "repairs": [{"name": r, "label": options.REPAIR_LABELS[r], "help": options.REPAIR_HELP[r]}
                    for r in options.REPAIRS],
        "allocations": [{"name": a, "label": a, "help": options.ALLOCATION_HELP[a]} for a in options.ALLOCATIONS],
        "ratio_bases": [{"name": b, "label": options.RATIO_BASE_LABELS[b], "help": options.RATIO_BASE_HELP[b]}
                        for b in options.RATIO_BASES],
        "modes": [{"name": m, "label": m, "help": options.MODE_HELP[m]} for m in options.MODES],
        "samplings": [{"name": s, "label": s, "help": options.SAMPLING_HELP[s]} for s in options.SAMPLINGS],
        "protect_by": [{"name": b, "label": options.PROTECT_BY_LABELS[b], "help": options.PROTECT_BY_HELP[b]}
                       for b in options.PROTECT_BY],
        "presets": [{"name": name, **preset} for name, preset in options.PRESETS.items()],
        "analysis": {"model": options.DEFAULT_MODEL, "corpus": options.DEFAULT_CORPUS,
                     "n_texts": options.DEFAULT_ANALYSIS_TEXTS, "max_tokens": options.DEFAULT_MAX_TOKENS,
                     "n_components": options.DEFAULT_N_COMPONENTS, "n_init": options.DEFAULT_N_INIT,
                     "mode": options.DEFAULT_MODE, "sampling": options.DEFAULT_SAMPLING,
                     "threshold": options.DEFAULT_THRESHOLD},
        "pruning": {"method": options.DEFAULT_METHOD, "method_reason": options.DEFAULT_METHOD_REASON,
                    "repair": options.DEFAULT_REPAIR, "ratio_of": options.DEFAULT_RATIO_OF,
                    "target_ratio": options.DEFAULT_TARGET_RATIO,
                    "calibration_texts": options.DEFAULT_CALIBRATION_DOCS,
                    "calibration_tokens": options.DEFAULT_CALIBRATION_TOKENS, "ridge": options.DEFAULT_RIDGE,
                    "heads_fraction": options.DEFAULT_HEADS_FRACTION,
                    "recover_epochs": options.DEFAULT_RECOVER_EPOCHS, "recover_lr": options.DEFAULT_RECOVER_LR,
                    "recover_max_epochs": options.MAX_RECOVER_EPOCHS,
                    "sequential_repair": options.SEQUENTIAL_REPAIR,
                    "quick_analysis_texts": options.QUICK_ANALYSIS_TEXTS,
                    "quick_calibration_texts": options.QUICK_CALIBRATION_DOCS,
                    "protect_by": options.DEFAULT_PROTECT_BY, "protect_networks": options.DEFAULT_PROTECT_NETWORKS,
                    "protect_docs": options.DEFAULT_PROTECT_DOCS},
    }
