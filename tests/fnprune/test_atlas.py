"""The functional atlas layout (fnprune/analysis/atlas.py): curve, assignment, order, compactness, names, run dirs."""

import numpy as np
import pytest

from fnprune.analysis import atlas
from fnprune.analysis.networks import FunctionalNetworks
from fnprune.errors import ConfigError, CorpusError


def synthetic_networks(n_layers=3, width=100, k=6, n_key=10, n_tokens=400, mode="per-layer", seed=0):
    """A run with planted networks: component ``c`` has ``n_key`` random neurons at |z| 4..8, the
    rest N(0, 1); time courses of components 2i and 2i+1 are correlated."""
    rng = np.random.default_rng(seed)
    n_map = n_layers if mode == "whole-model" else 1
    n_comp = k if mode == "whole-model" else k * n_layers
    maps = rng.normal(size=(n_comp, n_map, 2, width)).clip(-2.5, 2.5)
    for c in range(n_comp):
        for m in range(n_map):
            idx = rng.choice(width, n_key, replace=False)
            maps[c, m, rng.integers(0, 2), idx] = rng.uniform(4, 8, n_key) * rng.choice([-1, 1], n_key)
    base = rng.normal(size=(n_tokens, (n_comp + 1) // 2))
    tc = np.repeat(base, 2, axis=1)[:, :n_comp] + 0.3 * rng.normal(size=(n_tokens, n_comp))
    layers = list(range(n_layers))
    comp_layer = np.full(n_comp, -1) if mode == "whole-model" else np.repeat(layers, k)
    info = {"mode": mode, "signals": ["act", "up"], "layers": layers, "threshold": 3.0,
            "model": {"n_layers": n_layers, "widths": [width] * n_layers, "params_per_neuron": [3] * n_layers,
                      "mlp_params": 3 * width * n_layers, "total_params": 10 * width * n_layers}}
    tokens = [" was", " had", " were", "\n", " The"] * (n_tokens // 5)
    return FunctionalNetworks(maps=maps, component_layer=comp_layer, component_index=np.arange(n_comp) % k,
                              component_run=np.zeros(n_comp), stability=np.ones(n_comp), time_courses=tc,
                              token_text=tokens, token_doc=np.zeros(n_tokens), token_pos=np.arange(n_tokens),
                              documents=[{"id": "d", "label": None, "n_tokens": n_tokens}], info=info)


@pytest.mark.parametrize("grid", [(39, 40), (8, 8), (3, 7), (7, 3), (1, 5), (6, 9), (11, 10)])
def test_space_filling_curve_visits_every_cell_once_through_neighbours(grid):
    rows, cols = grid
    curve = atlas.space_filling_curve(rows, cols)
    assert sorted(curve.tolist()) == list(range(rows * cols))
    r, c = np.divmod(curve, cols)
    steps = np.abs(np.diff(r)) + np.abs(np.diff(c))
    assert (steps <= 2).all() and (steps == 2).sum() <= 1          # at most one diagonal step
    with pytest.raises(ConfigError, match="at least 1 x 1"):
        atlas.space_filling_curve(0, 3)


def test_neuron_grid_is_the_servers_grid():
    assert atlas.neuron_grid(1536) == (39, 40)
    assert atlas.neuron_grid(64) == (8, 8)
    assert FunctionalNetworks.grid.fget(synthetic_networks(width=100)) == (10, 10)


def test_assignment_takes_the_strongest_network_above_the_threshold():
    scores = np.array([[5.0, 1.0, 2.9, 4.0], [4.0, 6.0, 1.0, 4.5]])
    np.testing.assert_array_equal(atlas.assign_neurons(scores, 3.0), [0, 1, -1, 1])


def test_network_order_puts_correlated_time_courses_next_to_each_other():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 500))
    tc = np.stack([a, b + 0.1 * rng.normal(size=500), a + 0.1 * rng.normal(size=500), rng.normal(size=500),
                   b], axis=1)
    order = atlas.network_order(tc).tolist()
    assert sorted(order) == [0, 1, 2, 3, 4]
    assert abs(order.index(0) - order.index(2)) == 1
    assert {order.index(1), order.index(4)} in ({0, 1}, {3, 4}) or abs(order.index(1) - order.index(4)) == 1
    np.testing.assert_array_equal(atlas.network_order(tc), atlas.network_order(tc.copy()))   # deterministic


def test_layer_atlas_makes_each_network_one_region():
    rng = np.random.default_rng(2)
    width, grid = 100, (10, 10)
    scores = np.abs(rng.normal(size=(4, width))).clip(0, 2.5)
    members = rng.permutation(width)[:60].reshape(4, 15)
    for c in range(4):
        scores[c, members[c]] = 5 + c
    positions, network = atlas.layer_atlas(scores, 3.0, np.array([2, 0, 3, 1]), grid)
    assert sorted(positions.tolist()) == list(range(width))
    curve = atlas.space_filling_curve(*grid).tolist()
    # network 2 fills the first 15 cells of the curve, network 0 the next 15, ...; background last
    assert sorted(positions[members[2]].tolist()) == sorted(curve[:15])
    assert sorted(positions[members[0]].tolist()) == sorted(curve[15:30])
    assert set(np.flatnonzero(network == -1)) == set(range(width)) - set(members.ravel())
    key = np.zeros((4, width), bool)
    key[np.arange(4)[:, None], members] = True
    atlas_c = atlas.compactness(positions, key, grid)
    index_c = atlas.compactness(np.arange(width), key, grid)
    assert atlas_c.min() > 0.5 and index_c.max() < 0.4


def test_compactness_by_hand():
    # 2 x 2 grid, one network on the left column: each key neuron has 2 neighbours, 1 of them key
    key = np.array([[True, False, True, False]])
    np.testing.assert_allclose(atlas.compactness(np.arange(4), key, (2, 2)), [0.5])
    np.testing.assert_allclose(atlas.compactness(np.array([0, 2, 1, 3]), key, (2, 2)), [0.5])
    assert np.isnan(atlas.compactness(np.arange(4), np.array([[True, False, False, False]]), (2, 2))[0])


@pytest.mark.parametrize("mode", ["per-layer", "whole-model"])
def test_run_atlas_is_stored_and_recomputed_identically(mode, tmp_path):
    fn = synthetic_networks(mode=mode)
    layout = fn.layout("atlas")
    assert layout.shape == (3, 100) and layout.dtype == np.int32
    for layer in range(3):
        assert sorted(layout[layer].tolist()) == list(range(100))
    np.testing.assert_array_equal(fn.layout("index"), np.tile(np.arange(100), (3, 1)))
    with pytest.raises(ConfigError, match="layout must be one of"):
        fn.layout("brain")
    network = fn.atlas()["network"]
    c = 4 if mode == "per-layer" else 1
    layer = 0
    strongest = int(np.abs(fn.maps[c, 0]).max(0).argmax())
    assert network[layer, strongest] == c                       # a planted key neuron is in its network
    assert atlas.layout_compactness(fn, "atlas") > 2 * atlas.layout_compactness(fn, "index")
    fn.save(tmp_path / "run")
    assert (tmp_path / "run" / "atlas.safetensors").exists()
    loaded = FunctionalNetworks.load(tmp_path / "run")
    assert loaded._atlas is not None                            # read, not recomputed
    np.testing.assert_array_equal(loaded.layout("atlas"), layout)
    (tmp_path / "run" / "atlas.safetensors").unlink()           # a run saved before the atlas existed
    old = FunctionalNetworks.load(tmp_path / "run")
    assert old._atlas is None
    np.testing.assert_array_equal(old.layout("atlas"), layout)
    np.testing.assert_array_equal(old.atlas()["network"], network)


def test_auto_names_from_top_tokens():
    tokens = [" the", " was", " had", " was", "\n", " The", " were", " had", " was", ","]
    tc = np.zeros((10, 2), np.float16)
    tc[[1, 3, 8], 0] = [5, 4, 6]        # "was" x3
    tc[[2, 7], 0] = [3, 3]              # "had" x2
    tc[6, 0] = 2                        # "were"
    tc[[0, 5], 1] = [1, 2]              # " the" and " The" are one word
    tc[4, 1] = 3
    names = atlas.auto_names(tc, tokens, n_top=6)
    assert names[0] == "was · had · were"
    assert atlas.auto_names(tc, tokens, n_top=3)[1] == "the · ⏎"   # count first, then activation
    with pytest.raises(ConfigError, match="tokens"):
        atlas.auto_names(tc, tokens[:3])
    # every distinct text of the top tokens, most frequent first: what a search by word matches
    assert atlas.top_words(tc, tokens, n_top=6)[0] == ["was", "had", "were"]
    assert atlas.top_words(tc, tokens, n_top=10)[0][:3] == ["was", "had", "the"]   # "the" twice, "were" once
    assert set(atlas.top_words(tc, tokens, n_top=10)[0]) == {"was", "had", "were", "the", "⏎", ","}
    assert atlas.top_words(tc, tokens, n_top=6, n_words=2)[0] == ["was", "had"]


def test_names_in_the_table_detail_and_run_dir(tmp_path):
    fn = synthetic_networks()
    auto = fn.auto_names()
    assert len(auto) == fn.n_components and all(auto)
    fn.names = {2: "subject verbs"}
    table = fn.component_table()
    assert table[2]["name"] == "subject verbs" and table[2]["auto_name"] == auto[2]
    assert " · ".join(table[2]["top_words"][:3]) == auto[2] and len(table[2]["top_words"]) >= 3
    assert table[3]["name"] == auto[3]
    assert fn.component_detail(2)["name"] == "subject verbs"
    fn.save(tmp_path / "run")
    assert FunctionalNetworks.load(tmp_path / "run").names == {2: "subject verbs"}


def test_nifti_export_in_atlas_layout_and_fix_labels_with_names(tmp_path):
    nib = pytest.importorskip("nibabel")
    from fnprune.io import export_nifti, fix_labels_text

    fn = synthetic_networks(width=100)
    index = nib.load(export_nifti(fn, tmp_path / "index.nii.gz")).get_fdata()
    atlas_vol = nib.load(export_nifti(fn, tmp_path / "atlas.nii.gz", layout="atlas")).get_fdata()
    rows, cols = fn.grid
    cells = fn.layout("atlas")
    for layer in range(3):
        by_index = index[np.arange(100) % cols, np.arange(100) // cols, layer]
        np.testing.assert_array_equal(atlas_vol[cells[layer] % cols, cells[layer] // cols, layer], by_index)
    assert np.abs(by_index).max() > 3
    text = fix_labels_text({0: "signal", 1: "noise"}, 2, names={0: "was · had, were"})
    assert text.splitlines() == ["fnprune.analysis.ica", "1, Signal, was · had; were, False", "2, Unclassified noise, True", "[2]"]


def test_stratified_sampling_spreads_over_labels_and_prefixes_agree(tmp_path):
    """The quick demo's documents: genres interleaved, the same for every call, a shorter limit a prefix."""
    import json

    from fnprune.corpus import load_corpus, stratified_order

    assert stratified_order(["b", "a", "a", "b", "c", "a"]) == [1, 0, 4, 2, 3, 5]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"text {i}", "label": g})
                              for i, g in enumerate(["news"] * 6 + ["fiction"] * 3 + ["lore"] * 3)))
    first = load_corpus(str(path), limit=3)
    assert [d.label for d in first] == ["news"] * 3
    docs = load_corpus(str(path), limit=6, sampling="stratified")
    assert [d.label for d in docs] == ["fiction", "lore", "news"] * 2
    assert [d.id for d in load_corpus(str(path), limit=4, sampling="stratified")] == [d.id for d in docs[:4]]
    with pytest.raises(CorpusError, match="sampling must be one of"):
        load_corpus(str(path), sampling="random")
