"""MLP adapters on tiny random models of each family, and model loading errors."""

from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    GPT2Config,
    LlamaConfig,
    OPTConfig,
    PhiConfig,
    Qwen2Config,
)

from fnprune.errors import ModelLoadError, UnsupportedArchitectureError
from fnprune.models.loading import load_model, resolve_device
from fnprune.models.mlp import find_mlps, mlp_summary

CONFIGS = {
    "llama": (LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1), "gated", 24),
    "qwen2": (Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                          num_attention_heads=2, num_key_value_heads=1), "gated", 24),
    "gemma2": (Gemma2Config(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=8), "gated", 24),
    "gpt2": (GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_inner=40), "gpt2", 40),
    "opt": (OPTConfig(vocab_size=64, hidden_size=16, ffn_dim=24, num_hidden_layers=2, num_attention_heads=2,
                      word_embed_proj_dim=16), "fc", 24),
    "phi": (PhiConfig(vocab_size=64, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                      num_attention_heads=2), "fc", 24),
}


def tiny(name):
    torch.manual_seed(0)
    config, family, width = CONFIGS[name]
    return AutoModelForCausalLM.from_config(config).eval(), family, width


@pytest.mark.parametrize("name", list(CONFIGS))
def test_adapter_found_and_signals_match_manual_computation(name):
    model, family, width = tiny(name)
    adapters = find_mlps(model)
    assert [a.family for a in adapters] == [family, family]
    assert all(a.width == width for a in adapters)
    got = {}
    handles = []
    for a in adapters:
        handles += a.register_signal_hooks(("act", "up", "down_in"),
                                           lambda s, t, post, lyr=a.layer: got.__setitem__(
                                               (lyr, s), (post(t) if post else t).reshape(-1, t.shape[-1])))
    model(torch.arange(6).unsqueeze(0))
    for h in handles:
        h.remove()
    for layer in range(2):
        act, up, down_in = got[(layer, "act")], got[(layer, "up")], got[(layer, "down_in")]
        assert act.shape[-1] == width
        if family == "gated":
            torch.testing.assert_close(act * up, down_in)
        else:  # act is the activation of the pre-activation 'up', and is what down receives
            torch.testing.assert_close(adapters[layer].act_fn(up), act)
            torch.testing.assert_close(act, down_in)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_select_equals_zeroing_the_removed_neurons(name):
    model, _, width = tiny(name)
    x = torch.arange(7).unsqueeze(0)
    keep = torch.arange(0, width, 3)
    drop = torch.tensor([j for j in range(width) if j not in set(keep.tolist())])
    adapters = find_mlps(model)
    # reference: zero the removed neurons' down weights
    with torch.no_grad():
        ref_model, _, _ = tiny(name)
        for a in find_mlps(ref_model):
            w = a.down.weight
            if w.shape[0] == width and type(a.down).__name__ == "Conv1D":
                w[drop] = 0
            else:
                w[:, drop] = 0
        expected = ref_model(x).logits
    for a in adapters:
        a.select(keep)
    assert all(a.width == len(keep) for a in adapters)
    torch.testing.assert_close(model(x).logits, expected, atol=1e-5, rtol=1e-5)
    summary = mlp_summary(model)
    assert summary["widths"] == [len(keep)] * 2


def test_select_rejects_empty_and_out_of_range():
    model, _, width = tiny("llama")
    a = find_mlps(model)[0]
    with pytest.raises(ValueError, match="cannot remove every"):
        a.select(torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="out of range"):
        a.select(torch.tensor([width]))


def test_unsupported_architecture_names_what_is_missing():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = torch.nn.Linear(4, 4)
            self.ffn = torch.nn.Linear(4, 4)

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([Block(), Block()])

    with pytest.raises(UnsupportedArchitectureError, match="gate_proj/up_proj/down_proj.*children: attn, ffn"):
        find_mlps(Odd())


def test_load_model_errors_are_clear(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="without config.json"):
        load_model(str(tmp_path))
    with pytest.raises(ModelLoadError, match="empty"):
        load_model("  ")
    with pytest.raises(ModelLoadError, match="outside the allowed"):
        load_model(str(tmp_path), allowed_dirs=[tmp_path / "models"])
    with pytest.raises(ModelLoadError, match="unknown device"):
        resolve_device("gpu0")


def test_tiny_llama_is_seeded_and_tokenizes_text():
    m1, tok = load_model("tiny-llama", device="cpu")
    m2, _ = load_model("tiny-llama", device="cpu")
    ids = tok("Hello world", return_tensors="pt").input_ids
    assert tok.decode(ids[0]) == "Hello world"
    torch.testing.assert_close(m1(ids).logits, m2(ids).logits)


@pytest.mark.slow
def test_default_model_loads_offline_and_generates():
    model, tok = load_model("smollm2-135m", device="cpu")
    assert getattr(model.config, "quantization_config", None) is None
    assert find_mlps(model)[0].width == 1536 and len(find_mlps(model)) == 30
    ids = tok("The capital of France is", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0])


def test_a_local_directory_is_read_not_mapped_so_a_replaced_matrix_is_freed(tmp_path):
    """transformers maps a directory's weights file; a mapped page stays in RSS while any tensor of the file
    lives, so each MLP matrix pruning replaces would count twice (BENCHMARKS §12). fnprune reads the file:
    after loading, it is not mapped, and the weights equal transformers' own loading, in the asked dtype."""
    from transformers import AutoModelForCausalLM

    model, tok = load_model("tiny-llama", device="cpu")
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded, _ = load_model(str(tmp_path / "m"), device="cpu")
    weights = str((tmp_path / "m" / "model.safetensors").resolve())
    assert weights not in Path("/proc/self/maps").read_text()
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert not loaded.training and type(loaded) is type(reference)
    for (name, a), (_, b) in zip(loaded.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    half, _ = load_model(str(tmp_path / "m"), device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


def test_remote_code_and_quantized_directories_keep_transformers_loading(tmp_path):
    """Reading the weights applies to stock, unquantized architectures only: a config naming its own
    AutoModelForCausalLM class (remote code) or a quantization goes to transformers' own loading."""
    import json

    from fnprune.models.loading import _from_read_weights

    model, _ = load_model("tiny-llama", device="cpu")
    model.save_pretrained(tmp_path / "m")
    config_path = tmp_path / "m" / "config.json"
    stock = json.loads(config_path.read_text())
    assert _from_read_weights(tmp_path / "m", {"dtype": torch.float32}, False) is not None
    for extra in ({"auto_map": {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}},
                  {"quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": True}}):
        config_path.write_text(json.dumps({**stock, **extra}))
        assert _from_read_weights(tmp_path / "m", {"dtype": torch.float32}, False) is None, extra
