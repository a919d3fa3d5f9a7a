"""User-facing errors. Every message is one readable line; the CLI prints it without a traceback."""


class FnpruneError(Exception):
    """Base class of every error fnprune raises on purpose.

    ``field``: the argument the error is about (e.g. ``"target_ratio"``, ``"genres"``), or None; the
    web API returns it as the error's ``field``.
    """

    def __init__(self, *args, field: str | None = None):
        super().__init__(*args)
        self.field = field


class ModelLoadError(FnpruneError):
    """A model spec could not be resolved or loaded."""


class UnsupportedArchitectureError(FnpruneError):
    """No supported MLP structure was found in the model."""


class CorpusError(FnpruneError):
    """A corpus could not be loaded or holds no usable text."""


class ConfigError(FnpruneError, ValueError):
    """An argument is out of range or inconsistent with the data."""


class RunDirError(FnpruneError):
    """A run directory or model directory is missing, incomplete or from another model."""
