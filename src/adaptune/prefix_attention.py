"""Key/value prefixes put in front of every attention layer through transformers' attention interface.

Prefix tuning (:mod:`adaptune.methods.prefix`) gives attention layer ``l`` of a model ``n`` extra keys and
values. This module puts them in at the one place every modern transformers model shares, the attention
function the layer calls with its queries, keys and values (after rotary embeddings, and after a generation
cache was updated, so a cache holds only the text's own keys)::

    K' = [P_l^K ; K],  V' = [P_l^V ; V]           P_l^K, P_l^V: (B, H_kv, n, d_head);  K, V: (B, H_kv, S, d_head)
    M' = [0_n ; M]                                M: the layer's mask (B | 1, 1, T, S); every query sees the prefix

and then calls the attention function the model had (``sdpa``, ``eager``, or one registered by someone else)
with ``K', V', M'``. The model's forward needs no ``past_key_values`` argument (transformers 5.24 renamed it
and encoders such as BERT no longer take a cache) and positions are the model's own business: the prefix is not
a token.

Wiring. :func:`install` switches ``config._attn_implementation`` from ``inner`` to ``adaptune_prefix:<inner>``,
registered on first use in the attention interface (this module's :func:`_attention` around ``inner``) and in
the mask interface (``inner``'s own mask builder, so the layers get the masks they always got). Which layer a
call comes from, and where its prefix is, is looked up by the calling module in :data:`_LAYERS`; a module not
listed (another model with the same implementation name) gets ``inner`` unchanged. :func:`attention_layers`
finds the layers by running the model once on two tokens and recording which modules call the interface.

Masks. A boolean mask (SDPA's; True = attend) gets ``n`` True columns in front, an additive float mask
(eager's) ``n`` zeros. Where SDPA was given no mask at all (no padding: transformers then relies on
``is_causal``), a causal layer gets an explicit one, because SDPA's ``is_causal`` aligns the triangle to the
top left and the prefix would shift it: query ``i`` of ``T`` sees the prefix and keys ``j <= i + S - T``.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from adaptune.errors import ConfigError

#: Prefix of the names registered here: ``adaptune_prefix:sdpa`` wraps ``sdpa``.
IMPLEMENTATION = "adaptune_prefix:"

#: A layer's prefix: ``layer -> (keys, values)``, each ``(H_kv, n, d_head)``.
PrefixSource = Callable[[int], tuple[torch.Tensor, torch.Tensor]]

#: Attention module -> (where its prefix comes from, its layer index).
_LAYERS: weakref.WeakKeyDictionary[nn.Module, tuple[PrefixSource, int]] = weakref.WeakKeyDictionary()

#: Implementations whose masks are not (B, 1, T, S) tensors (flash: 2-D padding masks; flex: block masks).
UNSUPPORTED = ("flash_attention", "flex_attention", "paged")

_recording = threading.local()


def _inner_function(inner: str, module: nn.Module) -> Callable[..., Any]:
    """The attention function ``inner`` names; ``eager`` is the calling model's own ``eager_attention_forward``
    (transformers registers no eager function: each modeling file has its own)."""
    from transformers import AttentionInterface

    if inner != "eager":
        return AttentionInterface._global_mapping[inner]  # type: ignore[no-any-return]
    function = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if function is None:
        raise ConfigError(f"{type(module).__name__} has no eager_attention_forward: prefix tuning cannot wrap it")
    return function  # type: ignore[no-any-return]


def extend_mask(
    mask: torch.Tensor | None, n: int, query: torch.Tensor, keys: int, causal: bool, boolean: bool
) -> torch.Tensor | None:
    """The layer's mask with ``n`` attended prefix columns in front.

    ``mask``: ``(B | 1, 1, T, S)`` boolean (True = attend) or additive float, or None (nothing masked; causal
    layers then mask by ``is_causal``). ``query``: ``(B, H, T, d)``; ``keys``: ``S``, the layer's own key count.
    Returns ``(B | 1, 1, T, n + S)``, or None when nothing is masked and the layer is not causal (or ``T`` = 1).
    """
    length = query.shape[-2]
    if mask is None:
        if not causal or length == 1:
            return None
        allowed = torch.ones(length, keys, dtype=torch.bool, device=query.device).tril(keys - length)
        mask = allowed[None, None]
        if not boolean:
            mask = torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill(
                ~mask, torch.finfo(query.dtype).min
            )
    if mask.dtype == torch.bool:
        front = torch.ones((*mask.shape[:-1], n), dtype=torch.bool, device=mask.device)
    else:
        front = torch.zeros((*mask.shape[:-1], n), dtype=mask.dtype, device=mask.device)
    return torch.cat([front, mask], dim=-1)


def _attention(
    inner: str,
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``inner`` attention over ``[prefix; key]`` and ``[prefix; value]`` (``(B, H_kv, n + S, d)``) with the
    mask extended by :func:`extend_mask`; ``inner`` alone for modules without a prefix."""
    function = _inner_function(inner, module)
    calls = getattr(_recording, "modules", None)
    if calls is not None:
        calls.append(module)
    entry = _LAYERS.get(module)
    if entry is None:
        return function(module, query, key, value, attention_mask, **kwargs)  # type: ignore[no-any-return]
    source, layer = entry
    keys, values = source(layer)
    batch, n = key.shape[0], keys.shape[1]
    keys = keys.to(key.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
    values = values.to(value.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
    causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", False)))
    mask = extend_mask(attention_mask, n, query, key.shape[-2], causal, boolean=inner != "eager")
    return function(  # type: ignore[no-any-return]
        module, query, torch.cat([keys, key], dim=2), torch.cat([values, value], dim=2), mask, **kwargs
    )


def _registered(inner: str) -> str:
    """Register ``adaptune_prefix:<inner>`` in the attention and mask interfaces (once); its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    name = IMPLEMENTATION + inner
    if name not in AttentionInterface._global_mapping:
        if inner not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping or (
            inner != "eager" and inner not in AttentionInterface._global_mapping
        ):
            raise ConfigError(f"prefix tuning cannot wrap the attention implementation {inner!r}")
        AttentionInterface.register(name, partial(_attention, inner))
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS._global_mapping[inner])
    return name


def _configs(model: nn.Module) -> list[Any]:
    """Every distinct transformers config among ``model``'s modules (usually the model's one)."""
    seen: dict[int, Any] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            seen.setdefault(id(config), config)
    return list(seen.values())


def install(model: nn.Module) -> str:
    """Route ``model``'s attention through the prefix wrapper around the implementation it uses; returns that
    inner implementation's name (for :func:`uninstall`). A :class:`ConfigError` for implementations whose masks
    cannot take a prefix (flash, flex, paged)."""
    inner = getattr(getattr(model, "config", None), "_attn_implementation", None)
    if not isinstance(inner, str):
        raise ConfigError(f"{type(model).__name__} does not use transformers' attention interface: no prefix tuning")
    if inner.startswith(IMPLEMENTATION):
        raise ConfigError("the model already has key/value prefixes (two prefix methods on one model)")
    if inner.startswith(UNSUPPORTED):
        raise ConfigError(
            f"prefix tuning needs per-layer attention masks, and attn_implementation={inner!r} uses another "
            "format; load the model with attn_implementation='sdpa' or 'eager'"
        )
    name = _registered(inner)
    for config in _configs(model):
        config._attn_implementation = name
    return inner


def uninstall(model: nn.Module, inner: str) -> None:
    """Undo :func:`install`: the model's own attention implementation again."""
    for config in _configs(model):
        if str(config._attn_implementation).startswith(IMPLEMENTATION):
            config._attn_implementation = inner


def attention_layers(model: nn.Module) -> list[nn.Module]:
    """The modules that call the attention interface, in layer order, found by one forward pass of two tokens
    through an :func:`install`-ed model. A module's ``layer_idx`` gives its place where it has one."""
    calls: list[nn.Module] = []
    _recording.modules = calls
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(input_ids=torch.zeros(1, 2, dtype=torch.long, device=device))
    except Exception as err:  # any failure of the probe means the model cannot be wired
        raise ConfigError(f"prefix tuning could not find {type(model).__name__}'s attention layers: {err}") from err
    finally:
        _recording.modules = None
    unique = list(dict.fromkeys(calls))
    if all(isinstance(getattr(m, "layer_idx", None), int) for m in unique):
        unique.sort(key=lambda m: int(m.layer_idx))
    return unique


def add_prefixes(layers: list[nn.Module], source: PrefixSource) -> None:
    """Give attention module ``layers[l]`` the prefix ``source(l)``."""
    for index, module in enumerate(layers):
        _LAYERS[module] = (source, index)


def remove_prefixes(layers: list[nn.Module]) -> None:
    for module in layers:
        _LAYERS.pop(module, None)
