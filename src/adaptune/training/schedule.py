"""Optimiser and learning-rate schedule: AdamW with warmup then linear decay, cosine decay or constant."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from adaptune.methods.base import ParamGroup


def build_optimizer(
    named: Iterable[tuple[str, nn.Parameter]], lr: float, weight_decay: float, *, groups: Sequence[ParamGroup] = ()
) -> torch.optim.AdamW:
    """AdamW; no weight decay on biases and norm weights (1-d tensors), as is standard for transformers.

    ``groups`` are the method's own (:class:`~adaptune.methods.base.ParamGroups`, e.g. LoRA+'s B matrices,
    Hayou et al. 2024): each becomes one more optimiser group, with weight decay, learning at ``lr * lr_scale``
    (groups with the same label and scale, a stack's LoRA members, share one); the groups keep their ratio under
    the schedule, which scales every group's initial rate. Optimiser groups in order: decay, no decay, then the
    method's (empty ones left out), the layout a checkpoint's optimiser state has.
    """
    kinds = list(dict.fromkeys((group.label, float(group.lr_scale)) for group in groups))
    kind_of = {name: kinds.index((g.label, float(g.lr_scale))) for g in groups for name in g.names}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    own: list[list[nn.Parameter]] = [[] for _ in kinds]
    for name, param in named:
        if name in kind_of:
            own[kind_of.pop(name)].append(param)
        else:
            (no_decay if param.ndim < 2 else decay).append(param)
    if kind_of:
        raise ValueError(f"optimiser groups name parameters that are not trained: {', '.join(sorted(kind_of))}")
    settings = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    for (_label, scale), params in zip(kinds, own, strict=True):
        settings.append({"params": params, "weight_decay": weight_decay, "lr": lr * scale})
    return torch.optim.AdamW([g for g in settings if g["params"]], lr=lr)


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
