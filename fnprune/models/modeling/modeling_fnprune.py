"""Pruned causal LMs: a different MLP width per layer, added biases, fewer KV heads per layer.

This file is copied into every model directory fnprune saves that a stock transformers class
cannot hold exactly, and ``config.json`` points at it:

    "model_type": "fnpruned_<stock model_type>",     e.g. fnpruned_qwen2
    "auto_map": {"AutoConfig": "modeling_fnprune.Fnpruned<StockConfig>",
                 "AutoModelForCausalLM": "modeling_fnprune.Fnpruned<StockModel>"}

so that ``AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=True)`` works with
only ``torch`` and ``transformers`` installed (no fnprune), and the same call without
``trust_remote_code`` fails with transformers' own "contains custom code ... pass
trust_remote_code=True" error instead of building the stock class and dropping weights (a model
type stock transformers does not know is the one thing that stops ``AutoModelForCausalLM``:
it ignores ``architectures`` when a config type has a single class). It must stay
self-contained: no import of fnprune.

``Fnpruned<Name>`` is built on first access (module ``__getattr__``) for any stock class
``transformers.<Name>``: a config subclass that only renames ``model_type``, or a model subclass
whose ``__init__`` builds the stock model and then replaces the projections by ones of the stored
shapes:

- ``config.fnprune_intermediate_sizes``: list of per-layer MLP widths (None: the config's width);
- ``config.fnprune_down_bias``: True when the down projection carries a bias the stock
  architecture lacks (bias compensation of pruned neurons);
- ``config.fnprune_num_key_value_heads``: per-layer number of kept key/value heads (attention-head
  pruning removes whole GQA groups: a KV head with all its query heads), None: unchanged;
- ``config.fnprune_o_bias``: True when the attention output projection carries an added bias.

Directories written by earlier fnprune versions keep the stock ``model_type`` and their own copy
of this file; ``fnprune.load_pruned`` reads both.
"""

from __future__ import annotations

from torch import nn

CLASS_PREFIX = "Fnpruned"
MODEL_TYPE_PREFIX = "fnpruned_"


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and module.weight.dim() == 2


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks: the ModuleList of ``num_hidden_layers`` entries (else the longest)."""
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    best = None
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if n_layers is not None and len(module) == n_layers:
                return module
            if best is None or len(module) > len(best):
                best = module
    if best is None:
        raise ValueError(f"{type(model).__name__}: no list of decoder layers found")
    return best


def find_mlp(block: nn.Module) -> tuple[nn.Module, tuple[str, ...], str]:
    """(owner module, names of the projections whose rows are neurons, name of the down projection)."""
    for owner in [block] + [m for _, m in block.named_modules() if m is not block]:
        names = set(dict(owner.named_children()))
        if {"gate_proj", "up_proj", "down_proj"} <= names:
            return owner, ("gate_proj", "up_proj"), "down_proj"
        if {"c_fc", "c_proj"} <= names and _is_conv1d(owner.c_fc):
            return owner, ("c_fc",), "c_proj"
        if {"fc1", "fc2"} <= names and isinstance(owner.fc1, nn.Linear):
            return owner, ("fc1",), "fc2"
    raise ValueError(f"{type(block).__name__}: no MLP (gate/up/down, c_fc/c_proj, fc1/fc2) found")


def _resized(proj: nn.Module, n_in: int | None, n_out: int | None, bias: bool | None) -> nn.Module:
    """A new, uninitialised projection like ``proj`` with ``n_in`` inputs / ``n_out`` outputs."""
    w = proj.weight
    has_bias = getattr(proj, "bias", None) is not None if bias is None else bias
    if _is_conv1d(proj):  # weight (in, out)
        n_in = w.shape[0] if n_in is None else n_in
        n_out = w.shape[1] if n_out is None else n_out
        new = type(proj)(n_out, n_in)
        new.weight = nn.Parameter(new.weight.to(device=w.device, dtype=w.dtype))
        new.bias = nn.Parameter(new.bias.to(device=w.device, dtype=w.dtype)) if has_bias else None
        return new
    n_in = w.shape[1] if n_in is None else n_in
    n_out = w.shape[0] if n_out is None else n_out
    return nn.Linear(n_in, n_out, bias=has_bias, device=w.device, dtype=w.dtype)


def reslice_mlps(model: nn.Module, widths: list[int] | None, down_bias: bool = False) -> None:
    """Replace each layer's MLP projections by new ones of width ``widths[layer]`` (weights uninitialised).

    ``down_bias``: give the down projection a bias (if it has none). Used to build the empty
    skeleton of a pruned model before its state dict is loaded.
    """
    layers = decoder_layers(model)
    if widths is not None and len(widths) != len(layers):
        raise ValueError(f"{len(widths)} widths for {len(layers)} layers")
    for i, block in enumerate(layers):
        owner, up_names, down_name = find_mlp(block)
        down = getattr(owner, down_name)
        width = None if widths is None else int(widths[i])
        if width is not None:
            for name in up_names:
                setattr(owner, name, _resized(getattr(owner, name), None, width, None))
        if width is not None or (down_bias and getattr(down, "bias", None) is None):
            setattr(owner, down_name, _resized(down, width, None, True if down_bias else None))
        if width is not None:
            for attr in ("intermediate_size", "ffn_dim"):
                if isinstance(getattr(owner, attr, None), int):
                    setattr(owner, attr, width)


def find_attention(block: nn.Module) -> nn.Module | None:
    """The module holding ``q_proj``/``k_proj``/``v_proj``/``o_proj`` (LLaMA-style attention), or None."""
    for owner in [block] + [m for _, m in block.named_modules() if m is not block]:
        if {"q_proj", "k_proj", "v_proj", "o_proj"} <= set(dict(owner.named_children())):
            return owner
    return None


def reslice_attention(model: nn.Module, kv_heads: list[int] | None, o_bias: bool = False) -> None:
    """Replace each layer's q/k/v/o projections by ones for ``kv_heads[layer]`` KV groups (uninitialised)."""
    for i, block in enumerate(decoder_layers(model)):
        attn = find_attention(block)
        if attn is None:
            raise ValueError(f"layer {i}: no q_proj/k_proj/v_proj/o_proj attention found")
        head_dim = int(attn.head_dim)
        if kv_heads is not None:
            n_kv = int(kv_heads[i])
            n_q = n_kv * int(attn.num_key_value_groups)
            attn.q_proj = _resized(attn.q_proj, None, n_q * head_dim, None)
            attn.k_proj = _resized(attn.k_proj, None, n_kv * head_dim, None)
            attn.v_proj = _resized(attn.v_proj, None, n_kv * head_dim, None)
            attn.o_proj = _resized(attn.o_proj, n_q * head_dim, None, True if o_bias else None)
        elif o_bias and attn.o_proj.bias is None:
            attn.o_proj = _resized(attn.o_proj, None, None, True)


