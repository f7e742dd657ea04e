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

Served per row (:class:`MultiBottleneck`, :mod:`adaptune.per_row`), after host output ``h``, for row ``i`` served
by adapter ``a = rows[i]``::

    h_i' = keep_a h_i + W_up,a f_a(W_down,a h_i + b_down,a) + b_up,a

with ``keep_a`` = 1 for residual adapters (0 otherwise) and zero-padded bottleneck widths. A row whose adapter does
not touch a host gets slot 0, whose weights are zero: the host's output passes unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch
from pydantic import Field
from torch import nn

from adaptune.config import MethodConfig
from adaptune.errors import ConfigError
from adaptune.methods.base import AttachContext, Method, PerRowPart
from adaptune.padding_free import Packing
from adaptune.per_row import SlotKernel
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

    def per_row_parts(self, model: nn.Module) -> list[PerRowPart]:
        """Every bottleneck adapter by its host's name in ``model``, served by :class:`MultiBottleneck` (see
        :class:`~adaptune.methods.base.PerRowBatched`)."""
        names = {id(module): name for name, module in model.named_modules()}
        return [
            PerRowPart(names[id(inj.host)], getattr(inj.host, inj.attr), MultiBottleneck) for inj in self._injections
        ]


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


#: The bottleneck non-linearities in a fixed order (their index is stored per slot).
ACTIVATION_ORDER: list[str] = sorted(ACTIVATIONS)
_ACT_FNS: list[Callable[[torch.Tensor], torch.Tensor]] = [ACTIVATIONS[name]() for name in ACTIVATION_ORDER]


def activation_name(module: nn.Module) -> str:
    """The :data:`ACTIVATIONS` name of a bottleneck's non-linearity module."""
    for name, cls in ACTIVATIONS.items():
        if type(module) is cls:
            return name
    raise ValueError(f"unknown bottleneck activation {type(module).__name__}")


class BottleneckWeights(NamedTuple):
    """One bottleneck adapter of width ``k`` after a host of width ``d``, as :class:`MultiBottleneck` stacks it."""

    down_t: torch.Tensor  # (d, k)
    down_b: torch.Tensor  # (k,)
    up_t: torch.Tensor  # (k, d)
    up_b: torch.Tensor  # (d,)
    keep: float  # 1.0: residual
    act_id: int  # index into ACTIVATION_ORDER


def bottleneck_weights(adapter: BottleneckAdapter) -> BottleneckWeights:
    """``adapter``'s weights, detached, in the layout :class:`MultiBottleneck` stacks."""
    return BottleneckWeights(
        adapter.down.weight.detach().T,
        adapter.down.bias.detach(),
        adapter.up.weight.detach().T,
        adapter.up.bias.detach(),
        1.0 if adapter.residual else 0.0,
        ACTIVATION_ORDER.index(activation_name(adapter.act)),
    )


