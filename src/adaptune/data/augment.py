"""Data augmentation of training rows, before tokenisation: ``data.augment`` in a run config.

Each training row gets ``copies`` augmented copies, added after the originals (copy 1 of every row, then copy
2 ...). A copy is made by one operation, drawn uniformly among the configured ones (``data.augment.ops``; by
default all of the row's kind) that can change that row; a row none of them can change (one word, a sentence
with no mention that has another of its type and a single segment) gets no copy. Labels never change.

- Text rows (:class:`~adaptune.data.records.TextExample`: ``seq_cls``): EDA's random ``swap``, ``delete`` and
  ``insert`` (:mod:`adaptune.data.augment_text`; per character for mostly-Chinese text, inserting words or
  characters of the training rows). With sentence pairs (``data.text_pair_column``) only the first text is
  changed: the second is kept as read, so what relates the two (a question and its passage, a premise and a
  hypothesis) is touched on one side only.
- NER rows (:class:`~adaptune.data.records.TokenExample`: ``token_cls``): ``replace_mention`` and
  ``shuffle_segments`` (:mod:`adaptune.data.augment_ner`), with the tags rebuilt in the data's scheme.
- Other tasks (``causal_lm``, ``extractive_qa``, ``relation_cls``): no operation is safe without knowing the
  answer span or entity markers, so ``data.augment`` is refused with a :class:`~adaptune.errors.ConfigError`.

Every draw comes from one :class:`random.Random` seeded with ``data.augment.seed`` (``training.seed`` when
unset): the same seed and rows give the same augmented rows, on every rank of a distributed run too. Only the
training split is augmented (:func:`adaptune.api.prepare`), after ``data.max_train_examples``; dev and test are
read as they are.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, TypeVar

from adaptune.config import AugmentConfig, RunConfig
from adaptune.data.augment_ner import MentionPool, Segment, rebuilt, replace_mentions, segments_of, shuffle_segments
from adaptune.data.augment_text import (
    Vocabulary,
    join_units,
    random_deletion,
    random_insertion,
    random_swap,
    split_units,
)
from adaptune.data.records import TextExample, TokenExample
from adaptune.errors import ConfigError
from adaptune.evaluation.tagging import detect_scheme

__all__ = ["NER_OPS", "TEXT_OPS", "Augmentation", "augment", "augment_examples", "augment_for_run"]

#: The operations of text rows and of NER rows, in the order a default ``ops`` lists them.
TEXT_OPS: tuple[str, ...] = ("swap", "delete", "insert")
NER_OPS: tuple[str, ...] = ("replace_mention", "shuffle_segments")

E = TypeVar("E")


class _TextAugmenter:
    """EDA on :class:`TextExample` rows; the state is the text's units and whether they are characters."""

    def __init__(self, examples: Sequence[TextExample], rate: float) -> None:
        self.vocabulary = Vocabulary.of(example.text for example in examples)
        self.rate = rate

    def state(self, example: TextExample) -> tuple[list[str], bool]:
        return split_units(example.text)

    def applies(self, op: str, state: tuple[list[str], bool]) -> bool:
        return op == "insert" or len(state[0]) >= 2

    def apply(self, op: str, example: TextExample, state: tuple[list[str], bool], rng: random.Random) -> TextExample:
        units, per_character = state
        if op == "swap":
            changed = random_swap(units, self.rate, rng)
        elif op == "delete":
            changed = random_deletion(units, self.rate, rng)
        else:
            changed = random_insertion(units, self.rate, self.vocabulary.pool(per_character), rng)
        return replace(example, text=join_units(changed, per_character))


class _NerAugmenter:
    """Mention replacement and segment shuffling on :class:`TokenExample` rows; the state is the row's
    segments, None for a row that breaks the scheme (left as it is)."""

    def __init__(self, examples: Sequence[TokenExample], rate: float, scheme: str | None) -> None:
        self.scheme = scheme or detect_scheme(example.tags for example in examples)
        self.rate = rate
        self.pool = MentionPool([s for s in map(self.state, examples) if s is not None])

    def state(self, example: TokenExample) -> list[Segment] | None:
        return segments_of(example.tags, example.tokens, self.scheme)

    def applies(self, op: str, state: list[Segment] | None) -> bool:
        if state is None:
            return False
        if op == "shuffle_segments":
            return len(state) >= 2
        return any(segment.kind is not None and self.pool.has_other(segment) for segment in state)

    def apply(self, op: str, example: TokenExample, state: list[Segment] | None, rng: random.Random) -> TokenExample:
        assert state is not None
        if op == "shuffle_segments":
            return rebuilt(example, shuffle_segments(state, rng), self.scheme)
        return rebuilt(example, replace_mentions(state, self.pool, self.rate, rng), self.scheme)


