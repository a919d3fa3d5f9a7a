"""Every serialisable type of the HTTP API (the backend owns these; fnprune never sees pydantic)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

DEFAULT_HEADS_FRACTION = 0.25
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


def _not_a_bool(value: Any) -> Any:
    if isinstance(value, bool):  # pydantic would read true as 1; the schema says a number
        raise ValueError("must be a number, not true or false")
    return value


# request numbers: JSON true/false are not numbers
Int = Annotated[int, BeforeValidator(_not_a_bool)]
Float = Annotated[float, BeforeValidator(_not_a_bool)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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
    model: str = Field(default="smollm2-135m", min_length=1, max_length=500)
    corpus: str = Field(default="brown", min_length=1, max_length=200)
    genres: list[str] | None = Field(default=None, max_length=100)
    n_texts: Int = Field(default=40, ge=1, le=5000)
    max_tokens: Int = Field(default=512, ge=8, le=8192)
    n_components: Int = Field(default=32, ge=1, le=2048)  # = fnprune.ica.DEFAULT_N_COMPONENTS
    mode: Literal["per-layer", "whole-model"] = "per-layer"
    n_runs: Int = Field(default=1, ge=1, le=50)
    seed: Int = Field(default=0, ge=0, le=2**31 - 1)
    # which documents: "first" = the corpus' first n_texts (file order); "stratified" = spread evenly
    # over the corpus' genres (round-robin, the same for every seed)
    sampling: Literal["first", "stratified"] = "first"
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
    """At most one of ``threshold`` / ``target_ratio``; neither means the analysis' default threshold."""

    networks: list[Int] | None = Field(default=None, max_length=4096)
    threshold: Float | None = Field(default=None, gt=0, le=100)
    target_ratio: Float | None = Field(default=None, gt=0, lt=1)
    # what target_ratio is a fraction of: all parameters, the MLPs', or all but the embeddings
    ratio_of: Literal["all", "mlp", "non-embedding"] = "all"

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
    """fnprune.selection.Plan.as_dict(): the widths a choice gives, before any model is loaded."""

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
    ratio_of: Literal["all", "mlp", "non-embedding"]
    max_ratio: dict[str, float] = Field(description="the largest reachable fraction of each base (all, mlp, "
                                                    "non-embedding when the run records embeddings)")
    chosen_networks: list[NetworkKept]


NetworkName = Annotated[str, Field(max_length=80)]


class Labels(Strict):
    """Labels and user-given names per component id; a PUT merges both (an empty name restores the
    automatic one); a reply holds every stored label and name."""

    labels: dict[str, Literal["signal", "noise", "unknown"]] = Field(default_factory=dict)
    names: dict[str, NetworkName] = Field(default_factory=dict)


class PruningRequest(ThresholdChoice):
    analysis_id: str = Field(min_length=1, max_length=64, pattern=r"^[0-9a-zA-Z_-]+$")
    protected_layers: list[Int] | None = Field(default=None, max_length=1024)
    # fnprune.recipe.METHODS: how neurons are chosen inside a layer; chosen networks' key neurons are
    # always kept (fn-flap: FLAP's score in the networks' widths; fn: the seed-robust network score;
    # paper: any |z| above the threshold, no unresolved-subspace energy; obs: structured OBS, greedy
    # least rise of the repaired output error; the baselines)
    # default obs: chosen on validation documents (BENCHMARKS.md §3b)
    method: Literal["fn-flap", "fn", "paper", "obs", "random", "magnitude", "wanda-sp", "flap"] = "obs"
    # lstsq: re-fit each pruned layer's down projection + bias by least squares (default);
    # bias: FLAP's mean compensation only; none
    repair: Literal["lstsq", "bias", "none"] = "lstsq"
    sequential: bool = False
    uniform: bool = False
    # Attention: false = keep every head; a fraction in (0, 1) = remove that fraction of the KV groups
    # (a key/value head with its query heads) of every unprotected layer; true = 0.25.
    heads: bool | float = False
    baselines: list[Literal["random", "magnitude", "wanda-sp", "flap"]] = Field(default_factory=list)
    evaluate: bool = True
    n_heldout: Int = Field(default=20, ge=1, le=500)
    # The pruning's own calibration (FLAP / Wanda-sp statistics, the least-squares repair), independent of
    # how much text the analysis read: the CLI's defaults (--calib-docs 120, --max-tokens 512) unless the
    # analysis read more. A quick analysis of 15 x 128 tokens would otherwise calibrate on ~2k tokens.
    calibration_texts: Int | None = Field(default=None, ge=1, le=5000, description=(
        "calibration documents of the pruning (scores and repair); default: the analysis' number, at least 120"))
    calibration_tokens: Int | None = Field(default=None, ge=8, le=8192, description=(
        "tokens per calibration document; default: the analysis' max_tokens, at least 512"))

    @field_validator("heads")
    @classmethod
    def _heads_fraction(cls, value: bool | float) -> bool | float:
        if not isinstance(value, bool) and value != 0 and not 0 < value < 1:
            raise ValueError("give false, true (0.25) or a fraction of KV groups between 0 and 1")
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


class DownloadLinkRequest(Strict):
    path: str = Field(min_length=1, max_length=2000, description="e.g. /api/prunings/ID/download/model")


class DownloadLink(BaseModel):
    url: str = Field(description="the path with `expires` and `signature` added (no token)")
    expires: int = Field(description="Unix time after which the link no longer works")


class ErrorBody(BaseModel):
    """Every error response: a readable sentence, and the request field it is about (or null)."""

    detail: str
    field: str | None = Field(description="the request field the error is about, e.g. `n_texts` or `labels.3`")
