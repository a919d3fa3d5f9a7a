"""Protect a capability: the networks selective for a domain B that calibration text A does not cover.

The pruning objective (obs, FLAP, ...) keeps what the calibration text A exercises. A user who also
wants text B to keep working can *force* the key neurons of B's networks (a choice of networks,
METHOD §1.11). This module proposes those networks and builds the controls a claim about them needs
(BENCHMARKS.md §10 measures when the choice pays):

- :func:`domain_activity` -- each MLP neuron's root-mean-square activation (its input to ``down``)
  over a set of documents, ``(n_layers, width)``; for A it comes free from the calibration
  statistics (:func:`activity_from_stats`);
- :func:`network_selectivity` -- per network, the mean over its key neurons of
  ``log(rms_B / rms_A)``: how much more active the network's key neurons are on B than on A
  (works for any texts B, whether or not the analysis read them);
- :func:`profile_selectivity` -- the web app's guided selection ("Top N most selective for" a genre):
  networks whose time-course genre profile peaks on label B, ranked by that profile's peak minus its
  mean (needs B's documents in the analysis);
- :func:`propose_networks` -- the ``n`` most selective networks and the neurons they force;
- :func:`control_mask` -- the same number of neurons per layer, chosen without ICA: B's most active
  neurons (``"top-activity"``), the neurons most active on B relative to A (``"top-ratio"``), or at
  random (``"random"``).

The forced mask of a proposal or a control goes to :func:`fnprune.pruning.recipe.prune_with_networks`
(``networks=`` for a proposal, ``forced=`` for a control).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from fnprune.errors import ConfigError
from fnprune.options import (  # noqa: F401  (the vocabulary, re-exported)
    DEFAULT_PROTECT_BY,
    DEFAULT_PROTECT_DOCS,
    DEFAULT_PROTECT_NETWORKS,
    DEFAULT_PROTECT_SHARE,
    PROTECT_BY,
)

from .selection import component_key_masks, forced_mask

SELECTIVITY_RULES = ("activity", "profile")
CONTROL_KINDS = ("top-activity", "top-ratio", "random")
_EPS = 1e-12


def activity_from_stats(stats) -> np.ndarray:
    """``(n_layers, width)`` root-mean-square activation of every neuron from
    :class:`fnprune.pruning.statistics.DownInputStats` (``l2 / sqrt(n_tokens)``)."""
    return np.stack([np.asarray(l2, dtype=np.float64) / np.sqrt(max(1, stats.n_tokens)) for l2 in stats.l2])


def domain_activity(model: nn.Module, tokenizer, docs, *, max_tokens: int = 512, batch_size: int = 4,
                    progress=None) -> np.ndarray:
    """``(n_layers, width)`` root-mean-square activation (input of ``down``) of every MLP neuron over
    the real tokens of ``docs`` (the first ``max_tokens`` of each)."""
    from fnprune.pruning.statistics import collect_down_input_stats

    if not docs:
        raise ConfigError("no documents for the protected domain", field="protect")
    return activity_from_stats(collect_down_input_stats(model, tokenizer, docs, max_tokens, batch_size, progress))


def network_selectivity(fn, activity_b: np.ndarray, activity_a: np.ndarray,
                        threshold: float | None = None) -> np.ndarray:
    """``(n_components,)``: mean over each network's key neurons (|z| > ``threshold``, default the
    analysis') of ``log(rms_B / rms_A)``; a network without key neurons gets ``-inf``."""
    activity_b, activity_a = np.asarray(activity_b, np.float64), np.asarray(activity_a, np.float64)
    if activity_b.shape != (fn.n_layers, fn.width) or activity_a.shape != activity_b.shape:
        raise ConfigError(f"activity arrays must be ({fn.n_layers}, {fn.width}), got {activity_b.shape} and "
                          f"{activity_a.shape}")
    log_ratio = np.log(activity_b + _EPS) - np.log(activity_a + _EPS)  # (n_layers, width)
    threshold = fn.threshold if threshold is None else float(threshold)
    out = np.full(fn.n_components, -np.inf)
    for c in range(fn.n_components):
        key = component_key_masks(fn, [c], threshold)[0]
        if key.any():
            out[c] = float(log_ratio[key].mean())
    return out


