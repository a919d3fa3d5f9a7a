"""Why a neuron is key, over the API: the overview's per-neuron key source and per-layer summary, and
a network's detail, are the library's ``FunctionalNetworks.key_source`` (issue 12 item 3)."""

from __future__ import annotations

import numpy as np

from backend.app.services import analyses, encoding
from fnprune.analysis.networks import KEY_NETWORK, KEY_UNRESOLVED, NOT_KEY, FunctionalNetworks


def _plant_unresolved(settings, store, job_id) -> FunctionalNetworks:
    """Rewrite the run so layer 1 has one stable network and three unstable components whose
    unresolved-subspace energy is 9 on neurons 50-59 (above every |z| of the tiny model)."""
    run_dir = settings.job_dir("analysis", job_id) / "run"
    fn = FunctionalNetworks.load(run_dir)
    layer1 = np.flatnonzero(fn.component_layer == 1)
    fn.stable[layer1] = [True] + [False] * (len(layer1) - 1)
    unit = fn.component_unit[layer1[0]]
    fn.unit_unresolved[unit] = 0.0
    fn.unit_unresolved[unit, 0, 50:60] = 9.0
    fn.save(run_dir)
    return analyses.load_networks(settings, store, job_id)


def test_overview_key_source_is_the_library_one(finished, settings):
    client, job_id = finished
    networks = _plant_unresolved(settings, client.app.state.store, job_id)
    assert np.abs(networks.maps).max() < 8.0                          # the planted rows decide at 8
    for threshold in (1.5, 8.0):
        ov = client.get(f"/api/analyses/{job_id}/overview", params={"threshold": threshold})
        assert ov.status_code == 200, ov.text
        ov = ov.json()
        source = encoding.decode(ov["key_source"])
        assert source.dtype == np.uint8 and source.shape == (networks.n_layers, networks.width)
        np.testing.assert_array_equal(source, networks.key_source(threshold))
        np.testing.assert_array_equal(source > 0, networks.neuron_scores() > threshold)
        rows = ov["key_sources"]
        assert [r["layer"] for r in rows] == networks.layers
        for r in rows:
            layer = source[r["layer"]]
            assert r["n_key_network"] == int((layer == KEY_NETWORK).sum())
            assert r["n_key_unresolved"] == int((layer == KEY_UNRESOLVED).sum())
            assert r["n_key"] == r["n_key_network"] + r["n_key_unresolved"] == int((layer != NOT_KEY).sum())
            assert r["n_components"] == 4
            assert r["n_stable"] == (1 if r["layer"] == 1 else int(networks.stable[networks.component_layer == r["layer"]].sum()))
    # at 8 only the planted energy makes neurons key: layer 1, neurons 50-59, and no network does
    assert set(np.flatnonzero(source[1] == KEY_UNRESOLVED)) == set(range(50, 60))
    assert (source == KEY_NETWORK).sum() == 0 and (source > 0).sum() == 10
    low = client.get(f"/api/analyses/{job_id}/overview", params={"threshold": 1.5}).json()
    assert any(r["n_key_network"] > 0 for r in low["key_sources"])  # both sources occur in this test


def test_network_detail_says_why_its_neurons_are_key(finished, settings):
    client, job_id = finished
    networks = _plant_unresolved(settings, client.app.state.store, job_id)
    layer1 = np.flatnonzero(networks.component_layer == 1)
    for k, stable in ((int(layer1[0]), True), (int(layer1[1]), False)):
        detail = client.get(f"/api/analyses/{job_id}/networks/{k}", params={"threshold": 8.0}).json()
        assert detail["stable"] is stable
        source = encoding.decode(detail["key_source"])
        assert source.shape == (1, networks.width)
        np.testing.assert_array_equal(source[0], networks.key_source(8.0)[1])
        assert set(np.flatnonzero(source[0] == KEY_UNRESOLVED)) == set(range(50, 60))


def test_networks_table_carries_the_seed_check(finished, settings):
    """A run with a seed check: every row says in how many of the other seeds its network came back,
    the table how many seeds were checked; a run without one says null / 0."""
    client, job_id = finished
    table = client.get(f"/api/analyses/{job_id}/networks").json()
    assert table["check_seeds"] == 0 and all(r["reproduced"] is None for r in table["components"])
    run_dir = settings.job_dir("analysis", job_id) / "run"
    fn = FunctionalNetworks.load(run_dir)
    fn.reproduced = np.arange(fn.n_components) % 4
    fn.info["check_seeds"] = 3
    fn.save(run_dir)
    analyses._cache.clear()
    table = client.get(f"/api/analyses/{job_id}/networks").json()
    assert table["check_seeds"] == 3
    assert [r["reproduced"] for r in table["components"]] == (np.arange(fn.n_components) % 4).tolist()
