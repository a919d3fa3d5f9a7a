"""A saved pruned model loads exactly with stock transformers, or stock loading fails loudly.

For every architecture the MLP adapters accept (README: LLaMA, Mistral, Qwen2/3, Gemma 1/2/3, GPT-2,
OPT, Phi), with uniform and per-layer widths, with and without an added ``down`` bias: the directory
:func:`fnprune.models.pruned_io.save_pruned` writes -- and the web app's zip of it -- loads in a Python that
cannot import fnprune with the logits of :func:`fnprune.models.pruned_io.load_pruned`:

- stock directories with plain ``AutoModelForCausalLM.from_pretrained(dir)``, no key missing,
  unexpected or resized (an added bias uses the family's own switch, ``mlp_bias`` for LLaMA);
- the others with ``trust_remote_code=True``, while plain ``from_pretrained(dir)`` is refused.
"""

from __future__ import annotations

import io
import json
import os
import site
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from prune_helpers import FAMILIES as HELPER_FAMILIES
from prune_helpers import VOCAB, documents, sample_ids, tiny_model, tokenizer

from fnprune.errors import ConfigError
from fnprune.models.mlp import find_mlps
from fnprune.models.pruned_io import load_pruned, read_pruning_info, save_pruned
from fnprune.pruning.heads import collect_attention_stats, prune_heads
from fnprune.pruning.statistics import collect_down_input_stats
from fnprune.pruning.surgery import prune_model

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gpt2", "opt", "phi")
MLP_BIAS_SWITCH = {"llama"}  # config has mlp_bias: an added down bias stays a stock architecture
NATIVE_DOWN_BIAS = {"gpt2", "opt", "phi"}  # down has a bias already: pruning adds none
PER_LAYER = [np.arange(24), np.arange(0, 24, 2), np.arange(5), np.array([1, 2, 3])]
UNIFORM = np.tile(np.arange(24) % 3 != 1, (4, 1))  # 16 of 24 neurons in every layer

_CONFIGS = {"mistral": "MistralConfig", "qwen3": "Qwen3Config", "gemma": "GemmaConfig",
            "gemma2": "Gemma2Config", "gemma3": "Gemma3TextConfig"}


def tiny_any(family: str, seed: int = 0, **extra):
    """A tiny seeded model of any family in :data:`FAMILIES` (4 layers, MLP width 24, hidden 16)."""
    import transformers
    from transformers import AutoModelForCausalLM

    if family in HELPER_FAMILIES:
        return tiny_model(family, seed, **extra)
    kwargs = {"vocab_size": VOCAB, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": None, "hidden_size": 16,
              "intermediate_size": 24, "num_hidden_layers": 4, "num_attention_heads": 2, "num_key_value_heads": 1,
              "head_dim": 8, **extra}
    if family in ("gemma2", "gemma3"):  # a window shorter than the sample: the sliding layers matter
        kwargs.update(sliding_window=4, layer_types=["sliding_attention", "full_attention"] * 2)
    config = getattr(transformers, _CONFIGS[family])(**kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config).eval()


def pruned(family: str, per_layer: bool, bias: bool, heads: list | None = None):
    """A tiny model with MLP neurons pruned (and KV groups, of 2, when ``heads`` is given)."""
    kwargs = {"num_attention_heads": 4, "num_key_value_heads": 2} if heads is not None else {}
    model, tok = tiny_any(family, **kwargs), tokenizer()
    if heads is not None:
        prune_heads(model, heads, bias=collect_attention_stats(model, tok, documents(4), max_tokens=32)
                    if bias else None)
    stats = collect_down_input_stats(model, tok, documents(4), max_tokens=32) if bias else None
    return prune_model(model, PER_LAYER if per_layer else UNIFORM, bias=stats), tok


