"""The adapted model: frozen backbone + method + task head, behind one ``forward(batch) -> logits``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from adaptune.backbone import Backbone
from adaptune.errors import ConfigError
from adaptune.methods.base import AttachContext, Method
from adaptune.padding_free import packed_forward, worth_packing
from adaptune.positions import positions_from_mask
from adaptune.tasks.base import Task

BACKBONE_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@runtime_checkable
class EmbedsInputs(Protocol):
    """A task head that embeds the input ids itself (trained rows for tokens the base vocabulary lacks, such as
    relation classification's entity markers): ``embed_inputs(word_embeddings, input_ids (B, T)) -> (B, T, d)``.
    The model then feeds the backbone ``inputs_embeds``, and the frozen embeddings are no longer a fixed prefix."""

    def embed_inputs(self, embedding: nn.Embedding, input_ids: torch.Tensor) -> torch.Tensor: ...


def head_embeds_inputs(head: nn.Module) -> bool:
    """Whether ``head`` embeds the inputs (:class:`EmbedsInputs`)."""
    return isinstance(head, EmbedsInputs)


class AdaptedModel(nn.Module):
    """``backbone`` (frozen, with the method attached) and ``head`` (trainable).

    ``forward`` takes a collated batch (``input_ids``, ``attention_mask``, optional ``token_type_ids``, each
    ``(B, T)``) and returns the head's logits: ``(B, num_labels)`` for sequence tasks, ``(B, T, num_labels)``
    for token tasks.
    """

    def __init__(self, backbone: Backbone, method: Method, task: Task, labels: list[str]) -> None:
        super().__init__()
        self.info = backbone
        self.backbone = backbone.model
        self.method = method
        self.task = task
        self.labels = labels
        ctx = AttachContext(
            backbone.model_type,
            backbone.anatomy,
            backbone.hidden_size,
            backbone.num_layers,
            is_decoder=backbone.is_decoder,
            tokenizer=backbone.tokenizer,
        )
        method.attach(self.backbone, ctx)
        #: A decoder's frozen LM head ``d -> vocab`` (None for encoders): registered here so it moves with the
        #: model, used by generation and the causal_lm task's head, never trained and never saved.
        self.lm_head = backbone.lm_head
        task.bind(backbone)
        self.head = task.build_head(backbone.hidden_size, len(labels), backbone.pooling)
        #: Run the backbone on each batch's real tokens only (``training.padding_free``; backbones without
        #: virtual tokens, see :mod:`adaptune.padding_free`). Same results; less work for padded batches.
        self.padding_free = False

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs: dict[str, Any] = {k: batch[k] for k in BACKBONE_INPUTS if k in batch}
        if isinstance(self.head, EmbedsInputs) and "input_ids" in inputs:
            embedding = self.backbone.get_input_embeddings()
            inputs["inputs_embeds"] = self.head.embed_inputs(embedding, inputs.pop("input_ids"))
        prep = self.method.prepare_inputs(self.backbone, inputs)
        if "position_ids" in batch:  # packed rows: several examples per row, each numbered from 0
            prep.inputs = packed_inputs(prep.inputs, batch["position_ids"], prep.n_virtual + prep.kv_prefix)
        elif self.info.is_decoder and "position_ids" not in prep.inputs and "attention_mask" in prep.inputs:
            # count positions from the mask, so that left padding does not shift a row (absolute positions: GPT-2)
            prep.inputs["position_ids"] = positions_from_mask(prep.inputs["attention_mask"])
        if (
            self.padding_free
            and not prep.n_virtual
            and not prep.kv_prefix
            and set(prep.inputs) <= {*BACKBONE_INPUTS, "position_ids"}
            and "attention_mask" in prep.inputs
            and worth_packing(prep.inputs["attention_mask"])
        ):
            hidden = packed_forward(self.backbone, prep.inputs)
        else:
            hidden = self.backbone(**prep.inputs).last_hidden_state
        if prep.n_virtual:
            hidden = hidden[:, prep.n_virtual :]
        return self.head(hidden, batch)  # type: ignore[no-any-return]

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """Name -> parameter for what the method trains (names as in the backbone; a stack prefixes member names)."""
        return self.method.owned_parameters(self.backbone)

    def stored_parameters(self) -> dict[str, nn.Parameter]:
        """Name -> parameter for every method tensor an adapter file stores: the trained ones and those the
        method keeps frozen (a stack's frozen members); the same as :meth:`adapter_parameters` for most methods."""
        return {**self.method.frozen_parameters(self.backbone), **self.adapter_parameters()}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Everything an adapter file stores: ``adapter.<name>`` and ``head.<name>`` tensors."""
        state = {f"adapter.{k}": p.detach() for k, p in self.stored_parameters().items()}
        state.update({f"head.{k}": v.detach() for k, v in self.head.state_dict().items()})
        return state

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`trainable_state`; every expected tensor must be present with its shape."""
        own = self.stored_parameters()
        expected = set(self.trainable_state())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise KeyError(
                f"adapter tensors do not match the method: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        with torch.no_grad():
            for key, tensor in state.items():
                target = own[key[len("adapter.") :]] if key.startswith("adapter.") else None
                if target is not None:
                    if target.shape != tensor.shape:
                        raise KeyError(f"tensor {key}: shape {tuple(tensor.shape)} != expected {tuple(target.shape)}")
                    target.copy_(tensor)
        self.head.load_state_dict({k[len("head.") :]: v for k, v in state.items() if k.startswith("head.")})

    def trainable(self) -> Iterator[nn.Parameter]:
        """Every parameter the optimiser updates: the method's and the head's."""
        yield from self.adapter_parameters().values()
        yield from self.head.parameters()

    def mark_trainable(self) -> None:
        """Freeze the backbone except the method's parameters; the head trains."""
        self.backbone.requires_grad_(False)
        for param in self.trainable():
            param.requires_grad_(True)


def packed_inputs(inputs: dict[str, Any], position_ids: torch.Tensor, n_in_front: int) -> dict[str, Any]:
    """Backbone inputs for packed rows ``(B, T)``: per-example ``position_ids`` (restarting at 0 where an example
    starts) and no 2-D attention mask, which makes transformers build a block-diagonal causal mask
    (``find_packed_sequence_indices``), so no token attends to another example; padding at a row's end is its
    own block. Methods that put virtual tokens or key/value prefixes in front (``n_in_front`` > 0) cannot share a
    row between examples: they are refused."""
    if n_in_front:
        raise ConfigError(
            "task.pack packs several examples into one row, and this method puts virtual tokens or key/value "
            "prefixes in front of the row; set task.pack=false for prompt or prefix tuning"
        )
    out = {k: v for k, v in inputs.items() if k != "attention_mask"}
    out["position_ids"] = position_ids
    out["use_cache"] = False  # with a cache transformers would not detect the packed blocks
    return out
