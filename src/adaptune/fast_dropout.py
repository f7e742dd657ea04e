"""Dropout with cheaper masks on CPU: 16-bit random lanes compared to a threshold instead of Bernoulli draws.

Dropout keeps each element of ``x`` with probability ``1 - p`` and scales the kept ones by ``1 / (1 - p)``
(Srivastava et al. 2014, "Dropout: a simple way to prevent neural networks from overfitting"):
``y = x * m / (1 - p)``, ``m ~ Bernoulli(1 - p)`` elementwise. Torch's CPU kernel draws one Bernoulli sample per
element, about 11 ns each: on a frozen BERT the ~20 dropout calls of a training step were 17.6% of a MiniLM LoRA
step. Here the mask comes from ``torch.int64.random_`` over the full 64-bit range (all 64 bits random: the default
``random_()`` gives only 63), viewed as four 16-bit lanes per word; lane ``u`` (read as unsigned, uniform on
``0..65535``) keeps its element when ``u >= round(p * 65536)``. Same distribution as torch's dropout, with ``p``
rounded to a multiple of ``1 / 65536`` (an error of at most ``7.6e-6``; ``p`` below ``2**-17`` drops nothing) and
the scale ``1 / (1 - rounded p)``, so that ``E[y] = x`` exactly. It draws from torch's default generator, so
``torch.manual_seed`` makes runs reproducible (the masks differ from torch's for the same seed).

Autograd stores the boolean mask (one byte per element, no float copy): the gradient is ``m / (1 - p) * dy``.
Tensors off the CPU keep torch's own fused kernels (:func:`fast_dropout` calls ``F.dropout`` there).

:func:`enable` applies it to a model: every ``nn.Dropout`` becomes a :class:`FastDropout` (the same module in eval
mode or with ``p == 0``), and a backbone whose attention runs transformers' ``sdpa`` implementation switches to
:data:`IMPLEMENTATION`: SDPA itself when the attention dropout is 0 (eval mode), else scores, softmax, fast dropout
and ``@ v`` spelled out (SDPA's CPU kernels with dropout take the math path anyway).

>>> handle = enable(model)        # doctest: +SKIP   training forwards now draw cheaper masks
>>> handle.remove()               # doctest: +SKIP   back to the model as it was
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: The name the attention with fast dropout is registered under in transformers' attention and mask interfaces.
IMPLEMENTATION = "adaptune_fast_dropout"
#: Distinct values of one random lane: ``p`` is rounded to a multiple of ``1 / LANES``.
LANES = 1 << 16


def threshold(p: float) -> int:
    """``round(p * 65536)``, clipped to ``0..65536``: a lane ``u`` drops its element when ``u < threshold(p)``."""
    return min(LANES, max(0, round(p * LANES)))


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A boolean ``shape`` tensor, True with probability ``1 - threshold(p) / 65536`` independently per element.

    ``ceil(n / 4)`` 64-bit words from the default generator, each split into four 16-bit lanes. The lanes are read
    as signed int16 (``v = u - 32768``), so ``u >= t`` is ``v >= t - 32768``."""
    count = math.prod(shape)
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(1 << 63), None)  # from int64 min with no upper bound: every one of the 64 bits is random
    lanes = words.view(torch.int16)[:count]
    return (lanes >= threshold(p) - LANES // 2).view(shape)


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``x * m / (1 - p')`` with ``m = keep_mask(x.shape, p)`` and ``p' = threshold(p) / 65536``; ``x`` itself
    when not training or ``p'`` is 0. Any shape and floating dtype; the output has ``x``'s shape and dtype."""
    if not training or p <= 0.0:
        return x
    dropped = threshold(p)
    if x.device.type != "cpu" or dropped >= LANES:  # torch's fused kernels off the CPU; torch's own for p ~ 1
        return F.dropout(x, p, training=True)
    if dropped == 0:
        return x
    return _MaskedScale.apply(x, keep_mask(x.shape, p, x.device), LANES / (LANES - dropped))  # type: ignore[no-any-return]


class _MaskedScale(torch.autograd.Function):
    """``y = x * mask * scale`` with ``mask`` boolean, kept as is (one byte per element) for ``dx = dy * mask *
    scale``. The products read the mask as uint8 (the same bytes): torch multiplies a float tensor by uint8
    faster than by bool."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(mask)
        ctx.scale = scale
        return (x * mask.view(torch.uint8)).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (mask,) = ctx.saved_tensors
        return (grad * mask.view(torch.uint8)).mul_(ctx.scale), None, None


class FastDropout(nn.Dropout):
    """``nn.Dropout`` drawing its mask with :func:`fast_dropout` in training mode (always out of place)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return fast_dropout(x, self.p)


def _attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Transformers' attention-interface call: ``query`` ``(B, H, Lq, d)``, ``key``/``value`` ``(B, Hkv, Lk, d)``,
    ``attention_mask`` None, boolean (True = attend) or additive, broadcastable to ``(B, H, Lq, Lk)`` ->
    ``((B, Lq, H, d), None)``. ``sdpa_attention_forward`` unless there is dropout on CPU and no position bias or
    paged cache; then ``softmax(q k^T * scaling + mask)`` with :func:`fast_dropout`, ``@ v``."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    plain = (
        dropout <= 0.0
        or query.device.type != "cpu"
        or kwargs.get("position_bias") is not None
        or kwargs.get("cache") is not None
    )
    if plain:
        out = sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
        return out  # type: ignore[no-any-return]
    groups = int(getattr(module, "num_key_value_groups", 1))
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    q_length = query.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if causal and attention_mask is None and q_length > 1:  # SDPA's is_causal: top-left aligned, keys cropped
        key, value = key[:, :, :q_length], value[:, :, :q_length]
        attention_mask = torch.ones(q_length, key.shape[2], dtype=torch.bool, device=query.device).tril()
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)).mul_(scale)
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    elif attention_mask is not None:
        scores = scores + attention_mask
    probs = fast_dropout(scores.softmax(dim=-1), dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, _attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, sdpa_mask)  # the masks SDPA gets: bool or None


_register()


@dataclass
class Enabled:
    """What :func:`enable` changed, to undo it: the replaced dropout modules and the switched model configs."""

    dropouts: list[tuple[nn.Module, str, nn.Module]] = field(default_factory=list)  # (parent, name, original)
    configs: list[Any] = field(default_factory=list)  # configs moved from "sdpa" to IMPLEMENTATION

    @property
    def attention(self) -> bool:
        """Whether the attention-probability dropout is fast too (the model ran transformers' SDPA)."""
        return bool(self.configs)

    def remove(self) -> None:
        """Put the original modules and attention implementation back."""
        for parent, name, original in reversed(self.dropouts):
            setattr(parent, name, original)
        for config in self.configs:
            config._attn_implementation = "sdpa"
        self.dropouts.clear()
        self.configs.clear()


def enable(model: nn.Module) -> Enabled:
    """Swap every ``nn.Dropout`` of ``model`` (exactly that class) for a :class:`FastDropout` with the same ``p``
    and mode, and move the configs of its transformers modules from ``sdpa`` attention to :data:`IMPLEMENTATION`.
    Parameter names and state dicts are unchanged. Eval-mode outputs are unchanged."""
    enabled = Enabled()
    replacements: dict[int, FastDropout] = {}  # a module registered under two parents gets one replacement
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Dropout:
                continue
            if id(child) not in replacements:
                replacements[id(child)] = FastDropout(child.p, child.inplace).train(child.training)
            setattr(parent, name, replacements[id(child)])
            enabled.dropouts.append((parent, name, child))
    seen: set[int] = set()
    for module in model.modules():
        config = getattr(module, "config", None)
        if id(config) in seen or getattr(config, "_attn_implementation", None) != "sdpa":
            continue
        seen.add(id(config))
        config._attn_implementation = IMPLEMENTATION  # type: ignore[union-attr]
        enabled.configs.append(config)
    return enabled
