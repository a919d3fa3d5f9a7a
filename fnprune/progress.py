"""One progress callback type for all long work.

``progress(stage, fraction, message)``: ``stage`` names the step (``"capture"``, ``"ica"``, ...),
``fraction`` is the completed part of that stage in [0, 1]. The CLI renders it with tqdm, the
backend turns it into job events. A callback may raise :class:`Cancelled` to stop the work.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressCallback = Callable[[str, float, str], None]


class Cancelled(Exception):
    """Raised by a progress callback to stop long work."""


def report(progress: ProgressCallback | None, stage: str, fraction: float, message: str = "") -> None:
    if progress is not None:
        progress(stage, float(min(max(fraction, 0.0), 1.0)), message)


def tqdm_progress() -> ProgressCallback:
    """A callback that draws one tqdm bar per stage (for the CLI). With ``FNPRUNE_PROGRESS_LOG`` set to
    a path it also appends one JSON line per event (``{"t", "stage", "fraction", "message"}``, ``t``:
    seconds since the epoch), what ``bench/bench_scale.py`` reads its per-stage times from."""
    import json
    import os
    import time

    from tqdm.auto import tqdm

    bars: dict[str, tqdm] = {}
    log_path = os.environ.get("FNPRUNE_PROGRESS_LOG")

    def callback(stage: str, fraction: float, message: str) -> None:
        if log_path:
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(json.dumps({"t": time.time(), "stage": stage, "fraction": fraction, "message": message}) + "\n")
        bar = bars.get(stage)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[stage] = tqdm(total=1000, desc=stage, leave=True,
                                     bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")
        bar.n = int(fraction * 1000)
        if message:
            bar.set_postfix_str(message[:60], refresh=False)
        bar.refresh()
        if fraction >= 1.0:
            bar.close()

    return callback


def renamed(progress: ProgressCallback | None, stage: str) -> ProgressCallback | None:
    """``progress`` with every report under ``stage`` (a step that reports its own stage names, run as
    one stage of a larger job); None stays None."""
    if progress is None:
        return None

    def inner(_stage: str, fraction: float, message: str = "") -> None:
        progress(stage, fraction, message)

    return inner
