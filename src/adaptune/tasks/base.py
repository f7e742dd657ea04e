"""What every task provides: reading, labels, tokenisation, the head, the loss, decoding and metrics.

Tasks never look at the method in use; the training loop and the predictor call only what is declared here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar, get_args, runtime_checkable

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from adaptune.config import DataConfig, TaskConfig
from adaptune.data.chat import template_for
from adaptune.errors import DataError

E = TypeVar("E")  # the task's example type


@dataclass
class Encoded:
    """One tokenised example.

    Attributes:
        input_ids: token ids, special tokens included, at most ``max_length``.
        token_type_ids: segment ids when the tokenizer makes them.
        target: label id (single-label), multi-hot list (multi-label), or per-token tag ids with -100 on
            positions that carry no label (token tasks); None when unlabelled.
        word_index: token tasks: for each position, the index of the word whose first sub-token it is, else -1.
        truncated: True when tokens were cut to fit ``max_length``.
        dropped_tokens: how many tokens were cut.
    """

    input_ids: list[int]
    token_type_ids: list[int] | None = None
    target: Any = None
    word_index: list[int] | None = None
    truncated: bool = False
    dropped_tokens: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class EvalOutput:
    """A task's evaluation: the full report and the headline figures used for model selection."""

    report: dict[str, Any]
    headline: dict[str, float] = field(default_factory=dict)


#: What a task's predictions are, which is what the CLI, the Predictor and the server route on (never the task's
#: name): ``classify`` (a label per input: ``/v1/classify``), ``tag`` (labelled spans: ``/v1/tag``),
#: ``generate`` (text: ``/v1/generate`` and the OpenAI routes; prediction generates, rows are never batched by the
#: forward batcher), ``relation`` (a directed relation between two marked entities: ``/v1/relations``),
#: ``answer`` (an answer span found in a passage: ``/v1/answer``), ``embed`` (a text's embedding, or given items
#: ranked against a query: no server route yet). New kinds join this list with the tasks that introduce them.
TaskKind = Literal["classify", "tag", "generate", "relation", "answer", "embed"]
TASK_KINDS: tuple[str, ...] = get_args(TaskKind)


class PredictContext(Protocol):
    """What :meth:`Task.predict` may use of the model it predicts with (the :class:`~adaptune.inference.Predictor`
    provides it): the label names, a batched forward pass and generation."""

    labels: Sequence[str]

    def forward(self, examples: Sequence[Any]) -> list[Any]:
        """The task's decoded predictions (label-id space) for unlabelled examples, in input order."""
        ...

    def generate(self, prompts: Sequence[Any], config: Any) -> list[Any]:
        """Generations (:class:`~adaptune.generation.Generation`) for chat prompts with ``config``."""
        ...


@runtime_checkable
class ChatTemplated(Protocol):
    """A task that renders its examples with a chat template (the causal LM task): generation, the server and
    the peft export ask it for the template it trained with."""

    def template(self, tokenizer: PreTrainedTokenizerBase) -> str: ...


def chat_template(task: Any, tokenizer: PreTrainedTokenizerBase) -> str:
    """The chat template ``task`` renders with (:class:`ChatTemplated`), else the tokenizer's own (or the
    generic one, :func:`adaptune.data.chat.template_for`)."""
    return task.template(tokenizer) if isinstance(task, ChatTemplated) else template_for(tokenizer, None)


