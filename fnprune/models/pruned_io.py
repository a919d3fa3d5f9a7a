"""Save and load pruned models.

:func:`save_pruned` writes a Hugging Face model directory (config.json, model.safetensors,
tokenizer files, ``pruning.json``) to a temporary sibling and renames it into place, so a model
directory is never half-written. A saved directory loads exactly, or not at all: never a stock
class that silently drops weights.

- One MLP width (and one KV-head count) in every layer, no added bias: the stock architecture,
  loadable with ``AutoModelForCausalLM.from_pretrained(dir)`` in a process without fnprune.
- The same with an added ``down`` (``o_proj``) bias, where the family has its own switch
  (``mlp_bias`` / ``attention_bias``, e.g. LLaMA): the stock architecture with the switch on; the
  projections the switch also gives a bias (``gate``/``up``; ``q``/``k``/``v``) get zero biases.
- Per-layer widths or KV heads, or a bias the family has no switch for: ``modeling_fnprune.py``
  (copied from :mod:`fnprune.models.modeling.modeling_fnprune`) under a model type stock transformers does
  not know (``fnpruned_<model_type>``, ``auto_map`` to the file's classes), so
  ``from_pretrained(dir, trust_remote_code=True)`` works without fnprune and plain
  ``from_pretrained(dir)`` stops with transformers' "pass trust_remote_code=True" error.

:func:`load_pruned` loads every kind, and directories of earlier fnprune versions (stock model
type with ``fnprune_*`` config keys), without remote code.

A model loaded from GGUF carries a GGUF ``quantization_config`` and refuses ``save_pretrained``;
it is rebuilt from its config without that entry (weights are already de-quantized floats).
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, ModelLoadError, RunDirError
from .mlp import parameter_counts
from .modeling import modeling_fnprune

PRUNING_FILE = "pruning.json"
MODELING_FILE = "modeling_fnprune.py"

# config flag of an added bias -> the config switch that gives the stock class that bias
BIAS_SWITCHES = {"fnprune_down_bias": "mlp_bias", "fnprune_o_bias": "attention_bias"}
PER_LAYER_KEYS = ("fnprune_intermediate_sizes", "fnprune_num_key_value_heads")


def _is_quantized(model: nn.Module) -> bool:
    return (getattr(model.config, "quantization_config", None) is not None
            or getattr(model, "hf_quantizer", None) is not None)


def _stock_class(model_or_config) -> type:
    """The stock transformers causal-LM class of a model (or config)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    if isinstance(model_or_config, nn.Module):
        cls = type(model_or_config)
        base = getattr(cls, "_fnprune_base", None)
        return base or cls
    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(model_or_config)]
    except KeyError as err:
        raise ModelLoadError(f"no causal-LM class in transformers for config {type(model_or_config).__name__}") from err


def _stock_config_class(config) -> type:
    """The stock config class of a config (an ``Fnpruned`` config's base)."""
    return getattr(type(config), "_fnprune_base", type(config))


def _is_per_layer(config) -> bool:
    return any(bool(getattr(config, key, None)) for key in PER_LAYER_KEYS)


def _expected_shapes(cls: type, config) -> dict[str, torch.Size]:
    """Names and shapes of the tensors ``cls(config)`` holds (built on the meta device: no memory)."""
    with torch.device("meta"):
        return {key: value.shape for key, value in cls(config).state_dict().items()}


def _shapes(model: nn.Module) -> dict[str, torch.Size]:
    return {key: value.shape for key, value in model.state_dict().items()}


@torch.no_grad()
def stock_bias_switches(model: nn.Module) -> tuple[dict[str, bool], dict[str, torch.Tensor]] | None:
    """How the stock class holds the model exactly: ``(config switches, zero tensors to add)``, or None.

    Tries the stock class with no switch turned on, then with the family's own bias switches
    (``mlp_bias``, ``attention_bias``: those the config has) -- what holds an added ``down`` or
    ``o_proj`` bias. A switch also gives the sibling projections (``gate``/``up``; ``q``/``k``/``v``)
    a bias: those are saved as zeros. The first candidate that expects every tensor of the model
    (same names and shapes), and otherwise only biases of weights the model has, wins. Read from the
    tensors, not from the ``fnprune_*`` flags, so a bias added any other way is never dropped.
    """
    config = model.config
    if _is_per_layer(config):
        return None
    have = model.state_dict()
    available = [switch for switch in dict.fromkeys(BIAS_SWITCHES.values()) if hasattr(config, switch)]
    stock_cls = _stock_class(model)
    for n in range(len(available) + 1):
        for chosen in itertools.combinations(available, n):
            candidate = copy.deepcopy(config)
            for key in (*BIAS_SWITCHES, *PER_LAYER_KEYS):
                if hasattr(candidate, key):
                    setattr(candidate, key, None)
            for switch in chosen:
                setattr(candidate, switch, True)
            expected = _expected_shapes(stock_cls, candidate)
            if any(expected.get(key) != value.shape for key, value in have.items()):
                continue
            zeros = {}
            for key in sorted(expected.keys() - have.keys()):
                weight = have.get(key.removesuffix(".bias") + ".weight")
                if not key.endswith(".bias") or weight is None:
                    break
                zeros[key] = torch.zeros(expected[key], dtype=weight.dtype, device=weight.device)
            else:
                return {switch: True for switch in chosen}, zeros
    return None


