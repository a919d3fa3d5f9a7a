"""Argument parsing the subcommands share: integer lists and the batching options."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from ..options import DEFAULT_MAX_TOKENS


def int_list(text: str | None, flag: str, *, allow_all: bool = False) -> list[int] | None:
    """``"1,5,9"`` -> ``[1, 5, 9]``; empty (or ``"all"`` where ``allow_all``) -> None (the default).

    A value that is not a comma-separated list of integers is a :class:`ConfigError` naming ``flag``.
    """
    if text is None or not text.strip() or (allow_all and text.strip() == "all"):
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise ConfigError(f"{flag} must be comma-separated integers, got {text!r}") from exc


def add_batch_options(parser: argparse.ArgumentParser, *, quiet: bool = True) -> None:
    """``--max-tokens`` and ``--batch-size`` (and ``--quiet``) of the commands that run a model over text."""
    parser.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS,
                        help=f"tokens per document (default {DEFAULT_MAX_TOKENS})")
    parser.add_argument("--batch-size", type=int, default=4)
    if quiet:
        parser.add_argument("--quiet", action="store_true", help="no progress bars")


def job_progress(quiet: bool = False):
    """The progress a command passes to a library job: tqdm bars for the long stages; the job's
    ``load`` steps after the documents (the model, what was loaded) as plain lines on stderr and its
    ``save`` step not at all, so an error while loading is the last line on stderr, not a half-drawn
    bar, and a corpus error is the only one. None when ``quiet``."""
    if quiet:
        return None
    import sys

    from ..progress import tqdm_progress

    bars = tqdm_progress()

    def callback(stage: str, fraction: float, message: str = "") -> None:
        if stage == "load":
            if fraction > 0 and message:
                print(message, file=sys.stderr)
        elif stage != "save":
            bars(stage, fraction, message)

    return callback
