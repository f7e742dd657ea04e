"""LoRA (Hu et al. 2021), with the rsLoRA scaling (Kalajdzievski 2023) and the DoRA variant (Liu et al. 2024).

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022: a frozen linear map ``W0 x + b``
becomes

    W0 x + b + (alpha / r) B A dropout(x),      A: (r, in),  B: (out, r),  r << min(in, out)

with ``A`` random and ``B`` zero at init, so training starts from the base model. Kalajdzievski, "A Rank
Stabilization Scaling Factor for Fine-Tuning with LoRA", 2023 (rsLoRA): scale by ``alpha / sqrt(r)`` instead,
which keeps the update's size stable as ``r`` grows. Liu et al., "DoRA: Weight-Decomposed Low-Rank Adaptation",
ICML 2024: learn a magnitude ``m: (out,)`` and the direction separately,

    W' = m * (W0 + s B A) / ||W0 + s B A||_c

where ``||.||_c`` is the L2 norm of each output unit's weights (each row of ``W`` in ``(out, in)`` layout, the
paper's column of ``W`` in ``(in, out)`` layout; peft computes the same), ``m`` starts at ``||W0||_c`` so that
``W' = W0`` at init, and the norm is a constant for backprop (the paper's section 4.3, as peft does).

Which linear maps get an update is data per architecture (:mod:`adaptune.targets`): by default the query and
value projections, as in the paper. ``merge``/``unmerge`` fold the update into the base weight and take it out.

Served per row (:class:`MultiLoRA`, :mod:`adaptune.per_row`), for host ``y = W0 x + b`` and row ``i`` served by
adapter ``a = rows[i]``::

    y_i = W0 x_i + b + x_i A_a^T (s_a B_a)^T        A: (n, r_max, d_in) -> stored as (n, d_in, r_max)
                                                    B: (n, d_out, r_max) -> stored as (n, r_max, d_out)

ranks below ``r_max`` are zero-padded and the scaling ``s_a`` (alpha/r or alpha/sqrt(r)) is folded into ``B``;
the gather ``A[rows]`` and two ``bmm`` calls compute every row's update at once, whatever the mix of adapters.
DoRA and merged updates have no per-row form (:meth:`LoRAMethod.per_row_parts` is None).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from adaptune.config import MethodConfig, TrainingConfig
from adaptune.errors import ConfigError
from adaptune.methods.base import AttachContext, Method, ParamGroup, PerRowPart
from adaptune.methods.linear import bias_of, linear_shape, weight_out_in
from adaptune.per_row import SlotKernel
from adaptune.registry import register_method
from adaptune.targets import Role, select_targets

DEFAULT_ROLES: list[str] = ["query", "value"]


class LoRAConfig(MethodConfig):
    """Configuration of LoRA (and DoRA, rsLoRA)."""

    name: Literal["lora"] = Field("lora", description="LoRA (with the DoRA and rsLoRA options).")
    r: int = Field(8, ge=1, le=4096, description="Rank r of the update B A.")
    alpha: float = Field(16.0, gt=0, description="Scale: the update is multiplied by alpha / r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the input of the low-rank path.")
    target_modules: list[str] | None = Field(
        None, description="Linear modules to adapt, by name suffix (peft-style); None: take them from roles."
    )
    roles: list[Role] | None = Field(
        None, description="Roles to adapt (query, key, value, attn_out, ffn_in, ffn_gate, ffn_out); None: query, value."
    )
    layers: list[int] | None = Field(None, description="Block indices to adapt (negative counts from the top).")
    use_rslora: bool = Field(False, description="rsLoRA: scale by alpha / sqrt(r) instead of alpha / r.")
    use_dora: bool = Field(False, description="DoRA: learn a magnitude per output unit and the direction via B A.")
    init: Literal["kaiming", "gaussian"] = Field(
        "kaiming", description="Init of A: 'kaiming' uniform (peft's default) or 'gaussian' (std 1/r); B is zero."
    )

    @model_validator(mode="after")
    def _one_way_to_choose(self) -> LoRAConfig:
        if self.target_modules and self.roles:
            raise ConfigError("config keys 'method.target_modules' and 'method.roles' exclude each other: give one")
        return self


def init_kaiming_(a: torch.Tensor, b: torch.Tensor) -> None:
    """Kaiming-uniform ``A`` (as ``nn.Linear`` does, and peft's default) and zero ``B``."""
    nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    nn.init.zeros_(b)


def init_gaussian_(a: torch.Tensor, b: torch.Tensor) -> None:
    """Normal ``A`` with std ``1/r`` (peft's 'gaussian') and zero ``B``."""
    nn.init.normal_(a, std=1 / a.shape[0])
    nn.init.zeros_(b)


INITS: dict[str, Callable[[torch.Tensor, torch.Tensor], None]] = {"kaiming": init_kaiming_, "gaussian": init_gaussian_}


def row_norm(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of each output unit's weights: ``(out, in) -> (out,)`` (DoRA's ``||.||_c``)."""
    return torch.linalg.vector_norm(weight, dim=1)


class LoRA(nn.Module):
    """The low-rank update of one frozen linear map ``in_dim -> out_dim``; see the module docstring.

    Args:
        in_dim: input features of the host map.
        out_dim: output features of the host map.
        rank: r (8 by default in :class:`LoRAConfig`).
        alpha: the update is scaled by ``alpha / rank`` (16 by default).
        dropout: dropout on the low-rank path's input (0.0).
        use_rslora: scale by ``alpha / sqrt(rank)`` instead (False).
        init: ``"kaiming"`` (default) or ``"gaussian"`` init of ``A``; ``B`` starts at zero.
        magnitude: DoRA only: the initial magnitude ``||W0||_c`` of shape ``(out_dim,)``; None for plain LoRA.

    Dropout acts on the low-rank path only. (peft's DoRA, when dropout is on, also feeds the dropped-out input
    through ``W0`` for the magnitude correction; the two agree whenever dropout is off, e.g. in eval mode.)
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        use_rslora: bool = False,
        init: str = "kaiming",
        magnitude: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.lora_a = nn.Linear(in_dim, rank, bias=False)
        self.lora_b = nn.Linear(rank, out_dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.scaling = alpha / math.sqrt(rank) if use_rslora else alpha / rank
        self.magnitude = nn.Parameter(magnitude.detach().clone()) if magnitude is not None else None
        self.merged = False
        self._merged_norm: torch.Tensor | None = None  # DoRA: the norm used at merge time, needed to unmerge
        INITS[init](self.lora_a.weight, self.lora_b.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The update ``s B A dropout(x)``: ``(..., in_dim) -> (..., out_dim)``. The scale multiplies the rank-r
        intermediate, ``r / out_dim`` of the work of scaling the output."""
        return self.lora_b(self.lora_a(self.dropout(x)) * self.scaling)  # type: ignore[no-any-return]

    def delta_weight(self) -> torch.Tensor:
        """``s B A`` as an ``(out_dim, in_dim)`` matrix."""
        return self.scaling * (self.lora_b.weight @ self.lora_a.weight)

    def dora_scale(self, weight: torch.Tensor) -> torch.Tensor:
        """DoRA's ``m / ||W0 + s B A||_c`` of shape ``(out_dim,)``; the norm carries no gradient."""
        assert self.magnitude is not None
        norm = row_norm(weight + self.delta_weight().detach()).detach()
        return self.magnitude / norm

    def adapt(
        self, x: torch.Tensor, out: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None
    ) -> torch.Tensor:
        """The host's output ``out = W0 x + b`` ``(..., out_dim)`` -> the adapted output (unchanged when merged).
        Only DoRA reads the host's ``weight`` (plain LoRA may get None: an int8 host, :mod:`adaptune.quantize`)."""
        if self.merged:
            return out
        if self.magnitude is None:
            return self._add_update(x, out)
        assert weight is not None, "DoRA needs the host's weight"
        delta = self(x)
        base = out if bias is None else out - bias
        adapted = self.dora_scale(weight) * (base + delta)
        return (adapted if bias is None else adapted + bias).to(out.dtype)

    def _add_update(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out + s B A dropout(x)`` with the addition fused into the last matmul (``addmm``): no separate
        ``(N, out_dim)`` update tensor and no elementwise pass over it, forward or backward."""
        low = self.lora_a(self.dropout(x)) * self.scaling  # (..., r)
        weight = self.lora_b.weight.t()  # (r, out_dim)
        if not torch.is_autocast_enabled(out.device.type):  # autocast casts addmm's operands itself
            low, weight = low.to(out.dtype), weight.to(out.dtype)
        flat = torch.addmm(out.reshape(-1, out.shape[-1]), low.reshape(-1, low.shape[-1]), weight)
        return flat.view(out.shape)

    @torch.no_grad()
    def merge_into(self, weight: torch.Tensor) -> None:
        """Fold the update into ``weight`` ``(out_dim, in_dim)`` in place: ``W0 + s B A`` (DoRA: times m/norm)."""
        delta = self.delta_weight().to(weight.dtype)
        if self.magnitude is None:
            weight.add_(delta)
        else:
            norm = row_norm(weight + delta)
            weight.add_(delta).mul_((self.magnitude / norm).unsqueeze(1))
            self._merged_norm = norm
        self.merged = True

    @torch.no_grad()
    def unmerge_from(self, weight: torch.Tensor) -> None:
        """Inverse of :meth:`merge_into` (exact up to float rounding)."""
        delta = self.delta_weight().to(weight.dtype)
        if self.magnitude is not None:
            assert self._merged_norm is not None
            weight.div_((self.magnitude / self._merged_norm).unsqueeze(1))
            self._merged_norm = None
        weight.sub_(delta)
        self.merged = False


#: One adapter's contribution at one host: ``(A^T (d_in, r), (s B)^T (r, d_out))``.
LoRAWeights = tuple[torch.Tensor, torch.Tensor]


def lora_weights(lora: LoRA) -> LoRAWeights:
    """A plain LoRA's ``(A^T (d_in, r), (s B)^T (r, d_out))``; DoRA and merged LoRAs have no per-row form."""
    if lora.magnitude is not None or lora.merged:
        raise ValueError("DoRA and merged LoRA updates cannot be applied per row")
    a = lora.lora_a.weight.detach()
    b = lora.lora_b.weight.detach() * lora.scaling
    return a.T.contiguous().float(), b.T.contiguous().float()


class MultiLoRA(SlotKernel[LoRAWeights]):
    """All loaded LoRA updates of one host linear map ``d_in -> d_out``, applied per row (the module docstring's
    formula; a :class:`~adaptune.per_row.PerRowKernel`).

    ``apply(x (B, ..., d_in), out (B, ..., d_out)) -> (B, ..., d_out)`` adds row ``i``'s update; rows whose
    slot is 0 (no LoRA here) get ``out`` unchanged (their padded weights are zero). A padding-free batch
    ``(1, T, d_in)`` gets each adapter's update on its own token range.

    The stack ``a_t (capacity + 1, d_in, r_max)``, ``b_t (capacity + 1, r_max, d_out)`` (scaling folded in) is the
    only copy of the members' weights; slots are taken and freed as :class:`~adaptune.per_row.SlotKernel` says.
    """

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.a_t = torch.zeros(1, d_in, 1)
        self.b_t = torch.zeros(1, 1, d_out)

    @classmethod
    def for_member(cls, module: nn.Module) -> MultiLoRA:
        """An empty kernel for the host map that ``module`` (a :class:`LoRA`) adapts."""
        assert isinstance(module, LoRA)
        return cls(module.lora_a.in_features, module.lora_b.out_features)

    def add(self, index: int, module: nn.Module) -> None:
        """Adapter ``index``'s update at this host (:func:`lora_weights`; call :meth:`rebuild` after)."""
        assert isinstance(module, LoRA)
        self.add_weights(index, lora_weights(module))

    def capacity(self) -> int:
        return self.a_t.shape[0] - 1

    def width(self) -> int:
        return self.a_t.shape[2]

    def weights_width(self, weights: LoRAWeights) -> int:
        return weights[0].shape[1]

    def device_of(self, weights: LoRAWeights) -> torch.device:
        return weights[0].device

    def grow(self, capacity: int, width: int, device: torch.device) -> None:
        a_t = torch.zeros(capacity + 1, self.d_in, width, device=device)
        b_t = torch.zeros(capacity + 1, width, self.d_out, device=device)
        a_t[: self.a_t.shape[0], :, : self.a_t.shape[2]] = self.a_t.to(device)
        b_t[: self.b_t.shape[0], : self.b_t.shape[1]] = self.b_t.to(device)
        self.a_t, self.b_t = a_t, b_t

    def write(self, slot: int, weights: LoRAWeights) -> None:
        a, b = weights
        self.a_t[slot, :, : a.shape[1]] = a
        self.b_t[slot, : b.shape[0]] = b

    def zero(self, slot: int) -> None:
        self.a_t[slot].zero_()
        self.b_t[slot].zero_()

    def __call__(self, _host: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        """The host's forward hook: its input ``args[0]`` and output ``output`` -> :meth:`apply`."""
        return self.apply(args[0], output)

    def apply(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out + x A_a^T (s_a B_a)^T`` per row (shapes in the class docstring); ``out`` when unbound."""
        local = self.slots.local
        if local is None or not self.active:
            return out
        if self.slots.packed(x):  # padding-free: each adapter's tokens are one contiguous range
            return self._packed(x[0], out[0] if not torch.is_grad_enabled() else out[0].clone()).unsqueeze(0)
        flat = x.reshape(x.shape[0], -1, self.d_in)
        delta = torch.bmm(torch.bmm(flat, self.a_t[local]), self.b_t[local])
        return out + delta.reshape(out.shape).to(out.dtype)

    #: Segments of a packed batch up to which each runs its own two matmuls; beyond, one batched pair serves all.
    LOOP_SEGMENTS = 2

    def _packed(self, tokens: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """A padding-free batch's tokens ``(T, d_in)``: ``result (T, d_out)`` plus each adapter's update on its own
        token range, in place. A batch of many adapters gathers the ranges side by side (``(k, L, d_in)``) for one
        pair of ``bmm`` instead of a pair of matmuls (and Python's loop) per adapter."""
        segments = self.slots.segments
        assert segments is not None
        if len(segments) <= self.LOOP_SEGMENTS:
            for slot, start, end in segments:
                delta = (tokens[start:end].to(self.a_t.dtype) @ self.a_t[slot]) @ self.b_t[slot]
                result[start:end] += delta.to(result.dtype)
            return result
        positions, mask, slots = self.slots.padded_segments()
        gathered = tokens.to(self.a_t.dtype)[positions]  # (k, L, d_in); padding rows repeat token 0
        delta = torch.bmm(torch.bmm(gathered, self.a_t[slots]), self.b_t[slots]) * mask.unsqueeze(-1)
        return result.index_add_(0, positions.reshape(-1), delta.reshape(-1, self.d_out).to(result.dtype))


def _adapter_hook(lora: LoRA, host: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def combine(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        dora = lora.magnitude is not None and not lora.merged  # only DoRA reads the host's (float) weight
        return lora.adapt(x, out, weight_out_in(host) if dora else None, bias_of(host))

    return combine


@register_method("lora", LoRAConfig)
class LoRAMethod(Method):
    """LoRA: a trainable low-rank update ``(alpha/r) B A`` beside frozen linear maps (DoRA and rsLoRA options)."""

    # The sweep's best on SST-2 (1.9e-3 at r 4) and CoNLL-2003 (3.6e-3 at r 16) have a geometric mean of 2.6e-3; r 8's
    # alpha / r is twice r 16's, so rounded down (README 'Defaults, swept'). Was 1e-3 (peft's range for full runs).
    default_learning_rate = 2e-3
    config: LoRAConfig

    def attach(self, model: nn.Module, ctx: AttachContext) -> None:
        """Add one :class:`LoRA` to each target linear map (``<module>.lora``)."""
        cfg = self.config
        roles = cfg.roles or DEFAULT_ROLES
        targets = select_targets(
            model, ctx.anatomy, ctx.model_type, roles=list(roles), target_modules=cfg.target_modules, layers=cfg.layers
        )
        for name, host in targets:
            shape = linear_shape(name, host)
            magnitude = row_norm(weight_out_in(host).detach()) if cfg.use_dora else None
            lora = LoRA(
                shape.in_features,
                shape.out_features,
                cfg.r,
                cfg.alpha,
                dropout=cfg.dropout,
                use_rslora=cfg.use_rslora,
                init=cfg.init,
                magnitude=magnitude,
            )
            self.inject_around(host, "lora", lora, _adapter_hook(lora, host))

    def _pairs(self) -> list[tuple[LoRA, nn.Module]]:
        return [(getattr(inj.host, inj.attr), inj.host) for inj in self._injections]

    def per_row_parts(self, model: nn.Module) -> list[PerRowPart] | None:
        """Every LoRA module by its host's name in ``model``, served by :class:`MultiLoRA`; None for DoRA or a
        merged model (no per-row form). See :class:`~adaptune.methods.base.PerRowBatched`."""
        pairs = self._pairs()
        if any(lora.magnitude is not None or lora.merged for lora, _ in pairs):
            return None
        names = {id(module): name for name, module in model.named_modules()}
        return [PerRowPart(names[id(host)], lora, MultiLoRA) for lora, host in pairs]

    def param_groups(self, model: nn.Module, training: TrainingConfig) -> list[ParamGroup]:
        """LoRA+ (Hayou et al. 2024, ``training.loraplus_lr_ratio``): the B matrices learn at the ratio times
        the run's rate; no group without it."""
        ratio = training.loraplus_lr_ratio
        if ratio is None:
            return []
        names = tuple(n for n in self.owned_parameters(model) if n.endswith(".lora_b.weight"))
        return [ParamGroup(names, float(ratio), "lora_b")]

    def merge(self, model: nn.Module) -> None:
        """Fold every update into its base weight; the hooks then add nothing. Explicit, for inference/export."""
        for lora, host in self._pairs():
            if not lora.merged:
                lora.merge_into(weight_out_in(host))

    def unmerge(self, model: nn.Module) -> None:
        """Take every merged update back out of its base weight (to float rounding)."""
        for lora, host in self._pairs():
            if lora.merged:
                lora.unmerge_from(weight_out_in(host))

    def merge_and_unload(self, model: nn.Module) -> None:
        """Merge, then remove the LoRA modules: a plain base model with the updates folded in."""
        self.merge(model)
        self.remove_injections()

    def detach(self, model: nn.Module) -> None:
        """Unmerge if merged, then remove every LoRA module: the base model as it was."""
        self.unmerge(model)
        self.remove_injections()
