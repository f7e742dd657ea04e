"""Positions for the methods that put virtual tokens before the input (``prompt``) or a key/value prefix in front
of every attention (``prefix``).

Two rules keep the head's view of a batch independent of these methods and of padding:

* the attention mask grows by ``n`` ones at the front, so padding stays masked wherever it is;
* for causal decoders, position ids are counted from the mask (``cumsum - 1``), so a left-padded row numbers its
  text exactly like the same text alone. Without this a rotary model would see the distance between the virtual
  tokens and the text grow with the amount of padding, and batching would change the outputs.

Encoders keep numbering positions themselves (their tokenizers pad on the right, where counting from the mask and
counting from 0 agree), which also keeps RoBERTa's ``padding_idx + 1`` offset their own business.
"""

from __future__ import annotations

import torch
from torch import nn

from adaptune.errors import ConfigError


def position_limit(model: nn.Module) -> int | None:
    """How many positions ``model`` can number, or None when positions are not a learned table (rotary models).

    A learned absolute position table is an ``nn.Embedding`` (other than the word embeddings) with
    ``config.max_position_embeddings`` rows; when it reserves a padding row, as RoBERTa's does (positions start
    at ``padding_idx + 1``), the rows up to and including ``padding_idx`` are not usable.
    """
    max_positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not isinstance(max_positions, int):
        return None
    get_words = getattr(model, "get_input_embeddings", None)
    words = get_words() if callable(get_words) else None
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module is not words and module.num_embeddings == max_positions:
            pad = module.padding_idx
            return max_positions - (pad + 1 if pad is not None else 0)
    return None


def check_positions(limit: int | None, length: int, n_virtual: int, method: str) -> None:
    """Raise a :class:`ConfigError` when ``n_virtual`` extra positions before ``length`` tokens exceed ``limit``.

    Without the check a learned position table would be indexed past its end (an IndexError deep in the model)
    or, worse, silently clipped by some implementations.
    """
    if limit is not None and length + n_virtual > limit:
        raise ConfigError(
            f"method '{method}' numbers {n_virtual} virtual positions before inputs of {length} tokens, but the "
            f"model has only {limit} positions; set data.max_length to at most {max(1, limit - n_virtual)} "
            "or lower method.num_virtual_tokens"
        )


def positions_from_mask(mask: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Position ids ``(B, T)`` from an attention mask ``(B, T)`` (1 = real token).

    Real tokens count ``offset, offset + 1, ...`` from the first real token of their row; padding before it gets
    ``offset`` and padding after the last real token repeats the last position (both are masked anyway).
    """
    return (mask.long().cumsum(-1) - 1).clamp(min=0) + offset


def compute_dtype(device: torch.device, default: torch.dtype) -> torch.dtype:
    """The dtype the backbone computes in on ``device``: autocast's when it is on, else ``default``.

    Tensors handed to attention next to the model's own keys and values (a key/value prefix) must match them.
    """
    kind = device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return default
