"""The method registry: a new method is one record and its score function, and then it is a choice
everywhere (CLI, compare, the web API, the recipe) with no other edit; the vocabulary is torch-free."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from prune_helpers import FakeNetworks, documents, tiny_model, tokenizer

from fnprune.errors import ConfigError
from fnprune.models.mlp import find_mlps
from fnprune.pruning import methods
from fnprune.pruning.methods import Method, ScoreInputs
from fnprune.pruning.recipe import prune_with_networks
from fnprune.pruning.spec import PruningSpec


def _by_index(inputs: ScoreInputs) -> list[np.ndarray]:
    """The toy method's score: a neuron's index (the last neurons of every layer are kept)."""
    return [np.arange(a.width, dtype=np.float64) for a in find_mlps(inputs.model)]


@pytest.fixture
def toy():
    record = methods.register(Method("toy", "toy: by index", "keeps the neurons with the highest index (a test)",
                                     _by_index))
    yield record
    methods.unregister("toy")


def test_a_registered_method_is_a_choice_of_the_cli(toy, capsys):
    from fnprune.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["prune", "--help"])
    text = capsys.readouterr().out
    assert "toy" in text.split("--method {")[1].split("}")[0].split(",")
    assert "toy: keeps the neurons with the highest index" in " ".join(text.split())
    args = build_parser().parse_args(["prune", "RUN", "--method", "toy", "--out", "OUT"])
    assert args.method == "toy"
    compare_args = build_parser().parse_args(["compare", "--out", "REPORT"])
    assert "toy" in compare_args.methods.split(",")  # compare runs every registered method by default


def test_a_registered_method_is_offered_and_accepted_by_the_web_api(toy, tmp_path):
    from fastapi.testclient import TestClient

    from backend.app.core.config import Settings
    from backend.app.main import create_app
    from backend.app.schemas import PruningRequest

    settings = Settings(HOME=tmp_path / "home", DATA_DIR=tmp_path / "data", DEVICE="cpu")
    with TestClient(create_app(settings)) as client:
        offered = {m["name"]: m for m in client.get("/api/options").json()["methods"]}
        assert offered["toy"]["help"] == toy.help and offered["toy"]["baseline"] is False
        schema = client.get("/openapi.json").json()["components"]["schemas"]["PruningRequest"]
        assert "toy" in schema["properties"]["method"]["enum"]
    assert PruningRequest(analysis_id="a", method="toy").method == "toy"


def test_a_registered_method_is_in_compare_and_prunes(toy, tmp_path):
    from fnprune.evaluation.compare import DEFAULT_METHODS, compare, parse_methods

    assert "toy" in DEFAULT_METHODS and parse_methods("obs,toy") == ["obs", "toy"]
    model, tok = tiny_model("llama", n_layers=4, width=48), tokenizer()
    adapters = find_mlps(model)
    fn = FakeNetworks(4, 48, adapters[0].params_per_neuron, sum(p.numel() for p in model.parameters()),
                      protected=(0,))
    result = compare("tiny", "test", [0.1], ["toy"], tmp_path / "report", model=model, tokenizer=tok,
                     docs=documents(30), fn=fn, protected_layers=[0], max_tokens=64, windows=(32,), fidelity=None,
                     repairs="native", reference=None)
    rows = [r for r in result["rows"] if r["method"] == "toy"]
    assert [(r["allocation"], r["repair"]) for r in rows] == [("own", "none"), ("networks", "none")]
    assert not [r for r in rows if "error" in r], rows

    out = prune_with_networks(tiny_model("llama", n_layers=4, width=48), None,
                              PruningSpec(method="toy", target_ratio=0.1, repair="none", protected_layers=(0,)))
    assert out.keep[0].tolist() == list(range(48))  # protected
    for keep in out.keep[1:]:  # the highest indices stay: a suffix of every pruned layer
        assert keep.tolist() == list(range(48 - len(keep), 48))
    assert out.removed_fraction >= 0.1 - 1e-3


def test_unregistered_and_refused():
    assert "toy" not in methods.METHODS
    with pytest.raises(ConfigError, match="method: unknown 'toy'; choose from paper, fn") as err:
        PruningSpec(method="toy").validated(have_networks=True)
    assert err.value.field == "method"
    methods.register(Method("one-shot", "one-shot", "refuses sequential (a test)", _by_index,
                            refuses={"sequential": "a test's reason"}))
    try:
        with pytest.raises(ConfigError, match="sequential calibration is not available for method 'one-shot' "
                                              r"\(a test's reason\)") as err:
            PruningSpec(method="one-shot", sequential=True).validated(have_networks=True)
        assert err.value.field == "sequential"
    finally:
        methods.unregister("one-shot")
    with pytest.raises(ConfigError, match="already registered"):
        methods.register(methods.get("obs"))
    with pytest.raises(ConfigError, match="native_repair: one of"):
        methods.register(Method("bad", "bad", "bad", _by_index, native_repair="maybe"))
    assert "bad" not in methods.METHODS


def test_the_registry_is_the_old_lists():
    """The records say what the string comparisons they replaced said (behaviour unchanged)."""
    from fnprune.pruning.spec import native_repair, unrepaired

    assert list(methods.METHODS) == ["paper", "fn", "fn-flap", "obs", "random", "magnitude", "wanda-sp", "flap"]
    assert methods.NETWORK_METHODS == ("paper", "fn", "fn-flap")
    assert methods.BASELINES == ("random", "magnitude", "wanda-sp", "flap")
    assert {m: native_repair(m) for m in methods.METHODS if native_repair(m) != "none"} == {
        "fn-flap": "bias", "obs": "lstsq", "flap": "bias"}
    assert {m for m in methods.METHODS if unrepaired(m) == "bias"} == {"fn-flap", "flap"}
    assert {m: PruningSpec(method=m).resolved_allocation for m in methods.METHODS if
            PruningSpec(method=m).resolved_allocation != "own"} == {"fn": "networks", "fn-flap": "networks"}
    assert {m for m in methods.METHODS if methods.get(m).takes_threshold} == {"fn", "paper"}


def test_the_vocabulary_imports_no_maths():
    code = ("import sys; import fnprune.options, fnprune.pruning.methods; from fnprune.pruning.methods import METHODS; "
            "assert 'obs' in METHODS; heavy = [m for m in ('torch', 'numpy', 'transformers') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
