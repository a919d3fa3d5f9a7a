"""The one pruning recipe: chosen networks are constraints, repair, the paper's rule, fidelity."""

import copy

import numpy as np
import pytest
import torch
from prune_helpers import documents

from fnprune.errors import ConfigError
from fnprune.evaluation.fidelity import most_stable_networks, network_fidelity
from fnprune.models.mlp import find_mlps
from fnprune.pruning.calibration import Calibration
from fnprune.pruning.methods import METHODS
from fnprune.pruning.recipe import prune_with_networks
from fnprune.pruning.selection import component_key_masks, neuron_scores, plan
from fnprune.pruning.spec import PruningSpec
from fnprune.pruning.statistics import collect_down_input_stats
from fnprune.pruning.surgery import prune_model


@pytest.fixture(scope="module")
def setup():
    from fnprune.analysis.networks import analyze
    from fnprune.models.loading import load_model

    model, tok = load_model("tiny-llama", device="cpu")
    # random weights give dense maps (peak |z| about 2): a low key threshold gives every network key neurons
    fn = analyze(model, tok, documents(24), n_components=8, n_init=3, max_tokens=48, device="cpu", threshold=1.6)
    return model, tok, fn


def _chosen(fn, n=3):
    """Networks with key neurons in layers 1 and 2 (the tiny model's unprotected layers)."""
    ids = [c for c in range(fn.n_components) if fn.component_row_layer(c) in (1, 2)
           and (fn.abs_max_map(c) > fn.threshold).sum() > 0]
    return ids[:n]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("allocation", ["default", "own", "uniform"])
def test_chosen_networks_keep_every_key_neuron(setup, method, allocation):
    model, tok, fn = setup
    chosen = _chosen(fn)
    assert chosen
    spec = PruningSpec(method=method, target_ratio=0.05, networks=tuple(chosen), allocation=allocation,
                       repair="none")
    pruned = copy.deepcopy(model)
    out = prune_with_networks(pruned, fn, spec, Calibration(tok, documents(12), 48))
    key = component_key_masks(fn, chosen, fn.threshold)
    for mask in key:
        for layer in range(fn.n_layers):
            assert set(np.flatnonzero(mask[layer])) <= set(out.keep[layer].tolist())
    assert [(c.n_kept, c.n_key) for c in out.chosen] == [(int(m.sum()), int(m.sum())) for m in key]
    assert out.removed_fraction >= 0.05 - 1e-3
    assert [a.width for a in find_mlps(pruned)] == [len(k) for k in out.keep]


def test_without_a_choice_the_unconstrained_scores_decide(setup):
    model, tok, fn = setup
    free = prune_with_networks(copy.deepcopy(model), fn, PruningSpec(method="fn", target_ratio=0.1, repair="none"))
    # some neuron a network marks as key is dropped without a choice; choosing that network keeps it
    dropped = None
    for c in range(fn.n_components):
        layer = fn.component_row_layer(c)
        key = np.flatnonzero(fn.abs_max_map(c)[0] > fn.threshold) if fn.component_layer[c] >= 0 else []
        if len(key) and not set(key) <= set(free.keep[layer].tolist()):
            dropped = c
            break
    if dropped is None:  # every key neuron of every network already survives: use a larger cut
        pytest.fail("the fixture should drop some key neuron at 10% without a choice")
    kept = prune_with_networks(copy.deepcopy(model), fn,
                               PruningSpec(method="fn", target_ratio=0.1, repair="none", networks=(dropped,)))
    assert kept.chosen[0].n_kept == kept.chosen[0].n_key > 0


def test_a_choice_over_the_budget_says_by_how_much(setup):
    model, _, fn = setup
    everything = tuple(range(fn.n_components))
    with pytest.raises(ConfigError, match=r"at most .*% can be removed \(.*% too much\)"):
        plan(fn, target_ratio=0.3, networks=everything, key_threshold=0.0)
    p = plan(fn, target_ratio=0.02, networks=_chosen(fn))
    assert 0.02 <= p.as_dict()["ratio_total"] <= p.max_ratio_total
    assert p.as_dict()["chosen_networks"][0]["n_kept"] == p.as_dict()["chosen_networks"][0]["n_key"]


