"""NEFTune (Jain et al. 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning"): while training, the
input embeddings ``(B, L, d)`` get uniform noise in ``[-b, b]`` with ``b = alpha / sqrt(L * d)``
(``training.neftune_noise_alpha``; 5 is the paper's common value, as in transformers' Trainer and LLaMA-Factory).

``L`` is the padded batch's width, also when the backbone runs padding-free (one packed row of the real tokens):
both layouts get the same noise scale. Evaluation, prediction and generation never see noise: the hook checks the
adapted model's training flag, not the embedding module's (the frozen-prefix switch turns the module's off). The
noise comes from torch's global generator, so a seeded run is reproducible and a resumed run exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from adaptune import padding_free


def noise_bound(alpha: float, output: torch.Tensor) -> float:
    """``alpha / sqrt(L * d)`` for embeddings ``output`` ``(B, L, d)`` (or a packed ``(1, T, d)`` row, whose ``L``
    is the padded width of its batch)."""
    packing = padding_free.current()
    length = packing.shape[1] if packing is not None and output.shape[-2] == packing.tokens else output.shape[-2]
    return alpha / math.sqrt(length * output.shape[-1])


@contextmanager
def noisy_embeddings(model: nn.Module, embeddings: nn.Module, alpha: float | None) -> Iterator[None]:
    """Add NEFTune noise to what ``embeddings`` returns while ``model.training`` (nothing when ``alpha`` is None)."""
    if alpha is None:
        yield
        return

    def add_noise(_module: nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor | None:
        if not model.training:
            return None
        bound = noise_bound(alpha, output)
        return output + torch.empty_like(output).uniform_(-bound, bound)

    handle = embeddings.register_forward_hook(add_noise)
    try:
        yield
    finally:
        handle.remove()