def expects_remote(family: str, per_layer: bool, bias: bool) -> bool:
    return per_layer or (bias and family not in MLP_BIAS_SWITCH | NATIVE_DOWN_BIAS)


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def check_saved(model, tok, out: Path, remote: bool) -> torch.Tensor:
    """Checks on the directory itself; returns ``load_pruned``'s logits (equal to ``model``'s)."""
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"].startswith("fnpruned_") == remote
    assert ("auto_map" in config) == remote == (out / "modeling_fnprune.py").is_file()
    if not remote:
        assert not [k for k in config if k.startswith("fnprune_")], config
    assert read_pruning_info(out)["trust_remote_code"] == remote
    ids = sample_ids()
    loaded, _ = load_pruned(out)
    expected = logits(loaded, ids)
    assert torch.allclose(expected, logits(model, ids), atol=1e-5, rtol=0)
    return expected


# -- without a subprocess -------------------------------------------------------------------------
def test_added_bias_uses_the_stock_switch_or_is_refused(tmp_path, monkeypatch):
    """Uniform widths + FLAP bias: LLaMA saves ``mlp_bias=True`` (zero gate/up biases) and loads exactly
    with the stock class; Qwen2 has no switch, so plain ``from_pretrained`` refuses the directory."""
    from transformers import AutoModelForCausalLM, dynamic_module_utils

    monkeypatch.setattr(dynamic_module_utils, "TIME_OUT_REMOTE_CODE", 0)  # refuse, never prompt
    ids = sample_ids()
    model, tok = pruned("llama", per_layer=False, bias=True)
    out = save_pruned(model, tok, tmp_path / "llama")
    config = json.loads((out / "config.json").read_text())
    assert config["mlp_bias"] is True and config["model_type"] == "llama" and "auto_map" not in config
    assert read_pruning_info(out)["stock_switches"] == ["mlp_bias"]
    stock, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    assert type(stock).__name__ == "LlamaForCausalLM"
    assert torch.equal(stock.model.layers[1].mlp.gate_proj.bias, torch.zeros(16))
    assert torch.allclose(logits(stock, ids), logits(model, ids), atol=1e-5, rtol=0)

    model, tok = pruned("qwen2", per_layer=False, bias=True)
    out = save_pruned(model, tok, tmp_path / "qwen2")
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        AutoModelForCausalLM.from_pretrained(out)
    check_saved(model, tok, out, remote=True)


def test_uniform_heads_with_bias_use_attention_bias(tmp_path):
    """An added o_proj bias on LLaMA: ``attention_bias=True`` with zero q/k/v biases, a stock class."""
    from transformers import AutoModelForCausalLM

    model, tok = pruned("llama", per_layer=False, bias=True, heads=[[1]] * 4)
    out = save_pruned(model, tok, tmp_path / "m")
    config = json.loads((out / "config.json").read_text())
    assert config["attention_bias"] is True and config["mlp_bias"] is True
    assert config["num_key_value_heads"] == 1 and "auto_map" not in config
    stock, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    assert torch.allclose(logits(stock, sample_ids()), check_saved(model, tok, out, remote=False), atol=1e-5, rtol=0)


def test_load_pruned_reads_earlier_formats(tmp_path):
    """Directories of earlier fnprune versions: stock model type, ``fnprune_*`` keys, auto_map to a
    ``Fnpruned<Stock>`` class (also for uniform widths with an added down bias)."""
    ids = sample_ids()
    for n, (family, per_layer, bias) in enumerate([("llama", True, True), ("llama", False, True),
                                                   ("qwen2", True, False), ("gpt2", False, False)]):
        model, tok = pruned(family, per_layer, bias)
        out = tmp_path / f"m{n}"
        model.save_pretrained(out)  # what earlier versions wrote: the live config, plus the edits below
        tok.save_pretrained(out)
        config = json.loads((out / "config.json").read_text())
        assert config["model_type"] == family and ("fnprune_intermediate_sizes" in config)
        if per_layer or bias:
            config["auto_map"] = {"AutoModelForCausalLM": f"modeling_fnprune.Fnpruned{type(model).__name__}"}
        (out / "config.json").write_text(json.dumps(config))
        loaded, loaded_tok = load_pruned(out)
        assert [a.width for a in find_mlps(loaded)] == [a.width for a in find_mlps(model)]
        assert torch.allclose(logits(loaded, ids), logits(model, ids), atol=1e-5, rtol=0)
        assert loaded_tok("abc")["input_ids"] == tok("abc")["input_ids"]


