"""Why a neuron is key (a stable network or only the unresolved-subspace energy), per-unit stability
statistics in the run info, and run directories written before the unresolved-energy rename."""

import copy

import numpy as np
import pytest

from fnprune.analysis.networks import KEY_NETWORK, KEY_UNRESOLVED, NOT_KEY, FunctionalNetworks, analyze
from fnprune.corpus import load_corpus
from fnprune.io import read_safetensors, write_safetensors
from fnprune.models.loading import load_model


@pytest.fixture(scope="module")
def networks():
    model, tok = load_model("tiny-llama", device="cpu")
    return analyze(model, tok, load_corpus("pydoc")[:6], n_components=6, max_tokens=96, n_init=3, random_state=0)


@pytest.fixture(scope="module")
def planted(networks):
    """The analysis with what the tests must see planted, whatever the CPU made of the real one (on
    some CPUs every component of this tiny analysis is stable, so it has no unresolved energy): in
    every layer components 0-2 stable and 3-5 unstable, component 0 with |z| = 5 on ten neurons, and
    unresolved energy 0-4 on every third neuron (the rest 0), so networks and unresolved energy each
    decide some key neurons at every threshold tested."""
    fn = copy.copy(networks)
    fn.stable = networks.component_index % 6 < 3
    fn.maps = networks.maps.copy()
    fn.maps[networks.component_index == 0, 0, 0, 1:31:3] = 5.0
    fn._absmax = np.abs(fn.maps).max(axis=2)
    rng = np.random.default_rng(0)
    energy = np.zeros_like(networks.unit_unresolved)
    energy[..., ::3] = rng.uniform(0, 4, energy[..., ::3].shape)
    fn.unit_unresolved = energy.astype(np.float16).astype(np.float32)   # as stored in a run directory
    return fn


@pytest.mark.parametrize("threshold", [1.0, 2.0, 3.0])
@pytest.mark.parametrize("which", ["analysed", "planted"])
def test_key_source_partitions_the_key_neurons(networks, planted, which, threshold):
    networks = planted if which == "planted" else networks
    source = networks.key_source(threshold)
    if which == "planted":  # the test means something: both sources decide some neurons
        assert (source == KEY_NETWORK).any() and (source == KEY_UNRESOLVED).any()
    assert source.shape == (networks.n_layers, networks.width) and source.dtype == np.int8
    np.testing.assert_array_equal(source > 0, networks.neuron_scores().astype(np.float64) > threshold)
    for layer in networks.layers:
        comps = np.flatnonzero((networks.component_layer == layer) & networks.stable)
        network = np.abs(networks.maps[comps, 0]).max(axis=(0, 1)) if len(comps) else np.zeros(networks.width)
        np.testing.assert_array_equal(source[layer] == KEY_NETWORK, network.astype(np.float64) > threshold)


def test_key_source_on_a_planted_unit(networks):
    fn = copy.copy(networks)
    layer1 = np.flatnonzero(fn.component_layer == 1)
    fn.stable = networks.stable.copy()
    fn.stable[layer1] = [True] + [False] * (len(layer1) - 1)
    fn._absmax = networks._absmax.copy()
    fn._absmax[layer1] = 0.0
    fn._absmax[layer1[0], 0, :10] = 5.0                      # neurons 0-9: a stable network
    unit = fn.component_unit[layer1[0]]
    fn.unit_unresolved = networks.unit_unresolved.copy()
    fn.unit_unresolved[unit, 0] = 0.0
    fn.unit_unresolved[unit, 0, 5:20] = 4.0                   # neurons 5-19: unresolved energy
    source = fn.key_source(3.0)[1]
    assert (source[:10] == KEY_NETWORK).all()                 # a network wins where both are above
    assert (source[10:20] == KEY_UNRESOLVED).all()
    assert (source[20:] == NOT_KEY).all()


def test_unit_stability_in_the_info_and_round_trip(networks, tmp_path):
    stats = networks.info["unit_stability"]
    assert [(s["run"], s["layer"]) for s in stats] == [(0, layer) for layer in networks.layers]
    for s in stats:
        comps = networks.component_layer == s["layer"]
        assert s["n_components"] == 6 and s["n_stable"] == int(networks.stable[comps].sum())
        assert s["unresolved_dim"] == 6 - s["n_stable"]
        assert s["key_from_networks"] + s["key_from_unresolved"] == pytest.approx(1.0 if s["n_key"] else 0.0)
    loaded = FunctionalNetworks.load(networks.save(tmp_path / "run"))
    assert loaded.info["unit_stability"] == stats
    np.testing.assert_array_equal(loaded.unit_unresolved, networks.unit_unresolved)
    np.testing.assert_array_equal(loaded.key_source(2.0), networks.key_source(2.0))


def test_run_dirs_with_the_former_key_name_still_load(planted, tmp_path):
    run = planted.save(tmp_path / "old")
    arrays = {k: np.asarray(v) for k, v in read_safetensors(run / "networks.safetensors").items()}
    arrays["unit_residual"] = arrays.pop("unit_unresolved_energy")
    write_safetensors(run / "networks.safetensors", arrays)
    loaded = FunctionalNetworks.load(run)
    np.testing.assert_array_equal(loaded.unit_unresolved, planted.unit_unresolved)
    np.testing.assert_array_equal(loaded.stable, planted.stable)
    np.testing.assert_array_equal(loaded.neuron_scores(), planted.neuron_scores())
    # the renamed array matters: without it the scores differ
    without = copy.copy(planted)
    without.unit_unresolved = np.zeros_like(planted.unit_unresolved)
    assert not np.array_equal(without.neuron_scores(), planted.neuron_scores())
