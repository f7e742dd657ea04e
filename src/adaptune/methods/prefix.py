"""``prefix``: prefix tuning (Li & Liang 2021).

Li and Liang, "Prefix-Tuning: Optimizing Continuous Prompts for Generation", ACL 2021. Every attention layer
``l`` attends to ``n`` trainable key/value pairs in front of the sequence's own:

    K_l' = [P_l^K ; K_l],  V_l' = [P_l^V ; V_l]       P_l^K, P_l^V: (H_kv, n, d_head);  K_l, V_l: (H_kv, T, d_head)
    attention_mask' = [1_n ; m]                         (B, n + T)

The prefixes add no positions to the hidden states: queries are still the ``T`` input tokens and the head sees
``(B, T, d)`` (``InputPrep.n_virtual`` = 0).

Parameters (``d_kv = H_kv * d_head``, the key width: ``d`` unless the model uses grouped-query attention; ``L``
layers; ``h = prefix_hidden``):

* ``reparameterize=True`` (the paper's and peft's ``prefix_projection``): an embedding ``E`` ``(n, d_kv)`` and an MLP
  ``P = W_2 tanh(W_1 E + b_1) + b_2`` with ``W_1: d_kv -> h`` and ``W_2: h -> L * 2 * d_kv``; trainable numbers
  ``n d_kv + (d_kv h + h) + (h L 2 d_kv + L 2 d_kv)``. Li & Liang found optimising ``P`` directly unstable.
* ``reparameterize=False``: ``P`` itself, ``(n, L * 2 * d_kv)``: ``n L 2 d_kv`` numbers.

``P`` is laid out as peft lays it out, ``(n, L, 2, H_kv, d_head)`` (layer-major, keys before values), and
initialised as peft does (embedding ``N(0, 1)``, PyTorch's default ``Linear`` init), so an adapter exports to
peft's ``prompt_embeddings`` as :meth:`PrefixTuning.prefix_states`. The adapter file stores the trainable tensors
(MLP included): save then load recomputes exactly the same ``P`` and training can continue; peft instead stores
the computed ``P`` after training.

Injection. :meth:`PrefixTuning.prepare_inputs` hands the model a fresh ``DynamicCache`` holding the prefixes as
``past_key_values`` and extends the attention mask by ``n`` ones at the front, the one input hook shared with
prompt tuning; the model's own attention code does the rest. A model whose forward takes no ``past_key_values``
(DistilBERT, for example) is refused at attach time.

Positions. A cache of length ``n`` makes transformers number the input from ``n``. Encoders (BERT, RoBERTa,
ELECTRA ...) were trained with [CLS] at position 0 and the prefix is not text, so their positions stay ``0..T-1``:
a forward pre-hook on the module that takes ``past_key_values_length`` (the embeddings) subtracts ``n``. (peft
lets such encoders shift to ``n..n+T-1``; an exported BERT prefix adapter therefore gives other logits in peft.)
Causal decoders continue after the prefix, ``n..n+T-1`` as in the paper's GPT-2 code, peft and transformers'
generation with a prefilled cache, so a cache built here can be extended token by token; the position ids are
counted from the attention mask, so left padding does not shift them (see :mod:`adaptune.methods.virtual`).
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers import DynamicCache

from adaptune.config import MethodConfig
from adaptune.errors import ConfigError
from adaptune.methods.base import AttachContext, InputPrep, Method
from adaptune.methods.virtual import check_positions, compute_dtype, position_limit, positions_from_mask
from adaptune.registry import register_method

#: Name of the prefix module on the backbone; its tensors are saved as ``adapter.prefix.<name>``.
PREFIX_ATTR = "prefix"


class PrefixConfig(MethodConfig):
    """Configuration of prefix tuning."""

    name: Literal["prefix"] = "prefix"
    num_virtual_tokens: int = Field(20, ge=1, le=1024, description="Prefix length n: key/value pairs per layer.")
    reparameterize: bool = Field(
        True,
        description="Compute the prefixes with an MLP from an (n, d_kv) embedding (Li & Liang 2021; peft's "
        "prefix_projection) instead of training them directly.",
    )
    prefix_hidden: int = Field(512, ge=1, le=65536, description="Hidden width h of the reparameterisation MLP.")


class PrefixEncoder(nn.Module):
    """Keys and values of ``n`` virtual tokens for every layer.

    ``forward()`` returns ``(n, L, 2, H_kv, d_head)``: index ``[:, l, 0]`` are layer ``l``'s keys, ``[:, l, 1]`` its
    values. Parameter names follow peft's ``PrefixEncoder`` (``embedding``, ``transform.0``, ``transform.2``).
    """

    def __init__(self, n: int, layers: int, kv_heads: int, head_dim: int, hidden: int | None) -> None:
        super().__init__()
        self.shape = (n, layers, 2, kv_heads, head_dim)
        d_kv, width = kv_heads * head_dim, layers * 2 * kv_heads * head_dim
        self.embedding = nn.Embedding(n, width if hidden is None else d_kv)
        self.transform: nn.Sequential | None = None
        if hidden is not None:
            self.transform = nn.Sequential(nn.Linear(d_kv, hidden), nn.Tanh(), nn.Linear(hidden, width))

    def forward(self) -> torch.Tensor:
        """``(n, L, 2, H_kv, d_head)``: the MLP's output, or the prefixes themselves without reparameterisation."""
        states = self.embedding.weight
        if self.transform is not None:
            states = self.transform(states)
        return states.view(self.shape)