def test_resave_a_loaded_pruned_model(tmp_path):
    """A model from load_pruned (fnprune's config class, or zero gate/up biases) saves again the same way."""
    ids = sample_ids()
    for family, remote in (("qwen2", True), ("llama", False)):
        model, tok = pruned(family, per_layer=False, bias=True)
        first, _ = load_pruned(save_pruned(model, tok, tmp_path / f"{family}-1"))
        out = save_pruned(first, tok, tmp_path / f"{family}-2")
        config = json.loads((out / "config.json").read_text())
        assert config["model_type"] == ("fnpruned_" if remote else "") + family
        assert torch.allclose(check_saved(first, tok, out, remote), logits(model, ids), atol=1e-5, rtol=0)


def test_remote_save_of_a_class_outside_transformers(tmp_path):
    from transformers import LlamaForCausalLM

    class MyLlama(LlamaForCausalLM):
        pass

    model = MyLlama(tiny_any("llama").config)
    prune_model(model, PER_LAYER)
    with pytest.raises(ConfigError, match="not a transformers class"):
        save_pruned(model, tokenizer(), tmp_path / "m")
    assert not (tmp_path / "m").exists()


# -- in a Python that cannot import fnprune ------------------------------------------------------------
_ISOLATED = textwrap.dedent("""
    import json, sys
    sys.path[:0] = json.loads(sys.argv[1])
    try:
        import fnprune  # noqa
        blocked = False
    except ImportError:
        blocked = True
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    results = []
    for case in torch.load(sys.argv[2]):
        result = {"dir": case["dir"]}
        if case["remote"]:
            try:
                AutoModelForCausalLM.from_pretrained(case["dir"])
                result["plain"] = "loaded"
            except ValueError as err:
                result["plain"] = "refused" if "trust_remote_code=True" in str(err) else str(err)[:300]
        model, info = AutoModelForCausalLM.from_pretrained(case["dir"], trust_remote_code=case["remote"],
                                                           output_loading_info=True)
        tok = AutoTokenizer.from_pretrained(case["dir"], trust_remote_code=case["remote"])
        with torch.no_grad():
            diff = (model(case["ids"]).logits - case["expected"]).abs().max()
        result.update({"class": type(model).__name__, "max_diff": float(diff), "tokens": tok("abc")["input_ids"],
                       "info": {k: sorted(map(str, v)) for k, v in info.items() if v}})
        results.append(result)
    with open(sys.argv[3], "w") as out:  # stdout carries transformers' own messages
        json.dump({"fnprune_blocked": blocked, "results": results}, out)
""")


def load_without_fnprune(cases: list[dict], work: Path) -> dict[str, dict]:
    """Load each ``{"dir", "ids", "expected", "remote"}`` with AutoModelForCausalLM (and AutoTokenizer)
    in one ``python -I -S`` process: site-packages on the path but no ``.pth`` file run, so fnprune's
    editable install is invisible. Returns the results by directory."""
    work.mkdir(parents=True, exist_ok=True)
    torch.save(cases, work / "cases.pt")
    paths = [p for p in dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"]]) if os.path.isdir(p)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(work / "hf_modules"))
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", _ISOLATED, json.dumps(paths), str(work / "cases.pt"),
                           str(work / "results.json")],
                          cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((work / "results.json").read_text())
    assert report["fnprune_blocked"], "the check process could import fnprune"
    return {r["dir"]: r for r in report["results"]}


def unzip_download(model_dir: Path, dest: Path) -> Path:
    """The web app's model download (``zip_stream``), unpacked under ``dest``."""
    from backend.app.services.prunings import zip_stream

    with zipfile.ZipFile(io.BytesIO(b"".join(zip_stream(model_dir)))) as archive:
        archive.extractall(dest)
    return dest / "model"


CASES = [(family, per_layer, bias) for family in FAMILIES for per_layer in (False, True) for bias in (False, True)]
HEAD_CASES = [("llama", [[1]] * 4, True), ("llama", [[0, 1], [1], [0], [0, 1]], True), ("qwen2", [[1]] * 4, True)]


