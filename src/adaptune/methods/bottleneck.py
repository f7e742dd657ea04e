"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021).

Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", ICML 2019: a small bottleneck after the attention
output and after the feed-forward output of every block. Pfeiffer et al., "AdapterFusion: Non-Destructive Task
Composition for Transfer Learning", EACL 2021: one bottleneck after the feed-forward output only, about as good at
half the cost.

Each adapter maps hidden states ``h`` of shape ``(batch, seq, d)`` to

    h' = h + W_up f(W_down h)

with ``W_down: d -> d / reduction_factor``, ``f`` a non-linearity and ``W_up`` initialised to zero, so training
starts from the unchanged base model. The adapter sits on the output projection (before dropout, the residual add
and LayerNorm of the block), found per architecture in :mod:`adaptune.targets`.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from adaptune.config import MethodConfig
from adaptune.errors import ConfigError
from adaptune.methods.base import AttachContext, Method
from adaptune.registry import register_method
from adaptune.targets import modules_by_suffix, role_modules

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU, "tanh": nn.Tanh}


class BottleneckConfig(MethodConfig):
    """Configuration of bottleneck adapters."""

    name: Literal["bottleneck"] = "bottleneck"
    placement: Literal["pfeiffer", "houlsby"] = Field(
        "pfeiffer", description="'pfeiffer': after the FFN only; 'houlsby': after attention and after the FFN."
    )
    reduction_factor: float = Field(16, gt=0, le=4096, description="Bottleneck size = hidden size / this.")
    activation: Literal["relu", "gelu", "swish", "tanh"] = Field("relu", description="Non-linearity f.")
    residual: bool = Field(True, description="Add the input back: h + up(f(down(h))).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the bottleneck activations.")
    init_std: float = Field(1e-2, ge=0, description="Std of the normal init of W_down; W_up starts at zero.")
    layers: list[int] | None = Field(None, description="Block indices to adapt (negative counts from the top).")
    target_modules: list[str] | None = Field(
        None, description="Module names (suffixes) to put adapters after, for architectures not in the table."
    )


class BottleneckAdapter(nn.Module):
    """``h -> h + W_up f(W_down h)``: input and output ``(..., d)``; ``d_bottleneck = d / reduction_factor``."""

    def __init__(
        self,
        d: int,
        d_bottleneck: int,
        activation: str = "relu",
        residual: bool = True,
        dropout: float = 0.0,
        init_std: float = 1e-2,
    ) -> None:
        super().__init__()
        self.down = nn.Linear(d, d_bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.up = nn.Linear(d_bottleneck, d)
        self.residual = residual
        self.init_near_identity(init_std)

    def init_near_identity(self, std: float) -> None:
        """Small random ``W_down``, zero ``W_up`` and biases: the adapter starts as the identity (Houlsby 2019)."""
        nn.init.normal_(self.down.weight, std=std)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h``: ``(..., d)`` -> ``(..., d)``."""
        delta = self.up(self.dropout(self.act(self.down(h))))
        return h + delta if self.residual else delta


@register_method("bottleneck", BottleneckConfig)
class Bottleneck(Method):
    """Bottleneck adapters after the FFN (Pfeiffer) or after attention and FFN (Houlsby) of each block."""

    default_learning_rate = 3e-3  # best of 1e-3/3e-3/1e-2 on SST-2 and Resume NER subsets (README)
    config: BottleneckConfig

    def attach(self, model: nn.Module, ctx: AttachContext) -> None:
        """Add one :class:`BottleneckAdapter` after each target module."""
        cfg = self.config
        size = max(1, round(ctx.hidden_size / cfg.reduction_factor))
        for _name, host in self._targets(model, ctx):
            width = _output_width(host, ctx.hidden_size)
            adapter = BottleneckAdapter(width, size, cfg.activation, cfg.residual, cfg.dropout, cfg.init_std)
            self.inject_after(host, "bottleneck", adapter)

    def _targets(self, model: nn.Module, ctx: AttachContext) -> list[tuple[str, nn.Module]]:
        cfg = self.config
        if cfg.target_modules:
            return modules_by_suffix(model, cfg.target_modules)
        roles = ["attn_out", "ffn_out"] if cfg.placement == "houlsby" else ["ffn_out"]
        found = [pair for role in roles for pair in role_modules(model, ctx.anatomy, ctx.model_type, role, cfg.layers)]
        return sorted(found, key=lambda pair: pair[0])


def _output_width(module: nn.Module, default: int) -> int:
    """The feature width a module outputs (Linear, or GPT-2's Conv1D which stores ``nf``)."""
    if isinstance(module, nn.Linear):
        return module.out_features
    width = getattr(module, "nf", None)
    if isinstance(width, int):
        return width
    if default <= 0:
        raise ConfigError(f"cannot tell the output width of {type(module).__name__}")
    return default
