"""Helpers for the pruning tests (imported explicitly; not a conftest): tiny seeded models, text,
a fake FunctionalNetworks, and a reload check in a process where fnprune cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

VOCAB = 258  # fnprune.models.loading.byte_tokenizer()
FAMILIES = ("llama", "qwen2", "gpt2", "opt", "phi")

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Functional networks in language models resemble those in the brain.",
    "A short one.",
    "Pruning removes neurons; bias compensation keeps their average contribution to the output of the layer.",
    "Numbers 12345 and symbols #@! are bytes too.",
    "Another line of calibration text, somewhat longer than the others, to vary the padding.",
]


def tiny_config(family: str, n_layers: int = 4, width: int = 24, hidden: int = 16, **extra):
    from transformers import GPT2Config, LlamaConfig, OPTConfig, PhiConfig, Qwen2Config

    common = {"vocab_size": VOCAB, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": None}
    if family == "llama":
        cfg = LlamaConfig(hidden_size=hidden, intermediate_size=width, num_hidden_layers=n_layers,
                          num_attention_heads=2, num_key_value_heads=1, **common)
    elif family == "qwen2":
        cfg = Qwen2Config(hidden_size=hidden, intermediate_size=width, num_hidden_layers=n_layers,
                          num_attention_heads=2, num_key_value_heads=1, **common)
    elif family == "gpt2":
        cfg = GPT2Config(n_embd=hidden, n_inner=width, n_layer=n_layers, n_head=2, **common)
    elif family == "opt":
        cfg = OPTConfig(hidden_size=hidden, ffn_dim=width, num_hidden_layers=n_layers, num_attention_heads=2,
                        word_embed_proj_dim=hidden, **common)
    elif family == "phi":
        cfg = PhiConfig(hidden_size=hidden, intermediate_size=width, num_hidden_layers=n_layers,
                        num_attention_heads=2, **common)
    else:
        raise ValueError(family)
    for key, value in extra.items():
        setattr(cfg, key, value)
    return cfg


def tiny_model(family: str = "llama", seed: int = 0, **kwargs):
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(tiny_config(family, **kwargs))
    return model.eval()


def tokenizer():
    from fnprune.models.loading import byte_tokenizer

    return byte_tokenizer()


def documents(n: int = 12):
    from fnprune.corpus import Document

    return [Document(id=str(i), text=TEXTS[i % len(TEXTS)] * (1 + i % 3), label="test") for i in range(n)]


def sample_ids(seed: int = 0, shape=(2, 9)) -> torch.Tensor:
    return torch.randint(2, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def FakeNetworks(n_layers: int, width: int, params_per_neuron: int, total_params: int,  # noqa: N802
                 n_components: int = 4, seed: int = 0, protected=(0,)):
    """A real :class:`fnprune.analysis.networks.FunctionalNetworks` with seeded random maps: ``n_components``
    per-layer networks in every layer (one signal), every component stable, ids layer-major."""
    from fnprune.analysis.networks import FunctionalNetworks

    rng = np.random.default_rng(seed)
    k = n_components * n_layers
    n_tokens = 40
    maps = rng.normal(size=(k, 1, 1, width)) * 1.6                       # (comp, map layers, signals, width)
    return FunctionalNetworks(
        maps=maps, component_layer=np.repeat(np.arange(n_layers), n_components),
        component_index=np.tile(np.arange(n_components), n_layers), component_run=np.zeros(k, np.int64),
        stability=np.ones(k), time_courses=rng.normal(size=(n_tokens, k)), token_text=["t"] * n_tokens,
        token_doc=np.zeros(n_tokens, np.int64), token_pos=np.arange(n_tokens), documents=[{"id": "0", "label": "x",
                                                                                            "n_tokens": n_tokens}],
        info={"mode": "per-layer", "signals": ["act"], "layers": list(range(n_layers)), "threshold": 3.0,
              "model": {"n_layers": n_layers, "widths": [width] * n_layers,
                        "params_per_neuron": [params_per_neuron] * n_layers, "total_params": total_params,
                        "mlp_params": params_per_neuron * width * n_layers}})


def reload_isolated(cases: list[tuple[Path, torch.Tensor, torch.Tensor, bool]], work: Path) -> list[str]:
    """Load each ``(model_dir, ids, expected_logits, trust_remote_code)`` with AutoModelForCausalLM in
    one fresh interpreter where fnprune cannot be imported; assert the logits match (atol 1e-5).
    Returns the loaded class names."""
    work.mkdir(parents=True, exist_ok=True)
    torch.save([{"dir": str(d), "ids": i, "expected": e, "trust": t} for d, i, e, t in cases], work / "check.pt")
    repo = str(Path(__file__).resolve().parents[2])
    code = textwrap.dedent(f"""
        import importlib.util, json, os, sys
        sys.path = [p for p in sys.path if p and os.path.abspath(p) != {repo!r}]
        sys.modules["fnprune"] = None  # block an editable install too
        import torch
        from transformers import AutoModelForCausalLM
        results = []
        for case in torch.load({str(work / "check.pt")!r}):
            model = AutoModelForCausalLM.from_pretrained(case["dir"], trust_remote_code=case["trust"]).eval()
            with torch.no_grad():
                logits = model(case["ids"]).logits
            results.append({{"class": type(model).__name__,
                             "ok": bool(torch.allclose(logits, case["expected"], atol=1e-5)),
                             "max_diff": float((logits - case["expected"]).abs().max())}})
        print(json.dumps(results))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_MODULES_CACHE=str(work / "hf_modules"))
    proc = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert all(r["ok"] for r in results), results
    return [r["class"] for r in results]