def profile_selectivity(fn, label: str) -> np.ndarray:
    """``(n_components,)``: the web app's guided selection for ``label``: a network whose genre profile
    (mean z-scored time course per document label) peaks on ``label`` scores its profile's peak minus
    the profile's mean; every other network ``-inf``."""
    from fnprune.analysis.describe import genre_profiles

    names, profiles = genre_profiles(fn)  # (n_labels, n_components)
    if label not in names:
        raise ConfigError(f"protect: the analysis read no document labelled {label!r} (labels: "
                          f"{', '.join(names)}); use the activity rule or analyse texts that include it",
                          field="protect")
    top = profiles.argmax(axis=0)
    out = np.full(fn.n_components, -np.inf)
    peaks = top == names.index(label)
    out[peaks] = profiles[:, peaks].max(axis=0) - profiles[:, peaks].mean(axis=0)
    return out


@dataclass
class Proposal:
    """The networks proposed to protect a domain, and what choosing them forces."""

    networks: list[int]          # component ids, most selective first
    scores: list[float]          # their selectivity
    rule: str                    # "activity" or "profile"
    forced: np.ndarray           # (n_layers, width) bool: their key neurons

    @property
    def forced_per_layer(self) -> list[int]:
        return [int(x) for x in self.forced.sum(axis=1)]

    @property
    def n_forced(self) -> int:
        return int(self.forced.sum())

    def as_dict(self) -> dict:
        return {"networks": self.networks, "scores": self.scores, "rule": self.rule,
                "n_forced": self.n_forced, "forced_per_layer": self.forced_per_layer}


def rank_networks(selectivity: np.ndarray, n: int) -> list[int]:
    """The ``n`` networks of highest finite selectivity (ties: lower id first)."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ConfigError(f"the number of networks to protect must be a positive integer, got {n!r}",
                          field="protect_networks")
    selectivity = np.asarray(selectivity, np.float64)
    finite = np.flatnonzero(np.isfinite(selectivity))
    order = finite[np.lexsort((finite, -selectivity[finite]))]
    return [int(c) for c in order[:int(n)]]


def propose_networks(fn, n: int, *, rule: str = "activity", activity_b: np.ndarray | None = None,
                     activity_a: np.ndarray | None = None, label: str | None = None) -> Proposal:
    """The ``n`` networks most selective for the protected domain.

    ``rule="activity"`` (needs ``activity_b`` and ``activity_a``, from :func:`domain_activity` /
    :func:`activity_from_stats`): :func:`network_selectivity`. ``rule="profile"`` (needs ``label``,
    a document label the analysis read): :func:`profile_selectivity`, the web app's guided selection.
    Fewer than ``n`` networks are returned when fewer qualify (the profile rule only ranks networks
    whose profile peaks on ``label``)."""
    if rule == "activity":
        if activity_b is None or activity_a is None:
            raise ConfigError("the activity rule needs the activity of both domains", field="protect")
        sel = network_selectivity(fn, activity_b, activity_a)
    elif rule == "profile":
        if label is None:
            raise ConfigError("the profile rule needs the protected domain's label", field="protect")
        sel = profile_selectivity(fn, label)
    else:
        raise ConfigError(f"unknown selectivity rule {rule!r}; choose from {', '.join(SELECTIVITY_RULES)}",
                          field="protect_rule")
    ids = rank_networks(sel, n)
    if not ids:
        raise ConfigError("no network is selective for the protected domain", field="protect")
    return Proposal(networks=ids, scores=[float(sel[c]) for c in ids], rule=rule, forced=forced_mask(fn, ids))


def control_mask(counts: Sequence[int], kind: str, *, activity_b: np.ndarray | None = None,
                 activity_a: np.ndarray | None = None, width: int | None = None, seed: int = 0) -> np.ndarray:
    """``(n_layers, width)`` bool with ``counts[l]`` neurons of layer ``l`` set, chosen without ICA:

    - ``"top-activity"``: the largest root-mean-square activation on B (``activity_b``);
    - ``"top-ratio"``: the largest ``rms_B / rms_A`` (``activity_b`` and ``activity_a``);
    - ``"random"``: uniformly at random (``seed``; needs ``width`` when no activity is given).
    """
    if kind not in CONTROL_KINDS:
        raise ConfigError(f"unknown control {kind!r}; choose from {', '.join(CONTROL_KINDS)}", field="control")
    counts = [int(c) for c in counts]
    if activity_b is not None:
        width = np.asarray(activity_b).shape[1]
    if width is None:
        raise ConfigError("control_mask needs the layer width (or an activity array)", field="control")
    if any(c < 0 or c > width for c in counts):
        raise ConfigError(f"per-layer counts must be in 0..{width}", field="control")
    if kind == "top-activity":
        if activity_b is None:
            raise ConfigError("the top-activity control needs the protected domain's activity", field="control")
        score = np.asarray(activity_b, np.float64)
    elif kind == "top-ratio":
        if activity_b is None or activity_a is None:
            raise ConfigError("the top-ratio control needs the activity of both domains", field="control")
        score = np.log(np.asarray(activity_b, np.float64) + _EPS) - np.log(np.asarray(activity_a, np.float64) + _EPS)
    else:
        score = np.random.default_rng(seed).random((len(counts), width))
    if score.shape[0] != len(counts):
        raise ConfigError(f"{len(counts)} per-layer counts for {score.shape[0]} layers", field="control")
    out = np.zeros((len(counts), width), dtype=bool)
    for layer, c in enumerate(counts):
        if c:
            out[layer, np.argsort(-score[layer], kind="stable")[:c]] = True
    return out


# -- what the CLI and the web app call ---------------------------------------------------------------
def parse_protect(value: str) -> tuple[str, list[str] | None]:
    """``"CORPUS[:GENRES]"`` -> ``(corpus, genres or None)``: ``"brown:news,fiction"``,
    ``"pydoc"``, ``"texts.jsonl:code"``. An ``hf:`` corpus takes no genres (its colons are its own)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError("protect: give a corpus, e.g. pydoc or brown:learned", field="protect")
    value = value.strip()
    if value.startswith("hf:") or ":" not in value:
        return value, None
    corpus, genres = value.rsplit(":", 1)
    names = [g.strip() for g in genres.split(",") if g.strip()]
    if not corpus.strip() or not names:
        raise ConfigError(f"protect: expected CORPUS[:GENRE,GENRE...], got {value!r}", field="protect")
    return corpus.strip(), names


