"""IA3 (Liu et al. 2022): learned rescaling of keys, values and the feed-forward activations.

Liu et al., "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than In-Context Learning", NeurIPS
2022 ((IA)^3, "Infused Adapter by Inhibiting and Amplifying Inner Activations"). Three vectors per block, all
initialised to ones so training starts from the base model:

    k = l_k * (W_k x + b_k)        l_k: (d_k,)      output of the key projection
    v = l_v * (W_v x + b_v)        l_v: (d_v,)      output of the value projection
    y = W_out (l_ff * a) + b_out   l_ff: (d_ff,)    input of the FFN output projection (the activations)

The first two scale a module's output (a forward hook), the third its input (a forward pre-hook), as peft does.
``merge`` folds them into the weights: output scaling multiplies the rows of ``W`` and the bias, input scaling
the columns of ``W_out``. Where keys and values only exist inside a fused projection (GPT-2's ``c_attn``), its
whole output is scaled (queries too, one vector of ``3 d``), again as peft does.

Note: peft's default targets for BERT-like models also scale the *input* of the attention output projection
(its ``output.dense`` matches both); ours follow the paper: keys, values and the FFN output projection only.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from adaptune.config import MethodConfig
from adaptune.errors import ConfigError
from adaptune.methods.base import AttachContext, Method
from adaptune.methods.linear import bias_of, linear_shape, weight_out_in
from adaptune.registry import register_method
from adaptune.targets import Role, modules_by_suffix, select_targets

#: Roles whose *input* is scaled; every other role has its output scaled.
INPUT_ROLES = {"ffn_out"}
DEFAULT_ROLES: list[str] = ["key", "value", "ffn_out"]
OUTPUT_ATTR, INPUT_ATTR = "ia3", "ia3_in"


class IA3Config(MethodConfig):
    """Configuration of IA3."""

    name: Literal["ia3"] = Field("ia3", description="IA3: learned scaling of keys, values and FFN activations.")
    target_modules: list[str] | None = Field(
        None, description="Linear modules to rescale, by name suffix (peft-style); None: take them from roles."
    )
    feedforward_modules: list[str] | None = Field(
        None, description="With target_modules: those of them whose input (not output) is scaled, as in peft."
    )
    roles: list[Role] | None = Field(
        None,
        description="Roles to rescale; ffn_out has its input scaled, others their output. None: key, value, ffn_out.",
    )
    layers: list[int] | None = Field(None, description="Block indices to adapt (negative counts from the top).")

    @model_validator(mode="after")
    def _one_way_to_choose(self) -> IA3Config:
        if self.target_modules and self.roles:
            raise ConfigError("config keys 'method.target_modules' and 'method.roles' exclude each other: give one")
        if self.feedforward_modules and not self.target_modules:
            raise ConfigError("config key 'method.feedforward_modules' needs 'method.target_modules'")
        return self


class IA3Scale(nn.Module):
    """``h -> l * h`` with ``l: (dim,)`` initialised to ones: input and output ``(..., dim)``; identity when merged."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.merged = False

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h if self.merged else h * self.scale.to(h.dtype)


@register_method("ia3", IA3Config)
class IA3(Method):
    """IA3: learned vectors rescaling keys, values and the feed-forward activations."""

    # The sweep's best on SST-2 (1.3e-2) and CoNLL-2003 (2.5e-2), geometric mean rounded (README 'Defaults, swept');
    # was 3e-3.
    default_learning_rate = 2e-2
    config: IA3Config

    def attach(self, model: nn.Module, ctx: AttachContext) -> None:
        """Add ``<module>.ia3`` (output scaling) or ``<module>.ia3_in`` (input scaling) to each target."""
        for name, host, on_input in self._targets(model, ctx):
            shape = linear_shape(name, host)
            if on_input:
                self.inject_before(host, INPUT_ATTR, IA3Scale(shape.in_features))
            else:
                self.inject_after(host, OUTPUT_ATTR, IA3Scale(shape.out_features))

    def _targets(self, model: nn.Module, ctx: AttachContext) -> list[tuple[str, nn.Module, bool]]:
        """``(name, module, scale its input?)`` for every module to adapt, sorted by name."""
        cfg = self.config
        if cfg.target_modules:
            return self._named_targets(model, ctx)
        out: dict[str, tuple[str, nn.Module, bool]] = {}
        for role in cfg.roles or DEFAULT_ROLES:
            for name, module in select_targets(model, ctx.anatomy, ctx.model_type, roles=[role], layers=cfg.layers):
                out[name] = (name, module, role in INPUT_ROLES)
        return sorted(out.values(), key=lambda item: item[0])

    def _named_targets(self, model: nn.Module, ctx: AttachContext) -> list[tuple[str, nn.Module, bool]]:
        """peft-style: ``target_modules`` are adapted, those also in ``feedforward_modules`` on their input."""
        cfg = self.config
        found = select_targets(
            model, ctx.anatomy, ctx.model_type, roles=[], target_modules=cfg.target_modules, layers=cfg.layers
        )
        names = {name for name, _ in found}
        inputs: set[str] = set()
        if cfg.feedforward_modules:
            inputs = {name for name, _ in modules_by_suffix(model, cfg.feedforward_modules)}
        stray = sorted(inputs - names)
        if stray and cfg.layers is None:
            raise ConfigError(
                f"config key 'method.feedforward_modules' names modules outside method.target_modules: {stray[:3]}"
            )
        return [(name, module, name in inputs) for name, module in found]

    def _scales(self) -> list[tuple[IA3Scale, nn.Module, bool]]:
        inputs = self.attr_name(INPUT_ATTR)
        return [(getattr(inj.host, inj.attr), inj.host, inj.attr == inputs) for inj in self._injections]

    @torch.no_grad()
    def merge(self, model: nn.Module) -> None:
        """Fold every vector into its module's weight (rows and bias for outputs, columns for inputs)."""
        for scale, host, on_input in self._scales():
            if not scale.merged:
                _rescale(host, scale.scale, on_input, inverse=False)
                scale.merged = True

    @torch.no_grad()
    def unmerge(self, model: nn.Module) -> None:
        """Divide the vectors back out (exact up to float rounding; impossible if a scale is zero)."""
        for scale, host, on_input in self._scales():
            if scale.merged:
                if bool((scale.scale == 0).any()):
                    raise ValueError(f"cannot unmerge IA3 from {type(host).__name__}: a learned scale is exactly zero")
                _rescale(host, scale.scale, on_input, inverse=True)
                scale.merged = False

    def merge_and_unload(self, model: nn.Module) -> None:
        """Merge, then remove the IA3 modules: a plain base model with the scaling folded in."""
        self.merge(model)
        self.remove_injections()

    def detach(self, model: nn.Module) -> None:
        """Unmerge if merged, then remove every IA3 module: the base model as it was."""
        self.unmerge(model)
        self.remove_injections()


def _rescale(host: nn.Module, scale: torch.Tensor, on_input: bool, *, inverse: bool) -> None:
    """Multiply (or divide) ``host``'s weight in place by ``scale``: its columns for input scaling, its rows and
    its bias for output scaling."""
    weight, bias = weight_out_in(host), bias_of(host)
    factor = scale.to(weight.dtype)
    apply = torch.Tensor.div_ if inverse else torch.Tensor.mul_
    apply(weight, factor.unsqueeze(0) if on_input else factor.unsqueeze(1))
    if bias is not None and not on_input:
        apply(bias, factor)