class MultiBottleneck(SlotKernel[BottleneckWeights]):
    """All loaded bottleneck adapters after one host module of output width ``d``, applied per row (the module
    docstring's formula; a :class:`~adaptune.per_row.PerRowKernel`).

    ``apply(h (B, ..., d)) -> (B, ..., d)``: row ``i`` gets its adapter's ``keep h + up(f(down(h)))``; rows of
    slot 0 get ``h``. A padding-free batch ``(1, T, d)`` gets each adapter on its own token range.

    The stack (``down_t (capacity + 1, d, k_max)``, ``down_b``, ``up_t``, ``up_b``, ``keep``, ``act_id``) is the
    only copy of the members' weights; slots are taken and freed as :class:`~adaptune.per_row.SlotKernel` says,
    and a free slot holds zeros with ``keep`` 1 (the identity).
    """

    def __init__(self, d: int) -> None:
        super().__init__()
        self.d = d
        self.down_t = torch.zeros(1, d, 1)  # (capacity + 1, d, k_max)
        self.down_b = torch.zeros(1, 1)  # (capacity + 1, k_max)
        self.up_t = torch.zeros(1, 1, d)  # (capacity + 1, k_max, d)
        self.up_b = torch.zeros(1, d)  # (capacity + 1, d)
        self.keep = torch.ones(1)  # (capacity + 1,) 1 = residual
        self.act_id = torch.zeros(1, dtype=torch.long)  # (capacity + 1,) index into ACTIVATION_ORDER
        self.acts: list[tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor | None]] = []
        self.act_list: list[int] = [0]  # act_id and keep as Python numbers, for the packed path
        self.keep_list: list[float] = [1.0]

    @classmethod
    def for_member(cls, module: nn.Module) -> MultiBottleneck:
        """An empty kernel for the host whose output ``module`` (a :class:`BottleneckAdapter`) adapts."""
        assert isinstance(module, BottleneckAdapter)
        return cls(module.up.out_features)

    def add(self, index: int, module: nn.Module) -> None:
        """Adapter ``index``'s bottleneck at this host (:func:`bottleneck_weights`; call :meth:`rebuild` after)."""
        assert isinstance(module, BottleneckAdapter)
        self.add_weights(index, bottleneck_weights(module))

    def capacity(self) -> int:
        return self.down_t.shape[0] - 1

    def width(self) -> int:
        return self.down_t.shape[2]

    def weights_width(self, weights: BottleneckWeights) -> int:
        return weights.down_t.shape[1]

    def device_of(self, weights: BottleneckWeights) -> torch.device:
        return weights.down_t.device

    def grow(self, capacity: int, width: int, device: torch.device) -> None:
        n, k, size = self.down_t.shape[0], self.down_t.shape[2], capacity + 1
        down_t, down_b = torch.zeros(size, self.d, width, device=device), torch.zeros(size, width, device=device)
        up_t, up_b = torch.zeros(size, width, self.d, device=device), torch.zeros(size, self.d, device=device)
        keep, act_id = torch.ones(size, device=device), torch.zeros(size, dtype=torch.long)
        down_t[:n, :, :k], down_b[:n, :k] = self.down_t, self.down_b
        up_t[:n, :k], up_b[:n] = self.up_t, self.up_b
        keep[:n], act_id[:n] = self.keep, self.act_id
        self.down_t, self.down_b, self.up_t, self.up_b = down_t, down_b, up_t, up_b
        self.keep, self.act_id = keep, act_id

    def write(self, slot: int, weights: BottleneckWeights) -> None:
        k = weights.down_t.shape[1]
        self.down_t[slot, :, :k] = weights.down_t
        self.down_b[slot, :k] = weights.down_b
        self.up_t[slot, :k] = weights.up_t
        self.up_b[slot] = weights.up_b
        self.keep[slot] = weights.keep
        self.act_id[slot] = weights.act_id

    def zero(self, slot: int) -> None:
        for stacked in (self.down_t, self.down_b, self.up_t, self.up_b):
            stacked[slot].zero_()
        self.keep[slot], self.act_id[slot] = 1.0, 0

    def rebuild(self) -> None:
        """:meth:`SlotKernel.rebuild`, then the slots' non-linearities and residual flags as Python numbers."""
        super().rebuild()
        self.act_list, self.keep_list = self.act_id.tolist(), self.keep.tolist()

    def bind(self, rows: torch.Tensor, packing: Packing | None) -> None:
        """Bind the batch (:meth:`SlotKernel.bind`), then group its rows by non-linearity (one group, no mask, in
        the common case)."""
        super().bind(rows, packing)
        if not self.active:
            return
        local = self.slots.local
        assert local is not None
        kinds = self.act_id[local]
        present = sorted({int(k) for k in kinds.unique()})
        if len(present) == 1:
            self.acts = [(_ACT_FNS[present[0]], None)]
        else:
            self.acts = [(_ACT_FNS[k], kinds == k) for k in present]

    def clear(self) -> None:
        super().clear()
        self.acts = []

    def __call__(self, _host: nn.Module, _args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        """The host's forward hook: its output -> :meth:`apply`."""
        return self.apply(output)

    def apply(self, h: torch.Tensor) -> torch.Tensor:
        """``keep_a h + W_up,a f_a(W_down,a h + b_down,a) + b_up,a`` per row; ``h`` when unbound."""
        local = self.slots.local
        if local is None or not self.active:
            return h
        if self.slots.packed(h):
            return self._packed(h)
        flat = h.reshape(h.shape[0], -1, self.d)
        z = torch.baddbmm(self.down_b[local].unsqueeze(1), flat, self.down_t[local])
        z = self._activate(z)
        delta = torch.baddbmm(self.up_b[local].unsqueeze(1), z, self.up_t[local])
        out = flat * self.keep[local].view(-1, 1, 1).to(flat.dtype) + delta.to(flat.dtype)
        return out.reshape(h.shape)

    def _packed(self, h: torch.Tensor) -> torch.Tensor:
        """Padding-free batch ``(1, T, d)``: every adapter's contiguous token range with its own weights."""
        assert self.slots.segments is not None
        tokens = h[0]
        out = tokens.clone()
        for slot, start, end in self.slots.segments:
            part = tokens[start:end].to(self.down_t.dtype)
            z = _ACT_FNS[self.act_list[slot]](torch.addmm(self.down_b[slot], part, self.down_t[slot]))
            adapted = part * self.keep_list[slot] + torch.addmm(self.up_b[slot], z, self.up_t[slot])
            out[start:end] = adapted.to(out.dtype)
        return out.unsqueeze(0)

    def _activate(self, z: torch.Tensor) -> torch.Tensor:
        if len(self.acts) == 1:
            return self.acts[0][0](z)
        out = z.clone()
        for fn, mask in self.acts:
            assert mask is not None
            out[mask] = fn(z[mask])
        return out
