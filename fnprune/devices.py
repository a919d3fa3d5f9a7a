"""Where tensors live: one rule for turning a device setting into a ``torch.device``.

Model loading, activation capture and CanICA all take a ``device`` argument; a bad value is a
configuration error (:class:`~fnprune.errors.ConfigError`) whichever of them receives it.
"""

from __future__ import annotations

import torch

from .errors import ConfigError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) is CUDA when available, else CPU; otherwise any ``torch.device`` spec.

    Raises
    ------
    ConfigError
        the spec is not a device (``"gpu0"``), or names CUDA on a machine without it.
    """
    if isinstance(device, torch.device):
        resolved = device
    elif device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif not isinstance(device, str):
        raise ConfigError(f"device must be a string such as auto, cpu, cuda or cuda:N, got {device!r}")
    else:
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(device)!r} requested but CUDA is not available on this machine")
    return resolved
