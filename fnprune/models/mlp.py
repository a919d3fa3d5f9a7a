"""MLP adapters: where a model's MLP neurons are, how to read their signals and slice them.

One small adapter per MLP family, found by module structure (never by model name):

- ``gated``: ``down(act(gate(x)) * up(x))`` -- LLaMA, Mistral, Qwen2/3, SmolLM, Gemma 1/2/3.
  Signals: ``act`` = ``act(gate(x))``, ``up`` = ``up(x)``, ``down_in`` = their product.
- ``gpt2``: ``c_proj(act(c_fc(x)))`` with transformers' ``Conv1D`` (weights stored ``(in, out)``).
  Signals: ``act`` = ``act(c_fc(x))`` (= ``down_in``), ``up`` = ``c_fc(x)`` (pre-activation).
- ``fc``: ``fc2(act(fc1(x)))`` with ``nn.Linear`` -- OPT (in the decoder layer), Phi (in ``mlp``).
  Signals as for ``gpt2``.

A neuron ``j`` of a layer owns: row ``j`` of ``gate``/``up`` (and their biases) and column ``j`` of
``down`` -- removing it is the coupled ``index_select`` in :meth:`MLPAdapter.select`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UnsupportedArchitectureError

SIGNALS = ("act", "up", "down_in")

# Config keys holding the MLP width, in the order they are tried.
WIDTH_CONFIG_KEYS = ("intermediate_size", "n_inner", "ffn_dim")


def _is_conv1d(module: nn.Module) -> bool:
    # transformers.pytorch_utils.Conv1D, matched by structure so any copy of it works.
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and module.weight.dim() == 2


@dataclass
class MLPAdapter:
    """One decoder layer's MLP.

    Attributes
    ----------
    family : "gated" | "gpt2" | "fc"
    layer : index of the decoder layer
    module : the module that owns the projections (``mlp`` or, for OPT, the decoder layer)
    up_names : names of the projections whose output rows are neurons (``gate_proj``, ``up_proj``)
    down_name : name of the projection whose input columns are neurons
    act_fn : the activation applied to the first of ``up_names``
    """

    family: str
    layer: int
    module: nn.Module
    up_names: tuple[str, ...]
    down_name: str
    act_fn: Callable[[torch.Tensor], torch.Tensor]
    signals: tuple[str, ...] = field(default=SIGNALS)

    # -- structure -------------------------------------------------------------------------
    @property
    def in_projs(self) -> list[nn.Module]:
        return [getattr(self.module, n) for n in self.up_names]

    @property
    def down(self) -> nn.Module:
        return getattr(self.module, self.down_name)

    @property
    def width(self) -> int:
        """Number of intermediate neurons I."""
        down = self.down
        return down.weight.shape[0] if _is_conv1d(down) else down.weight.shape[1]

    @property
    def hidden_size(self) -> int:
        down = self.down
        return down.weight.shape[1] if _is_conv1d(down) else down.weight.shape[0]

    @property
    def params_per_neuron(self) -> int:
        """Parameters removed with one neuron (weights of every tied projection, plus in-biases)."""
        n = 0
        for proj in self.in_projs:
            n += self.hidden_size + (1 if getattr(proj, "bias", None) is not None else 0)
        return n + self.hidden_size

    @property
    def n_params(self) -> int:
        return sum(p.numel() for proj in (*self.in_projs, self.down) for p in proj.parameters())

    # -- signals ---------------------------------------------------------------------------
    def register_signal_hooks(self, signals: tuple[str, ...],
                              sink: Callable[[str, torch.Tensor, Callable | None], None]) -> list:
        """Register hooks that call ``sink(signal, tensor (batch, seq, I), post)`` on each forward.

        ``post`` is None or an element-wise function the sink must apply to the rows it keeps (the
        gated MLP's activation on the gate projection, so padded rows are never activated).

        Returns the hook handles (call ``.remove()`` on each when done).
        """
        unknown = set(signals) - set(SIGNALS)
        if unknown:
            raise ValueError(f"unknown signal(s) {sorted(unknown)}; choose from {SIGNALS}")
        handles = []
        first = self.in_projs[0]
        if self.family == "gated":
            if "act" in signals:  # the sink applies act_fn to the rows it keeps only
                handles.append(first.register_forward_hook(
                    lambda m, i, o: sink("act", o, self.act_fn)))
            if "up" in signals:
                handles.append(self.in_projs[1].register_forward_hook(lambda m, i, o: sink("up", o, None)))
        else:
            if "up" in signals:
                handles.append(first.register_forward_hook(lambda m, i, o: sink("up", o, None)))
            if "act" in signals:
                handles.append(self.down.register_forward_pre_hook(lambda m, i: sink("act", i[0], None)))
        if "down_in" in signals:
            handles.append(self.down.register_forward_pre_hook(lambda m, i: sink("down_in", i[0], None)))
        return handles

    # -- pruning ---------------------------------------------------------------------------
    @torch.no_grad()
    def select(self, keep: torch.Tensor) -> None:
        """Keep only neurons ``keep`` (1-D indices, any order is sorted): coupled index_select.

        Rows of every in-projection (and its bias), columns of the down projection.
        """
        keep = torch.as_tensor(keep, dtype=torch.long).flatten().sort().values
        if keep.numel() == 0:
            raise ValueError(f"layer {self.layer}: cannot remove every MLP neuron")
        if int(keep.max()) >= self.width or int(keep.min()) < 0:
            raise ValueError(f"layer {self.layer}: neuron index out of range [0, {self.width})")
        keep = keep.to(self.down.weight.device)
        for proj in self.in_projs:
            if _is_conv1d(proj):  # weight (in, out): neurons are columns
                proj.weight = nn.Parameter(proj.weight.index_select(1, keep).contiguous())
                proj.nf = keep.numel()
            else:  # nn.Linear weight (out, in): neurons are rows
                proj.weight = nn.Parameter(proj.weight.index_select(0, keep).contiguous())
                proj.out_features = keep.numel()
            if getattr(proj, "bias", None) is not None:
                proj.bias = nn.Parameter(proj.bias.index_select(0, keep).contiguous())
        down = self.down
        if _is_conv1d(down):  # weight (in=I, out=hidden)
            down.weight = nn.Parameter(down.weight.index_select(0, keep).contiguous())
        else:
            down.weight = nn.Parameter(down.weight.index_select(1, keep).contiguous())
            down.in_features = keep.numel()
        for attr in ("intermediate_size", "ffn_dim"):
            if isinstance(getattr(self.module, attr, None), int):
                setattr(self.module, attr, keep.numel())


def default_protected_layers(n_layers: int) -> list[int]:
    """Layers kept whole by default: the paper's first three and last two (METHOD.md §1.7); models with
    fewer than 8 layers keep the first and the last, fewer than 4 none."""
    if n_layers >= 8:
        return [0, 1, 2, n_layers - 2, n_layers - 1]
    if n_layers >= 4:
        return [0, n_layers - 1]
    return []


def backbone(model: nn.Module) -> nn.Module:
    """The decoder stack without the language-model head (``model.base_model`` when there is one).

    Capture and calibration passes run this: the MLP hooks fire the same, and the
    ``(tokens, vocab)`` logits are neither computed nor held.
    """
    base = getattr(model, "base_model", None)
    return base if isinstance(base, nn.Module) else model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's list of decoder blocks, found as the longest ``nn.ModuleList`` of blocks."""
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    best = None
    for _, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            if n_layers is not None and len(module) == n_layers:
                return module
            if best is None or len(module) > len(best):
                best = module
    if best is None:
        raise UnsupportedArchitectureError(
            f"{type(model).__name__}: no list of decoder layers (nn.ModuleList) found")
    return best


def _activation_of(owner: nn.Module, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    for name in ("act_fn", "act", "activation_fn", "activation"):
        fn = getattr(owner, name, None)
        if callable(fn):
            return fn
    cfg = getattr(model, "config", None)
    act_name = None
    for key in ("hidden_activation", "hidden_act", "activation_function"):
        act_name = act_name or getattr(cfg, key, None)
    if act_name:
        from transformers.activations import ACT2FN

        return ACT2FN[act_name]
    raise UnsupportedArchitectureError(f"{type(owner).__name__}: no activation function found")


def _adapter_for(block: nn.Module, layer: int, model: nn.Module) -> MLPAdapter | None:
    candidates = [block] + [m for _, m in block.named_modules() if m is not block]
    for owner in candidates:
        names = set(dict(owner.named_children()))
        if {"gate_proj", "up_proj", "down_proj"} <= names:
            return MLPAdapter("gated", layer, owner, ("gate_proj", "up_proj"), "down_proj",
                              _activation_of(owner, model))
        if {"c_fc", "c_proj"} <= names and _is_conv1d(owner.c_fc):
            return MLPAdapter("gpt2", layer, owner, ("c_fc",), "c_proj", _activation_of(owner, model))
        if {"fc1", "fc2"} <= names and isinstance(owner.fc1, nn.Linear):
            return MLPAdapter("fc", layer, owner, ("fc1",), "fc2", _activation_of(owner, model))
    return None


def find_mlps(model: nn.Module) -> list[MLPAdapter]:
    """One :class:`MLPAdapter` per decoder layer, detected from module structure.

    Raises :class:`UnsupportedArchitectureError` naming what was not found.
    """
    layers = decoder_layers(model)
    adapters = []
    for i, block in enumerate(layers):
        adapter = _adapter_for(block, i, model)
        if adapter is None:
            children = ", ".join(dict(block.named_children())) or "none"
            raise UnsupportedArchitectureError(
                f"{type(model).__name__}: layer {i} ({type(block).__name__}) has no supported MLP "
                f"(looked for gate_proj/up_proj/down_proj, c_fc/c_proj, fc1/fc2; children: {children})")
        adapters.append(adapter)
    return adapters


def total_parameters(model: nn.Module) -> int:
    """All parameters, tied ones counted once."""
    return sum(p.numel() for p in model.parameters())


def parameter_counts(model: nn.Module, adapters: list[MLPAdapter] | None = None) -> dict:
    """Per-layer MLP widths, MLP parameters and all parameters (tied ones once) of a (pruned) model."""
    adapters = find_mlps(model) if adapters is None else adapters
    return {"widths": [a.width for a in adapters],
            "mlp_params": sum(a.n_params for a in adapters),
            "total_params": total_parameters(model),
            "embedding_params": embedding_parameters(model)}


def embedding_parameters(model: nn.Module) -> int:
    """Parameters of the token embeddings and of an untied output projection (each tensor once)."""
    seen: set[int] = set()
    total = 0
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        weight = getattr(module, "weight", None)
        if weight is not None and id(weight) not in seen:
            seen.add(id(weight))
            total += weight.numel()
    return total


def mlp_summary(model: nn.Module) -> dict:
    """Numbers the rest of fnprune needs without holding the model."""
    adapters = find_mlps(model)
    return {
        "family": adapters[0].family,
        "n_layers": len(adapters),
        "hidden_size": adapters[0].hidden_size,
        "params_per_neuron": [a.params_per_neuron for a in adapters],
        **parameter_counts(model, adapters),
    }
