"""Shape discovery for the linear maps that LoRA and IA3 adapt: ``nn.Linear`` and GPT-2's ``Conv1D``.

Both compute ``y = W x + b``; ``nn.Linear`` stores ``W`` as ``(out, in)``, ``Conv1D`` stores its transpose
``(in, out)``. Methods work on the ``(out, in)`` view that :func:`weight_out_in` returns, so one code path serves
both (in-place changes to the view change the stored weight).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from adaptune.errors import ConfigError


@dataclass(frozen=True)
class LinearShape:
    """``in_features -> out_features``; ``transposed`` when the weight is stored ``(in, out)`` (Conv1D)."""

    in_features: int
    out_features: int
    transposed: bool


def linear_shape(name: str, module: nn.Module) -> LinearShape:
    """The shape of a linear-like module; a :class:`ConfigError` naming the module if it is not one."""
    if isinstance(module, nn.Linear):
        return LinearShape(module.in_features, module.out_features, transposed=False)
    if isinstance(module, Conv1D):
        rows, cols = module.weight.shape
        return LinearShape(int(rows), int(cols), transposed=True)
    raise ConfigError(
        f"module '{name}' is a {type(module).__name__}, not a linear layer (nn.Linear or Conv1D); "
        "name linear layers in method.target_modules"
    )


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The module's weight as an ``(out, in)`` tensor: a view, so in-place edits reach the stored weight."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight.T if isinstance(module, Conv1D) else weight


def bias_of(module: nn.Module) -> torch.Tensor | None:
    """The module's bias ``(out,)`` or None."""
    bias = getattr(module, "bias", None)
    return bias if isinstance(bias, torch.Tensor) else None
