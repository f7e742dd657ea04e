"""The in-memory examples every reader returns, and helpers that build token examples.

A :class:`TextExample` is one sequence-classification input; a :class:`TokenExample` is one sentence for
token classification, with each token's character span in ``text`` so predictions can be mapped back onto
the original string.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

# Code-point ranges whose characters are single tokens in :func:`token_example_from_text`: CJK ideographs
# (with their extensions and compatibility forms), CJK symbols and punctuation, kana, and full-width forms.
_CJK_RANGES: tuple[tuple[int, int], ...] = (
    (0x3000, 0x303F),  # CJK symbols and punctuation, such as the ideographic full stop
    (0x3040, 0x30FF),  # hiragana and katakana
    (0x3400, 0x4DBF),  # CJK unified ideographs extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFE30, 0xFE4F),  # CJK compatibility forms
    (0xFF00, 0xFFEF),  # half-width and full-width forms, such as the full-width comma
    (0x20000, 0x2FA1F),  # CJK unified ideographs extensions B-F and compatibility supplement
)
# Scripts written without spaces between words (CJK ideographs and kana): they mark a whitespace-free run as CJK
# text for :func:`token_example_from_text`. Punctuation and full-width forms are not here, so "Hello，world" is
# not CJK text.
_CJK_SCRIPT_RANGES: tuple[tuple[int, int], ...] = (
    (0x3040, 0x30FF),  # hiragana and katakana
    (0x31F0, 0x31FF),  # katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK unified ideographs extension A
    (0x4E00, 0x9FFF),  # CJK unified ideographs
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0x20000, 0x2FA1F),  # CJK unified ideographs extensions B-F and compatibility supplement
    (0x30000, 0x323AF),  # CJK unified ideographs extensions G and H
)
_RUNS = re.compile(r"\S+")

#: How :func:`token_example_from_text` splits letters and digits written inside CJK text: ``"characters"``,
#: one token each (Resume NER, CLUENER); ``"words"``, a run of them is one token (adaptune's bundled NER data).
LettersInCjk = Literal["characters", "words"]


@dataclass(frozen=True)
class TextExample:
    """One sequence-classification example.

    Attributes:
        text: the input text, stripped of surrounding whitespace.
        labels: one label for single-label tasks, several for multi-label tasks, ``()`` when unlabelled.
        text_pair: the second text of a sentence-pair task, or ``None``.
        source: ``"path:line"`` where the example was read, for error messages.
    """

    text: str
    labels: tuple[str, ...]
    text_pair: str | None = None
    source: str = ""


@dataclass(frozen=True)
class TokenExample:
    """One token-classification example: words with tags and their character offsets in ``text``.

    Attributes:
        tokens: the words (or characters, for character-level data).
        tags: one tag per token, or ``()`` when unlabelled.
        text: the sentence: words joined by ``" "`` (CoNLL) or ``""`` (character-level BMES), or the original
            string for examples built from raw text.
        offsets: ``(start, end)`` of each token in ``text``, end exclusive: ``text[start:end] == token``.
        source: ``"path:line"`` where the sentence starts, for error messages.
    """

    tokens: tuple[str, ...]
    tags: tuple[str, ...]
    text: str
    offsets: tuple[tuple[int, int], ...]
    source: str = ""


def token_example_from_words(
    tokens: Sequence[str], tags: Sequence[str], joiner: str = " ", source: str = ""
) -> TokenExample:
    """Build a :class:`TokenExample` whose text is ``joiner.join(tokens)``, with each token's offsets.

    Args:
        tokens: the words, in order.
        tags: one tag per token, or empty when unlabelled.
        joiner: what goes between words in ``text``: ``" "`` for words, ``""`` for characters.
        source: ``"path:line"`` for error messages.

    Raises:
        ValueError: when ``tags`` is neither empty nor as long as ``tokens``.
    """
    if tags and len(tags) != len(tokens):
        raise ValueError(f"{len(tokens)} tokens but {len(tags)} tags")
    offsets: list[tuple[int, int]] = []
    position = 0
    for token in tokens:
        offsets.append((position, position + len(token)))
        position += len(token) + len(joiner)
    return TokenExample(
        tokens=tuple(tokens),
        tags=tuple(tags),
        text=joiner.join(tokens),
        offsets=tuple(offsets),
        source=source,
    )


def is_cjk(char: str) -> bool:
    """Whether ``char`` is a CJK ideograph, kana, CJK punctuation or a full-width form."""
    code = ord(char)
    return any(low <= code <= high for low, high in _CJK_RANGES)


def is_cjk_script(char: str) -> bool:
    """Whether ``char`` is a CJK ideograph or kana: a character of a script written without spaces."""
    code = ord(char)
    return any(low <= code <= high for low, high in _CJK_SCRIPT_RANGES)


def _word_spans(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    """Yield the tokens of the whitespace-free run ``text[start:end]``: each CJK character on its own, the
    characters between them grouped into words."""
    word: int | None = None
    for index in range(start, end):
        if is_cjk(text[index]):
            if word is not None:
                yield word, index
                word = None
            yield index, index + 1
        elif word is None:
            word = index
    if word is not None:
        yield word, end


def _spans(text: str, letters_in_cjk: LettersInCjk) -> Iterator[tuple[int, int]]:
    """Yield ``(start, end)`` of each token of ``text``, as :func:`token_example_from_text` describes."""
    for run in _RUNS.finditer(text):
        start, end = run.span()
        if letters_in_cjk == "characters" and any(is_cjk_script(char) for char in run.group()):
            yield from ((index, index + 1) for index in range(start, end))
        else:
            yield from _word_spans(text, start, end)


def token_example_from_text(text: str, source: str = "", *, letters_in_cjk: LettersInCjk = "words") -> TokenExample:
    """Split a raw, unlabelled string into tokens for prediction, the way the training data was split.

    The text is cut at whitespace into runs. In every run each CJK character (ideograph, kana, CJK punctuation
    or full-width form, see :func:`is_cjk`) is a token of its own, so Chinese written without spaces is read
    character by character, as character-level training data (BMES, CLUENER) is. What happens to the letters,
    digits and ASCII punctuation between them depends on ``letters_in_cjk``, which should follow the training
    data (:func:`letters_in_cjk_of` tells it from the training examples):

    - ``"words"`` (the default, and the behaviour before this option): the other characters between two CJK
      characters form one token, ASCII punctuation included (``2019,`` stays one token), as in adaptune's
      bundled NER data (``订单 202405286718 的``, ``极 光 X5 手 机``).
      ``"张三2019年在Google北京分公司工作，电话13800138000。"`` gives ``张 三 2019 年 在 Google 北 京 分 公
      司 工 作 ， 电 话 13800138000 。``.
    - ``"characters"``: a run holding a CJK ideograph or kana (:func:`is_cjk_script`) is split into
      characters, letters, digits and punctuation included, as in the public Chinese NER corpora: Resume NER
      has one character per line (``2 0 0 7 年``, ``M B A``), and CLUENER has entities that begin or end
      inside a run of letters or digits (``CPL`` in ``CPL2012``). The same text gives ``张 三 2 0 1 9 年 在 G o
      o g l e 北 京 ...  电 话 1 3 8 0 0 1 3 8 0 0 0 。``.

    Runs without a CJK ideograph or kana are split the same way in both modes: English is split on whitespace
    only (``"Hello，world!"`` gives ``Hello ， world!``), and a Latin word set off by spaces stays whole
    (``"我爱 New York！"`` gives ``我 爱 New York ！``). Characters are Unicode code points. To choose the tokens
    yourself, give predict ``{"tokens": [...]}`` instead of a string. ``text`` is kept as given and the offsets
    point into it: ``text[start:end] == token``.
    """
    offsets = tuple(_spans(text, letters_in_cjk))
    return TokenExample(
        tokens=tuple(text[start:end] for start, end in offsets),
        tags=(),
        text=text,
        offsets=offsets,
        source=source,
    )


def _is_letter_run(token: str) -> bool:
    """Whether ``token`` has a letter or digit and no CJK character: a word of Latin letters, digits, signs."""
    return any(char.isalnum() for char in token) and not any(is_cjk(char) for char in token)


def letters_in_cjk_of(examples: Iterable[TokenExample]) -> LettersInCjk | None:
    """Tell from training examples how letters and digits inside CJK sentences were tokenised.

    Only sentences holding a CJK ideograph or kana count. A token of two or more characters that is a letter
    run (``X5``, ``N9055-44``, ``Google``) is a vote for ``"words"``; two single-character letter runs in a
    row (``2 0``, ``G o``) are a vote for ``"characters"``.

    Returns:
        ``"words"`` when those votes win, else ``"characters"`` when there is any CJK sentence (per-character
        data without letters or digits), and ``None`` when there is none (nothing to tell).
    """
    words = characters = 0
    seen_cjk = False
    for example in examples:
        if not any(is_cjk_script(char) for token in example.tokens for char in token):
            continue
        seen_cjk = True
        single = [len(token) == 1 and _is_letter_run(token) for token in example.tokens]
        words += sum(len(token) > 1 and _is_letter_run(token) for token in example.tokens)
        characters += sum(a and b for a, b in itertools.pairwise(single))
    if not seen_cjk:
        return None
    return "words" if words > characters else "characters"
