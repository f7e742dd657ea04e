"""Optimiser and learning-rate schedule: AdamW with warmup then linear decay, cosine decay or constant."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

#: The tensors LoRA+ gives the higher learning rate: LoRA's B matrices (``lora_b``), wherever a method keeps them.
LORA_B_SUFFIX = "lora_b.weight"


def build_optimizer(
    named: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float, *, loraplus_lr_ratio: float | None = None
) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and norm weights (1-d tensors), as is standard for transformers. With
    ``loraplus_lr_ratio`` (LoRA+, Hayou et al. 2024) LoRA's B matrices learn at ``lr * loraplus_lr_ratio``; the
    groups keep their ratio under the schedule, which scales every group's initial rate."""
    decay, no_decay, fast = [], [], []
    for name, param in named:
        if loraplus_lr_ratio is not None and name.endswith(LORA_B_SUFFIX):
            fast.append(param)
        else:
            (no_decay if param.ndim < 2 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if fast:
        groups.append({"params": fast, "weight_decay": weight_decay, "lr": lr * float(loraplus_lr_ratio or 1.0)})
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def lr_multiplier(step: int, *, warmup: int, total: int, kind: str) -> float:
    """Factor on the base learning rate at ``step``: linear warmup over ``warmup`` steps, then ``kind`` decay."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, 1.0 - progress)


def build_scheduler(optimizer: torch.optim.Optimizer, *, warmup: int, total: int, kind: str) -> LambdaLR:
    """A :class:`LambdaLR` stepping once per optimiser step."""
    return LambdaLR(optimizer, lambda step: lr_multiplier(step, warmup=warmup, total=total, kind=kind))