def _check_modeling_file_fits(model: nn.Module, stock_cls: type) -> None:
    """Raise :class:`ConfigError` unless ``modeling_fnprune``'s class built from the model's config
    holds exactly the model's tensors (a shape the config does not record would load wrong)."""
    expected = _expected_shapes(modeling_fnprune.make_pruned_class(stock_cls), model.config)
    have = _shapes(model)
    if expected != have:
        wrong = sorted(key for key in expected.keys() | have.keys() if expected.get(key) != have.get(key))
        raise ConfigError(f"cannot save {type(model).__name__}: its config does not describe its tensors "
                          f"({len(wrong)} differ, e.g. {wrong[0]}); prune with fnprune, which records "
                          "per-layer widths and added biases in the config")


@torch.no_grad()
def exportable_model(model: nn.Module) -> nn.Module:
    """``model`` itself, or (GGUF / quantizer-tagged models) an unquantized copy that can be saved."""
    if not _is_quantized(model):
        return model
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    dtype = next(model.parameters()).dtype
    clean = modeling_fnprune.make_pruned_class(_stock_class(model))(config)
    clean.load_state_dict(model.state_dict(), strict=True)
    return clean.to(dtype).eval()


def _check_writable(out_dir: Path, overwrite: bool) -> None:
    parent = out_dir.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create output directory {parent}: {err.strerror or err}") from err
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"output directory {parent} is not writable")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ConfigError(f"output path {out_dir} exists and is not a directory")
        if any(out_dir.iterdir()) and not overwrite:
            raise ConfigError(f"output directory {out_dir} already exists and is not empty (use overwrite)")


def save_pruned(model: nn.Module, tokenizer, out_dir: str | os.PathLike, info: dict | None = None, *,
                overwrite: bool = False) -> Path:
    """Write a pruned model directory atomically; returns its path.

    ``info``: provenance merged into ``pruning.json`` (source model, run dir, networks, threshold,
    target ratio, method, ...). Widths and parameter counts are added from the model itself.

    The directory holds the stock class when it can hold the model exactly (turning on the family's
    bias switch if needed, see :func:`stock_bias_switches`), else fnprune's modelling file under an
    fnprune model type (see the module docstring). Raises :class:`ConfigError` for an unwritable or
    occupied ``out_dir``, or a model whose config does not describe its tensors (nothing is left behind).
    """
    out_dir = Path(out_dir).expanduser().absolute()
    _check_writable(out_dir, overwrite)
    export = exportable_model(model)
    stock_cls, config_cls = _stock_class(export), _stock_config_class(export.config)
    stock_plan = stock_bias_switches(export)
    remote = stock_plan is None
    switches, zeros = stock_plan or ({}, {})
    if remote:
        if not _in_transformers(stock_cls, config_cls):
            raise ConfigError(f"{stock_cls.__name__} is not a transformers class: fnprune cannot save it with "
                              "per-layer shapes or an added bias (its modelling file builds on transformers' classes)")
        _check_modeling_file_fits(export, stock_cls)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    except OSError as err:
        raise ConfigError(f"cannot write to {out_dir.parent}: {err.strerror or err}") from err
    try:
        export.save_pretrained(tmp, state_dict={**export.state_dict(), **zeros} if zeros else None)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        config_path = tmp / "config.json"
        config = _saved_config(json.loads(config_path.read_text()), stock_cls, config_cls,
                               None if remote else switches)
        if remote:
            shutil.copyfile(modeling_fnprune.__file__, tmp / MODELING_FILE)
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        summary = parameter_counts(export)
        record = {
            **(info or {}),
            "widths": summary["widths"],
            "mlp_params": summary["mlp_params"],
            "total_params": summary["total_params"],
            "down_bias_added": bool(getattr(export.config, "fnprune_down_bias", False)),
            "kv_heads": getattr(export.config, "fnprune_num_key_value_heads", None)
            or getattr(export.config, "num_key_value_heads", None),
            # "per-layer": fnprune's modelling file is needed (per-layer shapes or a bias stock lacks)
            "architecture": "per-layer" if remote else "stock",
            "trust_remote_code": remote,
            "stock_switches": sorted(switches),
            "load": ("AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True) or fnprune.load_pruned(dir)"
                     if remote else "AutoModelForCausalLM.from_pretrained(dir) or fnprune.load_pruned(dir)"),
        }
        (tmp / PRUNING_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")
        if out_dir.exists():
            old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"cannot write model directory {out_dir}: {err.strerror or err}") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _in_transformers(*classes: type) -> bool:
    """Whether each class is transformers' own ``transformers.<name>`` (what the modelling file builds on)."""
    import transformers

    return all(getattr(transformers, cls.__name__, None) is cls for cls in classes)