def attention_shape(config: Any) -> tuple[int, int, int]:
    """``(layers, key/value heads, head width)`` read from a transformers config."""
    layers = getattr(config, "num_hidden_layers", None)
    heads = getattr(config, "num_attention_heads", None)
    hidden = getattr(config, "hidden_size", None)
    if not all(isinstance(v, int) and v > 0 for v in (layers, heads, hidden)):
        raise ConfigError(
            f"prefix tuning needs num_hidden_layers, num_attention_heads and hidden_size in the model config "
            f"({type(config).__name__} lacks one)"
        )
    assert isinstance(layers, int) and isinstance(heads, int) and isinstance(hidden, int)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return layers, int(kv_heads), int(head_dim)


def _parameters(fn: Any) -> list[str]:
    """Names of ``fn``'s parameters ([] when Python cannot tell, as for some builtins)."""
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []


def _check_forward(model: nn.Module, is_decoder: bool) -> None:
    params = _parameters(model.forward)
    needed = ["past_key_values", "position_ids"] if is_decoder else ["past_key_values"]
    missing = [name for name in needed if name not in params]
    if missing:
        raise ConfigError(
            f"prefix tuning passes {' and '.join(missing)} to the model, and {type(model).__name__}.forward "
            "takes no such argument; use method.name=prompt or lora for this model"
        )


@register_method("prefix", PrefixConfig)
class PrefixTuning(Method):
    """Prefix tuning: trainable keys and values in front of every attention layer (Li & Liang 2021)."""

    # P-Tuning v2 (Liu et al. 2022) trained raw prefixes with 5e-3..1e-2, as peft's examples do (1e-2). Through the
    # MLP one step moves P by about lr * h * E|tanh| (every W_2 row moves together), so the default MLP gets 1e-3
    # (Li & Liang used 5e-5 on far larger models). The head shares the rate. Not yet swept.
    default_learning_rate = 1e-3
    config: PrefixConfig

    def __init__(self, config: PrefixConfig) -> None:
        super().__init__(config)
        if not config.reparameterize:
            self.default_learning_rate = 1e-2
        self._encoder: PrefixEncoder | None = None
        self._is_decoder = False
        self._limit: int | None = None
        self._position_hooks: list[RemovableHandle] = []

    def attach(self, model: nn.Module, ctx: AttachContext) -> None:
        """Add a :class:`PrefixEncoder` as ``model.prefix``; encoders get a hook that keeps positions at 0..T-1."""
        cfg = self.config
        _check_forward(model, ctx.is_decoder)
        layers, kv_heads, head_dim = attention_shape(model.config)
        hidden = cfg.prefix_hidden if cfg.reparameterize else None
        encoder = PrefixEncoder(cfg.num_virtual_tokens, layers, kv_heads, head_dim, hidden)
        device = next(model.parameters()).device
        self.add_input_module(model, PREFIX_ATTR, encoder.to(device))
        self._encoder, self._is_decoder, self._limit = encoder, ctx.is_decoder, position_limit(model)
        if not ctx.is_decoder:
            self._keep_encoder_positions(model, cfg.num_virtual_tokens)

    def _keep_encoder_positions(self, model: nn.Module, n: int) -> None:
        """Subtract the prefix length from ``past_key_values_length`` wherever a module takes it (BERT-family
        embeddings), so that the prefix occupies no positions."""

        def pre_hook(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            if isinstance(kwargs.get("past_key_values_length"), int):
                kwargs["past_key_values_length"] = max(0, kwargs["past_key_values_length"] - n)
            return args, kwargs

        for module in model.modules():
            if "past_key_values_length" in _parameters(module.forward):
                self._position_hooks.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))

    def detach(self, model: nn.Module) -> None:
        for handle in self._position_hooks:
            handle.remove()
        self._position_hooks.clear()
        super().detach(model)
        self._encoder = None

    def prefix_states(self) -> torch.Tensor:
        """The prefixes in peft's flat layout, ``(n, L * 2 * d_kv)`` (peft's ``prompt_embeddings``)."""
        if self._encoder is None:
            raise RuntimeError("prefix tuning is not attached to a model")
        return self._encoder().reshape(self.config.num_virtual_tokens, -1)

    def prefix_cache(self, model: nn.Module, batch_size: int, device: torch.device) -> DynamicCache:
        """A fresh cache holding every layer's prefix keys and values, each ``(B, H_kv, n, d_head)``."""
        if self._encoder is None:
            raise RuntimeError("prefix tuning is not attached to a model")
        states = self._encoder()
        states = states.to(compute_dtype(device, states.dtype)).permute(1, 2, 3, 0, 4)  # (L, 2, H_kv, n, d_head)
        per_layer = [
            (layer[0].unsqueeze(0).expand(batch_size, -1, -1, -1), layer[1].unsqueeze(0).expand(batch_size, -1, -1, -1))
            for layer in states
        ]
        return DynamicCache(per_layer, config=model.config)

    def prepare_inputs(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> InputPrep:
        """Add ``past_key_values`` (the prefixes) and ``n`` ones in front of the attention mask ``(B, T)``;
        decoders also get position ids ``n + (cumsum(mask) - 1)``. Hidden states keep ``T`` positions."""
        n = self.config.num_virtual_tokens
        out: dict[str, Any] = dict(inputs)
        reference = out["input_ids"] if "input_ids" in out else out["inputs_embeds"]
        batch, length = reference.shape[:2]
        mask = out.get("attention_mask")
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.long, device=reference.device)
        out["past_key_values"] = self.prefix_cache(model, batch, reference.device)
        out["attention_mask"] = torch.cat([mask.new_ones(batch, n), mask], dim=1)
        if self._is_decoder:
            check_positions(self._limit, length, n, "prefix")
            out["position_ids"] = positions_from_mask(mask, offset=n)
        return InputPrep(out, 0)