@pytest.fixture(scope="module")
def isolated_loads(tmp_path_factory) -> dict[str, dict]:
    """Every case saved (and a few as the web app's zip, key ``zip-<name>``), all loaded in one process
    without fnprune; results by case name."""
    root = tmp_path_factory.mktemp("saved")
    ids, tokens = sample_ids(), tokenizer()("abc")["input_ids"]
    named = [(case_name(f, p, b), f, p, b, None) for f, p, b in CASES]
    named += [(f"{f}-heads{n}-{'bias' if b else 'nobias'}", f, False, b, h) for n, (f, h, b) in enumerate(HEAD_CASES)]
    cases = []
    for name, family, per_layer, bias, heads in named:
        model, tok = pruned(family, per_layer, bias, heads)
        per_layer_heads = heads is not None and len({len(h) for h in heads}) > 1
        remote = expects_remote(family, per_layer or per_layer_heads, bias)
        out = save_pruned(model, tok, root / name)
        case = {"name": name, "dir": str(out), "ids": ids, "expected": check_saved(model, tok, out, remote),
                "remote": remote, "tokens_expected": tokens}
        cases.append(case)
        if name in ZIPPED:
            cases.append({**case, "name": f"zip-{name}", "dir": str(unzip_download(out, root / f"zip-{name}"))})
    results = load_without_fnprune(cases, root / "work")
    return {c["name"]: {**results[c["dir"]], "remote": c["remote"], "tokens_expected": c["tokens_expected"]}
            for c in cases}


def case_name(family: str, per_layer: bool, bias: bool) -> str:
    return f"{family}-{'layers' if per_layer else 'uniform'}-{'bias' if bias else 'nobias'}"


ZIPPED = ("llama-uniform-bias", "qwen2-uniform-bias", "gemma3-layers-bias", "gpt2-layers-nobias")


def _check(result: dict) -> None:
    assert result["info"] == {}, result  # no missing, unexpected or resized tensor
    assert result["max_diff"] <= 1e-5, result
    assert result["tokens"] == result["tokens_expected"]
    assert result["class"].startswith("Fnpruned") == result["remote"]
    if result["remote"]:
        assert result["plain"] == "refused", result


@pytest.mark.slow
@pytest.mark.parametrize("family,per_layer,bias", CASES)
def test_saved_dir_loads_without_fnprune(isolated_loads, family, per_layer, bias):
    result = isolated_loads[case_name(family, per_layer, bias)]
    assert result["remote"] == expects_remote(family, per_layer, bias)
    _check(result)


@pytest.mark.slow
def test_head_pruned_dirs_load_without_fnprune(isolated_loads):
    for n, (family, _heads, bias) in enumerate(HEAD_CASES):
        _check(isolated_loads[f"{family}-heads{n}-{'bias' if bias else 'nobias'}"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ZIPPED)
def test_web_download_zip_loads_without_fnprune(isolated_loads, name):
    assert isolated_loads[f"zip-{name}"]["remote"] == isolated_loads[name]["remote"]
    _check(isolated_loads[f"zip-{name}"])


def test_bias_without_config_flag_is_never_dropped(tmp_path):
    """A down bias added without ``fnprune_down_bias`` (not through prune_model): LLaMA still saves the
    stock class with ``mlp_bias``; Qwen2, which only the modelling file could hold, is refused."""
    from transformers import AutoModelForCausalLM

    ids = sample_ids()
    for family in ("llama", "qwen2"):
        model, tok = pruned(family, per_layer=False, bias=False)
        for adapter in find_mlps(model):
            adapter.down.bias = torch.nn.Parameter(torch.linspace(-1, 1, adapter.hidden_size))
        assert not getattr(model.config, "fnprune_down_bias", None)
        if family == "qwen2":
            with pytest.raises(ConfigError, match="does not describe its tensors"):
                save_pruned(model, tok, tmp_path / family)
            assert not (tmp_path / family).exists()
            continue
        out = save_pruned(model, tok, tmp_path / family)
        stock, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
        assert not any(info.values()), info
        assert torch.allclose(logits(stock, ids), check_saved(model, tok, out, remote=False), atol=1e-5, rtol=0)
