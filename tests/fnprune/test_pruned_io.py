"""Saving and loading pruned models: stock directories, remote code, load_pruned, atomic writes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from prune_helpers import (
    FAMILIES,
    FakeNetworks,
    documents,
    reload_isolated,
    sample_ids,
    tiny_model,
    tokenizer,
)

from fnprune.errors import ConfigError, RunDirError
from fnprune.evaluation.compare import check_networks_match
from fnprune.models.mlp import find_mlps
from fnprune.models.pruned_io import load_pruned, read_pruning_info, save_pruned
from fnprune.pruning.statistics import collect_down_input_stats
from fnprune.pruning.surgery import prune_model

PER_LAYER = [np.arange(24), np.arange(0, 24, 2), np.arange(5), np.array([1, 2, 3])]


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _pruned(family, per_layer=True, bias=True, heads=None):
    """A tiny model with MLP neurons pruned; ``heads``: per-layer kept KV groups (of 2) too."""
    from fnprune.pruning.heads import collect_attention_stats, prune_heads

    kwargs = {"num_attention_heads": 4, "num_key_value_heads": 2} if heads is not None else {}
    model, tok = tiny_model(family, **kwargs), tokenizer()
    if heads is not None:
        att_stats = collect_attention_stats(model, tok, documents(4), max_tokens=32) if bias else None
        prune_heads(model, heads, bias=att_stats)
    stats = collect_down_input_stats(model, tok, documents(4), max_tokens=32) if bias else None
    if per_layer:
        keep = PER_LAYER
    else:
        keep = np.zeros((4, 24), dtype=bool)
        keep[:, 3:13] = True
    return prune_model(model, keep, bias=stats), tok


@pytest.mark.parametrize("family", FAMILIES)
def test_load_pruned_per_layer_with_bias(family, tmp_path):
    model, tok = _pruned(family)
    ids = sample_ids()
    expected = _logits(model, ids)
    out = save_pruned(model, tok, tmp_path / "model", {"method": "test"})
    loaded, loaded_tok = load_pruned(out)
    assert [a.width for a in find_mlps(loaded)] == [24, 12, 5, 3]
    assert torch.allclose(_logits(loaded, ids), expected, atol=1e-5)
    assert loaded_tok is not None and loaded_tok("abc")["input_ids"] == tok("abc")["input_ids"]


@pytest.mark.slow
def test_reload_without_fnprune(tmp_path):
    """Per-layer widths + added bias load with trust_remote_code; uniform widths (and no added bias)
    are a stock architecture that plain from_pretrained loads -- all in a process without fnprune.
    Every family and case: test_saved_model_loading.py."""
    ids = sample_ids()
    cases, kinds = [], []
    mixed, one = [[0, 1], [1], [0], [0, 1]], [[1]] * 4
    for n, (family, per_layer, bias, heads) in enumerate([
            ("llama", True, True, None), ("qwen2", True, True, None), ("opt", True, True, None),
            ("gpt2", True, False, None), ("llama", False, False, None), ("gpt2", False, True, None),
            ("llama", False, True, mixed), ("qwen2", False, False, one)]):
        model, tok = _pruned(family, per_layer=per_layer, bias=bias, heads=heads)
        out = save_pruned(model, tok, tmp_path / f"m{n}", {"method": "test"})
        config = json.loads((out / "config.json").read_text())
        remote = per_layer or (bias and family in ("llama", "qwen2"))
        assert ("auto_map" in config) == remote == (out / "modeling_fnprune.py").is_file()
        assert "quantization_config" not in config
        cases.append((out, ids, _logits(model, ids), remote))
        loaded, _ = load_pruned(out)
        assert torch.allclose(_logits(loaded, ids), cases[-1][2], atol=1e-5)
        kinds.append(remote)
    names = reload_isolated(cases, tmp_path / "work")
    assert [n.startswith("Fnpruned") for n in names] == kinds


def test_pruning_json(tmp_path):
    model, tok = _pruned("llama")
    out = save_pruned(model, tok, tmp_path / "m", {"source_model": "tiny", "networks": [1, 5], "target_ratio": 0.2})
    info = read_pruning_info(out)
    assert info["widths"] == [24, 12, 5, 3]
    assert info["source_model"] == "tiny" and info["networks"] == [1, 5]
    assert info["down_bias_added"] is True and info["architecture"] == "per-layer"
    assert info["trust_remote_code"] is True and info["stock_switches"] == []
    assert info["total_params"] == sum(p.numel() for p in model.parameters())


def test_gguf_tagged_model_is_rebuilt(tmp_path):
    """A model whose config carries a (GGUF) quantization_config is saved as plain floats."""
    model, tok = _pruned("llama")
    model.config.quantization_config = {"quant_method": "gguf", "dequantize": False}
    ids = sample_ids()
    out = save_pruned(model, tok, tmp_path / "m")
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    loaded, _ = load_pruned(out)
    assert torch.allclose(_logits(loaded, ids), _logits(model, ids), atol=1e-5)


def _no_leftovers(parent):
    return [p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_unwritable_output_dir(tmp_path):
    model, tok = _pruned("llama", bias=False)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot create|not writable"):
        save_pruned(model, tok, blocker / "model")
    if os.geteuid() != 0:  # root ignores permissions
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        try:
            with pytest.raises(ConfigError, match="not writable"):
                save_pruned(model, tok, locked / "model")
            assert list(locked.iterdir()) == []
        finally:
            locked.chmod(0o755)


def test_existing_dir_needs_overwrite(tmp_path):
    model, tok = _pruned("llama", bias=False)
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="already exists"):
        save_pruned(model, tok, out)
    assert (out / "keep.txt").exists()
    save_pruned(model, tok, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    assert _no_leftovers(tmp_path) == []


def test_failure_leaves_no_half_written_dir(tmp_path, monkeypatch):
    model, tok = _pruned("llama", bias=False)

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tok, "save_pretrained", broken)
    with pytest.raises(ConfigError, match="No space left"):
        save_pruned(model, tok, tmp_path / "m")
    assert not (tmp_path / "m").exists() and _no_leftovers(tmp_path) == []


def test_load_pruned_missing_dir(tmp_path):
    with pytest.raises(RunDirError, match="not a model directory"):
        load_pruned(tmp_path / "nothing")


def test_run_dir_from_another_model():
    model = tiny_model("llama")
    with pytest.raises(RunDirError, match="another model"):
        check_networks_match(FakeNetworks(n_layers=4, width=32, params_per_neuron=48, total_params=1), model)
    with pytest.raises(RunDirError, match="another model"):
        check_networks_match(FakeNetworks(n_layers=30, width=24, params_per_neuron=48, total_params=1), model)
    check_networks_match(FakeNetworks(n_layers=4, width=24, params_per_neuron=48, total_params=1), model)


@pytest.mark.slow
def test_default_model_prune_save_reload(tmp_path):
    """The default model (a LLaMA) with FLAP bias: per-layer widths load with remote code; uniform
    widths (``--uniform``) are the stock class with ``mlp_bias`` -- exact, in a process without fnprune."""
    import copy

    from fnprune.models.loading import load_model

    model, tok = load_model("smollm2-135m", device="cpu")
    stats = collect_down_input_stats(model, tok, documents(4), max_tokens=64)
    uniform = prune_model(copy.deepcopy(model), [np.arange(1536 - 300)] * 30, bias=stats)
    keep = [np.arange(1536)] * 3 + [np.arange(1536 - 100 * (i % 3 + 1)) for i in range(25)] + [np.arange(1536)] * 2
    prune_model(model, keep, bias=stats)
    ids = sample_ids(shape=(1, 16))
    cases = []
    for name, pruned, remote in (("m", model, True), ("u", uniform, False)):
        expected = _logits(pruned, ids)
        out = save_pruned(pruned, tok, tmp_path / name, {"source_model": "smollm2-135m"})
        assert read_pruning_info(out)["trust_remote_code"] is remote
        loaded, _ = load_pruned(out)
        assert torch.allclose(_logits(loaded, ids), expected, atol=1e-4)
        cases.append((out, ids, expected, remote))
    assert json.loads((tmp_path / "u" / "config.json").read_text())["mlp_bias"] is True
    reload_isolated(cases, tmp_path / "work")
