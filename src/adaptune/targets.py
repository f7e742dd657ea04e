"""Where things are inside each architecture, as data: no modeling code is copied or subclassed.

Paths are module names relative to the *base* model that ``AutoModel`` returns (``BertModel``, ``LlamaModel``
...), and inside one transformer block. Methods ask for a *role* (``ffn_out``, ``attn_out``, ``query`` ...) and get
the module names; an architecture missing here still works when the user names target modules explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from adaptune.errors import ConfigError

#: Role names a method config may ask for (``qkv``: a fused query/key/value projection, as GPT-2's ``c_attn``).
Role = Literal["query", "key", "value", "qkv", "attn_out", "ffn_in", "ffn_gate", "ffn_out"]

#: Where an architecture computes a role only inside a fused projection, that projection stands in for it.
FUSED_ROLES: dict[str, str] = {"query": "qkv", "key": "qkv", "value": "qkv"}


@dataclass(frozen=True)
class Anatomy:
    """Module paths of one architecture family.

    Attributes:
        layers: path of the ``ModuleList`` of transformer blocks in the base model.
        roles: role -> module path inside one block. Roles: ``query``, ``key``, ``value``, ``attn_out`` (the
            attention output projection), ``ffn_in`` (first FFN projection), ``ffn_gate`` (gated FFNs only),
            ``ffn_out`` (last FFN projection, right before the residual add).
        decoder: True for causal language models (last-token pooling, left padding for generation).
    """

    layers: str
    roles: dict[str, str]
    decoder: bool = False


_BERT = Anatomy(
    layers="encoder.layer",
    roles={
        "query": "attention.self.query",
        "key": "attention.self.key",
        "value": "attention.self.value",
        "attn_out": "attention.output.dense",
        "ffn_in": "intermediate.dense",
        "ffn_out": "output.dense",
    },
)
_DISTILBERT = Anatomy(
    layers="transformer.layer",
    roles={
        "query": "attention.q_lin",
        "key": "attention.k_lin",
        "value": "attention.v_lin",
        "attn_out": "attention.out_lin",
        "ffn_in": "ffn.lin1",
        "ffn_out": "ffn.lin2",
    },
)
_LLAMA = Anatomy(
    layers="layers",
    roles={
        "query": "self_attn.q_proj",
        "key": "self_attn.k_proj",
        "value": "self_attn.v_proj",
        "attn_out": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_in": "mlp.up_proj",
        "ffn_out": "mlp.down_proj",
    },
    decoder=True,
)
_GPT2 = Anatomy(
    layers="h",
    roles={"qkv": "attn.c_attn", "attn_out": "attn.c_proj", "ffn_in": "mlp.c_fc", "ffn_out": "mlp.c_proj"},
    decoder=True,
)

ANATOMIES: dict[str, Anatomy] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "camembert": _BERT,
    "electra": _BERT,
    "ernie": _BERT,
    "distilbert": _DISTILBERT,
    "llama": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "mistral": _LLAMA,
    "gpt2": _GPT2,
}


def anatomy_for(model_type: str) -> Anatomy | None:
    """The anatomy of ``model_type`` (a transformers ``config.model_type``), or None if unknown."""
    return ANATOMIES.get(model_type)


def transformer_blocks(model: nn.Module, anatomy: Anatomy) -> nn.ModuleList:
    """The model's list of transformer blocks."""
    blocks = model.get_submodule(anatomy.layers)
    if not isinstance(blocks, nn.ModuleList):
        raise ConfigError(f"'{anatomy.layers}' in {type(model).__name__} is not a list of transformer blocks")
    return blocks


def role_modules(
    model: nn.Module, anatomy: Anatomy | None, model_type: str, role: str, layers: list[int] | None = None
) -> list[tuple[str, nn.Module]]:
    """``(full name, module)`` of ``role`` in every selected block, bottom to top.

    Raises a :class:`ConfigError` when the architecture is not in the table or has no such role; the message
    tells the user to name target modules instead.
    """
    if anatomy is None or role not in anatomy.roles:
        known = ", ".join(sorted(ANATOMIES))
        raise ConfigError(
            f"model type '{model_type}' has no known module for role '{role}' (known architectures: {known}); "
            "name the modules yourself with method.target_modules"
        )
    blocks = transformer_blocks(model, anatomy)
    chosen = range(len(blocks)) if layers is None else _checked_layers(layers, len(blocks))
    return [
        (f"{anatomy.layers}.{i}.{anatomy.roles[role]}", blocks[i].get_submodule(anatomy.roles[role])) for i in chosen
    ]


def _checked_layers(layers: list[int], count: int) -> list[int]:
    out = []
    for index in layers:
        resolved = index + count if index < 0 else index
        if not 0 <= resolved < count:
            raise ConfigError(f"config key 'method.layers' = {index}: the model has layers 0..{count - 1}")
        out.append(resolved)
    return sorted(set(out))


def modules_by_suffix(model: nn.Module, suffixes: list[str]) -> list[tuple[str, nn.Module]]:
    """Modules whose full name ends with one of ``suffixes`` (a peft-style ``target_modules`` list)."""
    found = [
        (name, module)
        for name, module in model.named_modules()
        if any(name == s or name.endswith("." + s) for s in suffixes)
    ]
    if not found:
        raise ConfigError(f"config key 'method.target_modules' = {suffixes}: no module of the model matches")
    return found


def select_targets(
    model: nn.Module,
    anatomy: Anatomy | None,
    model_type: str,
    *,
    roles: list[str],
    target_modules: list[str] | None = None,
    layers: list[int] | None = None,
) -> list[tuple[str, nn.Module]]:
    """The modules a method adapts, as ``(full name, module)`` sorted by name, each once.

    ``target_modules`` (name suffixes) wins when given, restricted to ``layers`` if those are given too (which
    needs a known architecture); otherwise every role of ``roles`` in the selected layers. A role that the
    architecture only computes inside a fused projection (``query``/``key``/``value`` in GPT-2's ``c_attn``)
    resolves to that projection.
    """
    if target_modules:
        found = modules_by_suffix(model, target_modules)
        if layers is not None:
            found = _within_layers(model, anatomy, model_type, found, layers)
    else:
        found = []
        for role in roles:
            fused = FUSED_ROLES.get(role)
            if anatomy is not None and role not in anatomy.roles and fused in anatomy.roles:
                role = fused
            found += role_modules(model, anatomy, model_type, role, layers)
    return sorted(dict(found).items())


def _within_layers(
    model: nn.Module, anatomy: Anatomy | None, model_type: str, found: list[tuple[str, nn.Module]], layers: list[int]
) -> list[tuple[str, nn.Module]]:
    if anatomy is None:
        raise ConfigError(
            f"config key 'method.layers' needs a known architecture, and '{model_type}' is not in the table; "
            "name the modules of those layers in method.target_modules instead"
        )
    count = len(transformer_blocks(model, anatomy))
    prefixes = tuple(f"{anatomy.layers}.{i}." for i in _checked_layers(layers, count))
    kept = [(name, module) for name, module in found if name.startswith(prefixes)]
    if not kept:
        raise ConfigError(f"config key 'method.target_modules' matches no module inside layers {layers}")
    return kept