def test_preview_plan_and_recipe_agree(setup):
    model, tok, fn = setup
    chosen = _chosen(fn, 2)
    p = plan(fn, target_ratio=0.08, networks=chosen)
    out = prune_with_networks(copy.deepcopy(model), fn, PruningSpec(method="fn-flap", target_ratio=0.08,
                                                                     networks=tuple(chosen), repair="bias"),
                              Calibration(tok, documents(12), 48))
    assert out.widths == p.widths
    fn_out = prune_with_networks(copy.deepcopy(model), fn, PruningSpec(method="fn", target_ratio=0.08,
                                                                       networks=tuple(chosen), repair="none"))
    assert all((np.flatnonzero(row) == k).all() for row, k in zip(p.keep, fn_out.keep, strict=True))


def test_paper_rule_reproduces_a_hand_computed_mask(setup):
    model, _, fn = setup
    threshold = 1.9
    # by hand: a neuron of an unprotected layer is kept iff |z| > threshold in ANY component's act or up map
    hand = np.ones((fn.n_layers, fn.width), dtype=bool)
    protected = {0, fn.n_layers - 1}
    for layer in range(fn.n_layers):
        if layer in protected:
            continue
        comps = np.flatnonzero(fn.component_layer == layer)
        hand[layer] = (np.abs(fn.maps[comps, 0]) > threshold).any(axis=(0, 1))
    out = prune_with_networks(copy.deepcopy(model), fn, PruningSpec(method="paper", target_ratio=None,
                                                                    threshold=threshold, repair="none"))
    for layer in range(fn.n_layers):
        assert (np.flatnonzero(hand[layer]) == out.keep[layer]).all()
    # the unresolved-subspace energy (fn's score) changes the mask; the paper's rule ignores it
    seed_robust = prune_with_networks(copy.deepcopy(model), fn, PruningSpec(method="fn", target_ratio=None,
                                                                            threshold=threshold, repair="none"))
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(seed_robust.keep, out.keep, strict=True))
    assert not np.allclose(neuron_scores(fn, "paper"), neuron_scores(fn, "networks"))


def _layer_output_error(dense, pruned, tok, docs, layer) -> float:
    outputs = {}

    def hook(name):
        def inner(module, inputs, output):
            outputs[name] = output.detach()
        return inner

    ids = tok(docs[0].text, return_tensors="pt")["input_ids"][:, :48]
    total, ref = 0.0, 0.0
    for d in docs:
        ids = torch.tensor([tok(d.text)["input_ids"][:48]])
        hs = []
        for name, m in (("d", dense), ("p", pruned)):
            hs.append(find_mlps(m)[layer].down.register_forward_hook(hook(name)))
        # feed the pruned layer the dense model's input: compare the layer alone
        x: dict = {}
        h_in = find_mlps(dense)[layer].module.register_forward_hook(lambda m, i, o, x=x: x.setdefault("in", i[0]))
        dense(ids)
        h_in.remove()
        find_mlps(pruned)[layer].module(x["in"])
        for h in hs:
            h.remove()
        total += float(((outputs["p"] - outputs["d"]) ** 2).sum())
        ref += float((outputs["d"] ** 2).sum())
    return total / ref


def test_repair_lowers_the_layer_output_error_on_calibration_tokens(setup):
    model, tok, _ = setup
    docs = documents(12)
    stats = collect_down_input_stats(model, tok, docs, 48, second_moments=True)
    keep = [np.arange(64), np.arange(0, 64, 2), np.arange(0, 64, 3), np.arange(64)]
    errors = {}
    fits = {}
    for name, kwargs in (("none", {}), ("bias", {"bias": stats}), ("lstsq", {"repair": stats, "fits": fits})):
        pruned = prune_model(copy.deepcopy(model), keep, **kwargs)
        errors[name] = [_layer_output_error(model, pruned, tok, docs, layer) for layer in (1, 2)]
    for i in range(2):
        assert errors["lstsq"][i] < errors["bias"][i] < errors["none"][i]
    # the moments give the same errors as the forward pass on these tokens
    assert fits[1].error_repaired == pytest.approx(errors["lstsq"][0], rel=0.05)
    assert fits[1].error_pruned == pytest.approx(errors["none"][0], rel=0.05)
    # with every neuron kept and no ridge, the fit returns the dense layer
    from fnprune.pruning.repair import refit_down

    a = find_mlps(model)[1]
    fit = refit_down(a, torch.arange(64), stats.second_moment[1], stats.mean[1], ridge=0.0)
    assert torch.allclose(fit.weight, a.down.weight.double(), atol=1e-6)
    assert fit.bias.abs().max() < 1e-6


