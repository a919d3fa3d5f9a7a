"""Save and load pruned models.

:func:`save_pruned` writes a Hugging Face model directory (config.json, model.safetensors,
tokenizer files, ``pruning.json``) to a temporary sibling and renames it into place, so a model
directory is never half-written.

- One MLP width in every layer and no added ``down`` bias: a stock architecture, loadable with
  ``AutoModelForCausalLM.from_pretrained(dir)`` in a process without fnprune.
- Per-layer widths and/or a ``down`` bias the architecture lacks: the same directory plus
  ``modeling_fnprune.py`` (copied from :mod:`fnprune.modeling.modeling_fnprune`) registered in
  ``config.json``'s ``auto_map``, so ``from_pretrained(dir, trust_remote_code=True)`` works
  without fnprune; :func:`load_pruned` loads either kind without remote code.

A model loaded from GGUF carries a GGUF ``quantization_config`` and refuses ``save_pretrained``;
it is rebuilt from its config without that entry (weights are already de-quantized floats).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError, ModelLoadError, RunDirError
from .modeling import modeling_fnprune
from .prune import widths_summary

PRUNING_FILE = "pruning.json"
MODELING_FILE = "modeling_fnprune.py"


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


def _needs_remote_code(config) -> bool:
    return any(bool(getattr(config, key, None)) for key in ("fnprune_intermediate_sizes", "fnprune_down_bias",
                                                             "fnprune_num_key_value_heads", "fnprune_o_bias"))


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
    Raises :class:`ConfigError` for an unwritable or occupied ``out_dir`` (nothing is left behind).
    """
    out_dir = Path(out_dir).expanduser().absolute()
    _check_writable(out_dir, overwrite)
    export = exportable_model(model)
    remote = _needs_remote_code(export.config)
    class_name = modeling_fnprune.class_name_for(_stock_class(export)) if remote else None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    except OSError as err:
        raise ConfigError(f"cannot write to {out_dir.parent}: {err.strerror or err}") from err
    try:
        export.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        config_path = tmp / "config.json"
        config = json.loads(config_path.read_text())
        config.pop("quantization_config", None)
        config["architectures"] = [_stock_class(export).__name__]
        if class_name is not None:
            shutil.copyfile(modeling_fnprune.__file__, tmp / MODELING_FILE)
            config["auto_map"] = {"AutoModelForCausalLM": f"modeling_fnprune.{class_name}"}
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        summary = widths_summary(export)
        record = {
            **(info or {}),
            "widths": summary["widths"],
            "mlp_params": summary["mlp_params"],
            "total_params": summary["total_params"],
            "down_bias_added": bool(getattr(export.config, "fnprune_down_bias", False)),
            "kv_heads": getattr(export.config, "fnprune_num_key_value_heads", None)
            or getattr(export.config, "num_key_value_heads", None),
            "architecture": "per-layer" if remote else "stock",
            "load": ("AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True) or fnprune.load_pruned(dir)"
                     if class_name else "fnprune.load_pruned(dir)" if remote
                     else "AutoModelForCausalLM.from_pretrained(dir)"),
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


def read_pruning_info(model_dir: str | os.PathLike) -> dict:
    """The ``pruning.json`` of a model directory ({} when absent)."""
    path = Path(model_dir) / PRUNING_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def load_pruned(model_dir: str | os.PathLike, *, device: str | torch.device | None = None,
                dtype: torch.dtype | None = None, with_tokenizer: bool = True):
    """Load a directory written by :func:`save_pruned` without remote code: ``(model, tokenizer)``.

    Builds the stock model class from the config, reslices each layer's MLP to the stored widths
    (adding the ``down`` bias where recorded) and loads the weights. ``tokenizer`` is None when the
    directory has none (or ``with_tokenizer`` is False).
    """
    from transformers import AutoConfig, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise RunDirError(f"{model_dir} is not a model directory (no config.json)")
    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
        cls = modeling_fnprune.make_pruned_class(_stock_class(config))
        kwargs = {"dtype": dtype} if dtype is not None else {}
        model = cls.from_pretrained(model_dir, config=config, **kwargs)
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelLoadError(f"cannot load pruned model from {model_dir}: {str(err).splitlines()[0]}") from err
    if device is not None:
        model = model.to(device)
    model.eval()
    tokenizer = None
    if with_tokenizer and any((model_dir / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return model, tokenizer
