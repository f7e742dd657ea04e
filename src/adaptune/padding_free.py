"""Padding-free forward passes: the batch's real tokens packed into one row (encoders and decoders).

A padded batch ``(B, L)`` of mixed lengths spends the share of padding (about half for a micro-batch of random
short texts) of every per-token operation on nothing: the linear maps, LayerNorm, the feed-forward block, LoRA.
:func:`packed_forward` runs the backbone on the ``T`` real tokens as one row ``(1, T)`` with per-example position
ids, so all of that costs ``T`` tokens instead of ``B * L``. Only attention needs the examples apart: the
backbone's attention goes through transformers' attention interface, and the function registered here under
:data:`IMPLEMENTATION` unpacks queries, keys and values to the padded ``(B, heads, L, d)`` layout, runs the usual
SDPA with the padding mask, and packs the result again. The last hidden state comes back padded ``(B, L, d)``
(zeros at padded positions), so heads and pooling are unchanged. Real tokens get what the padded pass gives, up
to float rounding.

Decoders (Llama, Qwen2, Mistral, GPT-2, ...) run the same way with causal attention, through SDPA with
``is_causal`` and no mask (the flash kernel that skips the masked half, keys and values at their own head
count): up to :data:`PER_EXAMPLE_ROWS` examples one SDPA call each, on its own slice of the packed row, so no
attention work is spent on padding; bigger batches in one call, each example unpacked to the start of its row
(whatever the batch's padding side), where a real token sees only earlier real tokens of its own example, so the
padding behind it changes nothing. Their position ids are the ones the padded pass gets.

Backbones whose attention uses the interface and whose forward takes ``position_ids`` (BERT, RoBERTa, XLM-R,
Llama, ...) qualify (:func:`supports`). Modules that see the padded batch as ``(B, ...)`` rows, such as the
server's per-row adapters, read :func:`current` to learn which tokens belong to which example.

>>> hidden = packed_forward(backbone.model, batch)      # doctest: +SKIP   (B, L, d), like model(**batch)
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
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

    @cached_property
    def width(self) -> int:
        """The longest example's length ``W``."""
        return max((b - a for a, b in zip(self.row_starts, self.row_starts[1:], strict=False)), default=0)

    @cached_property
    def left_aligned(self) -> torch.Tensor:
        """``(T,)`` flat indices into ``B * W`` that put each example at the start of its row (causal attention
        of big batches; built on first use)."""
        counts = torch.tensor(
            [b - a for a, b in zip(self.row_starts, self.row_starts[1:], strict=False)], device=self.keep.device
        )
        rows = torch.repeat_interleave(torch.arange(self.shape[0], device=self.keep.device), counts)
        starts = torch.tensor(self.row_starts[:-1], dtype=torch.long, device=self.keep.device)
        within = torch.arange(self.tokens, device=self.keep.device) - starts[rows]  # index in its example
        return rows * self.width + within

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """``(T, ...)`` -> ``(B, L, ...)`` with zeros at padded positions."""
        return _scatter(packed, self.keep, self.shape)

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """``(B, L, ...)`` -> ``(T, ...)``."""
        return padded.reshape(-1, *padded.shape[2:]).index_select(0, self.keep)

    def unpack_left(self, packed: torch.Tensor) -> torch.Tensor:
        """``(T, ...)`` -> ``(B, W, ...)``, each example from column 0, zeros behind it (``W``: the longest)."""
        return _scatter(packed, self.left_aligned, (self.shape[0], self.width))

    def pack_left(self, padded: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`unpack_left`: ``(B, W, ...)`` -> ``(T, ...)``."""
        return padded.reshape(-1, *padded.shape[2:]).index_select(0, self.left_aligned)


def _scatter(packed: torch.Tensor, index: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``(T, ...)`` rows to the flat positions ``index`` of a zero ``(B, L, ...)`` tensor."""
    batch, length = shape
    out = packed.new_zeros((batch * length, *packed.shape[1:]))
    if packed.requires_grad and torch.is_grad_enabled():
        out = out.index_copy(0, index, packed)  # out of place: differentiable
    else:
        out.index_copy_(0, index, packed)
    return out.view(batch, length, *packed.shape[1:])


def packing_of(attention_mask: torch.Tensor) -> Packing:
    """The :class:`Packing` of a ``(B, L)`` 0/1 attention mask."""
    mask = attention_mask != 0
    starts = [0]
    for n in mask.sum(dim=1).tolist():
        starts.append(starts[-1] + int(n))
    shape = (int(mask.shape[0]), int(mask.shape[1]))
    return Packing(mask.reshape(-1).nonzero().squeeze(1), shape, starts, mask[:, None, None, :])


#: Below this share of padding, packing (a gather and a scatter per attention) costs about what it saves.
MIN_PADDING_SHARE = 0.1


def worth_packing(attention_mask: torch.Tensor, min_share: float = MIN_PADDING_SHARE) -> bool:
    """Whether at least ``min_share`` of a ``(B, L)`` batch is padding."""
    share = float((attention_mask == 0).float().mean())
    return share > 0 and share >= min_share


#: Causal attention runs example by example (one SDPA call each, at its own length) up to this many rows;
#: bigger batches run as one call on the left-aligned layout.
PER_EXAMPLE_ROWS = 16

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
    """Packed ``(1, heads, T, d)`` -> padded attention -> ``(1, T, heads, d)``; plain SDPA outside a packing.

    Bidirectional attention runs on the padded layout with the padding mask; causal attention on the
    left-aligned layout with ``is_causal`` and no mask (keys and values keep their own head count: grouped-query
    attention without copies)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    packing = current()
    if packing is None or query.shape[0] != 1 or query.shape[2] != packing.tokens or key.shape[2] != packing.tokens:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)  # type: ignore[no-any-return]
    causal = kwargs.pop("is_causal", None)
    causal = bool(getattr(module, "is_causal", False) if causal is None else causal)

    if causal and packing.shape[0] <= PER_EXAMPLE_ROWS:  # each example at its own length: no padded work
        # split, not slicing: the backward pass concatenates the examples' gradients once, where the gradient
        # of each slice would be a zero-filled tensor of the whole row, summed example by example.
        sizes = [b - a for a, b in zip(packing.row_starts, packing.row_starts[1:], strict=False)]
        parts = [
            sdpa_attention_forward(module, q, k, v, None, is_causal=True, **kwargs)[0]
            for q, k, v in zip(query.split(sizes, 2), key.split(sizes, 2), value.split(sizes, 2), strict=True)
            if q.shape[2]
        ]  # each (1, n, H, d)
        return torch.cat(parts, dim=1), None
    if causal:

        def unpack(t: torch.Tensor) -> torch.Tensor:  # (1, H, T, d) -> (B, H, W, d), examples from column 0
            return packing.unpack_left(t[0].transpose(0, 1)).transpose(1, 2)

        query, key, value = unpack(query), unpack(key), unpack(value)
        out, _ = sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)
        return packing.pack_left(out).unsqueeze(0), None

    def unpack_padded(t: torch.Tensor) -> torch.Tensor:  # (1, H, T, d) -> (B, H, L, d)
        return packing.unpack(t[0].transpose(0, 1)).transpose(1, 2)

    out, _ = sdpa_attention_forward(
        module,
        unpack_padded(query),
        unpack_padded(key),
        unpack_padded(value),
        packing.padding_mask,
        is_causal=False,
        **kwargs,
    )  # (B, L, H, d)
    return packing.pack(out).unsqueeze(0), None


def _mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """The mask builder registered with the attention: none inside a packed pass (the attention builds its own
    from the packing), transformers' SDPA mask for any other caller."""
    from transformers.masking_utils import sdpa_mask

    return None if current() is not None else sdpa_mask(*args, **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    AttentionInterface.register(IMPLEMENTATION, _attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, _mask)


_register()


def _uses_attention_interface(module: nn.Module) -> bool:
    """An attention module whose modeling file dispatches through transformers' attention interface."""
    source = inspect.getmodule(type(module))
    return hasattr(module, "is_causal") and source is not None and hasattr(source, "ALL_ATTENTION_FUNCTIONS")


def supports(model: nn.Module) -> bool:
    """Whether :func:`packed_forward` can run ``model``: a base model (no encoder-decoder, no cross-attention)
    whose forward takes ``position_ids`` and whose attention modules go through transformers' attention
    interface: BERT-style encoders, Llama-style and GPT-2 decoders."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False) or getattr(config, "add_cross_attention", False):
        return False
    if getattr(config, "is_decoder", False):  # an encoder class configured as a decoder (BERT with is_decoder)
        return False
    if "position_ids" not in inspect.signature(model.forward).parameters:
        return False
    attention = [m for m in model.modules() if type(m).__name__.endswith("Attention") and hasattr(m, "is_causal")]
    return bool(attention) and all(_uses_attention_interface(m) for m in attention)


@contextmanager
def _packed(config: Any, packing: Packing) -> Iterator[None]:
    previous = config._attn_implementation
    _state.packing = packing
    config._attn_implementation = IMPLEMENTATION
    try:
        yield
    finally:
        config._attn_implementation = previous
        _state.packing = None


def checkpoint_context(config: Any) -> Any:
    """A ``context_fn`` for ``torch.utils.checkpoint`` (non-reentrant): a block recomputed in the backward pass
    runs outside :func:`packed_forward`, so it gets the packing its forward saw (``config``: the backbone's)."""
    from contextlib import nullcontext

    def contexts() -> tuple[Any, Any]:
        packing = current()
        return nullcontext(), (nullcontext() if packing is None else _packed(config, packing))

    return contexts


def packed_forward(
    model: nn.Module, inputs: Mapping[str, torch.Tensor], packing: Packing | None = None
) -> torch.Tensor:
    """``model(**inputs).last_hidden_state`` ``(B, L, d)`` computed on the real tokens only (see the module).

    ``packing``: :func:`packing_of` the batch's attention mask, when the caller needed it first."""
    mask = inputs["attention_mask"]
    packing = packing if packing is not None else packing_of(mask)
    keep = packing.keep
    flat: dict[str, Any] = {
        k: v.reshape(-1).index_select(0, keep).unsqueeze(0) for k, v in inputs.items() if k != "attention_mask"
    }
    if "position_ids" not in flat:
        # the positions the padded pass gives each token (0..L-1 per row), whatever the padding side
        positions = torch.arange(mask.shape[1], device=mask.device).expand(mask.shape[0], -1)
        flat["position_ids"] = positions.reshape(-1).index_select(0, keep).unsqueeze(0)
    if "use_cache" in inspect.signature(model.forward).parameters:
        flat["use_cache"] = False  # a decoder: no key/value cache of the packed row
    with _packed(model.config, packing):
        hidden = model(**flat).last_hidden_state  # (1, T, d)
    return packing.unpack(hidden[0])
