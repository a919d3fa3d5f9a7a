"""Structured pruning, bias compensation, calibration statistics and baseline scores."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from prune_helpers import FAMILIES, documents, sample_ids, tiny_model, tokenizer

from fnprune.errors import ConfigError
from fnprune.models.mlp import default_protected_layers, find_mlps
from fnprune.pruning.baselines import plan_keep, prune_baseline
from fnprune.pruning.budget import keep_from_scores, params_to_remove
from fnprune.pruning.scores import flap_scores, magnitude_scores, random_scores, wanda_sp_scores
from fnprune.pruning.statistics import DownInputStats, collect_down_input_stats
from fnprune.pruning.surgery import normalize_keep, prune_model


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_prune_per_layer_widths_and_config(family):
    model = tiny_model(family)
    keep = [np.arange(24), np.arange(0, 24, 2), np.arange(5), np.array([3, 1, 2, 2])]
    prune_model(model, keep)
    assert [a.width for a in find_mlps(model)] == [24, 12, 5, 3]
    assert model.config.fnprune_intermediate_sizes == [24, 12, 5, 3]
    assert _logits(model, sample_ids()).shape == (2, 9, 258)


@pytest.mark.parametrize("family", FAMILIES)
def test_prune_uniform_sets_width_key(family):
    model = tiny_model(family)
    mask = np.zeros((4, 24), dtype=bool)
    mask[:, :10] = True
    prune_model(model, mask)
    key = {"gpt2": "n_inner", "opt": "ffn_dim"}.get(family, "intermediate_size")
    assert getattr(model.config, key) == 10
    assert model.config.fnprune_intermediate_sizes is None


@pytest.mark.parametrize("family", FAMILIES)
def test_removing_dead_neurons_keeps_outputs(family):
    """Neurons whose down column is zero contribute nothing: removing them changes no logit."""
    model = tiny_model(family)
    dead = [np.arange(0, 24, 3) for _ in range(4)]
    with torch.no_grad():
        for a in find_mlps(model):
            w = a.down.weight
            if type(a.down).__name__ == "Conv1D":
                w[dead[a.layer], :] = 0
            else:
                w[:, dead[a.layer]] = 0
    ids = sample_ids()
    before = _logits(model, ids)
    keep = [np.setdiff1d(np.arange(24), d) for d in dead]
    prune_model(model, keep)
    assert torch.allclose(_logits(model, ids), before, atol=1e-5)


def _make_constant_neurons(model, neurons, value=0.7):
    """Give ``neurons`` of every layer an input-independent output (zero weight rows, a bias)."""
    with torch.no_grad():
        for a in find_mlps(model):
            for proj in a.in_projs:
                if type(proj).__name__ == "Conv1D":
                    proj.weight[:, neurons] = 0
                else:
                    proj.weight[neurons, :] = 0
                proj.bias[neurons] = value


@pytest.mark.parametrize("family,extra", [("llama", {"mlp_bias": True}), ("opt", {}), ("gpt2", {}), ("phi", {})])
def test_bias_compensation_exact_for_constant_neurons(family, extra):
    model = tiny_model(family, **extra)
    neurons = [1, 4, 7, 20]
    _make_constant_neurons(model, neurons)
    tok = tokenizer()
    stats = collect_down_input_stats(model, tok, documents(6), max_tokens=64, batch_size=3)
    ids = sample_ids()
    before = _logits(model, ids)
    keep = [np.setdiff1d(np.arange(24), neurons) for _ in range(4)]
    without = prune_model(copy.deepcopy(model), keep)
    assert not torch.allclose(_logits(without, ids), before, atol=1e-3)
    prune_model(model, keep, bias=stats)
    assert torch.allclose(_logits(model, ids), before, atol=1e-5)


def test_bias_added_where_absent_equals_formula():
    model = tiny_model("qwen2")
    assert find_mlps(model)[1].down.bias is None
    w = find_mlps(model)[1].down.weight.detach().clone()  # (hidden, I)
    means = [torch.linspace(-1, 1, 24, dtype=torch.float64) * (i + 1) for i in range(4)]
    keep = [np.arange(24), np.arange(12), np.arange(24), np.arange(24)]
    prune_model(model, keep, bias=means)
    expected = (w[:, 12:].double() @ means[1][12:]).float()
    adapters = find_mlps(model)
    assert torch.allclose(adapters[1].down.bias, expected, atol=1e-6)
    assert torch.count_nonzero(adapters[0].down.bias) == 0  # unpruned layers get a zero bias
    assert model.config.fnprune_down_bias is True


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_stats_ignore_padding(family):
    """Batched (padded) and one-by-one statistics agree; OPT's hooks see (tokens, I)."""
    model, tok = tiny_model(family), tokenizer()
    docs = documents(5)
    a = collect_down_input_stats(model, tok, docs, max_tokens=40, batch_size=1)
    b = collect_down_input_stats(model, tok, docs, max_tokens=40, batch_size=5)
    assert a.n_tokens == b.n_tokens == sum(min(40, len(tok(d.text)["input_ids"])) for d in docs)
    for x, y in zip(a.mean + a.var + a.l2, b.mean + b.var + b.l2, strict=True):
        assert torch.allclose(x, y, atol=1e-5, rtol=1e-4)


