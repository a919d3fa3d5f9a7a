"""Write a pruned LLaMA-family model as one GGUF file for llama.cpp (and Ollama, LM Studio, node-llama-cpp).

    export_gguf(model_dir, "model.gguf", out_type="f16")   # a directory written by save_pruned

Architecture, from the model's own tensors (not its config):

- ``llama``: every layer has the same MLP width and the same query / key-value head counts;
- ``deci`` (llama.cpp's Nemotron-NAS architecture, ``llama_model_deci``): the same LLaMA block, with
  ``deci.feed_forward_length``, ``deci.attention.head_count`` and ``deci.attention.head_count_kv`` as
  per-layer arrays: fnprune's per-layer widths and per-layer KV-head groups.

Both graphs in the pinned runtime (node-llama-cpp 3.21.1, llama.cpp ``v0.4.0`` tag of its bundle: see
``src/models/llama.cpp``, ``src/models/deci.cpp``) load optional ``attn_q/k/v/output.bias`` and
``ffn_gate/up/down.bias`` and add them, so a FLAP / least-squares ``down`` bias and an added ``o_proj``
bias are written as they are. Biases that are exactly zero (the zero gate/up and q/k/v biases a stock
``mlp_bias`` / ``attention_bias`` switch needs) are left out, which is exact. A tensor with no GGUF
name is refused (:class:`ConfigError` naming it): no weight is ever dropped.

LLaMA's ``q_proj`` / ``k_proj`` rows are permuted as llama.cpp's ``convert_hf_to_gguf.py``
(``LlamaModel.permute``) does: Hugging Face rotates the two halves of a head, GGUF adjacent pairs.

Tokenizer: when the model came from a GGUF (``pruning.json``'s ``source_model`` is ``smollm2-135m`` or a
``.gguf`` file) and that file's token list equals the directory's tokenizer, its ``tokenizer.*``
metadata (tokens, token types, merges, special ids, pre-tokenizer, chat template) is copied; otherwise
it is built from the Hugging Face tokenizer (GPT-2-style byte-level BPE only).

Types (``out_type``): ``f32``; ``f16`` (matrices in f16, norms and biases f32, as
``convert_hf_to_gguf.py``); ``q8_0`` (matrices whose rows are a multiple of 32 quantised with
``gguf.quants``, others f16). The installed ``gguf`` package also quantises bf16, q4_0, q4_1, q5_0,
q5_1 but not the k-quants; fnprune offers the three types its tests run in llama.cpp. For q4_k and
the like, run llama.cpp's ``llama-quantize`` on the f16 file.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, ModelLoadError
from ..io import atomic_path
from .modeling.modeling_fnprune import MODEL_TYPE_PREFIX

GGUF_TYPES = ("f32", "f16", "q8_0")
SUPPORTED_FAMILIES = ("llama",)


@dataclass
class GgufExport:
    """What :func:`write_gguf` wrote."""

    path: Path
    architecture: str                      # "llama" | "deci"
    out_type: str                          # "f32" | "f16" | "q8_0"
    tokenizer_source: str                  # "gguf:<path>" or "huggingface"
    n_bytes: int
    tensor_types: dict[str, int] = field(default_factory=dict)   # ggml type name -> number of tensors
    skipped_zero_biases: int = 0

    def summary(self) -> str:
        types = ", ".join(f"{n} {t}" for t, n in sorted(self.tensor_types.items()))
        return (f"{self.path} ({self.n_bytes / 2**20:.1f} MiB, architecture {self.architecture}, {types}; "
                f"tokenizer from {self.tokenizer_source})")


@dataclass
class _Geometry:
    """Per-layer shapes read from the tensors."""

    head_dim: int
    n_head: list[int]
    n_head_kv: list[int]
    n_ff: list[int]

    @property
    def uniform(self) -> bool:
        return len(set(self.n_head)) == 1 and len(set(self.n_head_kv)) == 1 and len(set(self.n_ff)) == 1


# -- model checks -------------------------------------------------------------------------------
def _family(config) -> str:
    return str(getattr(config, "model_type", "")).removeprefix(MODEL_TYPE_PREFIX)


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    scaling = getattr(config, "rope_scaling", None) or {}
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if rope_type != "default":
        raise ConfigError(f"GGUF export supports plain RoPE only; this model uses rope type {rope_type!r}")
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    if theta is None:
        raise ConfigError("the model config has no rope_theta")
    return float(theta)


def _geometry(model: nn.Module) -> _Geometry:
    config = model.config
    if _family(config) not in SUPPORTED_FAMILIES:
        raise ConfigError(f"GGUF export supports LLaMA-family models ({', '.join(SUPPORTED_FAMILIES)}); "
                          f"this one is {_family(config)!r}")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise ConfigError(f"GGUF export needs a SiLU-gated MLP; this model uses {config.hidden_act!r}")
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    n_head, n_head_kv, n_ff = [], [], []
    for i, layer in enumerate(model.model.layers):
        attn, mlp = layer.self_attn, layer.mlp
        q, k = attn.q_proj.out_features, attn.k_proj.out_features
        if q % head_dim or k % head_dim or k == 0:
            raise ConfigError(f"layer {i}: q/k projections of {q}/{k} rows are not whole heads of {head_dim}")
        n_head.append(q // head_dim)
        n_head_kv.append(k // head_dim)
        n_ff.append(int(mlp.gate_proj.out_features))
    return _Geometry(head_dim, n_head, n_head_kv, n_ff)


# -- tensors --------------------------------------------------------------------------------------
def permute_qk(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Hugging Face q/k rows (``(n_heads * head_dim, ...)``, halves rotated) -> GGUF order (pairs rotated);
    ``convert_hf_to_gguf.py``'s ``LlamaModel.permute``. Works for a weight or a bias."""
    shape = weight.shape
    return (weight.reshape(n_heads, 2, shape[0] // n_heads // 2, *shape[1:])
            .swapaxes(1, 2).reshape(shape))


def _gguf_name(key: str) -> tuple[str, int | None, str] | None:
    """``model.layers.3.mlp.down_proj.bias`` -> (MODEL_TENSOR name, 3, "bias"); None when unmapped."""
    top = {"model.embed_tokens.weight": ("TOKEN_EMBD", None, "weight"),
           "model.norm.weight": ("OUTPUT_NORM", None, "weight"),
           "lm_head.weight": ("OUTPUT", None, "weight")}
    if key in top:
        return top[key]
    per_layer = {"input_layernorm": "ATTN_NORM", "post_attention_layernorm": "FFN_NORM",
                 "self_attn.q_proj": "ATTN_Q", "self_attn.k_proj": "ATTN_K", "self_attn.v_proj": "ATTN_V",
                 "self_attn.o_proj": "ATTN_OUT", "mlp.gate_proj": "FFN_GATE", "mlp.up_proj": "FFN_UP",
                 "mlp.down_proj": "FFN_DOWN"}
    parts = key.split(".")
    if len(parts) < 5 or parts[:2] != ["model", "layers"] or not parts[2].isdigit():
        return None
    module, kind = ".".join(parts[3:-1]), parts[-1]
    if module not in per_layer or kind not in ("weight", "bias"):
        return None
    if kind == "bias" and per_layer[module].endswith("NORM"):
        return None
    return per_layer[module], int(parts[2]), kind


def _encode(data: np.ndarray, out_type: str):
    """(array to write, ggml type) for one float32 tensor."""
    import gguf

    q = gguf.GGMLQuantizationType
    if data.ndim == 1 or out_type == "f32":  # norms and biases stay f32 (as convert_hf_to_gguf.py)
        return data.astype(np.float32), q.F32
    if out_type == "q8_0" and data.shape[-1] % gguf.GGML_QUANT_SIZES[q.Q8_0][0] == 0:
        return gguf.quants.quantize(data, q.Q8_0), q.Q8_0
    return data.astype(np.float16), q.F16


def _tensors(model: nn.Module, geometry: _Geometry, arch) -> tuple[list[tuple[str, np.ndarray]], int]:
    """GGUF-named float32 arrays in writing order, and the number of all-zero biases left out."""
    import gguf

    state = model.state_dict()
    tied = bool(getattr(model.config, "tie_word_embeddings", False)) and "lm_head.weight" in state and (
        state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()
        or torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"]))
    allowed = set(gguf.MODEL_TENSORS[arch])
    out, skipped = [], 0
    for key, tensor in state.items():
        if tied and key == "lm_head.weight":
            continue
        mapped = _gguf_name(key)
        if mapped is None or getattr(gguf.MODEL_TENSOR, mapped[0]) not in allowed:
            raise ConfigError(f"cannot export tensor {key!r}: llama.cpp's {arch.name.lower()} architecture has "
                              "no place for it (nothing written)")
        kind_name, layer, kind = mapped
        data = tensor.detach().to(device="cpu", dtype=torch.float32).numpy()
        if kind == "bias" and not data.any():
            skipped += 1  # a missing optional bias adds nothing: exact
            continue
        if kind_name == "ATTN_Q":
            data = permute_qk(data, geometry.n_head[layer])
        elif kind_name == "ATTN_K":
            data = permute_qk(data, geometry.n_head_kv[layer])
        base = gguf.TENSOR_NAMES[getattr(gguf.MODEL_TENSOR, kind_name)]
        out.append((f"{base.format(bid=layer) if layer is not None else base}.{kind}", data))
    return out, skipped


# -- tokenizer ------------------------------------------------------------------------------------
def _hf_tokens(tokenizer, n_vocab: int) -> list[str]:
    return tokenizer.convert_ids_to_tokens(list(range(min(n_vocab, len(tokenizer)))))


def _copy_gguf_tokenizer(writer, source: Path, tokenizer, n_vocab: int) -> bool:
    """Copy every ``tokenizer.*`` key of ``source`` when its token list is the tokenizer's (and the
    model's vocabulary size); False (nothing written) otherwise."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    tokens_field = reader.fields.get("tokenizer.ggml.tokens")
    if tokens_field is None:
        return False
    tokens = tokens_field.contents()
    if len(tokens) != n_vocab or tokens != _hf_tokens(tokenizer, n_vocab):
        return False
    for key, fld in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = fld.types[0]
        sub_type = fld.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, fld.contents(), vtype, sub_type=sub_type)
    return True


def _pre_tokenizer_name(spec: dict | None, has_merges: bool) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for a tokenizers.json pre-tokenizer (the structures whose
    llama.cpp regex is the same split); ConfigError for any other."""
    def byte_level(p: dict) -> bool:
        return p.get("type") == "ByteLevel" and not p.get("add_prefix_space", False)

    if spec and byte_level(spec) and spec.get("use_regex", True):
        return "gpt-2"
    if spec and spec.get("type") == "Sequence":
        parts = spec.get("pretokenizers", [])
        if (len(parts) == 2 and parts[0].get("type") == "Digits" and parts[0].get("individual_digits")
                and byte_level(parts[1]) and parts[1].get("use_regex", True)):
            return "smollm"  # digits one by one, then GPT-2's split
    if spec and byte_level(spec) and not has_merges:
        return "default"  # no merges: every split gives the same byte tokens
    raise ConfigError(f"the tokenizer's pre-tokenizer {json.dumps(spec)[:200]} has no llama.cpp equivalent "
                      "fnprune knows (GPT-2 byte level, SmolLM digits + byte level)")


def _special_ids_and_flags(tokenizer) -> tuple[dict[str, int], dict[str, bool]]:
    ids = {typ: getattr(tokenizer, f"{typ}_token_id", None) for typ in ("bos", "eos", "unk", "pad")}
    ids = {typ: int(i) for typ, i in ids.items() if isinstance(i, int)}
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    extra = len(full) - len(plain)
    add_bos = extra > 0 and "bos" in ids and full[0] == ids["bos"]
    add_eos = extra > 0 and "eos" in ids and full[-1] == ids["eos"]
    return ids, {"bos": add_bos, "eos": add_eos}


def _write_hf_tokenizer(writer, tokenizer, n_vocab: int) -> None:
    """GPT-2-style byte-level BPE from the Hugging Face tokenizer (what convert_hf_to_gguf.py writes)."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError("GGUF export needs a fast (tokenizers) tokenizer in the model directory")
    spec = json.loads(backend.to_str())
    model = spec.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback") or (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise ConfigError("GGUF export supports GPT-2-style byte-level BPE tokenizers only "
                          f"(this one: {model.get('type')}, decoder {(spec.get('decoder') or {}).get('type')})")
    if spec.get("normalizer"):
        raise ConfigError(f"the tokenizer's normalizer {spec['normalizer'].get('type')} has no GGUF equivalent")
    if len(tokenizer) > n_vocab:
        raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens, the model's embedding only {n_vocab} rows")
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    tokens, types = [], []
    for i, text in enumerate(_hf_tokens(tokenizer, n_vocab)):
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(text)
            types.append(gguf.TokenType.NORMAL if i not in added else
                         gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
    for i in range(len(tokens), n_vocab):  # embedding rows beyond the tokenizer (padding)
        tokens.append(f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    pre = _pre_tokenizer_name(spec.get("pre_tokenizer"), bool(merges))
    if not merges:
        # llama.cpp needs the merges key and gguf cannot write an empty array: one merge of a token of
        # two or more characters with itself can never apply (BPE starts from single characters).
        long_token = next((t for t in tokens if len(t) > 1 and " " not in t), None)
        if long_token is None:
            raise ConfigError("the tokenizer has no merges and no multi-character token; cannot write its merges")
        merges = [f"{long_token} {long_token}"]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    ids, add = _special_ids_and_flags(tokenizer)
    for typ, token_id in ids.items():
        getattr(writer, f"add_{typ}_token_id")(token_id)
    writer.add_add_bos_token(add["bos"])
    writer.add_add_eos_token(add["eos"])
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)


def source_gguf(source_model: str | None) -> Path | None:
    """The GGUF file a model was pruned from (``pruning.json``'s ``source_model``), or None."""
    if not source_model:
        return None
    from .loading import DEFAULT_MODEL, _smollm2_gguf

    if source_model == DEFAULT_MODEL:
        return _smollm2_gguf()
    path = Path(os.path.expanduser(source_model))
    return path if path.suffix == ".gguf" and path.is_file() else None


# -- writing --------------------------------------------------------------------------------------
def _check_type(out_type: str) -> None:
    if out_type not in GGUF_TYPES:
        raise ConfigError(f"GGUF type {out_type!r} is not supported; choose one of {', '.join(GGUF_TYPES)} "
                          "(for k-quants run llama.cpp's llama-quantize on the f16 file)", field="out_type")


def _check_out_path(out_path: Path, overwrite: bool) -> None:
    if out_path.suffix != ".gguf":
        raise ConfigError(f"the output file must end in .gguf, got {out_path.name}")
    if out_path.exists() and not overwrite:
        raise ConfigError(f"{out_path} already exists (use overwrite)")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create {out_path.parent}: {err.strerror or err}") from err
    if not os.access(out_path.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"output directory {out_path.parent} is not writable")


@torch.no_grad()
def write_gguf(model: nn.Module, tokenizer, out_path: str | os.PathLike, *, out_type: str = "f16",
               tokenizer_gguf: str | os.PathLike | None = None, name: str | None = None,
               overwrite: bool = False) -> GgufExport:
    """Write ``model`` (a LLaMA-family causal LM, pruned or not) and ``tokenizer`` as a GGUF file.

    ``tokenizer_gguf``: a GGUF file whose ``tokenizer.*`` metadata to copy when its tokens are the
    tokenizer's (the file the model was loaded from). Written to a temporary file and renamed.
    Raises :class:`ConfigError` for an unsupported type, family, tensor or tokenizer (nothing written).
    """
    import gguf

    _check_type(out_type)
    out_path = Path(out_path).expanduser().absolute()
    _check_out_path(out_path, overwrite)
    config = model.config
    geometry = _geometry(model)
    arch = gguf.MODEL_ARCH.LLAMA if geometry.uniform else gguf.MODEL_ARCH.DECI
    tensors, skipped = _tensors(model, geometry, arch)
    rope_theta = _rope_theta(config)
    n_vocab = int(model.model.embed_tokens.weight.shape[0])
    try:
        with atomic_path(out_path) as tmp:  # written beside out_path, renamed into place when complete
            writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[arch])
            writer.add_name(name or str(getattr(config, "_name_or_path", "") or "fnprune model"))
            writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                                  "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[out_type])
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            writer.add_block_count(len(geometry.n_ff))
            writer.add_context_length(int(config.max_position_embeddings))
            writer.add_embedding_length(int(config.hidden_size))
            pick = (lambda v: v[0]) if geometry.uniform else list
            writer.add_feed_forward_length(pick(geometry.n_ff))
            writer.add_head_count(pick(geometry.n_head))
            writer.add_head_count_kv(pick(geometry.n_head_kv))
            writer.add_key_length(geometry.head_dim)   # llama.cpp would otherwise take hidden / layer 0's heads
            writer.add_value_length(geometry.head_dim)
            writer.add_rope_dimension_count(geometry.head_dim)
            writer.add_rope_freq_base(rope_theta)
            writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
            writer.add_vocab_size(n_vocab)
            source = None
            if tokenizer_gguf is not None and _copy_gguf_tokenizer(writer, Path(tokenizer_gguf), tokenizer, n_vocab):
                source = f"gguf:{tokenizer_gguf}"
            else:
                _write_hf_tokenizer(writer, tokenizer, n_vocab)
                source = "huggingface"
            types = Counter()
            for tensor_name, data in tensors:
                encoded, qtype = _encode(data, out_type)
                writer.add_tensor(tensor_name, encoded, raw_dtype=qtype)
                types[qtype.name] += 1
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
    except OSError as err:
        raise ConfigError(f"cannot write {out_path}: {err.strerror or err}") from err
    return GgufExport(path=out_path, architecture=gguf.MODEL_ARCH_NAMES[arch], out_type=out_type,
                      tokenizer_source=source, n_bytes=out_path.stat().st_size, tensor_types=dict(types),
                      skipped_zero_biases=skipped)


def export_gguf(model_dir: str | os.PathLike, out_path: str | os.PathLike, *, out_type: str = "f16",
                overwrite: bool = False) -> GgufExport:
    """Write the model directory ``model_dir`` (from :func:`fnprune.models.pruned_io.save_pruned`, or a stock
    LLaMA directory) as the GGUF file ``out_path``; see :func:`write_gguf`."""
    from .pruned_io import load_pruned, read_pruning_info

    _check_type(out_type)  # before loading the model
    _check_out_path(Path(out_path).expanduser().absolute(), overwrite)
    model, tokenizer = load_pruned(model_dir, dtype=torch.float32)
    if tokenizer is None:
        raise ModelLoadError(f"{model_dir} has no tokenizer files; GGUF needs the tokenizer")
    source = read_pruning_info(model_dir).get("source_model")
    name = f"{source} pruned by fnprune" if source else Path(model_dir).name
    return write_gguf(model, tokenizer, out_path, out_type=out_type, tokenizer_gguf=source_gguf(source),
                      name=name, overwrite=overwrite)
