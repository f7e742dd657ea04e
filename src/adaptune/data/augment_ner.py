"""Label-safe augmentation of NER rows: mention replacement and segment shuffling.

Both follow Dai and Adel, "An Analysis of Simple Data Augmentation for Named Entity Recognition" (COLING 2020):

- mention replacement: each entity mention is replaced, with probability ``p`` (at least one per copy), by
  another mention of the same type drawn from the training rows (frequency-weighted: a random occurrence,
  other than the mention itself, written in the same script, CJK or not), which may be longer or shorter;
- segment shuffling: the sentence is cut into segments, each entity mention one segment and each run of ``O``
  tokens between them another, and the segments are put in a new random order. Entities are never split, so
  the multiset of (type, mention) pairs is the same; two ``O`` runs that meet become one. (Dai and Adel's
  "shuffle within segments" shuffles the tokens inside each segment instead; this keeps every mention and
  every run of words intact and moves them.)

A row is held as segments (:class:`Segment`): a mention with its type, or a run of ``O``. After the change
its tags are rendered anew for the new lengths, in the scheme of the data (:func:`render`): IOB2 ``B-X I-X*``,
IOB1 (``B-X`` only right after another ``X`` entity), IOBES ``S-X`` / ``B-X I-X* E-X`` and BMES
``S-X`` / ``B-X M-X* E-X``. Tokens are whatever the rows hold: words (CoNLL) or characters (Chinese BMES data,
whose text is the characters joined without spaces); the new row's text joins its tokens as its row did, and
the offsets are rebuilt (:func:`~adaptune.data.records.token_example_from_words`).

Only rows whose tags keep the scheme and read back the same after rendering are changed or lend their
mentions (:func:`segments_of`): a sentence that breaks the scheme (real corpora have a few) or spells a tag
another way (an untyped ``B``) is left as it is.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from adaptune.data.records import TokenExample, is_cjk_script, token_example_from_words
from adaptune.errors import DataError
from adaptune.evaluation.tagging import convert_tags, extract_entities

__all__ = ["MentionPool", "Segment", "render", "replace_mentions", "segments_of", "shuffle_segments"]

#: Draws of a replacement before the fallback to a uniform draw among the other mentions.
_TRIES = 20


@dataclass(frozen=True)
class Segment:
    """A mention (``kind`` is its entity type) or a run of ``O`` tokens (``kind`` is None)."""

    tokens: tuple[str, ...]
    kind: str | None = None


def segments_of(tags: Sequence[str], tokens: Sequence[str], scheme: str) -> list[Segment] | None:
    """The row as mentions and ``O`` runs; None when its tags break ``scheme`` or render back differently."""
    try:
        if convert_tags(tags, scheme, scheme) != list(tags):
            return None
        entities = extract_entities(tags, scheme)
    except DataError:
        return None
    segments: list[Segment] = []
    position = 0
    for kind, start, end in entities:
        if start > position:
            segments.append(Segment(tuple(tokens[position:start])))
        segments.append(Segment(tuple(tokens[start:end]), kind))
        position = end
    if position < len(tokens):
        segments.append(Segment(tuple(tokens[position:])))
    return segments


def render(segments: Sequence[Segment], scheme: str) -> tuple[list[str], list[str]]:
    """``(tokens, tags)`` of the segments in ``scheme``: IOB2 tags per segment, converted by
    :func:`~adaptune.evaluation.tagging.convert_tags` (which also gives IOB1 its ``B-`` between two adjacent
    entities of one type)."""
    tokens: list[str] = []
    iob2: list[str] = []
    for segment in segments:
        tokens.extend(segment.tokens)
        if segment.kind is None:
            iob2.extend("O" for _ in segment.tokens)
        else:
            iob2.extend([f"B-{segment.kind}"] + [f"I-{segment.kind}"] * (len(segment.tokens) - 1))
    return tokens, convert_tags(iob2, "IOB2", scheme)


def _pool_key(segment: Segment) -> tuple[str, bool]:
    """A mention's type and whether it is written in CJK script: a replacement keeps both."""
    return segment.kind or "", any(is_cjk_script(char) for token in segment.tokens for char in token)


class MentionPool:
    """The training rows' mentions by type and script, every occurrence once (a draw is frequency-weighted).

    A mention is replaced only by one of its script (CJK or not): in bilingual data a Chinese name stays in a
    Chinese sentence and ``Vancouver`` in an English one.
    """

    def __init__(self, rows: Sequence[Sequence[Segment]]) -> None:
        self.mentions: dict[tuple[str, bool], list[tuple[str, ...]]] = {}
        for segments in rows:
            for segment in segments:
                if segment.kind is not None:
                    self.mentions.setdefault(_pool_key(segment), []).append(segment.tokens)
        self.distinct = {key: sorted(set(found)) for key, found in self.mentions.items()}

    def has_other(self, segment: Segment) -> bool:
        """Whether some mention of the segment's type and script differs from it."""
        found = self.distinct.get(_pool_key(segment), [])
        return len(found) > 1 or (len(found) == 1 and found[0] != segment.tokens)

    def other(self, segment: Segment, rng: random.Random) -> tuple[str, ...]:
        """A random occurrence of the segment's type and script that is not its mention (see :meth:`has_other`)."""
        key = _pool_key(segment)
        found = self.mentions[key]
        for _ in range(_TRIES):
            drawn = rng.choice(found)
            if drawn != segment.tokens:
                return drawn
        return rng.choice([mention for mention in self.distinct[key] if mention != segment.tokens])


def replace_mentions(segments: Sequence[Segment], pool: MentionPool, rate: float, rng: random.Random) -> list[Segment]:
    """Replace each mention that has another of its type with probability ``rate`` (at least one)."""
    candidates = [
        index for index, segment in enumerate(segments) if segment.kind is not None and pool.has_other(segment)
    ]
    out = list(segments)
    if not candidates:
        return out
    chosen = [index for index in candidates if rng.random() < rate] or [rng.choice(candidates)]
    for index in chosen:
        out[index] = Segment(pool.other(out[index], rng), out[index].kind)
    return out


def shuffle_segments(segments: Sequence[Segment], rng: random.Random) -> list[Segment]:
    """The segments in a random order other than their own (needs two segments)."""
    if len(segments) < 2:
        return list(segments)
    order = list(range(len(segments)))
    while order == sorted(order):
        rng.shuffle(order)
    return [segments[index] for index in order]


def joiner_of(example: TokenExample) -> str:
    """What goes between the row's tokens in its text: ``""`` for character-level rows (BMES), else ``" "``."""
    if len(example.offsets) > 1:
        together = all(left[1] == right[0] for left, right in zip(example.offsets, example.offsets[1:], strict=False))
        return "" if together else " "
    return "" if example.tokens and all(is_cjk_script(char) for char in example.tokens[0]) else " "


def rebuilt(example: TokenExample, segments: Sequence[Segment], scheme: str) -> TokenExample:
    """A new row from the segments: tokens, tags in ``scheme``, text joined as ``example``'s, offsets, source."""
    tokens, tags = render(segments, scheme)
    return token_example_from_words(tokens, tags, joiner_of(example), example.source)