def _hand_model():
    """Layer 0 of a tiny LLaMA with hidden 2 and 3 neurons set by hand."""
    model = tiny_model("llama", n_layers=1, width=3, hidden=2)
    a = find_mlps(model)[0]
    with torch.no_grad():
        a.in_projs[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]))   # gate (I, h)
        a.in_projs[1].weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0]]))   # up (I, h)
        a.down.weight.copy_(torch.tensor([[1.0, -2.0, 0.0], [0.0, 2.0, 4.0]]))          # down (h, I)
    return model


def test_magnitude_scores_by_hand():
    s = magnitude_scores(_hand_model())[0]
    assert np.allclose(s, [math.sqrt(1 + 0 + 1), math.sqrt(4 + 1 + 8), math.sqrt(0 + 9 + 16)])


def test_wanda_and_flap_scores_by_hand():
    model = _hand_model()
    stats = DownInputStats(mean=[torch.zeros(3, dtype=torch.float64)],
                           var=[torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)],
                           l2=[torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)], n_tokens=10)
    assert np.allclose(wanda_sp_scores(model, stats)[0], [1 * 2.0, 4 * 1.0, 4 * 0.5])
    raw = np.array([1.0 * 1, 0.5 * 8, 2.0 * 16])
    assert np.allclose(flap_scores(model, stats, standardize=False)[0], raw)
    assert np.allclose(flap_scores(model, stats)[0], (raw - raw.mean()) / raw.std())


def test_random_scores_seeded():
    model = tiny_model("llama")
    a, b, c = random_scores(model, 3), random_scores(model, 3), random_scores(model, 4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_keep_from_scores_global_protected_and_widths():
    scores = [np.array([5.0, 1.0, 2.0]), np.array([0.1, 0.2, 9.0]), np.array([0.0, 0.0, 0.0])]
    keep = keep_from_scores(scores, [10, 10, 10], n_params_remove=25, protected_layers=[2])
    assert [k.tolist() for k in keep] == [[0, 2], [2], [0, 1, 2]]  # removed 0.1, 0.2, 1.0
    keep = keep_from_scores(scores, [10, 10, 10], widths=[1, 2, 3])
    assert [k.tolist() for k in keep] == [[0], [1, 2], [0, 1, 2]]
    keep = keep_from_scores(scores, [10, 10, 10], n_params_remove=30, uniform=True)
    assert [len(k) for k in keep] == [2, 2, 2]


def test_default_protected_layers():
    assert default_protected_layers(30) == [0, 1, 2, 28, 29]
    assert default_protected_layers(6) == [0, 5] and default_protected_layers(3) == []


@pytest.mark.parametrize("method", ["random", "magnitude", "wanda-sp", "flap"])
def test_baselines_reach_budget(method):
    model, tok = tiny_model("llama", n_layers=6), tokenizer()
    stats = collect_down_input_stats(model, tok, documents(4), max_tokens=32)
    budget = params_to_remove(model, 0.1)
    ppn = find_mlps(model)[0].params_per_neuron
    prune_baseline(model, method, 0.1, stats=stats, protected_layers=[0, -1])
    widths = [a.width for a in find_mlps(model)]
    removed = (6 * 24 - sum(widths)) * ppn  # (flap's added down biases are not part of the budget)
    assert budget <= removed < budget + ppn
    assert widths[0] == widths[5] == 24  # protected
    assert sum(widths[1:5]) < 4 * 24


def test_fn_allocation_uses_given_widths():
    model = tiny_model("llama")
    keep = plan_keep(model, "magnitude", widths=[24, 10, 7, 24])
    assert [len(k) for k in keep] == [24, 10, 7, 24]


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.0, 1.5, float("nan")])
def test_bad_target_ratio(ratio):
    with pytest.raises(ConfigError, match="target ratio"):
        plan_keep(tiny_model("llama"), "random", ratio, protected_layers=[])


def test_ratio_that_would_empty_layers():
    model = tiny_model("llama", n_layers=6)
    with pytest.raises(ConfigError, match="emptying a layer|lower the target"):
        plan_keep(model, "random", 0.5, protected_layers=[0, 1, 2, -2, -1])  # only layer 3 is free
    with pytest.raises(ConfigError, match="lower the target ratio"):
        plan_keep(model, "random", 0.9, uniform=True)


def test_bad_masks():
    model = tiny_model("llama")
    with pytest.raises(ConfigError, match="shape"):
        prune_model(model, np.ones((3, 24), dtype=bool))
    with pytest.raises(ConfigError, match="shape"):
        prune_model(model, np.ones((4, 23), dtype=bool))
    mask = np.ones((4, 24), dtype=bool)
    mask[2] = False
    with pytest.raises(ConfigError, match="every MLP neuron"):
        prune_model(model, mask)
    with pytest.raises(ConfigError, match="out of range"):
        prune_model(model, [np.arange(24)] * 3 + [np.array([0, 24])])
    with pytest.raises(ConfigError, match="one entry per layer"):
        prune_model(model, [np.arange(24)] * 3)
    assert [a.width for a in find_mlps(model)] == [24] * 4  # nothing was touched