def test_sequential_repair_and_default_spec(setup):
    model, tok, fn = setup
    spec = PruningSpec(method="flap", target_ratio=0.08, sequential=True)
    out = prune_with_networks(copy.deepcopy(model), fn, spec, Calibration(tok, documents(12), 48))
    assert sorted(out.layer_fits) == [i for i, (w, o) in enumerate(zip(out.widths, out.original_widths,
                                                                       strict=True)) if w < o]
    s = out.repair_summary()
    assert s["error_repaired"] < s["error_pruned"]
    assert PruningSpec().method == "obs" and PruningSpec().repair == "lstsq"


@pytest.mark.parametrize("bad, match", [
    ({"method": "sparsegpt"}, "method"), ({"repair": "magic"}, "repair"), ({"allocation": "x"}, "allocation"),
    ({"target_ratio": 1.5}, "target ratio"), ({"threshold": 2.0}, "exactly one"),
    ({"sequential": True, "repair": "bias"}, "sequential"), ({"heads_fraction": 1.0}, "heads"),
])
def test_bad_specs_are_refused_before_any_work(setup, bad, match):
    model, tok, fn = setup
    pruned = copy.deepcopy(model)
    with pytest.raises(ConfigError, match=match):
        prune_with_networks(pruned, fn, PruningSpec(**bad), Calibration(tok, documents(4), 48))
    assert [a.width for a in find_mlps(pruned)] == [64] * 4


def test_baselines_without_networks_and_missing_calibration(setup):
    model, tok, _ = setup
    out = prune_with_networks(copy.deepcopy(model), None, PruningSpec(method="magnitude", repair="none",
                                                                      target_ratio=0.05))
    assert out.removed_fraction >= 0.05 - 1e-3 and out.chosen == []
    with pytest.raises(ConfigError, match="needs functional networks"):
        prune_with_networks(copy.deepcopy(model), None, PruningSpec(method="fn", repair="none"))
    with pytest.raises(ConfigError, match="calibration"):
        prune_with_networks(copy.deepcopy(model), None, PruningSpec(method="flap"))


def test_fidelity_is_perfect_when_nothing_changes_and_drops_when_a_network_is_cut(setup):
    model, tok, fn = setup
    chosen = _chosen(fn, 2)
    docs = documents(6)
    full = [np.arange(64)] * 4
    same = network_fidelity(model, copy.deepcopy(model), tok, docs, fn, chosen, full, max_tokens=48)
    for f in same:
        assert f.correlation == pytest.approx(1.0, abs=1e-9) and f.output_change_top == pytest.approx(0.0, abs=1e-9)
        assert f.n_key == f.n_key_kept
    # remove the key neurons of the first chosen network in its layer, then every neuron of its map with |z| > 1
    c = chosen[0]
    layer = fn.component_row_layer(c)
    results = []
    for cut_at in (fn.threshold, 1.0):
        gone = np.flatnonzero(fn.abs_max_map(c)[0] > cut_at)
        keep = [np.arange(64) for _ in range(4)]
        keep[layer] = np.setdiff1d(np.arange(64), gone)
        cut = prune_model(copy.deepcopy(model), keep)
        results.append(network_fidelity(model, cut, tok, docs, fn, [c], keep, max_tokens=48)[0])
    key_cut, map_cut = results
    assert key_cut.n_key_kept == 0 and key_cut.n_key > 0
    assert 1.0 > key_cut.correlation > map_cut.correlation and map_cut.correlation < 0.95
    assert key_cut.output_change_top > 0
    assert most_stable_networks(fn, 3)[:1] and len(most_stable_networks(fn, 3)) <= 3