class Task(ABC, Generic[E]):
    """Base of every task. Subclasses register with ``@register_task(name, ConfigClass)``."""

    #: Metric used for model selection when training.metric is "auto".
    default_metric: str = "accuracy"
    #: What the task predicts (:data:`TaskKind`); declared by every task.
    kind: TaskKind = "classify"
    #: Declared: each example is one row of the collated batch. False where :meth:`collate` makes several rows of
    #: one example (extractive QA's overlapping passage windows) and :meth:`decode` folds them back into one
    #: prediction per example; the training activation cache (one cached row per example) and the server's
    #: per-row mixed-adapter batches need one row per example, and are refused or not used otherwise. Such a
    #: task's batch carries ``example_index`` ``(R,)``: the example (0..B-1) of each row.
    rows_are_examples: bool = True

    def predict(self, ctx: PredictContext, examples: Sequence[E]) -> list[dict[str, Any]]:
        """One JSON-ready prediction per unlabelled example (what ``adaptune predict``, ``Predictor.predict``
        and the server answer). Default: a forward pass, then :meth:`to_output`; generative tasks generate."""
        predictions = ctx.forward(examples)
        return [self.to_output(ex, pred, ctx.labels) for ex, pred in zip(examples, predictions, strict=True)]

    def __init__(self, config: TaskConfig) -> None:
        self.config = config

    # -- data -----------------------------------------------------------------------------------------------
    @abstractmethod
    def read(self, path: str, data: DataConfig, *, split: str, require_labels: bool = True) -> list[E]:
        """Read examples of this task from ``path`` (``split`` picks the split of a HF dataset folder)."""

    @abstractmethod
    def parse_input(self, item: str | dict[str, Any]) -> E:
        """An unlabelled example from a raw string or a JSON object (for prediction)."""

    @abstractmethod
    def label_names(self, examples: Sequence[E]) -> list[str]:
        """The label set, taken from training examples, in a stable order."""

    #: Name of the gold-label field in error messages.
    label_field: str = "label"

    @abstractmethod
    def gold(self, example: E) -> Sequence[str]:
        """The gold label names of an example (one, several, or one tag per token); empty when unlabelled."""

    @abstractmethod
    def without_labels(self, example: E) -> E:
        """The example with its gold labels removed (prediction never looks at them)."""

    def check_labels(self, examples: Sequence[E], labels: Sequence[str], path: str) -> None:
        """Raise a :class:`DataError` naming file, line and field for a label that training never saw."""
        known = set(labels)
        for ex in examples:
            for label in self.gold(ex):
                if label not in known:
                    raise unknown_label_error(label, getattr(ex, "source", ""), path, labels, self.label_field)

    @abstractmethod
    def encode(self, example: E, tokenizer: PreTrainedTokenizerBase, labels: Sequence[str], max_length: int) -> Encoded:
        """Tokenise one example (no padding: batches are padded dynamically)."""

    def truncation_note(self, split: str, encoded: Sequence[Encoded], max_length: int) -> str | None:
        """A line for the run's notes saying how many examples (and tokens) were cut; None when none were."""
        cut = [e for e in encoded if e.truncated]
        if not cut:
            return None
        tokens = sum(e.dropped_tokens for e in cut)
        return f"{split}: {len(cut)} of {len(encoded)} examples truncated to {max_length} tokens" + (
            f" ({tokens} tokens dropped)" if tokens else ""
        )

    def training_examples(self, encoded: list[Encoded], max_length: int) -> list[Encoded]:
        """The training set as the loop sees it (the causal LM task packs examples into rows); default: as is."""
        return encoded

    # -- model ----------------------------------------------------------------------------------------------
    def bind(self, backbone: Any) -> None:
        """Called once with the loaded :class:`~adaptune.backbone.Backbone` before :meth:`build_head`, for tasks
        that need more than its width (the causal LM task keeps its frozen LM head). Default: nothing."""

    def extra_evaluation(self, model: Any, examples: Sequence[E], folder: Any, split: str) -> dict[str, float]:
        """Headline figures that need the whole model after training (generation metrics), written next to the
        split's report in ``folder``; default: none."""
        return {}

    @abstractmethod
    def build_head(self, hidden_size: int, num_labels: int, pooling: str) -> nn.Module:
        """The task head: ``head(hidden_states (B, T, d), batch) -> logits``."""

    @abstractmethod
    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean loss of a batch."""

    @abstractmethod
    def decode(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], encoded: Sequence[Encoded]) -> list[Any]:
        """One prediction per example of the batch, in label-id space."""

    @abstractmethod
    def evaluate(self, examples: Sequence[E], predictions: Sequence[Any], labels: Sequence[str]) -> EvalOutput:
        """Compare predictions with the examples' gold labels."""

    @abstractmethod
    def to_output(self, example: E, prediction: Any, labels: Sequence[str]) -> dict[str, Any]:
        """A JSON-ready prediction for users (labels by name, scores, spans)."""

    def learned_state(self) -> dict[str, Any]:
        """What the task learned from the training data besides labels (stored in the adapter config)."""
        return {}

    def load_learned_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`learned_state`."""

    def targets(self, encoded: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        """Target tensors of a batch; the default stacks one label id per example."""
        return {"labels": torch.tensor([e.target for e in encoded], dtype=torch.long)}

    # -- batching -------------------------------------------------------------------------------------------
    def collate(self, encoded: Sequence[Encoded], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Pad a batch to its longest member (dynamic padding) and add the task's targets if labelled."""
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        types = torch.zeros((len(encoded), width), dtype=torch.long) if encoded[0].token_type_ids else None
        for row, item in enumerate(encoded):
            span = slice(width - len(item), width) if padding_side == "left" else slice(0, len(item))
            ids[row, span] = torch.tensor(item.input_ids)
            mask[row, span] = 1
            if types is not None and item.token_type_ids:
                types[row, span] = torch.tensor(item.token_type_ids)
        batch = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            batch["token_type_ids"] = types
        if all(e.target is not None for e in encoded):
            batch.update(self.targets(encoded))
        return batch


def ordered_labels(names: set[str]) -> list[str]:
    """Labels in a stable order: numerically when all are integers ("2" < "10"), else alphabetically."""
    if names and all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def unknown_label_error(label: str, source: str, path: str, known: Sequence[str], field: str) -> DataError:
    """The error for a label at evaluation time that the training data never had."""
    file, _, line = source.rpartition(":")
    shown = ", ".join(list(known)[:20]) + (" ..." if len(known) > 20 else "")
    return DataError(
        f"label {label!r} never occurs in the training data (known labels: {shown})",
        file=file or path,
        line=int(line) if line.isdigit() else None,
        field=field,
    )