def _pruned_init(self, config, *args, **kwargs):
    self._fnprune_base.__init__(self, config, *args, **kwargs)
    widths = getattr(config, "fnprune_intermediate_sizes", None)
    down_bias = bool(getattr(config, "fnprune_down_bias", False))
    if widths is not None or down_bias:
        reslice_mlps(self, widths, down_bias)
    kv_heads = getattr(config, "fnprune_num_key_value_heads", None)
    o_bias = bool(getattr(config, "fnprune_o_bias", False))
    if kv_heads is not None or o_bias:
        reslice_attention(self, kv_heads, o_bias)


def make_pruned_class(base: type, name: str | None = None, config_class: type | None = None) -> type:
    """A subclass of the stock ``base`` model class that builds the pruned projections.

    ``config_class``: the config class it declares (the ``Fnpruned`` config of a saved directory);
    None keeps the stock one.
    """
    attrs = {"__init__": _pruned_init, "_fnprune_base": base, "__module__": __name__}
    if config_class is not None:
        attrs["config_class"] = config_class
    return type(name or f"{CLASS_PREFIX}{base.__name__}", (base,), attrs)


def make_pruned_config_class(base: type, name: str | None = None) -> type:
    """A subclass of the stock config class ``base`` with a model type stock transformers does not know."""
    attrs = {"model_type": MODEL_TYPE_PREFIX + base.model_type, "_fnprune_base": base, "__module__": __name__}
    return type(name or f"{CLASS_PREFIX}{base.__name__}", (base,), attrs)


def __getattr__(name: str) -> type:
    """``Fnpruned<Name>`` for a stock ``transformers.<Name>`` config or model class (what ``auto_map`` names)."""
    if not name.startswith(CLASS_PREFIX) or name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import transformers

    base = getattr(transformers, name[len(CLASS_PREFIX):], None)
    if isinstance(base, type) and issubclass(base, transformers.PretrainedConfig):
        cls = make_pruned_config_class(base, name)
    elif isinstance(base, type) and issubclass(base, transformers.PreTrainedModel):
        cls = make_pruned_class(base, name, __getattr__(CLASS_PREFIX + base.config_class.__name__))
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r} (transformers has no class "
                             f"{name[len(CLASS_PREFIX):]!r})")
    globals()[name] = cls
    return cls
