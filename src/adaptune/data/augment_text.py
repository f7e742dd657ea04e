"""EDA for text rows: random swap, random deletion and random insertion (Wei & Zou, 2019), without synonyms.

Wei and Zou, "EDA: Easy Data Augmentation Techniques for Boosting Performance on Text Classification Tasks"
(EMNLP 2019), make each augmented sentence with one of four operations on its ``l`` words, at a rate ``alpha``:

- random swap: ``n = max(1, int(alpha * l))`` times, swap two words at two different random positions;
- random deletion: drop each word with probability ``alpha``; when every word is drawn, one random word stays;
- random insertion: ``n`` times, insert a word at a random position. EDA inserts a synonym of a word of the
  sentence (from WordNet); here the word is drawn from the training rows' own vocabulary, frequency-weighted
  (a random word of the training text, so common words come more often), which keeps the inserted word in
  the domain and needs no thesaurus. Synonym replacement, EDA's fourth operation, is left out for the same
  reason.

A *word* is a whitespace-separated run, and the augmented text is the words joined by one space. Text that is
mostly Chinese (:func:`is_mostly_cjk`) has no spaces between words, so there a word is one character
(:func:`character_units`): each CJK character (:func:`~adaptune.data.records.is_cjk`: ideographs, kana, CJK
punctuation) is a unit, while a run of Latin letters, digits and other signs (``iPhone``, ``202404091674``)
stays whole. Such text is joined back without spaces, except for one between two non-CJK units. Inserted units
come from the characters of the mostly-Chinese training rows, so a Chinese row gets Chinese characters and an
English row English words.

Every function takes a :class:`random.Random` and draws only from it, so one seed gives the same rows.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from adaptune.data.records import is_cjk, is_cjk_script

__all__ = [
    "Vocabulary",
    "character_units",
    "is_mostly_cjk",
    "join_units",
    "random_deletion",
    "random_insertion",
    "random_swap",
    "split_units",
]


def character_units(text: str) -> list[str]:
    """The units of mostly-Chinese text: each CJK character alone, each run of other non-space characters whole.

    Example:
        >>> character_units("订单U3965-64付款了吗？")
        ['订', '单', 'U3965-64', '付', '款', '了', '吗', '？']
    """
    units: list[str] = []
    run: list[str] = []
    for char in text:
        if char.isspace() or is_cjk(char):
            if run:
                units.append("".join(run))
                run = []
            if not char.isspace():
                units.append(char)
        else:
            run.append(char)
    if run:
        units.append("".join(run))
    return units


def is_mostly_cjk(text: str) -> bool:
    """Whether more than half of :func:`character_units` of ``text`` are CJK ideographs or kana
    (:func:`~adaptune.data.records.is_cjk_script`): such text is augmented per character."""
    units = character_units(text)
    return sum(len(unit) == 1 and is_cjk_script(unit) for unit in units) * 2 > len(units)


def split_units(text: str) -> tuple[list[str], bool]:
    """``(units, per_character)``: the characters of mostly-Chinese text, else its whitespace-separated words."""
    if is_mostly_cjk(text):
        return character_units(text), True
    return text.split(), False


def join_units(units: Sequence[str], per_character: bool) -> str:
    """Words joined by a space; characters joined by nothing, with a space between two non-CJK units
    (``iPhone 15``) so that they do not run together."""
    if not per_character:
        return " ".join(units)
    parts: list[str] = []
    for index, unit in enumerate(units):
        if index and not is_cjk(units[index - 1][-1]) and not is_cjk(unit[0]):
            parts.append(" ")
        parts.append(unit)
    return "".join(parts)


@dataclass
class Vocabulary:
    """The words (and the characters) of the training rows, every occurrence once: drawing a random entry draws
    a unit with probability proportional to its frequency."""

    words: list[str] = field(default_factory=list)
    characters: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, texts: Iterable[str]) -> Vocabulary:
        """The vocabulary of ``texts``: words of the others, units of the mostly-Chinese ones."""
        vocabulary = cls()
        for text in texts:
            units, per_character = split_units(text)
            (vocabulary.characters if per_character else vocabulary.words).extend(units)
        return vocabulary

    def pool(self, per_character: bool) -> list[str]:
        """What insertion draws from for a row of that kind (the other kind's when a kind has none)."""
        own = self.characters if per_character else self.words
        return own or self.words or self.characters


def _count(rate: float, length: int) -> int:
    """EDA's number of changes for a sentence of ``length`` words: ``max(1, int(rate * length))``."""
    return max(1, int(rate * length))


def random_swap(units: Sequence[str], rate: float, rng: random.Random) -> list[str]:
    """Swap the units at two different random positions, ``max(1, int(rate * len))`` times (needs 2 units)."""
    out = list(units)
    if len(out) < 2:
        return out
    for _ in range(_count(rate, len(out))):
        first, second = rng.sample(range(len(out)), 2)
        out[first], out[second] = out[second], out[first]
    return out


def random_deletion(units: Sequence[str], rate: float, rng: random.Random) -> list[str]:
    """Drop each unit with probability ``rate``; when all are drawn, one random unit stays (needs 2 units)."""
    if len(units) < 2:
        return list(units)
    kept = [unit for unit in units if rng.random() >= rate]
    return kept or [rng.choice(list(units))]


def random_insertion(units: Sequence[str], rate: float, pool: Sequence[str], rng: random.Random) -> list[str]:
    """Insert ``max(1, int(rate * len))`` units drawn from ``pool`` (the training vocabulary, one entry per
    occurrence) at random positions, the ends included."""
    out = list(units)
    if not pool:
        return out
    for _ in range(_count(rate, len(units))):
        out.insert(rng.randint(0, len(out)), rng.choice(pool))
    return out