def _check_n_docs(n_docs) -> None:
    if isinstance(n_docs, bool) or not isinstance(n_docs, int) or n_docs < 1:
        raise ConfigError(f"protect: the number of documents must be a positive integer, got {n_docs!r}",
                          field="protect_docs")


def protect_split(docs, n_docs: int = DEFAULT_PROTECT_DOCS) -> tuple[list, list]:
    """``(selection, heldout)`` of the protected domain's documents: with 10 or more, the held-out split
    (index % 10 == 0, :func:`fnprune.corpus.split_heldout`) is kept for evaluation and the first ``n_docs``
    of the rest protect; with fewer, every document protects and none is held out."""
    from fnprune.corpus import split_heldout

    _check_n_docs(n_docs)
    selection, heldout = split_heldout(list(docs)) if len(docs) >= 10 else (list(docs), [])
    return selection[:n_docs], heldout


def protect_corpus(corpus: str, genres: list[str] | None = None, n_docs: int = DEFAULT_PROTECT_DOCS
                   ) -> tuple[list, list]:
    """``(selection, heldout)`` documents (:func:`protect_split`, genres interleaved) of corpus ``corpus``
    (a spec :func:`fnprune.corpus.load_corpus` takes) with ``genres``."""
    from fnprune.corpus import load_corpus

    _check_n_docs(n_docs)  # refused before the corpus is read
    return protect_split(load_corpus(corpus, genres=genres, sampling="stratified"), n_docs)


def protect_documents(value: str, n_docs: int = DEFAULT_PROTECT_DOCS) -> tuple[list, list]:
    """:func:`protect_corpus` of ``"CORPUS[:GENRES]"`` (:func:`parse_protect`)."""
    corpus, genres = parse_protect(value)
    return protect_corpus(corpus, genres, n_docs)


def protect_texts(texts: Sequence[str], n_docs: int = DEFAULT_PROTECT_DOCS) -> tuple[list, list]:
    """``(selection, heldout)`` of a few pasted texts (label ``"pasted"``; :func:`protect_split`)."""
    from fnprune.corpus import Document

    if not texts or any(not isinstance(t, str) or not t.strip() for t in texts):
        raise ConfigError("protect: give at least one text, none of them empty", field="protect_texts")
    return protect_split([Document(f"text-{i + 1}", t, "pasted") for i, t in enumerate(texts)], n_docs)


def protect_proposal(model: nn.Module, tokenizer, fn, calibration, docs_b, n: int = DEFAULT_PROTECT_NETWORKS, *,
                     spec=None, progress=None) -> Proposal:
    """The ``n`` networks most selective (rule ``activity``) for ``docs_b`` against the calibration text.

    The calibration's statistics give A's activity (``spec``: collect in the same pass whatever that
    pruning will need, so the calibration text is read once). ``progress``: stages ``calibrate`` (the
    calibration text, unless ``spec`` already collected it) and ``protected text``."""
    from fnprune.progress import renamed

    from .recipe import check_networks_match

    check_networks_match(fn, model)
    if spec is not None:
        calibration.prepare(model, [spec], progress)
    activity_a = activity_from_stats(calibration.down_stats(model, second_moments=False,
                                                            progress=renamed(progress, "calibrate")))
    activity_b = domain_activity(model, tokenizer, docs_b, max_tokens=calibration.max_tokens,
                                 batch_size=calibration.batch_size, progress=renamed(progress, "protected text"))
    return propose_networks(fn, n, rule="activity", activity_b=activity_b, activity_a=activity_a)