@pytest.mark.parametrize("ratio_of", ["all", "mlp", "non-embedding"])
def test_target_ratio_of_all_mlp_or_non_embedding_parameters(setup, ratio_of):
    model, tok, fn = setup
    from fnprune.models.mlp import parameter_counts
    from fnprune.pruning.budget import ratio_base

    counts = parameter_counts(model)
    base = ratio_base(counts, ratio_of)
    assert base == {"all": counts["total_params"], "mlp": counts["mlp_params"],
                    "non-embedding": counts["total_params"] - counts["embedding_params"]}[ratio_of]
    p = plan(fn, target_ratio=0.1, ratio_of=ratio_of).as_dict()
    per_neuron = fn.info["model"]["params_per_neuron"][0]
    assert 0.1 * base <= p["removed_params"] < 0.1 * base + per_neuron
    assert set(p["max_ratio"]) == {"all", "mlp", "non-embedding"}
    out = prune_with_networks(copy.deepcopy(model), fn, PruningSpec(method="fn", target_ratio=0.1, repair="none",
                                                                    ratio_of=ratio_of))
    assert out.widths == p["widths"]
    with pytest.raises(ConfigError, match=r"can be removed \("):
        plan(fn, target_ratio=min(0.99, p["max_ratio"][ratio_of] + 0.01), ratio_of=ratio_of)
    with pytest.raises(ConfigError, match="ratio_of"):
        PruningSpec(ratio_of="vocab").validated(True)


def test_obs_removal_costs_are_the_exact_rise_of_the_refitted_error():
    """Structured OBS, one neuron at a time: each cost is the exact rise of the least-squares error,
    the first removal is the brute-force best, forced neurons are never removed."""
    from fnprune.pruning.repair import obs_removal_order

    rng = np.random.default_rng(0)
    n, hidden, tokens = 10, 6, 400
    x = rng.normal(size=(tokens, n)) @ rng.normal(size=(n, n)) + rng.normal(size=n)  # correlated, non-zero mean
    W = torch.as_tensor(rng.normal(size=(hidden, n)))
    S, mu = torch.as_tensor(x.T @ x / tokens), torch.as_tensor(x.mean(0))
    forced = np.zeros(n, dtype=bool)
    forced[3] = True

    def refit_error(keep):  # E||W x - W' x_K - b||² minimised over W', b, directly on the tokens
        z = np.hstack([x[:, keep], np.ones((tokens, 1))])
        y = x @ W.numpy().T
        sol = np.linalg.lstsq(z, y, rcond=None)[0]
        return float(((y - z @ sol) ** 2).sum(1).mean())

    order, cost = obs_removal_order(W, S, mu, forced=forced, ridge=0.0, block=1)
    assert len(order) == n - 1 and 3 not in order.tolist()
    removed: list[int] = []
    for j, c in zip(order, cost, strict=True):
        keep = [i for i in range(n) if i not in removed]
        before = refit_error(keep)
        removed.append(int(j))
        after = refit_error([i for i in keep if i != j])
        assert c == pytest.approx(after - before, rel=1e-6, abs=1e-9)
    first = [refit_error([i for i in range(n) if i != j]) for j in range(n) if j != 3]
    assert refit_error([i for i in range(n) if i != order[0]]) == pytest.approx(min(first))
    # the block only batches the updates: blocks of 4 give the same order and costs
    # (tests/fnprune/test_obs.py checks the shipped block size and ridge, weighted, on planted layers)
    order4, cost4 = obs_removal_order(W, S, mu, forced=forced, ridge=0.0, block=4)
    assert order4.tolist() == order.tolist()
    np.testing.assert_allclose(cost4, cost, rtol=1e-8, atol=1e-12)


