"""FunctionalNetworks: analysis on a tiny model, masks, target-ratio bisection, persistence, exports."""

import json

import numpy as np
import pytest

from fnprune.analysis.networks import FunctionalNetworks, analyze
from fnprune.corpus import load_corpus
from fnprune.errors import ConfigError, RunDirError
from fnprune.io import export_fix_labels, export_mask_json, export_nifti, fix_labels_text, load_mask_json
from fnprune.models.loading import load_model
from fnprune.models.mlp import default_protected_layers


@pytest.fixture(scope="module")
def networks():
    model, tok = load_model("tiny-llama", device="cpu")
    return analyze(model, tok, load_corpus("pydoc")[:6], n_components=6, max_tokens=96, n_init=3, random_state=0)


def test_shapes_and_component_table(networks):
    assert networks.maps.shape == (4 * 6, 1, 2, 64)
    assert networks.time_courses.shape == (networks.info["n_tokens"], 24)
    table = networks.component_table(threshold=2.0)
    assert [r["id"] for r in table] == list(range(24))
    assert {r["layer"] for r in table} == {0, 1, 2, 3}
    for row in table:
        c = row["id"]
        assert row["n_key"] == int((np.abs(networks.maps[c]).max(0) > 2.0).sum())
        assert row["peak_z"] == pytest.approx(float(np.abs(networks.maps[c]).max()))


def test_neuron_scores_and_selection(networks):
    scores = networks.neuron_scores()
    assert scores.shape == (4, 64)
    layer1 = [r["id"] for r in networks.component_table() if r["layer"] == 1]
    stable = [c for c in layer1 if networks.stable[c]]
    unit = networks.component_unit[layer1[0]]
    expected = networks.unit_unresolved[unit, 0]
    if stable:
        expected = np.maximum(expected, np.abs(networks.maps[stable]).max(axis=(0, 1, 2)))
    if all(networks.stable[layer1]):
        expected = np.abs(networks.maps[layer1]).max(axis=(0, 1, 2))
    np.testing.assert_allclose(scores[1], expected)
    only = networks.neuron_scores(networks=[layer1[0]])
    assert (only[[0, 2, 3]] == 0).all()
    np.testing.assert_allclose(only[1], np.abs(networks.maps[layer1[0], 0]).max(0))
    with pytest.raises(ConfigError, match="component ids"):
        networks.neuron_scores(networks=[999])


@pytest.mark.parametrize("ratio", [0.05, 0.1, 0.2])
def test_target_ratio_bisection_reaches_the_target_tightly(networks, ratio):
    plan = networks.plan(target_ratio=ratio)
    assert plan["ratio_total"] >= ratio
    ppn = max(networks.info["model"]["params_per_neuron"])
    ties = int((networks.neuron_scores()[1:3] == np.float32(plan["threshold"])).sum())
    # overshoot at most the neurons tied at the crossing score
    assert plan["removed_params"] - ratio * plan["total_params"] < ppn * max(ties, 1)
    assert plan["protected_layers"] == default_protected_layers(4) == [0, 3]
    assert plan["widths"][0] == plan["widths"][3] == 64
    mask = networks.key_mask(target_ratio=ratio)
    assert mask.sum(1).tolist() == plan["widths"]
    # the same threshold given directly gives the same mask
    assert (networks.key_mask(threshold=plan["threshold"]) == mask).all()


def test_uniform_and_bad_requests(networks):
    plan = networks.plan(target_ratio=0.1, uniform=True)
    assert plan["widths"][1] == plan["widths"][2] and plan["ratio_total"] >= 0.1
    for bad in (0, 1, -0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="target_ratio"):
            networks.plan(target_ratio=bad)
    with pytest.raises(ConfigError, match="can be removed"):
        networks.plan(target_ratio=0.6)
    with pytest.raises(ConfigError, match="exactly one"):
        networks.plan(threshold=1.0, target_ratio=0.1)
    with pytest.raises(ConfigError, match="every MLP neuron of layer"):
        networks.plan(threshold=1e6)
    with pytest.raises(ConfigError, match="protected_layers"):
        networks.plan(threshold=2.0, protected_layers=[9])


def test_detail_and_overview(networks):
    d = networks.component_detail(5)
    assert d["map"].shape == (1, 2, 64) and d["map_layers"] == [int(networks.component_layer[5])]
    assert len(d["top_tokens"]) == 10 and d["top_tokens"][0]["value"] >= d["top_tokens"][-1]["value"]
    first = d["top_tokens"][0]
    assert first["token"] == networks.token_text[np.argmax(networks.time_courses[:, 5])]
    ov = networks.overview(threshold=2.0)
    assert ov["density"].shape == (4, 64) and ov["density"].sum() == sum(r["n_key"] for r in networks.component_table(2.0))
    with pytest.raises(ConfigError):
        networks.component_detail(24)


def test_save_load_roundtrip_gives_identical_masks(networks, tmp_path, monkeypatch):
    networks.labels = {3: "noise", 4: "signal"}
    networks.save(tmp_path / "run")
    loaded = FunctionalNetworks.load(tmp_path / "run")
    assert loaded.labels == {3: "noise", 4: "signal"}
    assert (loaded.key_mask(target_ratio=0.1) == networks.key_mask(target_ratio=0.1)).all()
    np.testing.assert_array_equal(loaded.time_courses, networks.time_courses)
    assert not isinstance(loaded.time_courses.base, np.memmap)      # small: read into memory
    monkeypatch.setattr("fnprune.analysis.rundir.MMAP_TIME_COURSES_BYTES", 0)
    mapped = FunctionalNetworks.load(tmp_path / "run")
    assert isinstance(mapped.time_courses.base, np.memmap)          # large: stays on disk
    np.testing.assert_array_equal(mapped.time_courses, networks.time_courses)
    assert not list(tmp_path.glob("*.partial"))
    with pytest.raises(RunDirError, match="not an fnprune run directory"):
        FunctionalNetworks.load(tmp_path)


