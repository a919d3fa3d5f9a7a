"""Every serialisable type of the HTTP API (the backend owns these; fnprune never sees pydantic).

Names, choices and defaults are fnprune's (:mod:`fnprune.options`, torch-free), never typed again here:
the fixed choices become ``Literal`` types; the pruning methods, a registry that can grow
(:mod:`fnprune.pruning.methods`), are checked and stated (as a JSON Schema ``enum``) when used: :class:`OneOf`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError, core_schema

from fnprune.options import (
    ALLOCATIONS,
    DEFAULT_ABLATION_TEXTS,
    DEFAULT_ABLATION_TOP_TOKENS,
    DEFAULT_ANALYSIS_TEXTS,
    DEFAULT_CALIBRATION_DOCS,
    DEFAULT_CALIBRATION_TOKENS,
    DEFAULT_CORPUS,
    DEFAULT_HEADS_FRACTION,
    DEFAULT_MAX_TOKENS,
    DEFAULT_METHOD,
    DEFAULT_MODE,
    DEFAULT_MODEL,
    DEFAULT_N_COMPONENTS,
    DEFAULT_PROTECT_BY,
    DEFAULT_PROTECT_DOCS,
    DEFAULT_PROTECT_NETWORKS,
    DEFAULT_RATIO_OF,
    DEFAULT_RECOVER_EPOCHS,
    DEFAULT_RECOVER_LR,
    DEFAULT_REPAIR,
    DEFAULT_SAMPLING,
    MAX_RECOVER_EPOCHS,
    MODES,
    PROTECT_BY,
    PROTECT_BY_HELP,
    RATIO_BASES,
    RECOVER_HELP,
    REPAIRS,
    SAMPLINGS,
)
from fnprune.pruning.methods import BASELINES, METHODS

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
# the tensor types of GET /api/prunings/{id}/download/gguf: fnprune.models.export_gguf.GGUF_TYPES (tested equal)
GgufType = Literal["f16", "q8_0", "f32"]


def _not_a_bool(value: Any) -> Any:
    if isinstance(value, bool):  # pydantic would read true as 1; the schema says a number
        raise ValueError("must be a number, not true or false")
    return value


# request numbers: JSON true/false are not numbers
Int = Annotated[int, BeforeValidator(_not_a_bool)]
Float = Annotated[float, BeforeValidator(_not_a_bool)]
# optional bounded numbers: the bounds sit on the number, inside the bool check, so the schema states them
# as JSON Schema keywords (pydantic writes non-standard "gt"/"le" for bounds outside the validator)
Ratio = Annotated[float, Field(gt=0, lt=1), BeforeValidator(_not_a_bool)]
ZThreshold = Annotated[float, Field(gt=0, le=100), BeforeValidator(_not_a_bool)]
CalibrationTexts = Annotated[int, Field(ge=1, le=5000), BeforeValidator(_not_a_bool)]
CalibrationTokens = Annotated[int, Field(ge=8, le=8192), BeforeValidator(_not_a_bool)]


class OneOf:
    """``Annotated[str, OneOf(names)]``: one of a *live* list of names (fnprune.pruning.methods.METHODS, BASELINES:
    views of the method registry), checked when a request is validated and stated as the schema's ``enum``
    when the schema is generated, so a method registered after this module was imported is both accepted
    and documented. The error reads like a ``Literal``'s."""

    def __init__(self, names):
        self.names = names

    def __get_pydantic_core_schema__(self, source, handler):
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(self, schema, handler):
        out = handler(schema)
        out["enum"] = list(self.names)
        return out

    def _check(self, value: str) -> str:
        if value not in self.names:
            names = [repr(n) for n in self.names]
            raise PydanticCustomError("literal_error", "Input should be {expected}",
                                      {"expected": ", ".join(names[:-1]) + f" or {names[-1]}"})
        return value