@dataclass
class Augmentation(Generic[E]):
    """The training rows after augmentation: ``examples`` holds the originals, then the new rows."""

    examples: list[E]
    originals: int
    seed: int
    added: dict[str, int] = field(default_factory=dict)

    def note(self) -> str:
        """The run's note, e.g. ``augmentation: 2,000 training rows + 2,000 augmented (swap 667, delete 668,
        insert 665; seed 42)``."""
        ops = ", ".join(f"{op} {count:,}" for op, count in self.added.items()) or "no row could be changed"
        total = sum(self.added.values())
        return f"augmentation: {self.originals:,} training rows + {total:,} augmented ({ops}; seed {self.seed})"


def _augmenter(
    examples: Sequence[Any], task_name: str, cfg: AugmentConfig, scheme: str | None
) -> tuple[Any, tuple[str, ...]]:
    """The augmenter for the rows' kind and the operations it may use; refuses other kinds and foreign ops."""
    if all(isinstance(example, TextExample) for example in examples):
        augmenter: Any = _TextAugmenter(examples, cfg.p)
        own, kind = TEXT_OPS, "text"
    elif all(isinstance(example, TokenExample) for example in examples):
        augmenter, own, kind = _NerAugmenter(examples, cfg.p, scheme), NER_OPS, "token (NER)"
    else:
        raise ConfigError(
            f"config key 'data.augment' is set, but task {task_name!r} has no augmentation: operations exist for "
            f"text rows (seq_cls: {', '.join(TEXT_OPS)}) and NER rows (token_cls: {', '.join(NER_OPS)}); "
            "remove data.augment"
        )
    ops = tuple(cfg.ops) if cfg.ops is not None else own
    foreign = [op for op in ops if op not in own]
    if foreign:
        raise ConfigError(
            f"config key 'data.augment.ops' = {list(ops)}: {', '.join(foreign)} does not apply to the {kind} rows "
            f"of task {task_name!r}; its operations are {', '.join(own)}"
        )
    return augmenter, ops


def augment(
    examples: Sequence[E], task_name: str, cfg: AugmentConfig, seed: int, *, scheme: str | None = None
) -> Augmentation[E]:
    """Augment training rows as ``cfg`` says, drawing from ``random.Random(seed)`` only.

    Args:
        examples: the training rows, all :class:`TextExample` or all :class:`TokenExample`.
        task_name: the task, for error messages.
        cfg: copies, ops, rate and seed (``cfg.seed`` is not read here: ``seed`` is the one used).
        seed: seed of the draws.
        scheme: the tag scheme of NER rows; None detects it from their tags.

    Raises:
        ConfigError: the rows are of a task with no augmentation, or ``cfg.ops`` names an op of another kind.
    """
    result = Augmentation(list(examples), len(examples), seed)
    if not examples:
        return result
    augmenter, ops = _augmenter(examples, task_name, cfg, scheme)
    rng = random.Random(seed)
    states = [augmenter.state(example) for example in examples]
    added: Counter[str] = Counter()
    for _ in range(cfg.copies):
        for example, state in zip(examples, states, strict=True):
            usable = [op for op in ops if augmenter.applies(op, state)]
            if usable:
                op = rng.choice(usable)
                result.examples.append(augmenter.apply(op, example, state, rng))
                added[op] += 1
    result.added = {op: added[op] for op in ops if added[op]}
    return result


def augment_examples(
    examples: Sequence[E], task_name: str, cfg: AugmentConfig, seed: int, *, scheme: str | None = None
) -> list[E]:
    """The training rows followed by their augmented copies (:func:`augment`)."""
    return augment(examples, task_name, cfg, seed, scheme=scheme).examples


def augment_for_run(examples: Sequence[E], cfg: RunConfig) -> Augmentation[E]:
    """Augment a run's training rows by ``cfg.data.augment``, seeded by its seed or else ``training.seed``."""
    assert cfg.data.augment is not None
    seed = cfg.data.augment.seed if cfg.data.augment.seed is not None else cfg.training.seed
    return augment(examples, cfg.task.name, cfg.data.augment, seed)
