"""Protect a capability (issue 22): network selectivity for a domain, proposals, the no-ICA controls,
forced neurons in the recipe, and the ablation of a network in the dense model."""

import copy
import math

import numpy as np
import pytest
import torch
from prune_helpers import FakeNetworks, documents

from fnprune.corpus import Document
from fnprune.errors import ConfigError
from fnprune.evaluation.ablation import ablate, random_like, zeroed
from fnprune.evaluation.metrics import per_document_perplexity
from fnprune.models.mlp import find_mlps
from fnprune.pruning.calibration import Calibration
from fnprune.pruning.protect import (
    activity_from_stats,
    control_mask,
    domain_activity,
    network_selectivity,
    profile_selectivity,
    propose_networks,
    rank_networks,
)
from fnprune.pruning.recipe import prune_with_networks
from fnprune.pruning.selection import component_key_masks, forced_mask
from fnprune.pruning.spec import PruningSpec

CODE = ["def f(x):\n    return x * 2  # double", "for i in range(10):\n    print(i, i ** 2)",
        "class A:\n    def __init__(self):\n        self.x = []", "import os\nprint(os.path.join('a', 'b'))"]


@pytest.fixture(scope="module")
def setup():
    from fnprune.analysis.networks import analyze
    from fnprune.models import load_model

    model, tok = load_model("tiny-llama", device="cpu")
    text = documents(16)
    code = [Document(id=f"c{i}", text=CODE[i % 4] * (1 + i % 2), label="code") for i in range(8)]
    # random weights give dense maps (peak |z| about 2): a low key threshold gives every network key neurons
    fn = analyze(model, tok, text + code, n_components=6, n_init=3, max_tokens=48, device="cpu", threshold=1.6)
    return model, tok, fn, text, code


def test_network_selectivity_is_the_mean_log_ratio_over_key_neurons():
    fn = FakeNetworks(n_layers=3, width=20, params_per_neuron=3, total_params=1000, n_components=4, seed=1)
    rng = np.random.default_rng(0)
    log_ratio = rng.normal(size=(3, 20))
    activity_a = rng.uniform(0.5, 2.0, size=(3, 20))
    activity_b = activity_a * np.exp(log_ratio)
    got = network_selectivity(fn, activity_b, activity_a, threshold=2.0)
    for c in range(fn.n_components):
        layer = int(fn.component_layer[c])
        key = np.abs(fn.maps[c, 0, 0]) > 2.0
        expected = log_ratio[layer, key].mean() if key.any() else -np.inf
        assert got[c] == pytest.approx(expected, abs=1e-9)
    assert np.isfinite(got).sum() >= 10  # the fixture has key neurons in most networks
    # the highest-scoring networks are proposed, most selective first, and force exactly their key neurons
    prop = propose_networks(fn, 3, activity_b=activity_b, activity_a=activity_a)  # the analysis' threshold
    got = network_selectivity(fn, activity_b, activity_a)
    assert prop.networks == [int(c) for c in np.argsort(-got, kind="stable")[:3]]
    assert prop.scores == pytest.approx(sorted(got[np.isfinite(got)], reverse=True)[:3])
    expected_mask = component_key_masks(fn, prop.networks, fn.threshold).any(axis=0)
    assert np.array_equal(prop.forced, expected_mask)
    assert prop.forced_per_layer == [int(x) for x in expected_mask.sum(axis=1)]
    assert prop.as_dict()["n_forced"] == int(expected_mask.sum())


def test_rank_networks_breaks_ties_by_id_and_skips_networks_without_key_neurons():
    assert rank_networks(np.array([1.0, -np.inf, 3.0, 1.0, 2.0]), 10) == [2, 4, 0, 3]
    assert rank_networks(np.array([1.0, 5.0]), 1) == [1]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError) as err:
            rank_networks(np.zeros(3), bad)
        assert err.value.field == "protect_networks"


def test_domain_activity_is_the_rms_of_the_down_input(setup):
    model, tok, _, text, code = setup
    seen = []
    handles = [a.down.register_forward_pre_hook(lambda m, i, seen=seen, layer=a.layer: seen.append((layer, i[0])))
               for a in find_mlps(model)]
    try:
        from fnprune.tokens import encode_documents
        for seq in encode_documents(tok, code[:3], 32):  # one document at a time: no padding
            with torch.no_grad():
                model(input_ids=torch.tensor([seq]))
    finally:
        for h in handles:
            h.remove()
    got = domain_activity(model, tok, code[:3], max_tokens=32, batch_size=2)  # padded batches: masked
    for layer in range(len(find_mlps(model))):
        x = torch.cat([t.reshape(-1, t.shape[-1]) for lyr, t in seen if lyr == layer]).double()
        assert np.allclose(got[layer], x.pow(2).mean(0).sqrt().numpy(), rtol=1e-5, atol=1e-7)
    with pytest.raises(ConfigError):
        domain_activity(model, tok, [])


