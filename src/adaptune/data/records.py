"""The in-memory examples every reader returns, and helpers that build token examples.

A :class:`TextExample` is one sequence-classification input; a :class:`TokenExample` is one sentence for
token classification, with each token's character span in ``text`` so predictions can be mapped back onto
the original string.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

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


def _spans(text: str) -> Iterator[tuple[int, int]]:
    """Yield ``(start, end)`` of each whitespace-separated word, with every CJK character on its own."""
    start: int | None = None
    for index, char in enumerate(text):
        if char.isspace() or is_cjk(char):
            if start is not None:
                yield start, index
                start = None
            if not char.isspace():
                yield index, index + 1
        elif start is None:
            start = index
    if start is not None:
        yield start, len(text)


def token_example_from_text(text: str, source: str = "") -> TokenExample:
    """Split a raw, unlabelled string into tokens for prediction.

    Words are split on whitespace, except that every CJK character (and CJK punctuation) becomes its own
    token, so Chinese text is read character by character and mixed text works too:
    ``"我爱 New York。"`` gives ``("我", "爱", "New", "York", "。")``. ``text`` is kept as given and the
    offsets point into it.
    """
    offsets = tuple(_spans(text))
    return TokenExample(
        tokens=tuple(text[start:end] for start, end in offsets),
        tags=(),
        text=text,
        offsets=offsets,
        source=source,
    )
