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

Injection. The prefixes go in at the attention interface (:mod:`adaptune.prefix_attention`): every attention
layer's keys and values get layer ``l``'s prefix in front and its mask ``n`` attended columns, whatever
attention implementation the model uses (SDPA, eager). Nothing is passed to the model's forward: it needs no
``past_key_values`` argument (transformers 5.24 renamed it to ``cache``, and BERT-family encoders take none), and
a generation cache holds only the text's keys, the prefix joining them at every step. :meth:`PrefixTuning.attach`
finds the attention layers by one forward pass of two tokens; a forward pre-hook on the model computes ``P``
once per forward pass (kept while the parameters are unchanged when no gradient is recorded, so generation
computes it once).

Positions. Encoders (BERT, RoBERTa, ELECTRA ...) were trained with [CLS] at position 0 and the prefix is not
text, so their positions stay ``0..T-1`` (peft instead lets such encoders shift to ``n..n+T-1`` through the
cache length; an exported BERT prefix adapter therefore gives other logits in peft). Causal decoders continue
after the prefix, ``n..n+T-1`` as in the paper's GPT-2 code, peft and transformers' generation with a prefilled
cache; the position ids are counted from the attention mask, so left padding does not shift them (see
:mod:`adaptune.positions`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn
from torch.utils.hooks import RemovableHandle

from adaptune import prefix_attention
from adaptune.config import MethodConfig
from adaptune.errors import ConfigError
from adaptune.methods.base import AttachContext, InputPrep, Method
from adaptune.positions import check_positions, position_limit, positions_from_mask
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


@register_method("prefix", PrefixConfig)
class PrefixTuning(Method):
    """Prefix tuning: trainable keys and values in front of every attention layer (Li & Liang 2021)."""

    # P-Tuning v2 (Liu et al. 2022) trained raw prefixes with 5e-3..1e-2, as peft's examples do (1e-2). Through the
    # MLP one step moves P by about lr * h * E|tanh| (every W_2 row moves together), so the default MLP gets 1e-3
    # (Li & Liang used 5e-5 on far larger models). The head shares the rate. Not yet swept.
    default_learning_rate = 1e-3
    changes_inputs = True
    config: PrefixConfig

    def __init__(self, config: PrefixConfig) -> None:
        super().__init__(config)
        if not config.reparameterize:
            self.default_learning_rate = 1e-2
        self._encoder: PrefixEncoder | None = None
        self._is_decoder = False
        self._limit: int | None = None
        self._layers: list[nn.Module] = []
        self._inner_attention = ""
        self._hook: RemovableHandle | None = None
        #: ``P`` of the running forward pass ``(n, L, 2, H_kv, d_head)``, and what it was computed from.
        self._states: torch.Tensor | None = None
        self._states_key: tuple[Any, ...] | None = None

    def attach(self, model: nn.Module, ctx: AttachContext) -> None:
        """Add a :class:`PrefixEncoder` as ``model.prefix`` and route every attention layer through
        :mod:`adaptune.prefix_attention`; a :class:`ConfigError` when the model's attention cannot be reached."""
        cfg = self.config
        layers, kv_heads, head_dim = attention_shape(model.config)
        inner = prefix_attention.install(model)
        try:
            found = prefix_attention.attention_layers(model)
            if len(found) != layers:
                raise ConfigError(
                    f"prefix tuning found {len(found)} attention layers calling transformers' attention interface "
                    f"in {type(model).__name__}, and its config says num_hidden_layers={layers}"
                )
        except ConfigError:
            prefix_attention.uninstall(model, inner)
            raise
        hidden = cfg.prefix_hidden if cfg.reparameterize else None
        encoder = PrefixEncoder(cfg.num_virtual_tokens, layers, kv_heads, head_dim, hidden)
        device = next(model.parameters()).device
        self.add_input_module(model, PREFIX_ATTR, encoder.to(device))
        self._encoder, self._is_decoder, self._limit = encoder, ctx.is_decoder, position_limit(model)
        self._layers, self._inner_attention = found, inner
        prefix_attention.add_prefixes(found, self.layer_prefix)
        self._hook = model.register_forward_pre_hook(self._refresh)

    def detach(self, model: nn.Module) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        prefix_attention.remove_prefixes(self._layers)
        if self._inner_attention:
            prefix_attention.uninstall(model, self._inner_attention)
        self._layers, self._states, self._states_key = [], None, None
        super().detach(model)
        self._encoder = None

    def _refresh(self, *_: Any) -> None:
        """Compute ``P`` for the forward pass about to run. A pass that records gradients gets a fresh ``P`` (its
        own graph); otherwise the last one is kept while the parameters, autocast and grad mode are unchanged,
        so token-by-token generation runs the MLP once."""
        encoder = self._encoder
        if encoder is None:
            raise RuntimeError("prefix tuning is not attached to a model")
        grad = torch.is_grad_enabled()
        device = encoder.embedding.weight.device
        autocast = torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type)
        key = (grad, autocast, *((id(p), p._version) for p in encoder.parameters()))
        if grad or key != self._states_key or self._states is None:
            self._states = encoder()
            self._states_key = None if grad else key

    def layer_prefix(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``layer``'s prefix keys and values, each ``(H_kv, n, d_head)``."""
        if self._states is None:
            self._refresh()
        assert self._states is not None
        states = self._states[:, layer].permute(1, 2, 0, 3)  # (2, H_kv, n, d_head)
        return states[0], states[1]

    def prefix_states(self) -> torch.Tensor:
        """The prefixes in peft's flat layout, ``(n, L * 2 * d_kv)`` (peft's ``prompt_embeddings``)."""
        if self._encoder is None:
            raise RuntimeError("prefix tuning is not attached to a model")
        return self._encoder().reshape(self.config.num_virtual_tokens, -1)

    def prepare_inputs(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> InputPrep:
        """The inputs unchanged (the prefixes join at the attention layers), with ``kv_prefix`` = ``n``;
        decoders also get position ids ``n + (cumsum(mask) - 1)`` ``(B, T)``. Hidden states keep ``T``
        positions."""
        n = self.config.num_virtual_tokens
        out: dict[str, Any] = dict(inputs)
        if self._is_decoder:
            reference = out["input_ids"] if "input_ids" in out else out["inputs_embeds"]
            batch, length = reference.shape[:2]
            mask = out.get("attention_mask")
            if mask is None:
                mask = torch.ones(batch, length, dtype=torch.long, device=reference.device)
            check_positions(self._limit, length, n, "prefix")
            out["position_ids"] = positions_from_mask(mask, offset=n)
        return InputPrep(out, 0, kv_prefix=n)
