"""Sentence pooling over token states: CLS, mean, max and last-token (decoders), padding side agnostic."""

from __future__ import annotations

import torch


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool ``hidden`` ``(B, T, d)`` with ``mask`` ``(B, T)`` (1 = real token) into ``(B, d)``.

    ``cls``: first position; ``mean``: average of real tokens (sentence-transformers' mean pooling);
    ``max``: element-wise max over real tokens; ``last``: the last real token, wherever the padding is.
    """
    if mode == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "mean":
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    if mode == "max":
        return hidden.masked_fill(weights == 0, torch.finfo(hidden.dtype).min).max(1).values
    if mode == "last":
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        last = (positions * mask).argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {mode!r}")
