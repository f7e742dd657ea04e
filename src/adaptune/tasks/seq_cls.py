"""``seq_cls``: sequence classification, single-label (softmax + cross-entropy) or multi-label (sigmoid + BCE)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from transformers import PreTrainedTokenizerBase

from adaptune.config import DataConfig, TaskConfig
from adaptune.data.formats.source import check_utf8
from adaptune.data.readers import read_text_examples
from adaptune.data.records import TextExample
from adaptune.errors import DataError
from adaptune.evaluation.metrics import classification_report, confusion, multilabel_report
from adaptune.registry import register_task
from adaptune.tasks.base import Encoded, EvalOutput, Task, ordered_labels
from adaptune.tasks.pooling import pool


class SeqClsConfig(TaskConfig):
    """Sequence classification settings."""

    name: Literal["seq_cls"] = "seq_cls"
    multi_label: bool = Field(False, description="Each example may carry several labels (sigmoid + BCE).")
    threshold: float = Field(0.5, gt=0, lt=1, description="Multi-label: probability above which a label is on.")
    head_dropout: float = Field(0.1, ge=0, lt=1, description="Dropout before the classifier.")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Single-label cross-entropy label smoothing.")


class SequenceHead(nn.Module):
    """Pool token states, then dropout and a linear classifier: ``(B, T, d) -> (B, num_labels)``."""

    def __init__(self, hidden_size: int, num_labels: int, pooling: str, dropout: float) -> None:
        super().__init__()
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pooled = pool(hidden, batch["attention_mask"], self.pooling)
        return self.classifier(self.dropout(pooled.to(self.classifier.weight.dtype)))  # type: ignore[no-any-return]


@register_task("seq_cls", SeqClsConfig)
class SequenceClassification(Task[TextExample]):
    """Classify a text (or a text pair) into one label, or into a set of labels."""

    config: SeqClsConfig
    default_metric = "accuracy"
    kind = "classify"

    def __init__(self, config: SeqClsConfig) -> None:
        super().__init__(config)
        # Whether the training examples were text pairs (data.text_pair_column); None: not known (not trained
        # here, or an adapter saved before this was stored), and then predict takes either.
        self.pairs: bool | None = None

    def learned_state(self) -> dict[str, Any]:
        return {} if self.pairs is None else {"text_pair": self.pairs}

    def load_learned_state(self, state: dict[str, Any]) -> None:
        pairs = state.get("text_pair")
        self.pairs = pairs if isinstance(pairs, bool) else self.pairs

    def read(self, path: str, data: DataConfig, *, split: str, require_labels: bool = True) -> list[TextExample]:
        examples = self._read(path, data, split=split, require_labels=require_labels)
        if split == "train" and require_labels and examples:
            self.pairs = any(example.text_pair is not None for example in examples)
        return examples

    def _read(self, path: str, data: DataConfig, *, split: str, require_labels: bool) -> list[TextExample]:
        hf_split = getattr(data, f"hf_split_{split}", None)
        return read_text_examples(
            path,
            format=data.format,
            text_column=data.text_column,
            text_pair_column=data.text_pair_column,
            label_column=data.label_column if require_labels else None,
            label_separator=data.label_separator,
            column_names=data.column_names,
            hf_split=hf_split,
            require_labels=require_labels,
        )

    def parse_input(self, item: str | dict[str, Any]) -> TextExample:
        if isinstance(item, str):
            return self._check_pair(TextExample(text=check_utf8(item, field="text"), labels=()))
        text = item.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DataError("needs a non-empty string", field="text")
        pair = item.get("text_pair")
        if pair is not None and (not isinstance(pair, str) or not pair.strip()):
            raise DataError("needs a non-empty string (or leave the field out)", field="text_pair")
        pair = check_utf8(pair, field="text_pair") if pair is not None else None
        return self._check_pair(TextExample(text=check_utf8(text, field="text"), labels=(), text_pair=pair))

    def _check_pair(self, example: TextExample) -> TextExample:
        """Refuse a ``text_pair`` the adapter was not trained with, or its absence where it was (when known)."""
        if self.pairs is False and example.text_pair is not None:
            raise DataError(
                "this adapter was trained on single texts (no data.text_pair_column), so it takes no text_pair; "
                "leave the field out, or use an adapter trained on text pairs",
                field="text_pair",
            )
        if self.pairs and example.text_pair is None:
            raise DataError(
                "this adapter was trained on text pairs (data.text_pair_column), so every input needs one: "
                'give {"text": ..., "text_pair": ...}',
                field="text_pair",
            )
        return example

    def label_names(self, examples: Sequence[TextExample]) -> list[str]:
        labels = ordered_labels({label for ex in examples for label in ex.labels})
        if len(labels) < (1 if self.config.multi_label else 2):
            raise DataError(f"the training data has {len(labels)} distinct label(s); classification needs 2 or more")
        if not self.config.multi_label:
            multi = next((ex for ex in examples if len(ex.labels) > 1), None)
            if multi is not None:
                raise DataError(
                    f"example has several labels {list(multi.labels)} but task.multi_label is false",
                    file=multi.source or None,
                )
        return labels

    def gold(self, example: TextExample) -> Sequence[str]:
        return example.labels

    def without_labels(self, example: TextExample) -> TextExample:
        return replace(example, labels=())

    def encode(
        self, example: TextExample, tokenizer: PreTrainedTokenizerBase, labels: Sequence[str], max_length: int
    ) -> Encoded:
        enc = tokenizer(example.text, example.text_pair, truncation=False)
        full_length = len(enc["input_ids"])
        truncated = full_length > max_length
        if truncated:
            enc = tokenizer(example.text, example.text_pair, truncation=True, max_length=max_length)
        return Encoded(
            input_ids=list(enc["input_ids"]),
            token_type_ids=list(enc["token_type_ids"]) if "token_type_ids" in enc else None,
            target=self._target(example, labels) if example.labels else None,
            truncated=truncated,
            dropped_tokens=max(0, full_length - max_length),
        )

    def _target(self, example: TextExample, labels: Sequence[str]) -> Any:
        index = {name: i for i, name in enumerate(labels)}
        if self.config.multi_label:
            hot = [0.0] * len(labels)
            for label in example.labels:
                hot[index[label]] = 1.0
            return hot
        return index[example.labels[0]]

    def targets(self, encoded: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        dtype = torch.float32 if self.config.multi_label else torch.long
        return {"labels": torch.tensor([e.target for e in encoded], dtype=dtype)}

    def build_head(self, hidden_size: int, num_labels: int, pooling: str) -> nn.Module:
        return SequenceHead(hidden_size, num_labels, pooling, self.config.head_dropout)

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = logits.float()
        if self.config.multi_label:
            return F.binary_cross_entropy_with_logits(logits, batch["labels"])
        return F.cross_entropy(logits, batch["labels"], label_smoothing=self.config.label_smoothing)

    def decode(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], encoded: Sequence[Encoded]) -> list[Any]:
        """Per example: ``(label ids, probabilities)``; one id (argmax) or every id above the threshold."""
        logits = logits.float()
        if self.config.multi_label:
            probs = torch.sigmoid(logits)
            return [
                ([int(i) for i in (row >= self.config.threshold).nonzero().flatten()], row.tolist()) for row in probs
            ]
        probs = torch.softmax(logits, dim=-1)
        return [([int(row.argmax())], row.tolist()) for row in probs]

    def evaluate(
        self, examples: Sequence[TextExample], predictions: Sequence[Any], labels: Sequence[str]
    ) -> EvalOutput:
        if self.config.multi_label:
            gold_sets = [set(ex.labels) for ex in examples]
            pred_sets = [{labels[i] for i in ids} for ids, _ in predictions]
            report = multilabel_report(gold_sets, pred_sets, labels)
        else:
            gold = [ex.labels[0] for ex in examples]
            pred = [labels[ids[0]] for ids, _ in predictions]
            report = classification_report(gold, pred, labels)
            report["confusion_matrix"] = {"labels": list(labels), "matrix": confusion(gold, pred, labels)}
        headline = {
            "accuracy": float(report["accuracy"]),
            "macro_f1": float(report["macro"]["f1"]),
            "micro_f1": float(report["micro"]["f1"]),
            "weighted_f1": float(report["weighted"]["f1"]),
        }
        return EvalOutput(report=report, headline=headline)

    def to_output(self, example: TextExample, prediction: Any, labels: Sequence[str]) -> dict[str, Any]:
        ids, probs = prediction
        scores = {name: round(float(p), 6) for name, p in zip(labels, probs, strict=True)}
        if self.config.multi_label:
            return {"text": example.text, "labels": [labels[i] for i in ids], "scores": scores}
        return {"text": example.text, "label": labels[ids[0]], "score": scores[labels[ids[0]]], "scores": scores}