def test_residual_weighted_moments_match_a_direct_computation(setup):
    model, tok, _ = setup
    from fnprune.tokens import encode_documents, padded_batches

    docs = documents(6)
    stats = collect_down_input_stats(model, tok, docs, 48, second_moments=True, weighted=True)
    layer = 2
    a = find_mlps(model)[layer]
    xs = []
    h = a.down.register_forward_pre_hook(lambda m, i: xs.append(i[0].detach()))
    G = torch.zeros((64, 64), dtype=torch.float64)
    m1 = torch.zeros(64, dtype=torch.float64)
    total = 0.0
    try:
        for ids, mask in padded_batches(encode_documents(tok, docs, 48), 4):
            with torch.no_grad():
                out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            real = mask.reshape(-1).bool()
            w = (1.0 / out.hidden_states[layer].pow(2).mean(-1)).reshape(-1)[real].double()
            x = xs.pop().reshape(-1, 64)[real].double()
            G += (x * w[:, None]).T @ x
            m1 += (x * w[:, None]).sum(0)
            total += float(w.sum())
    finally:
        h.remove()
    assert torch.allclose(stats.weighted_second_moment[layer], G / total, rtol=1e-4, atol=1e-6)
    assert torch.allclose(stats.weighted_mean[layer], m1 / total, rtol=1e-4, atol=1e-6)
    assert stats.weight_mean[layer] == pytest.approx(total / stats.n_tokens, rel=1e-5)
    # the unweighted moments are unchanged by asking for the weighted ones
    plain = collect_down_input_stats(model, tok, docs, 48, second_moments=True)
    assert torch.allclose(plain.second_moment[layer], stats.second_moment[layer])


def test_obs_keeps_the_greedy_order_and_repairs_with_its_moments(setup):
    model, tok, fn = setup
    from fnprune.pruning.scores import obs_scores

    cal = Calibration(tok, documents(12), 48)
    stats = cal.down_stats(model, second_moments=False, weighted=True)
    scores = obs_scores(model, stats)
    for s in scores:  # one +inf (the last neuron standing), the rest distinct: a strict removal order
        assert np.isinf(s).sum() == 1 and len(np.unique(s[np.isfinite(s)])) == len(s) - 1
    out = prune_with_networks(copy.deepcopy(model), fn, PruningSpec(method="obs", target_ratio=0.08), cal)
    from fnprune.pruning.budget import params_to_remove

    ppn = find_mlps(model)[0].params_per_neuron
    assert sum(64 - len(k) for k in out.keep) * ppn >= params_to_remove(model, 0.08, "all")
    assert out.repair_summary()["error_repaired"] < out.repair_summary()["error_pruned"]
    # its own allocation ranks the same scores across the unprotected layers, and what a layer drops is
    # the greedy's first removals (the cheapest), never the costliest
    from fnprune.pruning.repair import obs_removal_order

    cut = [layer for layer, keep in enumerate(out.keep) if len(keep) < 64]
    assert cut
    for layer in cut:
        dropped = np.setdiff1d(np.arange(64), out.keep[layer])
        assert scores[layer][dropped].max() < scores[layer][out.keep[layer]].min()
        a = find_mlps(model)[layer]
        order, _ = obs_removal_order(a.down.weight, stats.weighted_second_moment[layer], stats.weighted_mean[layer])
        assert set(order[:len(dropped)].tolist()) == set(dropped.tolist())
    # sequential obs: the dense pass's widths, each layer's choice made again on its pruned-below inputs
    seq = prune_with_networks(copy.deepcopy(model), fn, PruningSpec(method="obs", target_ratio=0.08, sequential=True),
                              cal)
    assert seq.widths == out.widths
    # the greedy runs once per calibration, choice and ridge: another budget reuses it, a choice does not
    import fnprune.pruning.calibration as calibration

    calls = []
    real = calibration.obs_scores
    calibration.obs_scores = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        again = prune_with_networks(copy.deepcopy(model), fn, PruningSpec(method="obs", target_ratio=0.08), cal)
        prune_with_networks(copy.deepcopy(model), fn, PruningSpec(method="obs", target_ratio=0.04, repair="none"), cal)
        assert calls == [] and again.keep_digest == out.keep_digest
        prune_with_networks(copy.deepcopy(model), fn, PruningSpec(method="obs", target_ratio=0.08,
                                                                  networks=tuple(_chosen(fn, 1))), cal)
        assert calls == [1]
    finally:
        calibration.obs_scores = real
