"""``token_cls``: token classification (NER and other tagging), scored at entity level.

Words are tokenised into sub-words; the first sub-token of each word carries the word's tag and the others are
ignored by the loss (-100). Predictions are read back at the same first sub-tokens, so every word gets exactly one
tag; words cut off by ``max_length`` are predicted ``O`` and still counted in evaluation.

Raw text given to predict is split into words the way the training data was (see
:func:`~adaptune.data.records.token_example_from_text`): how punctuation, English clitics and letters inside
Chinese text were tokenised is learned from the training examples and stored in the adapter's task state
(``punctuation``, ``clitics``, ``letters_in_cjk``). Adapters saved before ``punctuation`` and ``clitics``
existed get the defaults, ``"split"`` and ``"keep"``. Splitting punctuation is the safe side: the corpora
adaptune is tested on (CoNLL-2003, its bundled NER data, Resume NER, CLUENER) all write punctuation as tokens
of their own, and since a word's tag is read at its first sub-token, cutting ``.`` off ``Berlin.`` leaves the
tag of ``Berlin`` read where it was (a WordPiece model even gets the same input ids), while ``(Paris`` was
read at ``(`` before. Clitics are the other way round: CoNLL-2003
splits them and the bundled data does not, so an old adapter keeps them in their word, as it always did.

Predicted tags that break the scheme are repaired as conlleval and seqeval's default mode read them (see
:func:`~adaptune.evaluation.tagging.repaired_entities`): an ``I-X`` that does not continue an ``X`` entity
starts one. Such an entity has ``"repaired": true`` in the output; the raw tags are in ``"tags"``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from transformers import PreTrainedTokenizerBase

from adaptune.config import DataConfig, TaskConfig
from adaptune.data.formats.source import check_utf8
from adaptune.data.readers import read_token_examples
from adaptune.data.records import (
    Clitics,
    LettersInCjk,
    Punctuation,
    TokenExample,
    clitics_of,
    letters_in_cjk_of,
    punctuation_of,
    token_example_from_text,
    token_example_from_words,
)
from adaptune.errors import AdapterFileError, DataError
from adaptune.evaluation.metrics import entity_report, token_report
from adaptune.evaluation.tagging import (
    check_tag_spelling,
    detect_scheme,
    extract_entities,
    normalise_scheme,
    repaired_entities,
    validate_tags,
)
from adaptune.registry import register_task
from adaptune.tasks.base import Encoded, EvalOutput, Task

IGNORE = -100
#: How raw text is split when the training data tells nothing (no punctuation, no clitic) and for adapters
#: saved before these were learned: see the module docstring.
DEFAULT_PUNCTUATION: Punctuation = "split"
DEFAULT_CLITICS: Clitics = "keep"


class TokenClsConfig(TaskConfig):
    """Token classification settings."""

    name: Literal["token_cls"] = "token_cls"
    tag_scheme: Literal["auto", "BIO", "IOB2", "IOB1", "BIOES", "IOBES", "BMES"] = Field(
        "auto", description="Tag scheme of the data; 'auto' detects it from the training tags."
    )
    head_dropout: float = Field(0.1, ge=0, lt=1, description="Dropout before the tag classifier.")
    invalid_tags: Literal["warn", "error"] = Field(
        "warn",
        description="A tag sequence that breaks the scheme (I- after O, a sentence ending inside an entity): "
        "'warn' names the first places and trains on the tags as they are (real corpora have a few); "
        "'error' stops at the first one.",
    )


class TokenHead(nn.Module):
    """Dropout and a linear tag classifier on every position: ``(B, T, d) -> (B, T, num_tags)``."""

    def __init__(self, hidden_size: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.dropout(hidden.to(self.classifier.weight.dtype)))  # type: ignore[no-any-return]


#: A SentencePiece token that is only the word-boundary marker (XLM-R splits a character it has no ``▁X`` piece
#: for into ``▁`` and ``X``): it says where a word starts, nothing about the word.
BARE_BOUNDARY = "\u2581"


def align_first_subtoken(
    word_ids: Sequence[int | None], n_words: int, tokens: Sequence[str] | None = None
) -> tuple[list[int], int]:
    """For each position, the word index whose *first* sub-token it is, else -1; and how many words are covered.

    ``word_ids`` is the fast tokenizer's map from positions to words (None for special tokens). With ``tokens``
    (the token strings), a word whose first sub-token is a bare ``▁`` followed by more of the same word is read
    at its second sub-token instead: per-character Chinese input through XLM-R's vocabulary gives ``▁ 张`` for
    many characters, and the ``▁`` would otherwise carry the character's tag.
    """
    index, previous, covered = [], None, set()
    for word in word_ids:
        if word is not None and word != previous and word < n_words:
            index.append(word)
            covered.add(word)
        else:
            index.append(-1)
        previous = word
    if tokens is not None:
        for position in range(len(index) - 1):
            word = index[position]
            if word >= 0 and tokens[position] == BARE_BOUNDARY and word_ids[position + 1] == word:
                index[position], index[position + 1] = -1, word
    return index, len(covered)


def _written_together(char: str) -> bool:
    """CJK ideographs, CJK punctuation and full-width forms: written with no space before or after them."""
    code = ord(char)
    return 0x3000 <= code <= 0x303F or 0x3400 <= code <= 0x4DBF or 0x4E00 <= code <= 0x9FFF or 0xFF00 <= code <= 0xFFEF


def joining_boundaries(words: Sequence[str], tokens: Sequence[str], word_ids: Sequence[int | None]) -> list[bool]:
    """Which positions to keep: all but a bare ``▁`` that opens a word written together with the previous one
    (a Chinese character after a Chinese character). Split into one word per character, Chinese text would
    otherwise get a word boundary between every two characters (``▁ 北 ▁ 京``: twice the tokens, and text the
    model never saw written that way); the same text unsplit has none."""
    keep = []
    for position, word in enumerate(word_ids):
        opens = word is not None and (position == 0 or word_ids[position - 1] != word)
        drop = (
            opens
            and tokens[position] == BARE_BOUNDARY
            and position + 1 < len(word_ids)
            and word_ids[position + 1] == word
            and word > 0
            and bool(words[word])
            and bool(words[word - 1])
            and _written_together(words[word][0])
            and _written_together(words[word - 1][-1])
        )
        keep.append(not drop)
    return keep


def _stored(state: dict[str, Any], key: str, allowed: tuple[str, ...]) -> Any:
    """``state[key]`` when it is one of ``allowed``; ``None`` when absent or null (an older adapter).

    Raises:
        AdapterFileError: the adapter stores a value adaptune does not know.
    """
    value = state.get(key)
    if value is not None and value not in allowed:
        raise AdapterFileError(f"task_state.{key} is {value!r}; expected one of {', '.join(allowed)} or null")
    return value


def tag_order(tags: set[str]) -> list[str]:
    """``O`` first, then tags by entity type and prefix (``B-LOC, I-LOC, B-PER ...``)."""
    rest = sorted((t for t in tags if t != "O"), key=lambda t: (t[2:] if len(t) > 2 and t[1] == "-" else t, t))
    return (["O"] if "O" in tags else []) + rest


@register_task("token_cls", TokenClsConfig)
class TokenClassification(Task[TokenExample]):
    """Tag every word (named entities, chunks ...); headline metric: strict entity-level F1."""

    config: TokenClsConfig
    default_metric = "f1"
    kind = "tag"

    def __init__(self, config: TokenClsConfig) -> None:
        super().__init__(config)
        self.scheme: str | None = None if config.tag_scheme == "auto" else normalise_scheme(config.tag_scheme)
        # How predict splits raw text, learned from the training data (None: not learned yet, or not stored).
        self.letters_in_cjk: LettersInCjk | None = None
        self.punctuation: Punctuation | None = None
        self.clitics: Clitics | None = None

    def learned_state(self) -> dict[str, Any]:
        return {
            "tag_scheme": self.scheme,
            "letters_in_cjk": self.letters_in_cjk,
            "punctuation": self.punctuation,
            "clitics": self.clitics,
        }

    def load_learned_state(self, state: dict[str, Any]) -> None:
        self.scheme = state.get("tag_scheme") or self.scheme
        self.letters_in_cjk = _stored(state, "letters_in_cjk", get_args(LettersInCjk)) or self.letters_in_cjk
        self.punctuation = _stored(state, "punctuation", get_args(Punctuation)) or self.punctuation
        self.clitics = _stored(state, "clitics", get_args(Clitics)) or self.clitics

    def _learn_splitting(self, examples: Sequence[TokenExample]) -> None:
        """Learn how the training data was tokenised, for :meth:`parse_input`. Punctuation and clitics get
        their defaults when the data tells nothing, so the adapter stores the choice it predicts with."""
        if self.letters_in_cjk is None:
            self.letters_in_cjk = letters_in_cjk_of(examples)
        if self.punctuation is None:
            self.punctuation = punctuation_of(examples) or DEFAULT_PUNCTUATION
        if self.clitics is None:
            self.clitics = clitics_of(examples) or DEFAULT_CLITICS

    def read(self, path: str, data: DataConfig, *, split: str, require_labels: bool = True) -> list[TokenExample]:
        examples = read_token_examples(
            path,
            format=data.format,
            token_column=data.token_column,
            tag_column=data.tag_column,
            hf_split=getattr(data, f"hf_split_{split}", None),
            require_labels=require_labels,
        )
        if require_labels and examples:
            tags = [ex.tags for ex in examples]

            def locate(index: int, pos: int) -> tuple[str | None, int | None]:
                return examples[index].token_location(pos)

            if self.scheme is None:
                self.scheme = normalise_scheme(detect_scheme(tags, locate))
            else:  # a scheme named in the config, or detected from the training file: the tags must still be tags
                check_tag_spelling(tags, locate)
            self._learn_splitting(examples)
            self._check_scheme(examples, path)
        return examples

    def _check_scheme(self, examples: Sequence[TokenExample], path: str) -> None:
        """Validate every tag sequence against the scheme; raise or warn as ``invalid_tags`` says."""
        assert self.scheme is not None
        problems: list[str] = []
        for ex in examples:
            file, _, line = ex.source.rpartition(":")
            try:
                validate_tags(ex.tags, self.scheme, file=file or path, line=int(line) if line.isdigit() else None)
            except DataError as err:
                if self.config.invalid_tags == "error":
                    raise
                problems.append(str(err))
        if problems:
            shown = "; ".join(problems[:3])
            warnings.warn(
                f"{len(problems)} of {len(examples)} sentences break the {self.scheme} scheme "
                f"(set task.invalid_tags=error to stop on them): {shown}",
                stacklevel=2,
            )

    def split_text(self, text: str) -> TokenExample:
        """Split raw text into words as the training data was split (learned or stored; defaults otherwise)."""
        return token_example_from_text(
            text,
            letters_in_cjk=self.letters_in_cjk or "words",
            punctuation=self.punctuation or DEFAULT_PUNCTUATION,
            clitics=self.clitics or DEFAULT_CLITICS,
        )

    def parse_input(self, item: str | dict[str, Any]) -> TokenExample:
        if isinstance(item, str):
            return self.split_text(check_utf8(item, field="text"))
        tokens = item.get("tokens")
        if isinstance(tokens, list) and tokens and all(isinstance(t, str) for t in tokens):
            checked = [check_utf8(token, None, "tokens", f"token {index}") for index, token in enumerate(tokens)]
            return token_example_from_words(checked, (), " ", "")
        text = item.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DataError("needs a non-empty 'text' string or a 'tokens' list of strings", field="text")
        return self.split_text(check_utf8(text, field="text"))

    def label_names(self, examples: Sequence[TokenExample]) -> list[str]:
        tags = {tag for ex in examples for tag in ex.tags}
        if not tags - {"O"}:
            raise DataError("the training data has no entity tags (only 'O'); nothing to learn")
        return tag_order(tags)

    label_field = "tag"

    def gold(self, example: TokenExample) -> Sequence[str]:
        return example.tags

    def without_labels(self, example: TokenExample) -> TokenExample:
        return replace(example, tags=())

    def encode(
        self, example: TokenExample, tokenizer: PreTrainedTokenizerBase, labels: Sequence[str], max_length: int
    ) -> Encoded:
        enc = tokenizer(list(example.tokens), is_split_into_words=True, truncation=True, max_length=max_length)
        keep = joining_boundaries(example.tokens, enc.tokens(), enc.word_ids())
        word_ids = [w for w, k in zip(enc.word_ids(), keep, strict=True) if k]
        tokens = [t for t, k in zip(enc.tokens(), keep, strict=True) if k]
        word_index, covered = align_first_subtoken(word_ids, len(example.tokens), tokens)
        target = None
        if example.tags:
            ids = {name: i for i, name in enumerate(labels)}
            target = [ids[example.tags[w]] if w >= 0 else IGNORE for w in word_index]
        types = enc.get("token_type_ids")
        return Encoded(
            input_ids=[t for t, k in zip(enc["input_ids"], keep, strict=True) if k],
            token_type_ids=[t for t, k in zip(types, keep, strict=True) if k] if types is not None else None,
            target=target,
            word_index=word_index,
            truncated=covered < len(example.tokens) and len(enc["input_ids"]) >= max_length,
        )

    def targets(self, encoded: Sequence[Encoded]) -> dict[str, torch.Tensor]:
        width = max(len(e) for e in encoded)
        labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
        for row, item in enumerate(encoded):
            labels[row, : len(item)] = torch.tensor(item.target)
        return {"labels": labels}

    def build_head(self, hidden_size: int, num_labels: int, pooling: str) -> nn.Module:
        return TokenHead(hidden_size, num_labels, self.config.head_dropout)

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE)

    def decode(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], encoded: Sequence[Encoded]) -> list[Any]:
        """Per example: ``(tag id per word or -1 if not covered, probability of that tag)``."""
        probs = torch.softmax(logits.float(), dim=-1)
        best_p, best = probs.max(-1)
        out = []
        for row, item in enumerate(encoded):
            assert item.word_index is not None
            n_words = max(item.word_index, default=-1) + 1
            tags, scores = [-1] * n_words, [0.0] * n_words
            offset = int(batch["attention_mask"][row].argmax())  # first real position: > 0 when left-padded
            for pos, word in enumerate(item.word_index):
                if word >= 0:
                    tags[word], scores[word] = int(best[row, pos + offset]), float(best_p[row, pos + offset])
            out.append((tags, scores))
        return out

    def word_tags(self, example: TokenExample, prediction: Any, labels: Sequence[str]) -> list[str]:
        """Tag names for every word of ``example`` (words past the truncation point: ``O``)."""
        ids = prediction[0]
        return [labels[ids[i]] if i < len(ids) and ids[i] >= 0 else "O" for i in range(len(example.tokens))]

    def evaluate(
        self, examples: Sequence[TokenExample], predictions: Sequence[Any], labels: Sequence[str]
    ) -> EvalOutput:
        gold = [list(ex.tags) for ex in examples]
        pred = [self.word_tags(ex, p, labels) for ex, p in zip(examples, predictions, strict=True)]
        scheme = self.scheme or normalise_scheme(detect_scheme(gold))
        report = entity_report(gold, pred, scheme)
        report["scheme"] = scheme
        report["token_level"] = token_report(gold, pred)
        headline = {
            "f1": float(report["f1"]),
            "precision": float(report["precision"]),
            "recall": float(report["recall"]),
            "token_accuracy": float(report["token_level"]["accuracy"]),
        }
        return EvalOutput(report=report, headline=headline)

    def to_output(self, example: TokenExample, prediction: Any, labels: Sequence[str]) -> dict[str, Any]:
        """``text``, ``entities`` (type, text, start, end: character offsets into ``text``, score: the mean tag
        probability of its words, repaired: true when the tags broke the scheme there), ``tokens``, ``tags``."""
        tags = self.word_tags(example, prediction, labels)
        return {
            "text": example.text,
            "entities": entity_outputs(example, tags, prediction[1], self.scheme or "BIO"),
            "tokens": list(example.tokens),
            "tags": tags,
        }


def entity_outputs(
    example: TokenExample, tags: Sequence[str], scores: Sequence[float], scheme: str
) -> list[dict[str, Any]]:
    """The entities of one sentence's word ``tags`` as JSON-ready dicts with character offsets into its text.

    Tags that break ``scheme`` are repaired (:func:`~adaptune.evaluation.tagging.repaired_entities`); an entity
    that strict extraction would not give has ``"repaired": True``.
    """
    strict = set(extract_entities(tags, scheme))
    out = []
    for kind, start, end in repaired_entities(tags, scheme):
        char_start, char_end = example.offsets[start][0], example.offsets[end - 1][1]
        word_scores = [scores[i] for i in range(start, end) if i < len(scores)]
        out.append(
            {
                "type": kind,
                "text": example.text[char_start:char_end],
                "start": char_start,
                "end": char_end,
                "score": round(sum(word_scores) / max(1, len(word_scores)), 6),
                "repaired": (kind, start, end) not in strict,
            }
        )
    return out
