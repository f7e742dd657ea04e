"""Speed switches of the training loop that change how the frozen base runs, never what is learned.

Switches of :class:`~adaptune.config.TrainingConfig`:

- ``bf16_base``: the frozen base weights are stored in bf16, the trained ones stay fp32 (master weights);
- ``frozen_prefix_no_grad``: the embeddings and the ``depth`` bottom blocks that hold nothing trainable (the
  *frozen prefix*) run without autograd and with dropout off, so they are a fixed feature extractor;
- ``activation_cache``: the frozen prefix's output (hidden states ``(T_i, d)`` of example ``i``) is stored the
  first time the example is trained on, and later epochs start from it: only blocks ``depth..N-1`` and the head
  run. With ``depth == N`` (method ``head``) the backbone does not run at all after the first epoch;
- ``padding_free``: the backbone runs on each batch's real tokens only (:mod:`adaptune.padding_free`), for
  encoders and decoders;
- ``fast_dropout``: training dropout masks from cheap 16-bit random lanes (:mod:`adaptune.fast_dropout`), undone
  by :meth:`FastPath.close`;
- ``activation_checkpointing``: every n-th block's activations are recomputed in the backward pass, not stored;
- ``trim_memory``: freed memory goes back to the OS at once (:mod:`adaptune.training.memory`);
- ``compile``: ``torch.compile`` of the backbone (in place, dynamic shapes), for the plain path only.

The cache is keyed by the example's index in the training set, lives as long as one :class:`FastPath` (one
training run: never reused across runs or processes) and is only filled from a frozen prefix (no trainable
tensor, no dropout), so a cached row is exactly what the prefix would compute again, up to float rounding from
a different batch composition. Padded positions are filled with zeros: attention masks them out, pooling and
token losses ignore them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adaptune import fast_dropout
from adaptune.config import TrainingConfig
from adaptune.errors import ConfigError
from adaptune.methods.base import changes_inputs
from adaptune.model import AdaptedModel, head_embeds_inputs
from adaptune.targets import transformer_blocks
from adaptune.training.memory import trim_freed_memory

CACHE_FILE = "activation_cache.bin"


def frozen_depth(model: AdaptedModel) -> int:
    """How many bottom blocks hold nothing trainable: ``N`` when only the head trains, 0 when block 0 trains, a
    trained tensor lies outside the blocks (embeddings, final norm) or the architecture is not in the table."""
    anatomy = model.info.anatomy
    if anatomy is None or changes_inputs(model.method) or head_embeds_inputs(model.head):
        return 0
    blocks = transformer_blocks(model.backbone, anatomy)
    trained = {id(p) for p in model.adapter_parameters().values()}
    inside: set[int] = set()
    lowest = len(blocks)
    for index, block in enumerate(blocks):
        ids = {id(p) for p in block.parameters()}
        inside |= ids
        if ids & trained and lowest == len(blocks):
            lowest = index
    return 0 if trained - inside else lowest


def cast_frozen_to_bf16(model: AdaptedModel) -> int:
    """Store every frozen floating-point backbone parameter in bf16; returns how many were cast. The method's
    trained parameters (and the head, which is not in the backbone) stay fp32, and so does every parameter of a
    module that holds a trained one (a LayerNorm whose bias BitFit trains: its kernel takes one dtype)."""
    trained = {id(p) for p in model.adapter_parameters().values()}
    cast = 0
    for module in model.backbone.modules():
        own = list(module.parameters(recurse=False))
        if any(id(p) in trained for p in own):
            continue
        for param in own:
            if param.dtype == torch.float32:
                param.data = param.data.to(torch.bfloat16)
                cast += 1
    return cast


def enable_padding_free(model: AdaptedModel) -> None:
    """Switch ``model`` to padding-free forward passes; a :class:`ConfigError` when its backbone or method
    cannot take them."""
    from adaptune.padding_free import supports

    if not supports(model.backbone):
        raise ConfigError(
            f"config key 'training.padding_free' needs a backbone whose attention goes through transformers' "
            f"attention interface and whose forward takes position_ids; {model.info.name} "
            f"({model.info.model_type}) is not one"
        )
    if changes_inputs(model.method):
        raise ConfigError(
            "config key 'training.padding_free' packs the real tokens of a batch into one row, and this method "
            "puts virtual tokens or key/value prefixes in front of each example; turn it off for prompt or prefix"
        )
    model.padding_free = True


def enable_activation_checkpointing(model: AdaptedModel, every: int) -> None:
    """Recompute every ``every``-th block's activations in the backward pass (transformers' activation
    checkpointing, non-reentrant; recomputed blocks see the padding-free packing their forward saw)."""
    from adaptune.padding_free import checkpoint_context

    backbone = model.backbone
    if not getattr(backbone, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"config key 'training.activation_checkpointing' needs a backbone that supports transformers' "
            f"activation checkpointing; {model.info.name} ({model.info.model_type}) does not"
        )
    kwargs = {"use_reentrant": False, "context_fn": checkpoint_context(backbone.config)}
    backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs, every_n_layers=every)  # type: ignore[operator]
    # transformers makes the embeddings' output require grad for the reentrant variant: not needed here, and it
    # would pull the embeddings and block 0's input into the backward pass
    backbone.disable_input_require_grads()  # type: ignore[operator]


class ActivationCache:
    """Rows ``(T_i, d)`` for every training example, stored back to back in one ``(sum T_i, d)`` tensor (in
    memory, or a memory-mapped file), allocated with the dtype of the first rows stored."""

    def __init__(self, lengths: Sequence[int], path: Path | None = None) -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.filled = np.zeros(len(lengths), dtype=bool)
        self.path = path
        self.storage: torch.Tensor | None = None

    def _allocate(self, width: int, dtype: torch.dtype) -> torch.Tensor:
        shape = (int(self.offsets[-1]), width)
        if self.path is None:
            return torch.empty(shape, dtype=dtype)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        raw = np.memmap(self.path, dtype=np.uint16 if dtype == torch.bfloat16 else np.float32, mode="w+", shape=shape)
        storage = torch.from_numpy(raw)
        return storage.view(torch.bfloat16) if dtype == torch.bfloat16 else storage

    def has(self, indices: Sequence[int]) -> bool:
        """True when every example of ``indices`` is cached."""
        return bool(self.filled[list(indices)].all())

    def put(self, index: int, rows: torch.Tensor) -> None:
        """Store example ``index``'s hidden states ``(T_i, d)``."""
        if self.storage is None:
            dtype = torch.bfloat16 if rows.dtype == torch.bfloat16 else torch.float32
            self.storage = self._allocate(rows.shape[-1], dtype)
        start, end = int(self.offsets[index]), int(self.offsets[index + 1])
        self.storage[start:end] = rows
        self.filled[index] = True

    def padded(self, indices: Sequence[int], mask: torch.Tensor, padding_side: str) -> torch.Tensor:
        """The batch ``(B, T, d)`` of cached rows, zeros at padded positions (``mask`` ``(B, T)``)."""
        assert self.storage is not None
        width = mask.shape[1]
        out = torch.zeros((len(indices), width, self.storage.shape[1]), dtype=self.storage.dtype)
        for row, index in enumerate(indices):
            start, end = int(self.offsets[index]), int(self.offsets[index + 1])
            span = slice(width - (end - start), width) if padding_side == "left" else slice(0, end - start)
            out[row, span] = self.storage[start:end]
        return out

    def close(self) -> None:
        """Drop the rows (and the file)."""
        self.storage = None
        self.filled[:] = False
        if self.path is not None and self.path.exists():
            os.remove(self.path)


