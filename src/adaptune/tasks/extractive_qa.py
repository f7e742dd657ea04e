"""``extractive_qa``: SQuAD-style extractive question answering (English and Chinese): the answer is a span of the
passage, found by a start and an end classifier over the passage's tokens (BERT, Devlin et al. 2019, section 4.2).

**Windows.** A question and a passage longer than ``data.max_length`` tokens make several overlapping windows
``[CLS] question [SEP] passage chunk [SEP]``, consecutive chunks sharing ``task.doc_stride`` tokens (the fast
tokenizer's ``return_overflowing_tokens`` with ``truncation="only_second"``, as transformers' ``run_qa`` does).
One :class:`QAEncoded` per question holds all its windows, each with the character span in the passage of each
of its passage tokens and, for training, the gold start and end token (position 0, the ``[CLS]``, in a window
that does not hold the whole answer). Its ``input_ids`` are the first window's, which is the longest (every
window but the last is full), so ``len()`` is the padded width its rows need and length bucketing works as for
other tasks; a batch of B questions has R >= B rows.

**Head and loss.** ``Linear(d, 2)`` on every token state: ``(R, T, d) -> (R, T, 2)`` start and end logits;
the loss is the mean of the start and end cross-entropies over the windows (padding masked out).

**Decoding** folds the windows of a question back into one answer: the span ``start <= end`` inside the passage,
at most ``task.max_answer_length`` tokens long, with the highest start + end logit over all windows (an exact
search of every such span, which finds whatever the n-best lists of ``run_qa``'s post-processing find), mapped
back to the passage's characters: ``(text, start, end, score)``, ``score`` the softmax probability of the best
span among the ``task.n_best`` best of the question (as ``run_qa`` reports it).

**Scoring**: exact match and F1 of SQuAD v1.1's script for English and of CMRC 2018's for Chinese
(:mod:`adaptune.evaluation.squad`), as fractions (0-1), against every reference answer by text.

**Answers whose offset does not match their text** (after the search of
:func:`~adaptune.data.formats.squad.locate_answer`) are counted in the run's notes and never trained on; a
training question left without a usable answer is skipped. Questions longer than ``task.max_question_tokens``
(at most half of ``data.max_length``) are cut, and counted in the notes too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from transformers import PreTrainedTokenizerBase

from adaptune.config import DataConfig, TaskConfig
from adaptune.data.formats.source import check_utf8
from adaptune.data.formats.squad import Answer, QAExample, read_qa_examples
from adaptune.errors import ConfigError, DataError
from adaptune.evaluation.squad import Language, has_cjk, qa_report
from adaptune.registry import register_task
from adaptune.tasks.base import Encoded, EvalOutput, Task

IGNORE = -100
#: The fixed "labels" of the task: what the two outputs of the head are.
OUTPUTS = ["start", "end"]


class ExtractiveQAConfig(TaskConfig):
    """Extractive question answering settings."""

    name: Literal["extractive_qa"] = "extractive_qa"
    doc_stride: int = Field(
        128,
        ge=0,
        description="Passage tokens that consecutive windows of a long passage share (run_qa's doc_stride); at "
        "most half of the room a window leaves for the passage.",
    )
    max_answer_length: int = Field(30, ge=1, le=4096, description="Longest answer that decoding gives, in tokens.")
    max_question_tokens: int = Field(
        64, ge=1, description="Longer questions are cut to this many tokens (and noted); at most half of max_length."
    )
    n_best: int = Field(
        20, ge=1, le=1000, description="The answer's score is its softmax probability among the n_best best spans."
    )
    head_dropout: float = Field(0.1, ge=0, lt=1, description="Dropout before the start/end classifier.")
    language: Literal["auto", "en", "zh"] = Field(
        "auto",
        description="How answers are scored: 'en' as SQuAD v1.1's script (normalised words), 'zh' as CMRC 2018's "
        "(characters); 'auto' per question: zh when the passage holds CJK characters.",
    )


@dataclass
class Window:
    """One window of a question and a chunk of its passage.

    Attributes:
        input_ids: the window's token ids, special tokens included.
        token_type_ids: its segment ids when the tokenizer makes them.
        context_start: position of the window's first passage token.
        offsets: ``(start, end)`` character span in the passage of each passage token, in order.
        start, end: gold token positions in the window (0 when it does not hold the answer, -100 when there is
            no usable answer); -100 when unlabelled.
    """

    input_ids: list[int]
    token_type_ids: list[int] | None
    context_start: int
    offsets: list[tuple[int, int]]
    start: int = IGNORE
    end: int = IGNORE

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class QAEncoded(Encoded):
    """All windows of one question (``input_ids`` and ``token_type_ids``: the first, longest window's).

    Attributes:
        windows: the question's windows in passage order.
        context: the passage, to map spans back to text.
        unmatched: answers whose offset does not match their text (never trained on).
        recovered: answers whose offset was found near the given one.
        skipped: labelled, with no usable answer: left out of training.
        empty_question: the question is an empty string.
    """

    windows: list[Window] = field(default_factory=list)
    context: str = ""
    unmatched: int = 0
    recovered: int = 0
    skipped: bool = False
    empty_question: bool = False


class QAPrediction(NamedTuple):
    """The answer to one question: its text, its character span ``[start, end)`` in the passage, its score."""

    text: str
    start: int
    end: int
    score: float


class SpanHead(nn.Module):
    """Dropout and ``Linear(d, 2)`` on every position: ``(R, T, d) -> (R, T, 2)`` start and end logits."""

    def __init__(self, hidden_size: int, num_outputs: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_outputs)

    def forward(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.dropout(hidden.to(self.classifier.weight.dtype)))  # type: ignore[no-any-return]


def answer_positions(window: Window, answer: Answer) -> tuple[int, int]:
    """Gold ``(start, end)`` token positions of ``answer`` in ``window``: the last passage token starting at or
    before the answer's first non-space character and the first one from there ending at or after its last;
    ``(0, 0)`` when the window does not hold the whole answer."""
    assert answer.start is not None
    text = answer.text
    first = answer.start + len(text) - len(text.lstrip())  # spaces around the text belong to no token
    last = max(first, answer.start + len(text.rstrip()))
    offsets = window.offsets
    if not offsets or offsets[0][0] > first or offsets[-1][1] < last:
        return 0, 0
    start = max(k for k, (begin, _) in enumerate(offsets) if begin <= first)
    end = next(k for k in range(start, len(offsets)) if offsets[k][1] >= last)
    return window.context_start + start, window.context_start + end


def best_spans(start: torch.Tensor, end: torch.Tensor, max_tokens: int, k: int) -> list[tuple[float, int, int]]:
    """The ``k`` best spans ``(score, i, j)`` with ``i <= j < i + max_tokens`` of one window's passage tokens.

    ``start``, ``end``: ``(n,)`` logits of the passage tokens; score = ``start[i] + end[j]``. Searched as a
    ``(max_tokens, n)`` table of every span by length, so no valid span is missed.
    """
    n = int(start.numel())
    lengths = min(max_tokens, n)
    if not lengths:
        return []
    table = torch.full((lengths, n), float("-inf"))
    for d in range(lengths):
        table[d, : n - d] = start[: n - d] + end[d:]
    flat = table.flatten()
    count = min(k, lengths * n - lengths * (lengths - 1) // 2)  # the finite entries
    scores, index = flat.topk(count)
    return [(float(s), int(i) % n, int(i) % n + int(i) // n) for s, i in zip(scores, index, strict=True)]


@register_task("extractive_qa", ExtractiveQAConfig)
class ExtractiveQA(Task[QAExample]):
    """Answer a question with a span of a passage (SQuAD, CMRC 2018); headline: exact match and F1 (0-1)."""

    config: ExtractiveQAConfig
    default_metric = "f1"
    kind = "answer"
    rows_are_examples = False
    label_field = "answers"

    # -- data -----------------------------------------------------------------------------------------------
    def read(self, path: str, data: DataConfig, *, split: str, require_labels: bool = True) -> list[QAExample]:
        hf_split = getattr(data, f"hf_split_{split}", None)
        return read_qa_examples(path, format=data.format, hf_split=hf_split, require_labels=require_labels)

    def parse_input(self, item: str | dict[str, Any]) -> QAExample:
        if not isinstance(item, dict):
            raise DataError('extractive_qa takes a JSON object {"question": ..., "context": ...}', field="question")
        values = {}
        for name in ("question", "context"):
            value = item.get(name)
            if not isinstance(value, str) or not value.strip():
                raise DataError("needs a non-empty string", field=name)
            values[name] = check_utf8(value, field=name)
        return QAExample(str(item.get("id", "")), values["question"], values["context"])

    def label_names(self, examples: Sequence[QAExample]) -> list[str]:
        if not any(a.start is not None for ex in examples for a in ex.answers):
            raise DataError("no training question has an answer whose answer_start matches its text")
        return list(OUTPUTS)

    def gold(self, example: QAExample) -> Sequence[str]:
        return ()  # answers are spans, not label names: nothing for check_labels to look up

    def without_labels(self, example: QAExample) -> QAExample:
        return replace(example, answers=())

    # -- encoding -------------------------------------------------------------------------------------------
    def _question(self, question: str, tokenizer: PreTrainedTokenizerBase, max_length: int) -> tuple[str, int, int]:
        """``(question cut to its token budget, its token count, tokens dropped)``."""
        budget = min(self.config.max_question_tokens, max_length // 2)
        enc = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        if len(ids) <= budget:
            return question, len(ids), 0
        cut = question[: enc["offset_mapping"][budget - 1][1]]
        return cut, len(tokenizer(cut, add_special_tokens=False)["input_ids"]), len(ids) - budget

    def encode(
        self, example: QAExample, tokenizer: PreTrainedTokenizerBase, labels: Sequence[str], max_length: int
    ) -> QAEncoded:
        if not tokenizer.is_fast:
            raise ConfigError("task 'extractive_qa' needs a fast tokenizer (character offsets of the tokens)")
        question, question_tokens, dropped = self._question(example.question, tokenizer, max_length)
        room = max_length - question_tokens - tokenizer.num_special_tokens_to_add(pair=True)
        if room < 1:
            raise ConfigError(f"data.max_length={max_length} leaves no room for the passage next to the question")
        enc = tokenizer(
            question,
            example.context,
            truncation="only_second",
            max_length=max_length,
            stride=min(self.config.doc_stride, room // 2),
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        windows = [_window(enc, i) for i in range(len(enc["input_ids"]))]
        usable = next((a for a in example.answers if a.start is not None), None)
        for window in windows:
            if usable is not None:
                window.start, window.end = answer_positions(window, usable)
        labelled = bool(example.answers)
        return QAEncoded(
            input_ids=windows[0].input_ids,
            token_type_ids=windows[0].token_type_ids,
            target=[[w.start, w.end] for w in windows] if labelled else None,
            truncated=dropped > 0,
            dropped_tokens=dropped,
            windows=windows,
            context=example.context,
            unmatched=sum(a.start is None for a in example.answers),
            recovered=sum(a.recovered for a in example.answers),
            skipped=labelled and usable is None,
            empty_question=not example.question.strip(),
        )

    def truncation_note(self, split: str, encoded: Sequence[Encoded], max_length: int) -> str | None:
        """Questions cut, answers whose offsets do not match their text (and what became of them), offsets
        found near the given ones, empty questions; None when there is nothing to say."""
        items = [_qa(e) for e in encoded]
        parts = []
        cut = [e for e in items if e.truncated]
        if cut:
            budget = min(self.config.max_question_tokens, max_length // 2)
            dropped = sum(e.dropped_tokens for e in cut)
            parts.append(f"{len(cut)} of {len(items)} questions cut to {budget} tokens ({dropped} tokens dropped)")
        unmatched = sum(e.unmatched for e in items)
        if unmatched:
            what = (
                f"not trained on, and {sum(e.skipped for e in items)} questions left without an answer are skipped"
                if split == "train"
                else "scored by text against all references, as the official scripts do"
            )
            parts.append(
                f"{unmatched} answers' answer_start does not match their text (context[answer_start:][:len(text)] "
                f"!= text, and the text is not near it): {what}"
            )
        recovered = sum(e.recovered for e in items)
        if recovered:
            parts.append(f"{recovered} answers' text was found near, not at, their answer_start (UTF-16 offsets?)")
        empty = sum(e.empty_question for e in items)
        if empty:
            parts.append(f"{empty} questions are empty")
        return f"{split}: " + "; ".join(parts) if parts else None

    def training_examples(self, encoded: list[Encoded], max_length: int) -> list[Encoded]:
        """The questions with a usable answer (see :meth:`truncation_note`)."""
        kept = [e for e in encoded if not _qa(e).skipped]
        if not kept:
            raise DataError("no training question has an answer whose answer_start matches its text")
        return kept

    # -- model ----------------------------------------------------------------------------------------------
    def build_head(self, hidden_size: int, num_labels: int, pooling: str) -> nn.Module:
        return SpanHead(hidden_size, num_labels, self.config.head_dropout)

    def collate(self, encoded: Sequence[Encoded], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
        """All windows of the batch's questions as rows: ``input_ids``, ``attention_mask`` (and
        ``token_type_ids``) ``(R, T)``; ``example_index`` ``(R,)``, the question (batch position) of each row;
        ``labels`` ``(R, 2)`` gold start and end positions when every question is labelled."""
        rows = [(k, w) for k, item in enumerate(encoded) for w in _qa(item).windows]
        width = max(len(w) for _, w in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        types = torch.zeros((len(rows), width), dtype=torch.long) if rows[0][1].token_type_ids else None
        labels = torch.full((len(rows), 2), IGNORE, dtype=torch.long)
        for row, (_, window) in enumerate(rows):
            shift = width - len(window) if padding_side == "left" else 0
            span = slice(shift, shift + len(window))
            ids[row, span] = torch.tensor(window.input_ids)
            mask[row, span] = 1
            if types is not None and window.token_type_ids:
                types[row, span] = torch.tensor(window.token_type_ids)
            if window.start != IGNORE:
                labels[row] = torch.tensor([window.start + shift, window.end + shift])
        batch = {"input_ids": ids, "attention_mask": mask, "example_index": torch.tensor([k for k, _ in rows])}
        if types is not None:
            batch["token_type_ids"] = types
        if all(e.target is not None for e in encoded):
            batch["labels"] = labels
        return batch

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean of the start and end cross-entropies over the windows with a target; ``logits`` ``(R, T, 2)``."""
        logits = logits.float().masked_fill(~batch["attention_mask"].bool().unsqueeze(-1), -1e4)
        labels = batch["labels"]
        if not bool((labels[:, 0] != IGNORE).any()):
            return logits.sum() * 0.0  # no window of the batch has a usable answer
        start = F.cross_entropy(logits[..., 0], labels[:, 0], ignore_index=IGNORE)
        end = F.cross_entropy(logits[..., 1], labels[:, 1], ignore_index=IGNORE)
        return (start + end) / 2

    def decode(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], encoded: Sequence[Encoded]) -> list[Any]:
        """One :class:`QAPrediction` per question from the ``(R, T, 2)`` logits of its windows' rows."""
        scores = logits.detach().float().cpu()
        first_real = batch["attention_mask"].cpu().argmax(dim=1).tolist()  # > 0 when left-padded
        max_tokens, k = self.config.max_answer_length, self.config.n_best + 8
        out, row = [], 0
        for item in map(_qa, encoded):
            spans: list[tuple[float, Window, int, int]] = []
            for window in item.windows:
                at = first_real[row] + window.context_start
                n = len(window.offsets)
                # a few more than n_best per window, for the blank spans _pick passes over
                found = best_spans(scores[row, at : at + n, 0], scores[row, at : at + n, 1], max_tokens, k)
                spans += [(s, window, i, j) for s, i, j in found]
                row += 1
            out.append(self._pick(item.context, spans))
        return out

    def _pick(self, context: str, spans: list[tuple[float, Window, int, int]]) -> QAPrediction:
        """The best span whose text is not blank, scored by its softmax probability among the ``n_best`` best."""
        spans.sort(key=lambda s: -s[0])
        for rank, (score, window, i, j) in enumerate(spans):
            begin, end = window.offsets[i][0], window.offsets[j][1]
            text = context[begin:end]
            if not text.strip():
                continue  # a lone word-boundary token over a space (XLM-R's "▁")
            begin += len(text) - len(text.lstrip())
            end -= len(text) - len(text.rstrip())
            pool = [s for s, *_ in spans[: self.config.n_best]] + ([score] if rank >= self.config.n_best else [])
            probability = math.exp(score - float(torch.logsumexp(torch.tensor(pool), 0)))
            return QAPrediction(context[begin:end], begin, end, probability)
        return QAPrediction("", 0, 0, 0.0)

    # -- metrics and output ---------------------------------------------------------------------------------
    def language(self, example: QAExample) -> Language:
        """How ``example`` is scored: the configured language, or zh when the passage holds CJK (``auto``)."""
        if self.config.language != "auto":
            return self.config.language
        return "zh" if has_cjk(example.context) else "en"

    def evaluate(self, examples: Sequence[QAExample], predictions: Sequence[Any], labels: Sequence[str]) -> EvalOutput:
        report = qa_report(
            [p.text for p in predictions],
            [[a.text for a in ex.answers] for ex in examples],
            [self.language(ex) for ex in examples],
        )
        report["scale"] = "0-1 (the official scripts print these times 100)"
        report["unmatched_answers"] = sum(a.start is None for ex in examples for a in ex.answers)
        report["recovered_answers"] = sum(a.recovered for ex in examples for a in ex.answers)
        report["empty_predictions"] = sum(not p.text for p in predictions)
        report["note"] = f"exact_match {report['exact_match']:.4f}  f1 {report['f1']:.4f} (0-1)"
        return EvalOutput(report=report, headline={"exact_match": report["exact_match"], "f1": report["f1"]})

    def to_output(self, example: QAExample, prediction: Any, labels: Sequence[str]) -> dict[str, Any]:
        """``question``, ``answer``, ``start`` and ``end`` (character offsets into the context), ``score``."""
        return {
            "question": example.question,
            "answer": prediction.text,
            "start": prediction.start,
            "end": prediction.end,
            "score": round(prediction.score, 6),
        }


def _qa(encoded: Encoded) -> QAEncoded:
    if not isinstance(encoded, QAEncoded):
        raise TypeError(f"extractive_qa works on its own encodings, not {type(encoded).__name__}")
    return encoded


def _window(enc: Any, index: int) -> Window:
    """Window ``index`` of a tokenizer output with overflowing windows and offsets."""
    sequence = enc.sequence_ids(index)
    positions = [p for p, s in enumerate(sequence) if s == 1]
    offsets = enc["offset_mapping"][index]
    types = enc.get("token_type_ids")
    return Window(
        input_ids=list(enc["input_ids"][index]),
        token_type_ids=list(types[index]) if types is not None else None,
        context_start=positions[0] if positions else len(sequence),
        offsets=[(int(offsets[p][0]), int(offsets[p][1])) for p in positions],
    )