def test_exports(networks, tmp_path):
    nib = pytest.importorskip("nibabel")
    path = export_nifti(networks, tmp_path / "maps.nii.gz")
    img = nib.load(path)
    rows, cols = networks.grid
    assert img.shape == (cols, rows, 4, 6)
    data = img.get_fdata()
    c = next(i for i in range(24) if networks.component_layer[i] == 2 and networks.component_index[i] == 1)
    signed = networks.maps[c, 0][np.abs(networks.maps[c, 0]).argmax(0), np.arange(64)]
    np.testing.assert_allclose(data[np.arange(64) % cols, np.arange(64) // cols, 2, 1], signed, atol=1e-5)
    text = fix_labels_text({0: "signal", 2: "noise"}, 4)
    assert text.splitlines() == ["fnprune.analysis.ica", "1, Signal, False", "2, Unknown, False",
                                 "3, Unclassified noise, True", "4, Unknown, False", "[3]"]
    export_fix_labels({0: "noise"}, tmp_path / "labels.txt", 2)
    assert (tmp_path / "labels.txt").read_text().endswith("[1]\n")
    mask = networks.key_mask(target_ratio=0.1)
    export_mask_json(mask, tmp_path / "mask.json", {"target_ratio": 0.1})
    assert (load_mask_json(tmp_path / "mask.json") == mask).all()
    assert json.loads((tmp_path / "mask.json").read_text())["widths"] == mask.sum(1).tolist()
    with pytest.raises(ConfigError, match="one of"):
        fix_labels_text({0: "maybe"}, 1)


def test_whole_model_mode_and_runs():
    model, tok = load_model("tiny-llama", device="cpu")
    docs = load_corpus("pydoc")[:6]
    fn = analyze(model, tok, docs, n_components=5, max_tokens=96, n_init=2, mode="whole-model", n_runs=2)
    assert fn.maps.shape == (10, 4, 2, 64) and set(fn.component_run.tolist()) == {0, 1}
    assert (fn.component_layer == -1).all()
    # OR-union: a neuron's score is the max over both runs' components
    scores = fn.neuron_scores()
    np.testing.assert_allclose(scores, np.maximum(fn.neuron_scores(range(5)), fn.neuron_scores(range(5, 10))))
    with pytest.raises(ConfigError, match="tokens, not more than n_components"):
        analyze(model, tok, docs[:2], n_components=500, max_tokens=96, n_init=1)
    with pytest.raises(ConfigError, match="mode"):
        analyze(model, tok, docs, mode="brain")
    with pytest.raises(ConfigError, match="n_runs"):
        analyze(model, tok, docs, n_runs=0)


def test_same_seed_same_masks():
    model, tok = load_model("tiny-llama", device="cpu")
    docs = load_corpus("pydoc")[:4]
    a = analyze(model, tok, docs, n_components=4, max_tokens=64, n_init=2, random_state=7)
    b = analyze(model, tok, docs, n_components=4, max_tokens=64, n_init=2, random_state=7)
    np.testing.assert_array_equal(a.maps, b.maps)
    assert (a.key_mask(target_ratio=0.1) == b.key_mask(target_ratio=0.1)).all()


def test_residual_replaces_unstable_maps_only_when_all_are_chosen(networks):
    import copy

    fn = copy.copy(networks)
    layer1 = [c for c in range(fn.n_components) if fn.component_layer[c] == 1]
    fn.stable = networks.stable.copy()
    fn.stable[layer1] = [True, True] + [False] * (len(layer1) - 2)
    unit = fn.component_unit[layer1[0]]
    fn.unit_unresolved = networks.unit_unresolved.copy()
    fn.unit_unresolved[unit, 0] = np.linspace(0, 9, fn.width)
    unstable, stable = layer1[2:], layer1[:2]
    # all unstable chosen: the residual stands in for their maps
    np.testing.assert_allclose(fn.neuron_scores(unstable)[1], fn.unit_unresolved[unit, 0])
    # with the stable ones too: the max of both
    np.testing.assert_allclose(fn.neuron_scores(layer1)[1], np.maximum(
        fn.unit_unresolved[unit, 0], np.abs(fn.maps[stable, 0]).max(axis=(0, 1))))
    # a strict subset of the unstable ones: their own maps count
    np.testing.assert_allclose(fn.neuron_scores(unstable[:1])[1], np.abs(fn.maps[unstable[0], 0]).max(0))


def test_safetensors_writer_and_reader_speak_the_library_format(tmp_path):
    from safetensors.numpy import load_file, save_file

    from fnprune.io import read_safetensors, write_safetensors

    arrays = {"a": np.arange(12, dtype=np.float16).reshape(3, 4), "b": np.array([1, -2], np.int64),
              "c": np.zeros((0, 3), np.float32), "f": np.asfortranarray(np.ones((5, 2), np.float32)),
              "u": np.array([1, 0, 1], np.uint8)}
    write_safetensors(tmp_path / "ours.safetensors", arrays)
    theirs = load_file(str(tmp_path / "ours.safetensors"))
    for name, value in arrays.items():
        np.testing.assert_array_equal(theirs[name], value)
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp_path / "lib.safetensors"))
    back = read_safetensors(tmp_path / "lib.safetensors", mmap=("a",))
    assert isinstance(back["a"], np.memmap)
    for name, value in arrays.items():
        np.testing.assert_array_equal(back[name], value)
        assert back[name].dtype == value.dtype