def _rows(hidden: torch.Tensor, mask: torch.Tensor, padding_side: str) -> Iterator[torch.Tensor]:
    """The real (unpadded) rows ``(T_i, d)`` of a padded batch ``(B, T, d)``."""
    for row, length in enumerate(mask.sum(1).tolist()):
        width = hidden.shape[1]
        yield hidden[row, width - length :] if padding_side == "left" else hidden[row, :length]


def uses_fast_dropout(cfg: TrainingConfig, model: nn.Module) -> bool:
    """``training.fast_dropout``: as asked, or (``auto``) on where it pays and fits: a model on the CPU (on a GPU
    torch's fused dropout kernels are cheap and SDPA's fused attention would be lost), without padding_free or
    compile."""
    if cfg.fast_dropout != "auto":
        return bool(cfg.fast_dropout)
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    return on_cpu and not (cfg.padding_free or cfg.compile)


class FastPath:
    """The training forward with the speed switches of ``cfg`` applied (the plain ``model(batch)`` when off)."""

    def __init__(
        self, model: AdaptedModel, cfg: TrainingConfig, lengths: Sequence[int], out_dir: Path, padding_side: str
    ) -> None:
        self.model, self.padding_side = model, padding_side
        self.depth = frozen_depth(model)
        anatomy = model.info.anatomy
        self.blocks = transformer_blocks(model.backbone, anatomy) if anatomy is not None else nn.ModuleList()
        self.layers_path = anatomy.layers if anatomy is not None else ""
        self.cache: ActivationCache | None = None
        if cfg.activation_cache != "off":
            if self.depth == 0:
                raise ConfigError(
                    "config key 'training.activation_cache' needs frozen bottom blocks, but the method trains block 0 "
                    "or changes the inputs; train the head only, or put the adapter on the top blocks (method.layers)"
                )
            if not model.task.rows_are_examples:
                raise ConfigError(
                    "config key 'training.activation_cache' caches one row per example, but this task makes several "
                    "rows of one example (passage windows); set training.activation_cache=off"
                )
            path = out_dir / CACHE_FILE if cfg.activation_cache == "mmap" else None
            self.cache = ActivationCache(lengths, path)
        self.no_grad_prefix = self.depth > 0 and (cfg.frozen_prefix_no_grad or self.cache is not None)
        if cfg.padding_free:
            enable_padding_free(model)
        self.dropout_patch = fast_dropout.enable(model) if uses_fast_dropout(cfg, model) else None
        if cfg.bf16_base:
            cast_frozen_to_bf16(model)
        if cfg.activation_checkpointing:
            enable_activation_checkpointing(model, cfg.activation_checkpointing)
        if cfg.trim_memory and not trim_freed_memory():
            warnings.warn("training.trim_memory has no effect here: it needs Linux with glibc", stacklevel=2)
        if cfg.compile:
            model.backbone.compile(dynamic=True)  # in place: parameter names and the adapter file are unchanged

    def train_mode(self) -> None:
        """After ``model.train()``: the frozen prefix goes back to eval mode (no dropout) when it runs frozen."""
        if not self.no_grad_prefix:
            return
        self.model.backbone.eval()
        for block in self.blocks[self.depth :]:
            block.train()

    def forward(self, batch: dict[str, torch.Tensor], indices: Sequence[int]) -> torch.Tensor:
        """Logits for a training batch whose examples are ``indices`` of the training set."""
        if not self.no_grad_prefix:
            return self.model(batch)  # type: ignore[no-any-return]
        if self.cache is not None and self.cache.has(indices):
            return self._from_cache(batch, indices)
        return self._through_prefix(batch, indices)

    def _through_prefix(self, batch: dict[str, torch.Tensor], indices: Sequence[int]) -> torch.Tensor:
        """The whole model, the prefix without autograd; its output goes to the cache when there is one."""
        captured: list[torch.Tensor] = []
        if self.cache is not None and "position_ids" in batch:
            raise ConfigError(
                "config key 'training.activation_cache' caches one row per example, but this batch packs several "
                "examples per row (task.pack); turn one of them off"
            )
        with self._grad_from_block(captured.append):
            logits = self.model(batch)
        if self.cache is not None:
            rows = _rows(captured[0], batch["attention_mask"], self.padding_side)
            for index, row in zip(indices, rows, strict=True):
                self.cache.put(index, row)
        return logits  # type: ignore[no-any-return]

    def _from_cache(self, batch: dict[str, torch.Tensor], indices: Sequence[int]) -> torch.Tensor:
        """Blocks ``depth..N-1`` and the head on cached prefix outputs (only the head when ``depth == N``)."""
        assert self.cache is not None
        hidden = self.cache.padded(indices, batch["attention_mask"], self.padding_side)
        if self.depth == len(self.blocks):
            return self.model.head(hidden, batch)  # type: ignore[no-any-return]
        parent_name, _, attr = self.layers_path.rpartition(".")
        parent = self.model.backbone.get_submodule(parent_name)
        setattr(parent, attr, nn.ModuleList(list(self.blocks[self.depth :])))
        try:
            with self._grad_from_block(lambda _h: None, replace=hidden):
                return self.model(batch)  # type: ignore[no-any-return]
        finally:
            setattr(parent, attr, self.blocks)

    @contextmanager
    def _grad_from_block(
        self, sink: Callable[[torch.Tensor], None], replace: torch.Tensor | None = None
    ) -> Iterator[None]:
        """Run a forward with autograd off until block ``depth``, whose input hidden states go to ``sink`` (or
        are replaced by ``replace``); autograd is on from there. With ``depth == N`` autograd comes back on after
        the backbone, whose ``last_hidden_state`` goes to ``sink``."""

        def pre_hook(_mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            torch.set_grad_enabled(True)
            positional = bool(args)  # the block's hidden states: first positional argument, else by keyword
            hidden = args[0] if positional else kwargs["hidden_states"]
            if replace is None:
                sink(hidden.detach())
                return args, kwargs
            if positional:
                return (replace.to(hidden.dtype), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": replace.to(hidden.dtype)}

        def after_backbone(_mod: nn.Module, _args: Any, output: Any) -> None:
            torch.set_grad_enabled(True)
            sink(output.last_hidden_state)

        if self.depth < len(self.blocks):
            handle = self.blocks[self.depth].register_forward_pre_hook(pre_hook, with_kwargs=True)
        else:
            handle = self.model.backbone.register_forward_hook(after_backbone)
        enabled = torch.is_grad_enabled()
        torch.set_grad_enabled(False)
        try:
            yield
        finally:
            torch.set_grad_enabled(enabled)
            handle.remove()

    def close(self) -> None:
        """Drop the activation cache; put torch's dropout back."""
        if self.cache is not None:
            self.cache.close()
        if self.dropout_patch is not None:
            self.dropout_patch.remove()
            self.dropout_patch = None
