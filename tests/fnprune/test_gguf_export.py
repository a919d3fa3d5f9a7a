"""fnprune.models.export_gguf: pruned models written as GGUF run in a real llama.cpp.

The runtime is node-llama-cpp 3.21.1's prebuilt CPU binary (``make setup`` installs it into
tools/llama; ``tools/llama/gguf_tokens.mjs`` drives it). These tests FAIL, never skip, without it.

On the same token ids, llama.cpp's greedy continuation equals transformers' for the first
``N_TOKENS`` tokens (f32 and f16 exports), llama.cpp's log-probability of every token of that
continuation (teacher forced) is within a stated tolerance of transformers', and its top token
agrees wherever transformers' top-1 margin exceeds twice that tolerance. Tolerances (natural-log
units) are set from measured differences with headroom: llama.cpp keeps its KV cache in f16, so
even an f32 file differs by ~1e-4 on the tiny model.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from prune_helpers import documents, tiny_model, tokenizer

from fnprune.errors import ConfigError
from fnprune.models.export_gguf import export_gguf, permute_qk, source_gguf, write_gguf
from fnprune.models.pruned_io import load_pruned, read_pruning_info, save_pruned

RUNTIME = Path(__file__).resolve().parents[2] / "tools" / "llama"
SCRIPT = RUNTIME / "gguf_tokens.mjs"
RUNTIME_VERSION = "3.21.1"
N_TOKENS = 12
# max |log p_llama.cpp - log p_transformers| on a teacher-forced continuation
# (measured, "precise" context: tiny f32 1e-6, f16 2e-3, q8_0 5e-2; SmolLM2 deci f16 6e-3)
TOLERANCE = {("tiny", "f32"): 1e-4, ("tiny", "f16"): 6e-3, ("tiny", "q8_0"): 0.1, ("smollm2", "f16"): 2e-2}
TINY_PROMPTS = ["Functional networks", "Numbers 12345 and", "Hello", "A short one."]
TEXTS = ["Hello world, this is", "Numbers 12345 and 3.14159; héllo ünïcode — 日本語",
         "  leading spaces\n\nnew lines\tand tabs"]


# -- the runtime ----------------------------------------------------------------------------------
def run_llama(runs: list[dict]) -> list[dict]:
    """Run ``tools/llama/gguf_tokens.mjs`` on ``runs`` (see the script); its per-run replies. One
    thread: on a busy machine ggml's threads spin at barriers (30x slower measured with two)."""
    node = shutil.which("node")
    assert node, "node is not installed: the GGUF tests need node >= 20 and npm, then `make setup` (tools/llama)"
    installed = RUNTIME / "node_modules" / "node-llama-cpp" / "package.json"
    assert installed.is_file(), f"node-llama-cpp is not installed in {RUNTIME}: run `make setup` (needs npm)"
    proc = subprocess.run([node, str(SCRIPT)], input=json.dumps({"threads": 1, "runs": runs}), cwd=RUNTIME,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"llama.cpp run failed: {proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])["runs"]


def test_missing_runtime_fails_the_tests(monkeypatch, tmp_path):
    """Without node or node-llama-cpp the GGUF tests fail (saying what to install), never skip."""
    monkeypatch.setitem(globals(), "RUNTIME", tmp_path)
    with pytest.raises(AssertionError, match="make setup"):
        run_llama([])
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AssertionError, match="node is not installed"):
        run_llama([])