def test_profile_rule_is_the_web_apps_guided_selection(setup):
    _, _, fn, _, _ = setup
    table = fn.component_table()
    got = profile_selectivity(fn, "code")
    for row in table:
        if row["top_genre"] == "code":
            assert got[row["id"]] == pytest.approx(row["genre_selectivity"], rel=1e-6)
        else:
            assert got[row["id"]] == -np.inf
    n_code = sum(r["top_genre"] == "code" for r in table)
    assert 0 < n_code < fn.n_components
    prop = propose_networks(fn, 2, rule="profile", label="code")
    best = sorted((r for r in table if r["top_genre"] == "code"), key=lambda r: (-r["genre_selectivity"], r["id"]))
    assert prop.networks == [r["id"] for r in best[:2]]
    # asking for more than qualify returns the ones that do
    assert len(propose_networks(fn, 10_000, rule="profile", label="code").networks) == n_code
    with pytest.raises(ConfigError) as err:
        profile_selectivity(fn, "poetry")
    assert err.value.field == "protect" and "poetry" in str(err.value)
    with pytest.raises(ConfigError) as err:
        propose_networks(fn, 2, rule="nearest")
    assert err.value.field == "protect_rule"


def test_controls_take_the_same_counts_per_layer():
    rng = np.random.default_rng(3)
    activity_a = rng.uniform(0.5, 2, size=(4, 30))
    activity_b = rng.uniform(0.5, 2, size=(4, 30))
    counts = [0, 5, 12, 30]
    top = control_mask(counts, "top-activity", activity_b=activity_b)
    ratio = control_mask(counts, "top-ratio", activity_b=activity_b, activity_a=activity_a)
    rand = control_mask(counts, "random", width=30, seed=0)
    for mask in (top, ratio, rand):
        assert mask.sum(axis=1).tolist() == counts
    for layer, c in enumerate(counts):
        if 0 < c < 30:
            assert activity_b[layer, top[layer]].min() > activity_b[layer, ~top[layer]].max()
            r = activity_b[layer] / activity_a[layer]
            assert r[ratio[layer]].min() > r[~ratio[layer]].max()
    assert np.array_equal(rand, control_mask(counts, "random", width=30, seed=0))
    assert not np.array_equal(rand, control_mask(counts, "random", width=30, seed=1))
    for kwargs, field in (({"kind": "nearest", "width": 30}, "control"), ({"kind": "top-activity", "width": 30}, "control"),
                          ({"kind": "random"}, "control")):
        with pytest.raises(ConfigError) as err:
            control_mask(counts, **kwargs)
        assert err.value.field == field
    with pytest.raises(ConfigError):
        control_mask([31, 0, 0, 0], "random", width=30)


def test_forced_neurons_are_kept_by_the_recipe_and_refused_when_malformed(setup):
    model, tok, fn, text, _ = setup
    calib = Calibration(tok, text[:8], 48)
    spec = PruningSpec(method="obs", target_ratio=0.05)
    free = prune_with_networks(copy.deepcopy(model), None, spec, calib)
    widths = [a.width for a in find_mlps(model)]
    layer = next(lyr for lyr, k in enumerate(free.keep) if len(k) < widths[lyr])
    dropped = np.setdiff1d(np.arange(widths[layer]), free.keep[layer])[:3]
    forced = np.zeros((len(widths), max(widths)), dtype=bool)
    forced[layer, dropped] = True
    kept = prune_with_networks(copy.deepcopy(model), None, spec, calib, forced=forced)
    assert set(dropped.tolist()) <= set(kept.keep[layer].tolist())
    assert kept.removed_fraction == pytest.approx(free.removed_fraction, abs=0.01)  # the same budget
    # with chosen networks too: both sets are kept
    chosen = [c for c in range(fn.n_components) if forced_mask(fn, [c])[1:3].any()][:2]
    both = prune_with_networks(copy.deepcopy(model), fn, PruningSpec(method="obs", target_ratio=0.05,
                                                                      networks=tuple(chosen)), calib, forced=forced)
    assert set(dropped.tolist()) <= set(both.keep[layer].tolist())
    assert all(c.n_kept == c.n_key for c in both.chosen)
    with pytest.raises(ConfigError) as err:
        prune_with_networks(copy.deepcopy(model), None, spec, calib, forced=forced[:, :5])
    assert err.value.field == "forced"
    with pytest.raises(ConfigError) as err:
        prune_with_networks(copy.deepcopy(model), None, PruningSpec(method="obs", target_ratio=0.05, sequential=True),
                            calib, forced=forced)
    assert err.value.field == "forced"