def test_stats_from_another_model_rejected():
    model = tiny_model("llama")
    stats = DownInputStats(mean=[torch.zeros(10)] * 4, var=[torch.ones(10)] * 4, l2=[torch.ones(10)] * 4, n_tokens=1)
    with pytest.raises(ConfigError, match="widths"):
        flap_scores(model, stats)
    with pytest.raises(ConfigError, match="widths"):
        prune_model(model, [np.arange(5)] * 4, bias=stats)


def test_normalize_keep_accepts_tensors():
    idx = normalize_keep([torch.tensor([2, 0]), torch.ones(3, dtype=torch.bool)], [3, 3])
    assert [i.tolist() for i in idx] == [[0, 2], [0, 1, 2]]
    idx = normalize_keep(np.array([[2, 0], [1, 1]]), [3, 3])  # (n_layers, k) indices
    assert [i.tolist() for i in idx] == [[0, 2], [1]]
    with pytest.raises(ConfigError, match="shape"):
        normalize_keep(torch.ones((2, 4), dtype=torch.bool), [3, 3])


# -- attention heads ------------------------------------------------------------------------------
def test_head_pruning_removes_whole_kv_groups():
    from fnprune.pruning.heads import find_attentions, prune_heads

    model = tiny_model("llama", num_attention_heads=4, num_key_value_heads=2)  # 2 groups of 2 query heads
    model.config.head_dim = 8
    prune_heads(model, [[0, 1], [1], [0], [0, 1]])
    atts = find_attentions(model)
    assert [a.n_kv_heads for a in atts] == [2, 1, 1, 2]
    assert atts[1].module.q_proj.weight.shape == (2 * 8, 16) and atts[1].module.o_proj.weight.shape == (16, 16)
    assert model.config.fnprune_num_key_value_heads == [2, 1, 1, 2]
    assert _logits(model, sample_ids()).shape == (2, 9, 258)
    with pytest.raises(ConfigError, match="every KV head"):
        prune_heads(model, [[0], [], [0], [0]])


def test_head_pruning_dead_group_keeps_outputs():
    """A KV group whose o_proj columns are zero contributes nothing: removing it changes no logit."""
    from fnprune.pruning.heads import find_attentions, prune_heads

    model = tiny_model("qwen2", num_attention_heads=4, num_key_value_heads=2)
    atts = find_attentions(model)
    with torch.no_grad():
        for a in atts:
            a.module.o_proj.weight[:, a.q_channels(torch.tensor([1]))] = 0
    ids = sample_ids()
    before = _logits(model, ids)
    prune_heads(model, [[0]] * 4)
    assert model.config.num_key_value_heads == 1 and model.config.num_attention_heads == 2
    assert torch.allclose(_logits(model, ids), before, atol=1e-5)


def test_head_bias_compensation_exact_for_constant_values():
    """With v_proj rows of a group constant, the group's output is constant: compensation is exact."""
    from fnprune.pruning.heads import collect_attention_stats, find_attentions, head_group_scores, prune_heads

    model = tiny_model("llama", num_attention_heads=4, num_key_value_heads=2, attention_bias=True)
    with torch.no_grad():
        for a in find_attentions(model):
            ch = a.kv_channels(torch.tensor([0]))
            a.module.v_proj.weight[ch] = 0
            a.module.v_proj.bias[ch] = torch.linspace(-1, 1, len(ch))
    stats = collect_attention_stats(model, tokenizer(), documents(4), max_tokens=32)
    scores = head_group_scores(model, stats)
    assert all(s[0] < 1e-8 < s[1] for s in scores)  # constant group: zero fluctuation
    ids = sample_ids()
    before = _logits(model, ids)
    prune_heads(model, [[1]] * 4, bias=stats)
    assert torch.allclose(_logits(model, ids), before, atol=1e-5)


def test_keep_heads_from_scores():
    from fnprune.pruning.heads import keep_heads_from_scores

    scores = [np.array([3.0, 1.0, 2.0])] * 4
    keep = keep_heads_from_scores(scores, 0.34, protected_layers=[0])
    assert [k.tolist() for k in keep] == [[0, 1, 2], [0, 2], [0, 2], [0, 2]]
    assert [len(k) for k in keep_heads_from_scores(scores, 0.99, protected_layers=[])] == [1] * 4
    with pytest.raises(ConfigError, match="head fraction"):
        keep_heads_from_scores(scores, 1.0)


def test_head_pruning_unsupported_family():
    from fnprune.errors import UnsupportedArchitectureError
    from fnprune.pruning.heads import find_attentions

    with pytest.raises(UnsupportedArchitectureError, match="LLaMA"):
        find_attentions(tiny_model("gpt2"))