def _saved_config(config: dict, stock_cls: type, config_cls: type, switches: dict[str, bool] | None) -> dict:
    """``config.json`` as written by ``save_pretrained`` -> what fnprune saves.

    ``switches`` None: the directory needs ``modeling_fnprune.py`` (fnprune model type and auto_map);
    else the stock class with those config switches on (and no ``fnprune_*`` key left).
    """
    prefix = modeling_fnprune.CLASS_PREFIX
    config.pop("quantization_config", None)
    if switches is None:
        config["model_type"] = modeling_fnprune.MODEL_TYPE_PREFIX + config_cls.model_type
        config["architectures"] = [prefix + stock_cls.__name__]
        config["auto_map"] = {"AutoConfig": f"modeling_fnprune.{prefix}{config_cls.__name__}",
                              "AutoModelForCausalLM": f"modeling_fnprune.{prefix}{stock_cls.__name__}"}
        return config
    config["model_type"] = config_cls.model_type
    config["architectures"] = [stock_cls.__name__]
    config.pop("auto_map", None)
    for key in [k for k in config if k.startswith("fnprune_")]:
        del config[key]
    config.update(switches)
    return config


def read_pruning_info(model_dir: str | os.PathLike) -> dict:
    """The ``pruning.json`` of a model directory ({} when absent)."""
    path = Path(model_dir) / PRUNING_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def load_pruned(model_dir: str | os.PathLike, *, device: str | torch.device | None = None,
                dtype: torch.dtype | None = None, with_tokenizer: bool = True):
    """Load a directory written by :func:`save_pruned` (any fnprune version) without remote code:
    ``(model, tokenizer)``.

    Builds the class the directory names -- ``modeling_fnprune``'s ``Fnpruned<Class>`` from fnprune's
    own copy of that file, or the stock class -- reslices each layer to the stored shapes (per-layer
    widths and KV heads, added biases) and loads the weights. ``tokenizer`` is None when the
    directory has none (or ``with_tokenizer`` is False).
    """
    from transformers import AutoConfig, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise RunDirError(f"{model_dir} is not a model directory (no config.json)")
    try:
        raw = json.loads((model_dir / "config.json").read_text())
        if str(raw.get("model_type", "")).startswith(modeling_fnprune.MODEL_TYPE_PREFIX):
            # fnprune's model type: the classes auto_map names, from fnprune's copy of the modelling file
            ref = (raw.get("auto_map") or {}).get("AutoModelForCausalLM", "")
            cls = getattr(modeling_fnprune, ref.rpartition(".")[2])
            config = cls.config_class.from_pretrained(model_dir)
        else:  # stock directories, and per-layer ones of earlier versions (stock model type + fnprune_* keys)
            config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
            cls = modeling_fnprune.make_pruned_class(_stock_class(config))
        kwargs = {"dtype": dtype} if dtype is not None else {}
        model = cls.from_pretrained(model_dir, config=config, **kwargs)
    except (OSError, ValueError, RuntimeError, AttributeError) as err:
        raise ModelLoadError(f"cannot load pruned model from {model_dir}: {str(err).splitlines()[0]}") from err
    if device is not None:
        model = model.to(device)
    model.eval()
    tokenizer = None
    if with_tokenizer and any((model_dir / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        # the loaded config: AutoTokenizer would otherwise try AutoConfig on an fnprune model type
        tokenizer = AutoTokenizer.from_pretrained(model_dir, config=config, trust_remote_code=False)
    return model, tokenizer
