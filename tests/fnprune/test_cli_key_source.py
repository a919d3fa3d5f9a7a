"""``fnprune networks`` says per layer how many networks are stable and why its key neurons are key
(a stable network or only the unresolved-subspace energy); the counts add up (issue 12 item 3)."""

import numpy as np
import pytest

from fnprune.analysis.networks import KEY_NETWORK, KEY_UNRESOLVED, analyze
from fnprune.cli import main
from fnprune.cli.analysis import key_source_rows
from fnprune.corpus import load_corpus
from fnprune.models.loading import load_model


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A run whose layer 2 has one stable network and an unresolved energy of 9 on neurons 40-51."""
    model, tok = load_model("tiny-llama", device="cpu")
    fn = analyze(model, tok, load_corpus("pydoc")[:6], n_components=5, max_tokens=96, n_init=3, random_state=0)
    layer2 = np.flatnonzero(fn.component_layer == 2)
    fn.stable[layer2] = [True] + [False] * (len(layer2) - 1)
    unit = fn.component_unit[layer2[0]]
    fn.unit_unresolved[unit] = 0.0
    fn.unit_unresolved[unit, 0, 40:52] = 9.0
    return fn.save(tmp_path_factory.mktemp("ks") / "run")


@pytest.mark.parametrize("threshold", [1.5, 8.0])
def test_key_source_rows_add_up(planted, threshold):
    from fnprune.analysis.networks import FunctionalNetworks

    fn = FunctionalNetworks.load(planted)
    source = fn.key_source(threshold)
    rows = key_source_rows(fn, threshold)
    assert [r["layer"] for r in rows] == fn.layers
    for r in rows:
        assert r["n_key"] == r["n_key_network"] + r["n_key_unresolved"]
        assert r["n_key"] == int((fn.neuron_scores()[r["layer"]] > threshold).sum())
        assert r["n_key_network"] == int((source[r["layer"]] == KEY_NETWORK).sum())
        assert r["n_components"] == 5 and 0 <= r["n_stable"] <= 5
    assert sum(r["n_components"] for r in rows) == fn.n_components
    assert rows[2]["n_stable"] == 1
    if threshold == 8.0:   # only the planted energy is that high
        assert [(r["n_key_network"], r["n_key_unresolved"]) for r in rows] == [(0, 0), (0, 0), (0, 12), (0, 0)]
        assert set(np.flatnonzero(source[2] == KEY_UNRESOLVED)) == set(range(40, 52))
    else:
        assert sum(r["n_key_network"] for r in rows) > 0


def test_networks_command_prints_the_key_sources(planted, capsys):
    assert main(["networks", str(planted), "--threshold", "8", "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "unresolved-subspace energy" in out
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.split()[:2] == ["layer", "stable"])
    table = [line.split() for line in lines[head + 1:head + 5]]
    assert [row[0] for row in table] == ["0", "1", "2", "3"]
    assert table[2] == ["2", "1", "of", "5", "12", "0%", "100%"]
    assert table[0][4:] == ["0", "-", "-"]