def test_activity_from_calibration_statistics(setup):
    model, tok, _, text, _ = setup
    calib = Calibration(tok, text[:6], 40)
    stats = calib.down_stats(model, second_moments=False)
    assert np.allclose(activity_from_stats(stats), domain_activity(model, tok, text[:6], max_tokens=40))


def test_ablation_equals_removing_the_neurons_and_reports_its_control(setup):
    model, tok, fn, text, code = setup
    nets = [c for c in range(fn.n_components) if forced_mask(fn, [c]).sum() >= 2][:2]
    docs = text[:4] + code[:3]
    before = per_document_perplexity(model, tok, docs, window=40)["ppl"]
    out = ablate(model, tok, fn, nets, docs, window=40, seed=0, n_tokens=5)
    mask = forced_mask(fn, nets)
    assert out["networks"] == sorted(nets) and out["n_neurons"] == int(mask.sum())
    assert out["neurons_per_layer"] == [int(x) for x in mask.sum(axis=1)]
    # the ablated model = the dense one with those down columns zeroed
    cut = copy.deepcopy(model)
    with torch.no_grad():
        for a in find_mlps(cut):
            a.down.weight[:, torch.as_tensor(np.flatnonzero(mask[a.layer]), dtype=torch.long)] = 0
    assert out["all"]["network"] == pytest.approx(per_document_perplexity(cut, tok, docs, window=40)["ppl"], rel=1e-4)
    assert out["all"]["dense"] == pytest.approx(before, rel=1e-5)
    assert out["all"]["network_vs_dense"]["ratio"] == pytest.approx(out["all"]["network"] / out["all"]["dense"])
    assert out["all"]["network_vs_random"]["ratio"] == pytest.approx(out["all"]["network"] / out["all"]["random"])
    assert set(out["by_label"]) == {"test", "code"}
    assert out["by_label"]["code"]["n_docs"] == 3
    # the control: as many random neurons per layer, and the same random ones as random_like
    control = random_like(mask, seed=0)
    assert control.sum(axis=1).tolist() == mask.sum(axis=1).tolist()
    with zeroed(model, control):
        assert out["all"]["random"] == pytest.approx(per_document_perplexity(model, tok, docs, window=40)["ppl"],
                                                     rel=1e-4)
    # the hooks are gone afterwards
    assert per_document_perplexity(model, tok, docs, window=40)["ppl"] == pytest.approx(before, rel=1e-6)
    top = out["top_tokens"]
    assert len(top) == 5
    assert [t["logp_drop"] for t in top] == sorted((t["logp_drop"] for t in top), reverse=True)
    for t in top:
        assert t["logp_drop"] == pytest.approx(math.log(t["p_dense"]) - math.log(t["p_network"]), abs=1e-9)
    with pytest.raises(ConfigError):
        ablate(model, tok, fn, [], docs)
    with pytest.raises(ConfigError):
        ablate(model, tok, fn, [fn.n_components], docs)


def test_calibration_mixing_starts_from_no_statistics(setup):
    """apply_protection(by="calibration") prunes with the mixed documents only: statistics the calibration
    had already gathered on its own documents are not carried over to the mixed one."""
    from fnprune.pruning.protect import Protection, apply_protection

    model, tok, fn, text, code = setup
    calibration = Calibration(tok, text[:10], 48, batch_size=2, streamed=False)
    stats = calibration.down_stats(model, second_moments=False)
    spec = PruningSpec(target_ratio=0.1)
    same_spec, mixed, info = apply_protection(Protection("code", code[:4], code[4:]), spec, model, tok, fn,
                                              calibration)
    assert same_spec is spec and info["by"] == "calibration" and info["protect_docs"] >= 1
    assert [d.id for d in mixed.docs] == [d.id for d in text[:info["calibration_docs"]]] + [
        d.id for d in code[:info["protect_docs"]]]
    assert (mixed.max_tokens, mixed.batch_size, mixed.streamed, mixed.requested_docs) == (48, 2, False,
                                                                                          len(mixed.docs))
    fresh = Calibration(tok, mixed.docs, 48, batch_size=2).down_stats(model, second_moments=False)
    mixed_stats = mixed.down_stats(model, second_moments=False)
    assert mixed_stats is not stats and calibration.down_stats(model, second_moments=False) is stats
    for a, b in zip(mixed_stats.l2, fresh.l2, strict=True):
        torch.testing.assert_close(a, b)
