"""``relation_cls``: the directed relation between two marked entities of a sentence.

Entity markers with "entity start" pooling (Baldini Soares et al. 2019, "Matching the Blanks"): four marker tokens
``[E1] [/E1] [E2] [/E2]`` are put around the entities, and the head classifies the concatenation of the final
hidden states at ``[E1]`` and ``[E2]``::

    h = [H[pos([E1])] ; H[pos([E2])]]      (B, 2d)
    logits = W dropout(h) + b              (B, num_labels)

On a decoder the state at ``[E1]`` sees only the text before it (causal attention), and the one at ``[E2]`` the
text up to the second entity; reading the closing markers instead was no better on the tiny test decoders, so every
backbone reads ``[E1]`` and ``[E2]``.

The markers are tokens beyond the base vocabulary (ids ``V .. V+3`` with ``V = len(tokenizer)``): their embeddings
``M`` (4, d) are trained and saved with the head (initialised from the embeddings of ``[ ] < >``), and the head's
:meth:`EntityStartHead.embed_inputs` looks them up where the base's embedding table would be read. They are not
added to the shared tokenizer object, so other adapters served on the same base tokenise as before. Evaluation:
the official SemEval-2010 Task 8 score (:func:`adaptune.evaluation.relations.semeval_report`)
beside accuracy and the per-label table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from transformers import PreTrainedTokenizerBase

from adaptune.config import DataConfig, TaskConfig
from adaptune.data.formats.relations import (
    RelationExample,
    check_spans,
    example_from_fields,
    example_from_row,
    is_semeval_file,
    parse_markup,
    read_semeval,
)
from adaptune.data.formats.source import Location, check_utf8
from adaptune.data.readers import read_table_rows
from adaptune.errors import DataError
from adaptune.evaluation.metrics import classification_report, confusion
from adaptune.evaluation.relations import semeval_report
from adaptune.registry import register_task
from adaptune.tasks.base import Encoded, EvalOutput, Task, ordered_labels

#: The marker tokens, in id order after the vocabulary, and the text whose embedding initialises each.
MARKERS = ("[E1]", "[/E1]", "[E2]", "[/E2]")
MARKER_INIT = ("[", "]", "<", ">")


class RelationClsConfig(TaskConfig):
    """Relation classification settings."""

    name: Literal["relation_cls"] = "relation_cls"
    head_dropout: float = Field(0.1, ge=0, lt=1, description="Dropout before the relation classifier.")
    negative_label: str | None = Field(
        "Other",
        description="The 'no relation' label, left out of the official macro-F1 (SemEval-2010 Task 8: Other); "
        "None: every label counts.",
    )


@dataclass
class RelationEncoded(Encoded):
    """A tokenised relation example; ``starts`` are the positions the head reads in ``input_ids``: ``[E1]`` and
    ``[E2]``."""

    starts: tuple[int, int] = (0, 0)


class EntityStartHead(nn.Module):
    """Entity-start pooling and a linear classifier ``(B, T, d) -> (B, num_labels)``, plus the marker embeddings.

    Args:
        hidden_size: ``d``.
        num_labels: relations.
        dropout: before the classifier.
        marker_base: the id of ``[E1]`` (the tokenizer's length); ids from it on are markers.
        init: ``(4, d)`` initial marker embeddings (zeros when None).
    """

    def __init__(
        self, hidden_size: int, num_labels: int, dropout: float, marker_base: int, init: torch.Tensor | None
    ) -> None:
        super().__init__()
        self.marker_base = marker_base
        self.markers = nn.Parameter(init.clone() if init is not None else torch.zeros(len(MARKERS), hidden_size))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * hidden_size, num_labels)

    def embed_inputs(self, embedding: nn.Embedding, input_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids`` ``(B, T)`` -> input embeddings ``(B, T, d)``: the base table's rows, and the trained
        marker rows where ids are markers."""
        is_marker = input_ids >= self.marker_base
        words = embedding(input_ids.masked_fill(is_marker, 0))
        if not bool(is_marker.any()):
            return words
        marks = self.markers[(input_ids - self.marker_base).clamp(0, len(MARKERS) - 1)].to(words.dtype)
        return torch.where(is_marker.unsqueeze(-1), marks, words)

    def forward(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        starts = batch["entity_starts"]  # (B, 2)
        rows = torch.arange(hidden.shape[0], device=hidden.device).unsqueeze(1)
        pooled = hidden[rows, starts].flatten(1)  # (B, 2d)
        return self.classifier(self.dropout(pooled.to(self.classifier.weight.dtype)))  # type: ignore[no-any-return]


def _insert_points(
    offsets: Sequence[tuple[int, int]], content: Sequence[bool], example: RelationExample
) -> list[tuple[int, int, int]]:
    """``(token index, order, marker number)`` for each marker: an opening marker goes before the first content
    token that ends after the entity's start, a closing one after the last that starts before its end."""
    points = []
    for number, (which, edge) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        span = example.e1 if which == 0 else example.e2
        tokens = [i for i, keep in enumerate(content) if keep]
        if edge == 0:
            index = next((i for i in tokens if offsets[i][1] > span[0]), tokens[-1] + 1 if tokens else 0)
        else:
            before = [i for i in tokens if offsets[i][0] < span[1]]
            index = before[-1] + 1 if before else 0
        points.append((index, edge == 0, number))  # closing markers (False) sort before opening ones
    return sorted(points)


def _keep_near_markers(flags: list[int], budget: int) -> list[bool]:
    """Which positions to keep so at most ``budget`` remain: special tokens (flag 1) and markers (flag 2) always,
    then the content tokens (flag 0) nearest a marker."""
    marks = [i for i, f in enumerate(flags) if f == 2]
    content = [i for i, f in enumerate(flags) if f == 0]
    room = budget - (len(flags) - len(content))
    nearest = sorted(content, key=lambda i: (min(abs(i - m) for m in marks), i))[: max(0, room)]
    chosen = set(nearest)
    return [f != 0 or i in chosen for i, f in enumerate(flags)]


@register_task("relation_cls", RelationClsConfig)
class RelationClassification(Task[RelationExample]):
    """Classify the directed relation between two marked entities (SemEval-2010 Task 8, TACRED-style data)."""

    config: RelationClsConfig
    default_metric = "official_f1"
    kind = "relation"
    label_field = "label"

    def __init__(self, config: RelationClsConfig) -> None:
        super().__init__(config)
        self._marker_init: torch.Tensor | None = None
        self._marker_base = 0

    # -- data -----------------------------------------------------------------------------------------------
    def read(self, path: str, data: DataConfig, *, split: str, require_labels: bool = True) -> list[RelationExample]:
        if data.format in ("auto", "semeval") and (data.format == "semeval" or is_semeval_file(Path(path))):
            return read_semeval(path, require_labels=require_labels)
        rows = read_table_rows(
            path,
            format=data.format,
            column_names=data.column_names,
            hf_split=getattr(data, f"hf_split_{split}", None),
            required=(data.text_column,),
            task="relation classification",
        )
        label = data.label_column if require_labels else None
        if label is None and rows and data.label_column in rows[0].values:
            label = data.label_column
        return [
            example_from_row(row, text_field=data.text_column, label_field=label, require_label=require_labels)
            for row in rows
        ]

    def parse_input(self, item: str | dict[str, Any]) -> RelationExample:
        if isinstance(item, str):
            text, e1, e2 = parse_markup(check_utf8(item, field="text"))
            return RelationExample(text, e1, e2)
        where = Location("input", 1)
        try:
            return example_from_fields(item, where, text_field="text", label_field=None, require_label=False)
        except DataError as err:  # no file and line for a request: keep the field
            raise DataError(err.message, field=err.field) from None

    def label_names(self, examples: Sequence[RelationExample]) -> list[str]:
        labels = ordered_labels({ex.label for ex in examples if ex.label})
        if len(labels) < 2:
            raise DataError(f"the training data has {len(labels)} distinct relation(s); classification needs 2 or more")
        return labels

    def gold(self, example: RelationExample) -> Sequence[str]:
        return (example.label,) if example.label else ()

    def without_labels(self, example: RelationExample) -> RelationExample:
        return replace(example, label="")

    # -- tokens ---------------------------------------------------------------------------------------------
    def encode(
        self, example: RelationExample, tokenizer: PreTrainedTokenizerBase, labels: Sequence[str], max_length: int
    ) -> RelationEncoded:
        enc = tokenizer(example.text, return_offsets_mapping=True, return_special_tokens_mask=True)
        ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        content = [not s for s in enc["special_tokens_mask"]]
        base = len(tokenizer)
        seq, flags = [], []
        points = _insert_points(offsets, content, example)
        cursor = 0
        for index, token in enumerate([*ids, None]):
            while cursor < len(points) and points[cursor][0] == index:
                seq.append(base + points[cursor][2])
                flags.append(2)
                cursor += 1
            if token is not None:
                seq.append(token)
                flags.append(0 if content[index] else 1)
        full = len(seq)
        if full > max_length:
            keep = _keep_near_markers(flags, max_length)
            seq = [t for t, k in zip(seq, keep, strict=True) if k]
        starts = (seq.index(base), seq.index(base + 2))
        target = {name: i for i, name in enumerate(labels)}[example.label] if example.label else None
        return RelationEncoded(
            input_ids=seq,
            token_type_ids=[0] * len(seq) if "token_type_ids" in enc else None,
            target=target,
            truncated=full > max_length,
            dropped_tokens=max(0, full - max_length),
            starts=starts,
        )

    def collate(self, encoded: Sequence[Encoded], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
        batch = super().collate(encoded, pad_id, padding_side)
        width = batch["input_ids"].shape[1]
        shift = [width - len(e) if padding_side == "left" else 0 for e in encoded]
        starts = [[p + s for p in e.starts] for e, s in zip(encoded, shift, strict=True)]  # type: ignore[attr-defined]
        batch["entity_starts"] = torch.tensor(starts, dtype=torch.long)
        return batch

    # -- model ----------------------------------------------------------------------------------------------
    def bind(self, backbone: Any) -> None:
        """Take the marker base (the tokenizer's length) and the initial marker embeddings from the base."""
        tokenizer = backbone.tokenizer
        self._marker_base = len(tokenizer)
        table = backbone.model.get_input_embeddings().weight.detach()
        rows = []
        for text in MARKER_INIT:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            rows.append(table[ids].float().mean(0) if ids else table.float().mean(0))
        self._marker_init = torch.stack(rows)

    def build_head(self, hidden_size: int, num_labels: int, pooling: str) -> nn.Module:
        return EntityStartHead(hidden_size, num_labels, self.config.head_dropout, self._marker_base, self._marker_init)

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(logits.float(), batch["labels"])

    def decode(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], encoded: Sequence[Encoded]) -> list[Any]:
        """Per example: ``(label id, probabilities)``."""
        probs = torch.softmax(logits.float(), dim=-1)
        return [(int(row.argmax()), row.tolist()) for row in probs]

    def evaluate(
        self, examples: Sequence[RelationExample], predictions: Sequence[Any], labels: Sequence[str]
    ) -> EvalOutput:
        gold = [ex.label for ex in examples]
        pred = [labels[i] for i, _ in predictions]
        report = classification_report(gold, pred, labels)
        report["confusion_matrix"] = {"labels": list(labels), "matrix": confusion(gold, pred, labels)}
        official = semeval_report(gold, pred, self.config.negative_label)
        report["official"] = official
        headline = {
            "official_f1": float(official["macro_f1"]),
            "accuracy": float(report["accuracy"]),
            "macro_f1": float(report["macro"]["f1"]),
        }
        return EvalOutput(report=report, headline=headline)

    def to_output(self, example: RelationExample, prediction: Any, labels: Sequence[str]) -> dict[str, Any]:
        index, probs = prediction
        scores = {name: round(float(p), 6) for name, p in zip(labels, probs, strict=True)}
        entities = {
            name: {"text": example.entity(name), "start": span[0], "end": span[1]}
            for name, span in (("e1", example.e1), ("e2", example.e2))
        }
        return {
            "text": example.text,
            **entities,
            "relation": labels[index],
            "score": scores[labels[index]],
            "scores": scores,
        }


__all__ = ["EntityStartHead", "RelationClassification", "RelationClsConfig", "check_spans"]