MethodName = Annotated[str, OneOf(METHODS)]
BaselineName = Annotated[str, OneOf(BASELINES)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# What the server takes as a model (services/catalog.resolve_model): a named model or hub id
# ("name" / "org/name", not ending in .gguf: that is a relative path), or an absolute path ("/..." or
# "~/..."; whether it may be read depends on FNPRUNE_MODEL_DIRS). Relative paths are refused.
MODEL_PATTERN = (r"^\s*(?:~?/[^\x00]*|~\s*|(?!.*\.gguf\s*$)[A-Za-z0-9][A-Za-z0-9_.-]*"
                 r"(?:/[A-Za-z0-9][A-Za-z0-9_.-]*)?\s*)$")
# A corpus name from GET /api/corpora (never a path: no slash, backslash or leading dot)
CORPUS_PATTERN = r"^[^/\\.][^/\\]*$"
# What POST /api/download-links signs: a download path of this server (no scheme, no host)
DOWNLOAD_PATH_PATTERN = r"^/api(?:/[^?#]*)?/download/"
# the readable reason a value not matching one of these patterns gets (core/errors.py)
PATTERN_HINTS = {
    r"\S": "give some text, not only white space",
    MODEL_PATTERN: "give a model name from GET /api/models, a hub id (org/name) or an absolute path; "
                   "relative paths are refused",
    CORPUS_PATTERN: "give a corpus name from GET /api/corpora, not a path",
    DOWNLOAD_PATH_PATTERN: "give an /api/.../download/... path of this server",
}


class Health(BaseModel):
    status: str
    version: str
    device: str
    queue: Literal["sqlite", "redis"]
    workers: int


class ModelInfo(BaseModel):
    name: str
    description: str = ""
    available: bool = True


class CorpusInfo(BaseModel):
    name: str
    description: str = ""
    n_documents: int | None = None
    labels: list[str] = []
    available: bool = True


class UploadedCorpus(BaseModel):
    name: str
    n_documents: int
    labels: list[str]


class Job(BaseModel):
    id: str
    kind: Literal["analysis", "pruning"]
    status: JobStatus
    progress: float
    stage: str
    message: str
    eta_s: float | None
    error: str | None
    params: dict[str, Any]
    created_at: str
    started_at: str | None
    finished_at: str | None
    result: dict[str, Any] | None


class AnalysisRequest(Strict):
    model_config = ConfigDict(extra="forbid", regex_engine="python-re")  # MODEL_PATTERN looks ahead

    model: str = Field(default=DEFAULT_MODEL, min_length=1, max_length=500, pattern=MODEL_PATTERN, description=(
        "a model name from GET /api/models, a hub id (org/name) or an absolute path inside FNPRUNE_MODEL_DIRS"))
    corpus: str = Field(default=DEFAULT_CORPUS, min_length=1, max_length=200, pattern=CORPUS_PATTERN,
                        description="a corpus name from GET /api/corpora")
    genres: list[str] | None = Field(default=None, max_length=100)
    n_texts: Int = Field(default=DEFAULT_ANALYSIS_TEXTS, ge=1, le=5000)
    max_tokens: Int = Field(default=DEFAULT_MAX_TOKENS, ge=8, le=8192)
    n_components: Int = Field(default=DEFAULT_N_COMPONENTS, ge=1, le=2048)
    mode: Literal[MODES] = DEFAULT_MODE
    n_runs: Int = Field(default=1, ge=1, le=50)
    seed: Int = Field(default=0, ge=0, le=2**31 - 1)
    # which documents: "first" = the corpus' first n_texts (file order); "stratified" = spread evenly
    # over the corpus' genres (round-robin, the same for every seed)
    sampling: Literal[SAMPLINGS] = DEFAULT_SAMPLING
    check_seeds: Int = Field(default=0, ge=0, le=10, description=(
        "refit every layer with this many other seeds and record in how many each network comes back "
        "(|corr| >= 0.9), and where the key neurons come from; (1 + check_seeds) times the ICA time; "
        "per-layer mode only"))

    @field_validator("check_seeds")
    @classmethod
    def _seed_check_mode(cls, value: int, info) -> int:
        if value and info.data.get("mode", "per-layer") != "per-layer":
            raise ValueError("needs mode 'per-layer' (a whole-model fit per seed is too costly)")
        return value


class ThresholdChoice(Strict):
    """At most one of ``threshold`` / ``target_ratio`` (the schema says so with ``not``); neither: see the
    route (the preview: the analysis' threshold; a pruning: fnprune.pruning.spec.default_target)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"not": {
        "required": ["threshold", "target_ratio"],
        "properties": {"threshold": {"type": "number"}, "target_ratio": {"type": "number"}}}})

    networks: list[Int] | None = Field(default=None, max_length=4096)
    threshold: ZThreshold | None = None
    target_ratio: Ratio | None = None
    # what target_ratio is a fraction of: all parameters, the MLPs', or all but the embeddings
    ratio_of: Literal[RATIO_BASES] = DEFAULT_RATIO_OF

    @model_validator(mode="after")
    def _one_of(self) -> ThresholdChoice:
        if self.threshold is not None and self.target_ratio is not None:
            raise ValueError("give either threshold or target_ratio, not both")
        return self


class PreviewRequest(ThresholdChoice):
    protected_layers: list[Int] | None = Field(default=None, max_length=1024)
    uniform: bool = False


class NetworkKept(BaseModel):
    """A chosen network: its key neurons (|z| above the analysis threshold) and how many stay."""

    id: int
    layer: int
    n_key: int
    n_kept: int


class PreviewResult(BaseModel):
    """fnprune.pruning.selection.Plan.as_dict(): the widths a choice gives, before any model is loaded."""

    threshold: float | None
    target_ratio: float | None
    uniform: bool
    networks: list[int] | None
    widths: list[int]
    original_widths: list[int]
    protected_layers: list[int]
    removed_neurons: int
    removed_params: int
    total_params: int
    mlp_params: int
    ratio_total: float
    ratio_mlp: float
    size_bytes: int
    forced_per_layer: list[int] = Field(description="key neurons of the chosen networks in each layer (kept)")
    max_ratio_total: float = Field(description="the largest fraction of all parameters this choice can remove")
    ratio_of: Literal[RATIO_BASES]
    max_ratio: dict[str, float] = Field(description="the largest reachable fraction of each base (all, mlp, "
                                                    "non-embedding when the run records embeddings)")
    chosen_networks: list[NetworkKept]


NetworkName = Annotated[str, Field(max_length=80)]


class Labels(Strict):
    """Labels and user-given names per component id; a PUT merges both (an empty name restores the
    automatic one); a reply holds every stored label and name."""

    labels: dict[str, Literal["signal", "noise", "unknown"]] = Field(default_factory=dict)
    names: dict[str, NetworkName] = Field(default_factory=dict)


# a pasted text to protect: not empty, not only white space
ProtectText = Annotated[str, Field(min_length=1, max_length=20_000, pattern=r"\S")]


class ProtectSource(Strict):
    """A text to keep working besides the calibration text (issue 22): a corpus (with genres) or a few pasted texts."""

    corpus: str | None = Field(default=None, min_length=1, max_length=200, pattern=CORPUS_PATTERN, description=(
        "a corpus name from GET /api/corpora (built-in, or an uploaded `upload:...`); or give `texts`"))
    genres: list[Annotated[str, Field(min_length=1, max_length=100)]] | None = Field(
        default=None, min_length=1, max_length=100, description="only these genres (labels) of `corpus`")
    texts: list[ProtectText] | None = Field(default=None, min_length=1, max_length=50, description=(
        "a few texts to keep working, instead of a corpus; with 10 or more, every tenth is held out to measure it"))
    networks: Int = Field(default=DEFAULT_PROTECT_NETWORKS, ge=1, le=2048, description=(
        "with by=networks: how many networks are forced (at most the analysis' number of networks)"))
    docs: Int = Field(default=DEFAULT_PROTECT_DOCS, ge=1, le=500, description=(
        "documents of the protected text that protect (mixed into the calibration, or measured to choose the "
        "networks); its held-out documents (every tenth) are never among them"))

    @model_validator(mode="after")
    def _one_source(self) -> ProtectSource:
        if (self.corpus is None) == (self.texts is None):
            raise ValueError("give either corpus or texts")
        if self.genres is not None and self.corpus is None:
            raise ValueError("genres go with corpus, not texts")
        return self


class ProtectRequest(ProtectSource):
    """A pruning's `protect`: what to keep working, and how."""

    by: Literal[PROTECT_BY] = Field(default=DEFAULT_PROTECT_BY, description=(
        "calibration (default): " + PROTECT_BY_HELP["calibration"] + "; networks: " + PROTECT_BY_HELP["networks"]))
    compare_unconstrained: bool = Field(default=False, description=(
        "also prune without the protection in the same job and report its held-out perplexity (needs evaluate)"))


class PruningRequest(ThresholdChoice):
    analysis_id: str = Field(min_length=1, max_length=64, pattern=r"^[0-9a-zA-Z_-]+$")
    protected_layers: list[Int] | None = Field(default=None, max_length=1024)
    method: MethodName = Field(default=DEFAULT_METHOD, description=(
        "how neurons are chosen inside a layer (GET /api/options lists each with its help); the chosen "
        "networks' key neurons are always kept"))
    repair: Literal[REPAIRS] = Field(default=DEFAULT_REPAIR, description=(
        "lstsq: re-fit each pruned layer's down projection + bias by least squares; bias: FLAP's mean "
        "compensation only; none"))
    sequential: bool = False
    uniform: bool = False
    # Attention: false = keep every head; a fraction in (0, 1) = remove that fraction of the KV groups
    # (a key/value head with its query heads) of every unprotected layer; true = DEFAULT_HEADS_FRACTION.
    heads: bool | float = Field(default=False, json_schema_extra={"anyOf": [
        {"type": "boolean"}, {"type": "number", "minimum": 0, "exclusiveMaximum": 1}]})
    baselines: list[BaselineName] = Field(default_factory=list)
    evaluate: bool = True
    n_heldout: Int = Field(default=20, ge=1, le=500)
    # The pruning's own calibration (FLAP / Wanda-sp statistics, the least-squares repair), independent of
    # how much text the analysis read: the CLI's defaults (--calib-docs, --max-tokens) unless the
    # analysis read more. A quick analysis of 15 x 128 tokens would otherwise calibrate on ~2k tokens.
    calibration_texts: CalibrationTexts | None = Field(default=None, description=(
        "calibration documents of the pruning (scores and repair); default: the analysis' number, at least "
        f"{DEFAULT_CALIBRATION_DOCS}"))
    calibration_tokens: CalibrationTokens | None = Field(default=None, description=(
        f"tokens per calibration document; default: the analysis' max_tokens, at least {DEFAULT_CALIBRATION_TOKENS}"))
    protect: ProtectRequest | None = Field(default=None, description=(
        "keep another text working (the result's `protect` block compares it dense, pruned and unconstrained)"))
    recover_epochs: Int = Field(default=DEFAULT_RECOVER_EPOCHS, ge=0, le=MAX_RECOVER_EPOCHS, description=(
        RECOVER_HELP + " (the result's `recovery` records what it did)"))
    recover_lr: float = Field(default=DEFAULT_RECOVER_LR, gt=0, lt=1, allow_inf_nan=False,
                              description="learning rate of the recovery (chosen on validation documents)")

    @field_validator("heads")
    @classmethod
    def _heads_fraction(cls, value: bool | float) -> bool | float:
        if not isinstance(value, bool) and value != 0 and not 0 < value < 1:
            raise ValueError(f"give false, true ({DEFAULT_HEADS_FRACTION:g}) or a fraction of KV groups between 0 and 1")
        return value

    @property
    def heads_fraction(self) -> float | None:
        if self.heads is True:
            return DEFAULT_HEADS_FRACTION
        return None if not self.heads else float(self.heads)


class EncodedArray(BaseModel):
    """``data`` = base64 of a C-order array of ``dtype`` and ``shape``; real value = ``data * scale`` when
    ``scale`` is given (little-endian integers otherwise)."""

    dtype: Literal["int8", "uint8", "uint32"]
    shape: list[int]
    data: str
    scale: float | None = None


class MapArray(EncodedArray):
    layers: list[int]
    signals: list[str]
    width: int
    grid: list[int]


class ComponentRow(BaseModel):
    """One row of ``FunctionalNetworks.component_table`` (every key it returns is declared here)."""

    id: int
    layer: int
    index: int
    run: int
    n_key: int
    peak_z: float
    stability: float
    stable: bool
    top_genre: str | None = None
    genre_selectivity: float | None = None
    label: str
    name: str = ""
    auto_name: str = ""
    reproduced: int | None = Field(default=None, description=(
        "in how many of the analysis' check_seeds other seeds this network's map came back (|corr| >= 0.9); "
        "null when the analysis ran no seed check"))
    top_words: list[str] = Field(default_factory=list,
                                 description="distinct texts of the 30 tokens where the network is most active, "
                                             "most frequent first (what a search by word matches)")


class NetworksTable(BaseModel):
    threshold: float
    n_layers: int
    width: int
    signals: list[str]
    mode: str
    check_seeds: int = Field(default=0, description="other seeds each network was checked against (0: none)")
    components: list[ComponentRow]


class Histogram(BaseModel):
    edges: list[float]
    counts: list[int]


class TimeCourse(BaseModel):
    values: list[float]
    tokens: list[str]
    docs: list[int]
    n_tokens: int


class TopToken(BaseModel):
    token: str
    value: float
    doc: int
    position: int
    label: str | None = None
    left: str
    right: str


class ComponentDetail(BaseModel):
    id: int
    layer: int
    index: int
    label: str
    stability: float
    stable: bool = Field(description="reproduced by every FastICA restart, so a network in the key score (an "
                         "unstable component's neurons count only through the unresolved-subspace energy)")
    key_source: EncodedArray = Field(description="uint8 (n_map_layers, width), the map's layers: why each neuron "
                                     "is key at the threshold, 0 not key, 1 a stable network, 2 only the "
                                     "unresolved-subspace energy")
    threshold: float
    name: str = ""
    auto_name: str = ""
    map: MapArray
    histogram: Histogram
    time_course: TimeCourse
    top_tokens: list[TopToken]
    genre_profile: dict[str, float]


class KeySourceRow(BaseModel):
    """One analysed layer: its stable networks, and its key neurons by why they are key."""

    layer: int
    n_components: int = Field(description="components of the layer (whole-model: those peaking in it)")
    n_stable: int = Field(description="of them, reproduced by every FastICA restart (networks)")
    n_key: int = Field(description="key neurons at the threshold (= n_key_network + n_key_unresolved)")
    n_key_network: int = Field(description="key because a stable network's |z| exceeds the threshold")
    n_key_unresolved: int = Field(description="key only through the unresolved-subspace energy (a PCA "
                                  "statistic of the components restarts do not reproduce, not a network)")


class Overview(BaseModel):
    n_layers: int
    width: int
    grid: list[int]
    threshold: float
    density: EncodedArray
    max_z: EncodedArray
    key_source: EncodedArray = Field(description="uint8 (n_layers, width): why each neuron is key at the "
                                     "threshold, 0 not key, 1 a stable network, 2 only the unresolved-subspace "
                                     "energy")
    key_sources: list[KeySourceRow] = Field(description="per analysed layer")


class MapSet(BaseModel):
    threshold: float
    mode: str
    n_components: int
    width: int
    grid: list[int]
    n_map_layers: int
    map_layers: list[int] | None
    component_layer: list[int]
    offsets: EncodedArray
    index: EncodedArray
    values: EncodedArray


class Layout(BaseModel):
    """Where every neuron is drawn: ``positions[layer, j]`` = flat cell ``row * cols + col`` of ``grid``;
    ``network[layer, j]`` = the atlas network (component id + 1) of neuron ``j``, 0 = background (the
    same in either layout)."""

    name: Literal["atlas", "index"]
    n_layers: int
    width: int
    grid: list[int]
    positions: EncodedArray
    network: EncodedArray


class Choice(BaseModel):
    """One value a request field takes: ``name`` (what the request sends), a short ``label``, a ``help`` line."""

    name: str
    label: str
    help: str


class MethodChoice(Choice):
    """A pruning method (a record of fnprune.pruning.methods): what the form needs to offer it and to follow its rules."""

    default_allocation: Literal[ALLOCATIONS[1:]] = Field(description="the layer widths it uses by default")
    native_repair: Literal[REPAIRS] = Field(description="the compensation it comes with")
    unrepaired: Literal[REPAIRS] = Field(description="what 'without repair' means for it (the result's comparison)")
    needs_networks: bool = Field(description="it reads the functional networks")
    takes_threshold: bool = Field(description="a |z| threshold sizes its layers (it is a network score)")
    baseline: bool = Field(description="one of the baselines a pruning can be compared with (`baselines`)")
    refuses: dict[str, str] = Field(description="request options it refuses (e.g. `sequential`), each with the "
                                                "reason; such a request is answered 422")


class Preset(BaseModel):
    """A preset of the new-analysis form (the AnalysisRequest fields it sets)."""

    name: str
    label: str
    n_texts: int
    max_tokens: int
    n_components: int
    n_runs: int
    sampling: Literal[SAMPLINGS]


class AnalysisDefaults(BaseModel):
    """What an AnalysisRequest gets for each field it omits (fnprune's defaults)."""

    model: str
    corpus: str
    n_texts: int
    max_tokens: int
    n_components: int
    n_init: int = Field(description="FastICA restarts per decomposition (not a request field)")
    mode: Literal[MODES]
    sampling: Literal[SAMPLINGS]
    threshold: float = Field(description="the analysis' |z| threshold for key neurons")


class PruningDefaults(BaseModel):
    """What a PruningRequest gets for each field it omits, and the rules a form follows."""

    method: str
    method_reason: str = Field(description="why the default method is the default")
    repair: Literal[REPAIRS]
    ratio_of: Literal[RATIO_BASES]
    target_ratio: float = Field(description="used when neither threshold nor target_ratio is given and the "
                                            "method does not size layers by a |z| threshold")
    calibration_texts: int = Field(description="calibration documents: the analysis' number, at least this")
    calibration_tokens: int = Field(description="tokens per calibration document: the analysis', at least this")
    ridge: float = Field(description="the least-squares repair's ridge, times the mean input power")
    heads_fraction: float = Field(description="the fraction of KV groups `heads: true` removes")
    recover_epochs: int = Field(description="`recover_epochs` when not given (0: no recovery)")
    recover_lr: float = Field(description="`recover_lr` when not given")
    recover_max_epochs: int = Field(description="the largest `recover_epochs` accepted")
    sequential_repair: Literal[REPAIRS] = Field(description="`sequential` is a mode of this repair only")
    quick_analysis_texts: int = Field(description="an analysis of fewer texts is a quick one (the form then "
                                                  "proposes quick_calibration_texts)")
    quick_calibration_texts: int = Field(description="calibration documents the form proposes after a quick "
                                                     "analysis (BENCHMARKS.md §9: stays within the quick demo's "
                                                     "5 minutes)")
    protect_by: Literal[PROTECT_BY] = Field(description="`protect.by` when not given")
    protect_networks: int = Field(description="`protect.networks` when not given")
    protect_docs: int = Field(description="`protect.docs` when not given")


class Options(BaseModel):
    """GET /api/options: fnprune's vocabulary (fnprune.options and the method registry), so a client
    builds its forms from the server's names, help and defaults instead of copying them."""

    methods: list[MethodChoice] = Field(description="in the library's order")
    repairs: list[Choice]
    allocations: list[Choice] = Field(description="how many neurons each layer keeps (the CLI's --allocation; "
                                                  "the API sends `uniform` or the method's default)")
    ratio_bases: list[Choice] = Field(description="what a target ratio is a fraction of (`ratio_of`)")
    modes: list[Choice]
    samplings: list[Choice]
    protect_by: list[Choice] = Field(description="how a pruning keeps another text working (`protect.by`), with "
                                                 "what BENCHMARKS.md §10 measured")
    presets: list[Preset]
    analysis: AnalysisDefaults
    pruning: PruningDefaults


class DownloadLinkRequest(Strict):
    path: str = Field(min_length=1, max_length=2000, pattern=DOWNLOAD_PATH_PATTERN,
                      description="e.g. /api/prunings/ID/download/model")


class DownloadLink(BaseModel):
    url: str = Field(description="the path with `expires` and `signature` added (no token)")
    expires: int = Field(description="Unix time after which the link no longer works")


class ErrorBody(BaseModel):
    """Every error response: a readable sentence, and the request field it is about (or null)."""

    detail: str
    field: str | None = Field(description="the request field the error is about, e.g. `n_texts` or `labels.3`")


# -- protect a capability (issue 22) -----------------------------------------------------------------------
class ProtectProposal(BaseModel):
    """The networks most selective for the protected text against the calibration text, and what forcing
    them costs (fnprune.pruning.protect.Proposal)."""

    networks: list[int] = Field(description="component ids, most selective first")
    scores: list[float] = Field(description="mean over each network's key neurons of log(RMS on the protected "
                                            "text / RMS on the calibration text)")
    rule: Literal["activity", "profile"]
    n_forced: int = Field(description="key neurons these networks force (kept whatever the method)")
    forced_per_layer: list[int]
    calibration_docs: int | None = Field(default=None, description="calibration documents the proposal measured")
    docs: int = Field(description="documents of the protected text it measured")


class ProposalJob(Job):
    """POST /api/analyses/{id}/protect-proposal's job (the worker measures the proposal)."""

    kind: Literal["proposal"]
    result: ProtectProposal | None


class ProtectMixing(BaseModel):
    """by=calibration: fnprune.pruning.protect.mixed_calibration's counts."""

    calibration_docs: int = Field(description="calibration documents kept")
    protect_docs: int = Field(description="protected documents added")
    protect_tokens: int
    tokens: int = Field(description="calibration tokens in all")


class DomainPerplexity(BaseModel):
    """Held-out perplexity of one domain (512-token windows of each document's first 512 tokens)."""

    n_docs: int
    dense: float | None
    pruned: float | None
    unconstrained: float | None = Field(description="the same pruning without the protection (null: not asked for)")


class ProtectResult(BaseModel):
    """A pruning result's `protect` block."""

    source: str = Field(description="what was protected, e.g. `brown:news` or `3 pasted texts`")
    by: Literal[PROTECT_BY]
    protect_docs: int = Field(description="documents of the protected text that protected")
    heldout_docs: int = Field(description="its held-out documents (disjoint from those) evaluated")
    mixing: ProtectMixing | None
    proposal: ProtectProposal | None
    calibration_domain: DomainPerplexity | None = Field(description="the analysis' corpus (null: not evaluated)")
    protected_domain: DomainPerplexity | None = Field(description="the protected text (null: not evaluated, or no "
                                                      "held-out document)")
    unconstrained_keep_digest: str | None
    dense_cached: bool | None = Field(description="the dense model's perplexity on the protected text came from the cache")
    notes: list[str]


# -- what does a network do? (POST /api/analyses/{id}/ablations; fnprune.evaluation.ablation.ablate) ------
class AblationRequest(Strict):
    networks: list[Int] = Field(min_length=1, max_length=4096, description=(
        "network ids of the analysis whose key neurons (|z| above the analysis threshold) are zeroed together"))
    texts: Int = Field(default=DEFAULT_ABLATION_TEXTS, ge=1, le=200, description=(
        "held-out documents of the analysis' corpus (the ones it did not read) that are scored"))
    max_tokens: Int = Field(default=DEFAULT_MAX_TOKENS, ge=8, le=4096, description=(
        "tokens of each document scored (its first ones)"))
    top_tokens: Int = Field(default=DEFAULT_ABLATION_TOP_TOKENS, ge=0, le=100, description=(
        "how many tokens to list whose probability falls most"))
    seed: Int = Field(default=0, ge=0, le=2**31 - 1, description="seed of the random-neuron control")


class PairedRatio(BaseModel):
    """PPL(a) / PPL(b) on the same documents, with a paired 95% bootstrap interval over documents."""

    ratio: float | None
    low: float | None
    high: float | None


class AblationRow(BaseModel):
    """Perplexity of one genre's held-out documents (or of all: genre ``all``), each scored alone."""

    genre: str
    n_docs: int
    n_tokens: int
    dense: float | None = Field(description="perplexity of the dense model")
    network: float | None = Field(description="perplexity with the networks' key neurons zeroed")
    random: float | None = Field(description="perplexity with as many random neurons zeroed in the same layers")
    network_vs_dense: PairedRatio
    random_vs_dense: PairedRatio
    network_vs_random: PairedRatio


class AblationToken(BaseModel):
    """A token whose probability (of the token that actually came next) fell most when the networks were zeroed."""

    doc: str
    label: str
    position: int = Field(description="the token's position in its document (tokens, from 0)")
    left: str = Field(description="the tokens before it")
    token: str
    p_dense: float
    p_network: float = Field(description="with the networks' key neurons zeroed")
    p_random: float = Field(description="with the random control zeroed")
    logp_drop: float = Field(description="log p dense - log p networks zeroed")


class AblationResult(BaseModel):
    analysis_id: str
    networks: list[int]
    threshold: float = Field(description="|z| above which a neuron is a key neuron of a network")
    n_neurons: int = Field(description="key neurons zeroed (and random neurons zeroed in the control)")
    neurons_per_layer: list[int]
    window: int = Field(description="tokens of each document scored")
    seed: int
    genres: list[AblationRow]
    all: AblationRow
    top_tokens: list[AblationToken]


class AblationJob(Job):
    kind: Literal["ablation"]
    result: AblationResult | None
