"""Padding-free forward passes of encoder backbones: the batch's real tokens packed into one row.

A padded batch ``(B, L)`` of mixed lengths spends the share of padding (about half for a micro-batch of random
short texts) of every per-token operation on nothing: the linear maps, LayerNorm, the feed-forward block, LoRA.
:func:`packed_forward` runs the backbone on the ``T`` real tokens as one row ``(1, T)`` with per-example position
ids, so all of that costs ``T`` tokens instead of ``B * L``. Only attention needs the examples apart: the
backbone's attention goes through transformers' attention interface, and the function registered here under
:data:`IMPLEMENTATION` unpacks queries, keys and values to the padded ``(B, heads, L, d)`` layout, runs the usual
SDPA with the padding mask, and packs the result again. The last hidden state comes back padded ``(B, L, d)``
(zeros at padded positions), so heads and pooling are unchanged. Real tokens get what the padded pass gives, up
to float rounding.

Encoders whose attention uses the interface and whose embeddings take ``position_ids`` (BERT, RoBERTa,
XLM-R, ...) qualify (:func:`supports`). Modules that see the padded batch as ``(B, ...)`` rows, such as the
server's per-row adapters, read :func:`current` to learn which tokens belong to which example.

>>> hidden = packed_forward(backbone.model, batch)      # doctest: +SKIP   (B, L, d), like model(**batch)
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

#: The name the packed attention is registered under in transformers' attention and mask interfaces.
IMPLEMENTATION = "adaptune_padding_free"


@dataclass(frozen=True)
class Packing:
    """Where the ``T`` real tokens of a padded ``(B, L)`` batch are.

    ``keep``: ``(T,)`` flat indices into ``B * L`` (row-major, so each example's tokens are contiguous and the
    examples in batch order); ``row_starts``: ``(B + 1,)`` offsets of each example's tokens in the packed row.
    """

    keep: torch.Tensor
    shape: tuple[int, int]
    row_starts: list[int]
    padding_mask: torch.Tensor  # (B, 1, 1, L) bool, True = attend

    @property
    def tokens(self) -> int:
        return int(self.keep.numel())

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """``(T, ...)`` -> ``(B, L, ...)`` with zeros at padded positions."""
        batch, length = self.shape
        out = packed.new_zeros((batch * length, *packed.shape[1:]))
        if packed.requires_grad and torch.is_grad_enabled():
            out = out.index_copy(0, self.keep, packed)  # out of place: differentiable
        else:
            out.index_copy_(0, self.keep, packed)
        return out.view(batch, length, *packed.shape[1:])

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """``(B, L, ...)`` -> ``(T, ...)``."""
        return padded.reshape(-1, *padded.shape[2:]).index_select(0, self.keep)


def packing_of(attention_mask: torch.Tensor) -> Packing:
    """The :class:`Packing` of a ``(B, L)`` 0/1 attention mask."""
    mask = attention_mask != 0
    lengths = mask.sum(dim=1).tolist()
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + int(n))
    shape = (int(mask.shape[0]), int(mask.shape[1]))
    return Packing(mask.reshape(-1).nonzero().squeeze(1), shape, starts, mask[:, None, None, :])


#: Below this share of padding, packing (a gather and a scatter per attention) costs about what it saves.
MIN_PADDING_SHARE = 0.1


def worth_packing(attention_mask: torch.Tensor, min_share: float = MIN_PADDING_SHARE) -> bool:
    """Whether at least ``min_share`` of a ``(B, L)`` batch is padding."""
    share = float((attention_mask == 0).float().mean())
    return share > 0 and share >= min_share


_state = threading.local()


def current() -> Packing | None:
    """The packing of the forward pass running in this thread, or None outside :func:`packed_forward`."""
    return getattr(_state, "packing", None)


def _attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Packed ``(1, heads, T, d)`` -> padded attention -> ``(1, T, heads, d)``; plain SDPA outside a packing."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    packing = current()
    if packing is None or query.shape[0] != 1 or query.shape[2] != packing.tokens:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)  # type: ignore[no-any-return]

    def unpack(t: torch.Tensor) -> torch.Tensor:  # (1, H, T, d) -> (B, H, L, d)
        return packing.unpack(t[0].transpose(0, 1)).transpose(1, 2)

    kwargs.pop("is_causal", None)
    out, _ = sdpa_attention_forward(
        module, unpack(query), unpack(key), unpack(value), packing.padding_mask, is_causal=False, **kwargs
    )  # (B, L, H, d)
    return packing.pack(out).unsqueeze(0), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, _attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, sdpa_mask)


_register()


def supports(model: nn.Module) -> bool:
    """Whether :func:`packed_forward` can run ``model``: an encoder (no causal attention, no cache) whose
    embeddings take ``position_ids`` and whose attention goes through transformers' attention interface."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_decoder", False) or getattr(config, "is_encoder_decoder", False):
        return False
    if "position_ids" not in inspect.signature(model.forward).parameters:
        return False
    return any(type(m).__name__.endswith("SelfAttention") and hasattr(m, "is_causal") for m in model.modules())


@contextmanager
def _packed(model: nn.Module, packing: Packing) -> Iterator[None]:
    config = model.config  # type: ignore[union-attr]
    previous = config._attn_implementation
    _state.packing = packing
    config._attn_implementation = IMPLEMENTATION
    try:
        yield
    finally:
        config._attn_implementation = previous
        _state.packing = None


def packed_forward(
    model: nn.Module, inputs: Mapping[str, torch.Tensor], packing: Packing | None = None
) -> torch.Tensor:
    """``model(**inputs).last_hidden_state`` ``(B, L, d)`` computed on the real tokens only (see the module).

    ``packing``: :func:`packing_of` the batch's attention mask, when the caller needed it first."""
    mask = inputs["attention_mask"]
    packing = packing if packing is not None else packing_of(mask)
    keep = packing.keep
    flat = {k: v.reshape(-1).index_select(0, keep).unsqueeze(0) for k, v in inputs.items() if k != "attention_mask"}
    # the positions the padded pass gives each token (0..L-1 per row), so results match it whatever the padding side
    positions = torch.arange(mask.shape[1], device=mask.device).expand(mask.shape[0], -1)
    flat["position_ids"] = positions.reshape(-1).index_select(0, keep).unsqueeze(0)
    with _packed(model, packing):
        hidden = model(**flat).last_hidden_state  # (1, T, d)
    return packing.unpack(hidden[0])