def test_runtime_is_the_pinned_one():
    installed = RUNTIME / "node_modules" / "node-llama-cpp" / "package.json"
    assert installed.is_file(), f"node-llama-cpp is not installed in {RUNTIME}: run `make setup` (needs npm)"
    assert json.loads(installed.read_text())["version"] == RUNTIME_VERSION
    lock = json.loads((RUNTIME / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/node-llama-cpp"]["version"] == RUNTIME_VERSION


# -- transformers' reference ----------------------------------------------------------------------
@torch.no_grad()
def greedy_reference(model, prompt: list[int], n: int = N_TOKENS) -> dict:
    """Transformers' greedy continuation of ``prompt`` (``n`` tokens, no stopping at EOS), the
    log-probability of each continuation token and transformers' top-1 margin at each step."""
    seq = list(prompt)
    out = model(torch.tensor([seq]), use_cache=True)
    cache = "cache" if hasattr(out, "cache") else "past_key_values"  # transformers 5.x / 4.x
    for _ in range(n):
        seq.append(int(out.logits[0, -1].argmax()))
        out = model(torch.tensor([seq[-1:]]), use_cache=True, **{cache: getattr(out, cache)})
    logprobs = torch.log_softmax(model(torch.tensor([seq])).logits[0].double(), -1)[len(prompt) - 1:-1]
    top2 = logprobs.topk(2, -1).values
    return {"prompt": list(prompt), "sequence": seq, "continuation": seq[len(prompt):],
            "logprobs": logprobs.gather(1, torch.tensor(seq[len(prompt):])[:, None])[:, 0].tolist(),
            "margins": (top2[:, 0] - top2[:, 1]).tolist()}


def llama_request(path: Path, refs: list[dict], texts: list[str] = (), *, precise: bool = True) -> dict:
    """``precise``: an f32 KV cache and no flash attention, so that an f32 file is compared at f32."""
    return {"model": str(path), "precise": precise, "greedy": [r["prompt"] for r in refs], "n_tokens": N_TOKENS,
            "forced": [r["sequence"] for r in refs], "from": [len(r["prompt"]) for r in refs], "texts": list(texts)}


def check_against_llama(refs: list[dict], got: dict, tol: float) -> tuple[float, int]:
    """Assert llama.cpp agrees with transformers on every reference: each teacher-forced log-probability
    within ``tol``; llama.cpp's top token is transformers' wherever transformers' top-1 margin exceeds
    ``2 * tol``; and llama.cpp's own greedy continuation is transformers' for every prompt whose
    continuation has no such near-tie. Returns (largest log-prob gap, prompts compared greedily)."""
    worst, compared = 0.0, 0
    for ref, continuation, forced in zip(refs, got["greedy"], got["forced"], strict=True):
        gaps = [abs(row["logprob"] - lp) for row, lp in zip(forced, ref["logprobs"], strict=True)]
        worst = max(worst, *gaps)
        assert max(gaps) <= tol, (ref["prompt"], gaps)
        for row, token, margin in zip(forced, ref["continuation"], ref["margins"], strict=True):
            if margin > 2 * tol:
                assert row["top"] == token, (ref["prompt"], row, token, margin)
        if min(ref["margins"]) > 2 * tol:
            assert continuation == ref["continuation"], ref["prompt"]
            compared += 1
    return worst, compared


# -- tiny models ----------------------------------------------------------------------------------
def tiny_llama(seed: int = 0):
    """A seeded random LLaMA with decisive predictions (initializer_range 0.1: the default 0.02 makes
    every next-token distribution nearly flat, so greedy choices are near-ties)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from fnprune.models.loading import byte_tokenizer

    config = LlamaConfig(vocab_size=258, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.1, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.eval(), byte_tokenizer()


def pruned_tiny(kind: str):
    """``uniform``: every layer 48 of 64 neurons, FLAP bias (stock llama + ``mlp_bias``);
    ``per-layer``: widths 64/40/52/28, FLAP bias, layers 1-2 keep one of two KV groups with an
    ``o_proj`` bias (fnprune's modelling file)."""
    from fnprune.pruning.heads import collect_attention_stats, prune_heads
    from fnprune.pruning.statistics import collect_down_input_stats
    from fnprune.pruning.surgery import prune_model

    model, tok = tiny_llama()
    docs = documents(4)
    stats = collect_down_input_stats(model, tok, docs, max_tokens=48)
    if kind == "uniform":
        prune_model(model, [np.arange(0, 64, 4).tolist() + np.arange(1, 64, 2).tolist()] * 4, bias=stats)
        return model, tok
    heads = collect_attention_stats(model, tok, docs, max_tokens=48)
    prune_model(model, [np.arange(64), np.arange(24, 64), np.arange(12, 64), np.arange(0, 64, 2)[:28]],
                bias=stats)
    prune_heads(model, [[0, 1], [1], [0], [0, 1]], bias=heads)
    return model, tok


@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory):
    """The two pruned tiny models saved with save_pruned and exported from their directories."""
    root = tmp_path_factory.mktemp("gguf")
    out = {}
    for kind, types in (("uniform", ("f32", "f16")), ("per-layer", ("f32", "f16", "q8_0"))):
        model, tok = pruned_tiny(kind)
        model_dir = save_pruned(model, tok, root / kind, {"source_model": "tiny-llama"})
        prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in TINY_PROMPTS]
        refs = [greedy_reference(model, p) for p in prompts]
        files = {t: export_gguf(model_dir, root / f"{kind}-{t}.gguf", out_type=t) for t in types}
        out[kind] = {"dir": model_dir, "model": model, "tokenizer": tok, "refs": refs, "files": files}
    return out


def test_tiny_exports_run_in_llama_cpp(tiny_exports):
    runs, cases = [], []
    for kind, case in tiny_exports.items():
        for out_type, result in case["files"].items():
            runs.append(llama_request(result.path, case["refs"], TEXTS))
            cases.append((kind, out_type, case))
    gaps = {}
    for (kind, out_type, case), got in zip(cases, run_llama(runs), strict=True):
        expected_arch = "llama" if kind == "uniform" else "deci"
        assert got["architecture"] == case["files"][out_type].architecture == expected_arch
        assert not got["add_bos"]
        tok = case["tokenizer"]
        assert got["tokens"] == [tok(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
        gaps[kind, out_type], compared = check_against_llama(case["refs"], got, TOLERANCE["tiny", out_type])
        if out_type == "f32":  # f32: every prompt decisive, every continuation equal
            assert compared == len(TINY_PROMPTS)
        elif out_type == "f16":
            assert compared >= 2
    print("max |log p gap| per export:", {f"{k}/{t}": f"{g:.1e}" for (k, t), g in gaps.items()})


def test_per_layer_file_holds_the_arrays_and_biases(tiny_exports):
    case = tiny_exports["per-layer"]
    reader = gguf.GGUFReader(str(case["files"]["f16"].path))
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "deci"
    assert field("deci.feed_forward_length") == [64, 40, 52, 28]
    assert field("deci.attention.head_count") == [4, 2, 2, 4]
    assert field("deci.attention.head_count_kv") == [2, 1, 1, 2]
    assert field("deci.attention.key_length") == 8
    assert field("general.file_type") == gguf.LlamaFileType.MOSTLY_F16
    tensors = {t.name: t for t in reader.tensors}
    assert tensors["blk.2.ffn_down.weight"].shape.tolist() == [52, 32]  # GGUF shapes are (columns, rows)
    assert tensors["blk.1.attn_q.weight"].shape.tolist() == [32, 16]
    # the FLAP biases of pruned layers; the unpruned layers' zero biases are left out (exact)
    for i in (1, 2, 3):
        assert tensors[f"blk.{i}.ffn_down.weight"].tensor_type == gguf.GGMLQuantizationType.F16
        assert tensors[f"blk.{i}.ffn_down.bias"].tensor_type == gguf.GGMLQuantizationType.F32
    assert "blk.0.ffn_down.bias" not in tensors
    assert {n for n in tensors if n.endswith("attn_output.bias")} == {"blk.1.attn_output.bias", "blk.2.attn_output.bias"}
    assert "output.weight" in tensors  # LlamaConfig's default: lm_head not tied (SmolLM2's is: see below)
    model = case["model"]
    down_bias = model.model.layers[2].mlp.down_proj.bias.detach().numpy()
    assert np.array_equal(tensors["blk.2.ffn_down.bias"].data, down_bias)


def test_uniform_file_is_plain_llama_without_zero_biases(tiny_exports):
    case = tiny_exports["uniform"]
    result = case["files"]["f32"]
    assert read_pruning_info(case["dir"])["stock_switches"] == ["mlp_bias"]
    reader = gguf.GGUFReader(str(result.path))
    assert reader.fields["llama.feed_forward_length"].contents() == 48
    names = {t.name for t in reader.tensors}
    assert {f"blk.{i}.ffn_down.bias" for i in range(4)} <= names
    assert not any(n.endswith(("ffn_gate.bias", "ffn_up.bias")) for n in names)  # mlp_bias's zero biases
    assert result.skipped_zero_biases == 8
    assert result.tokenizer_source == "huggingface"


def test_cli_export_gguf(tiny_exports, tmp_path, capsys):
    from fnprune.cli import main

    model_dir = tiny_exports["per-layer"]["dir"]
    out = tmp_path / "cli.gguf"
    assert main(["export-gguf", str(model_dir), str(out), "--type", "q8_0"]) == 0
    assert "architecture deci" in capsys.readouterr().out
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(out)).tensors}
    assert types["blk.0.ffn_gate.weight"] == gguf.GGMLQuantizationType.Q8_0   # rows of 32
    assert types["blk.2.ffn_down.weight"] == gguf.GGMLQuantizationType.F16    # rows of 52: not quantisable
    assert main(["export-gguf", str(model_dir), str(out)]) == 2                # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(["export-gguf", str(model_dir), str(tmp_path / "x.gguf"), "--type", "q4_k"]) == 2
    err = capsys.readouterr().err
    assert "q4_k" in err and "f32, f16, q8_0" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.gguf").exists()


def test_refuses_what_it_cannot_write(tmp_path):
    qwen = tiny_model("qwen2")
    with pytest.raises(ConfigError, match="LLaMA-family"):
        write_gguf(qwen, tokenizer(), tmp_path / "q.gguf")
    model, tok = tiny_llama()
    model.model.layers[1].mlp.register_parameter("extra", torch.nn.Parameter(torch.ones(3)))
    with pytest.raises(ConfigError, match=r"model\.layers\.1\.mlp\.extra"):
        write_gguf(model, tok, tmp_path / "e.gguf")
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left


def test_permute_matches_convert_hf_to_gguf():
    """``LlamaModel.permute`` of convert_hf_to_gguf.py on a small example: per head, HF's rows
    [0..d/2) and [d/2..d) (the two rotated halves) become interleaved pairs."""
    w = np.arange(2 * 8, dtype=np.float32).reshape(8, 2)  # 2 heads of head_dim 4
    rows = permute_qk(w, 2)[:, 0] // 2
    assert rows.tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert permute_qk(np.arange(8.0), 2).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


# -- the default model ----------------------------------------------------------------------------
@pytest.mark.slow
def test_default_model_per_layer_export(tmp_path):
    """SmolLM2-135M-Instruct pruned to per-layer widths with FLAP bias -> deci f16: llama.cpp continues
    fixed prompts as transformers does; the tokenizer (copied from the original GGUF) tokenises as
    transformers'; q/k permutation reproduces the original file's tensors exactly."""
    from fnprune.models.loading import load_model
    from fnprune.pruning.baselines import plan_keep
    from fnprune.pruning.statistics import collect_down_input_stats
    from fnprune.pruning.surgery import prune_model

    model, tok = load_model("smollm2-135m", device="cpu")
    original = source_gguf("smollm2-135m")
    tensors = {t.name: t for t in gguf.GGUFReader(str(original)).tensors}
    attn = model.model.layers[0].self_attn
    for name, weight, heads in (("blk.0.attn_q.weight", attn.q_proj.weight, 9), ("blk.0.attn_k.weight", attn.k_proj.weight, 3)):
        stored = gguf.quants.dequantize(tensors[name].data, tensors[name].tensor_type)
        assert np.array_equal(permute_qk(weight.detach().numpy(), heads), stored), name

    stats = collect_down_input_stats(model, tok, documents(2), max_tokens=32)
    widths = [1536] * 3 + [1536 - 32 * (i % 3 + 1) for i in range(25)] + [1536] * 2  # 2-6% of 25 layers
    prune_model(model, plan_keep(model, "flap", stats=stats, widths=widths), bias=stats)
    result = write_gguf(model, tok, tmp_path / "smollm2-deci.gguf", out_type="f16", tokenizer_gguf=original)
    assert result.architecture == "deci" and result.tokenizer_source == f"gguf:{original}"

    prompts = ["<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n", "def fibonacci(n):",
               "The capital of France is"]  # the last one has a near-tie at its 10th token
    refs = [greedy_reference(model, tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    texts = [*TEXTS, "<|im_start|>user\nhi<|im_end|>"]
    # the precise context, and the runtime's defaults (f16 KV cache, flash attention "auto")
    runs = run_llama([llama_request(result.path, refs, texts), llama_request(result.path, refs, precise=False)])
    for got in runs:
        assert got["architecture"] == "deci"
        gap, compared = check_against_llama(refs, got, TOLERANCE["smollm2", "f16"])
        assert compared >= 2
        print(f"smollm2 deci f16 (precise={got is runs[0]}): max |log p gap| {gap:.1e}")
    assert runs[0]["tokens"] == [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    print("continuations:", [tok.decode(r["continuation"]) for r in refs])
    reader = gguf.GGUFReader(str(result.path))
    assert reader.fields["deci.feed_forward_length"].contents() == widths
    assert reader.fields["tokenizer.ggml.pre"].contents() == "smollm"
    assert "output.weight" not in {t.name for t in reader.tensors}  # tied to token_embd
    assert reader.fields["tokenizer.chat_template"].contents() == tok.chat_template


def test_export_from_directory_loads_what_was_saved(tiny_exports):
    """export_gguf reads the directory through load_pruned: its model is the saved one."""
    case = tiny_exports["per-layer"]
    loaded, _ = load_pruned(case["dir"])
    ids = torch.tensor([case["refs"][0]["sequence"]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, case["model"](ids).logits, atol=1e-6)