def mixed_calibration(calib_docs, protect_docs, tokenizer, max_tokens: int, share: float = DEFAULT_PROTECT_SHARE
                      ) -> tuple[list, dict]:
    """The calibration documents with about ``share`` of their tokens replaced by protected documents
    (the same token budget; BENCHMARKS.md §10's condition (e)): the last ``round(share x n)`` (at least
    one) calibration documents are dropped and protected documents added until their tokens are
    replaced. Returns ``(documents, {"calibration_docs", "protect_docs", "protect_tokens", "tokens"})``."""
    from fnprune.tokens import encode_documents

    if not 0 < share < 1:
        raise ConfigError(f"protect: the share of calibration tokens must be between 0 and 1, got {share!r}",
                          field="protect_share")
    calib_docs, protect_docs = list(calib_docs), list(protect_docs)
    if len(calib_docs) < 2 or not protect_docs:
        raise ConfigError("protect: mixing needs at least 2 calibration documents and 1 protected document",
                          field="protect")
    n_keep = len(calib_docs) - max(1, round(share * len(calib_docs)))
    lengths = [len(s) for s in encode_documents(tokenizer, calib_docs, max_tokens, min_tokens=0)]
    budget = sum(lengths[n_keep:])
    added, used = [], 0
    for doc, seq in zip(protect_docs, encode_documents(tokenizer, protect_docs, max_tokens, min_tokens=0), strict=True):
        if used >= budget:
            break
        added.append(doc)
        used += len(seq)
    return calib_docs[:n_keep] + added, {"calibration_docs": n_keep, "protect_docs": len(added),
                                         "protect_tokens": used, "tokens": sum(lengths[:n_keep]) + used}


@dataclass(frozen=True)
class Protection:
    """What to keep working and how: the CLI's ``--protect`` flags, the web API's ``protect``.

    ``documents`` protect (mixed into the calibration, or they choose the networks); ``heldout`` (disjoint
    from them, :func:`protect_split`) are left for evaluating the protected domain; ``source`` names it."""

    source: str
    documents: list
    heldout: list
    by: str = DEFAULT_PROTECT_BY
    networks: int = DEFAULT_PROTECT_NETWORKS
    share: float = DEFAULT_PROTECT_SHARE

    def __post_init__(self) -> None:
        if self.by not in PROTECT_BY:
            raise ConfigError(f"protect: unknown way {self.by!r}; choose from {', '.join(PROTECT_BY)}",
                              field="protect_by")
        if isinstance(self.networks, bool) or not isinstance(self.networks, int) or self.networks < 1:
            raise ConfigError(f"the number of networks to protect must be a positive integer, got {self.networks!r}",
                              field="protect_networks")
        if not self.documents:
            raise ConfigError(f"protect: {self.source} has no documents to protect with", field="protect")


def apply_protection(protection: Protection, spec, model: nn.Module, tokenizer, fn, calibration, progress=None
                     ) -> tuple:
    """``(spec, calibration, info)`` with the protection applied, before the recipe runs (what
    :class:`fnprune.pruning.job.PruneJob`'s ``adjust`` returns; the CLI and the worker call this).

    ``by="calibration"``: about ``share`` of the calibration tokens replaced by the protected documents
    (:func:`mixed_calibration`); info ``{"corpus", "by", "calibration_docs", "protect_docs", "protect_tokens",
    "tokens"}``. ``by="networks"``: the ``networks`` most selective for them (:func:`protect_proposal`)
    join the spec's choice; info ``{"corpus", "by", "docs"}`` and :meth:`Proposal.as_dict`."""
    from dataclasses import replace

    head = {"corpus": protection.source, "by": protection.by}
    if protection.by == "calibration":
        mixed, counts = mixed_calibration(calibration.docs, protection.documents, tokenizer, calibration.max_tokens,
                                          protection.share)
        return spec, calibration.with_docs(mixed), head | counts
    proposal = protect_proposal(model, tokenizer, fn, calibration, protection.documents, protection.networks,
                                spec=spec, progress=progress)
    chosen = sorted(set(spec.networks or ()) | set(proposal.networks))
    return (replace(spec, networks=tuple(chosen)), calibration,
            head | {"docs": len(protection.documents)} | proposal.as_dict())
