"""Calibration documents and the statistics gathered on the dense model, computed once and shared
(``compare`` prunes many rows from one pass); above :data:`STREAM_ABOVE_BYTES` of ``(I, I)`` moments
they are collected layer by layer (:mod:`fnprune.pruning.layerwise`)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from ..models.loading import model_device
from ..models.mlp import find_mlps
from ..progress import ProgressCallback, renamed, report
from .heads import collect_attention_stats
from .layerwise import MOMENT_SUM_DTYPE, MomentSpill, streamed_obs_scores
from .scores import obs_scores
from .spec import PruningSpec, stats_needed
from .statistics import DownInputStats, collect_down_input_stats

STREAM_ABOVE_BYTES = 2 * 1024 ** 3  # every layer's float64 (I, I) moments above this: calibrate layer by layer


@dataclass
class Calibration:
    """Calibration documents and the statistics gathered on the *dense* model (computed once, reused).

    ``compare`` shares one instance across every method, so the calibration pass runs once.
    ``requested_docs``: how many documents the user asked for, when the corpus may hold fewer
    (recorded with the number used in :meth:`PruningOutcome.info`, and a note when fewer were used).

    ``streamed``: collect the ``(I, I)`` moments that obs and the least-squares repair need one
    decoder layer at a time (:mod:`fnprune.pruning.layerwise`: one layer's statistics alive, on the layer's
    device) instead of every layer's in one pass. None (default): stream when every layer's float64
    moments together would exceed :data:`STREAM_ABOVE_BYTES` (an 8B-class model: ~31 GB), so small
    models keep the single pass ``compare`` shares across its rows. Both give the same kept neurons.
    ``moment_dtype``: what the streamed pass sums its moments in (default :data:`MOMENT_SUM_DTYPE`,
    float32; the all-at-once pass sums in float64); float64 gives the all-at-once numbers exactly.
    ``spill_moments``: when streamed on a CPU, the select pass also writes each layer's moments to a
    temporary directory (:class:`~fnprune.pruning.layerwise.MomentSpill`, removed with this object) and
    the one-shot repair reads them back instead of a second pass through the model (same numbers).
    """

    tokenizer: object
    docs: Sequence
    max_tokens: int = 512
    batch_size: int = 4
    requested_docs: int | None = None
    streamed: bool | None = None
    moment_dtype: torch.dtype = MOMENT_SUM_DTYPE
    spill_moments: bool = True
    _spill: MomentSpill | None = field(default=None, repr=False)
    _down: DownInputStats | None = field(default=None, repr=False)
    _attention: object = field(default=None, repr=False)
    _obs: dict = field(default_factory=dict, repr=False)

    def prepare(self, model: nn.Module, specs: Sequence[PruningSpec], progress=None) -> None:
        """Collect, in one pass, every statistic these specs will ask for (``compare`` prunes many)."""
        needs = [stats_needed(s) for s in specs]
        if any(n for n, _, _ in needs):
            self.down_stats(model, second_moments=any(s for _, s, _ in needs), progress=renamed(progress, "calibrate"),
                            weighted=any(w for _, _, w in needs))

    def with_docs(self, docs: Sequence) -> Calibration:
        """The same settings on other documents, without this instance's statistics (they are of its own
        documents): what calibration mixing (``--protect``) prunes with."""
        docs = list(docs)
        return replace(self, docs=docs, requested_docs=len(docs), _down=None, _attention=None, _obs={}, _spill=None)

    def streams(self, model: nn.Module) -> bool:
        """Whether this calibration collects the ``(I, I)`` moments layer by layer (see ``streamed``)."""
        if self.streamed is not None:
            return bool(self.streamed)
        return sum(a.width ** 2 for a in find_mlps(model)) * 8 > STREAM_ABOVE_BYTES

    def obs_scores(self, model: nn.Module, forced: list[np.ndarray] | None, ridge: float,
                   skip: Sequence[int] = (), progress: ProgressCallback | None = None) -> list[np.ndarray]:
        """:func:`fnprune.pruning.scores.obs_scores` on these statistics, computed once per (forced, ridge, skip):
        the web app's "without repair" comparison and ``compare``'s rows reuse the greedy order.
        ``skip``: the protected layers (kept whole: no greedy runs for them)."""
        masks = None if forced is None else [np.asarray(f) for f in forced]
        key = (float(ridge), tuple(sorted(int(x) for x in skip)), None if masks is None else hashlib.sha256(
            b"".join(np.packbits(m.astype(bool)).tobytes() + str(m.shape).encode() for m in masks)).hexdigest())
        if key not in self._obs:
            if self.streams(model):
                self._obs[key] = streamed_obs_scores(model, self.tokenizer, self.docs, forced=masks, ridge=ridge,
                                                     skip=skip, max_tokens=self.max_tokens, batch_size=self.batch_size,
                                                     dtype=self.moment_dtype, progress=renamed(progress, "select"),
                                                     spill=self._spill_for(model, skip, progress))
            else:
                self._obs[key] = obs_scores(model, self._down, masks, ridge, skip=skip,
                                            progress=renamed(progress, "select"))
        return self._obs[key]

    def _spill_for(self, model: nn.Module, skip: Sequence[int], progress) -> MomentSpill | None:
        """Where the streamed select pass writes its moments for the repair (see ``spill_moments``), or None."""
        if self._spill is not None or not self.spill_moments or model_device(model).type != "cpu":
            return self._spill
        need = MomentSpill.nbytes([a.width for a in find_mlps(model) if a.layer not in {int(x) for x in skip}],
                                  self.moment_dtype)
        gb = need / 1e9
        if not MomentSpill.fits(need):
            report(progress, "select", 0.0, f"not enough free disk for the layers' moments ({gb:.1f} GB): "
                                            "the prune pass will collect them again")
            return None
        self._spill = MomentSpill()
        report(progress, "select", 0.0, f"each layer's moments are kept on disk ({gb:.1f} GB in all) "
                                        "for the prune pass")
        return self._spill

    @property
    def spilled_moments(self) -> MomentSpill | None:
        """The streamed select pass's moments on disk (``spill_moments``), or None."""
        return self._spill

    def down_stats(self, model: nn.Module, second_moments: bool, progress=None, weighted: bool = False
                   ) -> DownInputStats:
        """The statistics (recollected, keeping what was there, when a requested part is missing).
        When :meth:`streams`, only the per-neuron ones: the ``(I, I)`` moments come layer by layer."""
        if self.streams(model):
            second_moments = weighted = False
        have = self._down
        if (have is None or (second_moments and have.second_moment is None)
                or (weighted and have.weighted_second_moment is None)):
            self._obs.clear()
            self._down = collect_down_input_stats(
                model, self.tokenizer, self.docs, self.max_tokens, self.batch_size, progress,
                second_moments=second_moments or (have is not None and have.second_moment is not None),
                weighted=weighted or (have is not None and have.weighted_second_moment is not None))
        return self._down

    def attention_stats(self, model: nn.Module, progress=None, second_moments: bool = False):
        """``o_proj``'s input statistics (recollected when ``second_moments`` are asked for and missing)."""
        if self._attention is None or (second_moments and self._attention.second_moment is None):
            self._attention = collect_attention_stats(model, self.tokenizer, self.docs, self.max_tokens,
                                                      self.batch_size, progress, second_moments=second_moments)
        return self._attention

    def docs_record(self, used: bool) -> dict:
        """``{"requested", "used", "tokens_per_doc"}``: documents asked for and calibrated on (0 when
        the spec needed no calibration)."""
        available = len(self.docs)
        return {"requested": int(self.requested_docs if self.requested_docs is not None else available),
                "used": available if used else 0, "tokens_per_doc": int(self.max_tokens)}
