"""The in-memory examples every reader returns, and helpers that build token examples.

A :class:`TextExample` is one sequence-classification input; a :class:`TokenExample` is one sentence for
token classification, with each token's character span in ``text`` so predictions can be mapped back onto
the original string. :func:`token_example_from_text` splits raw text for prediction the way the training data
was split; :func:`punctuation_of`, :func:`clitics_of` and :func:`letters_in_cjk_of` tell that way from the
training examples.
"""

from __future__ import annotations

import functools
import itertools
import re
import unicodedata
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
_CJK_CHARACTER = re.compile("[" + "".join(f"\\U{low:08x}-\\U{high:08x}" for low, high in _CJK_RANGES) + "]")

#: How :func:`token_example_from_text` splits letters and digits written inside CJK text: ``"characters"``,
#: one token each (Resume NER, CLUENER); ``"words"``, a run of them is one token (adaptune's bundled NER data).
LettersInCjk = Literal["characters", "words"]
#: How :func:`token_example_from_text` treats punctuation at the edges of words: ``"split"``, a token of its
#: own, as CoNLL and adaptune's bundled NER data write it (``Berlin .``); ``"attached"``, left on the word, as
#: in data split on whitespace only (``Berlin.``).
Punctuation = Literal["split", "attached"]
#: English clitics when punctuation is split: ``"split"``, a token of their own as in CoNLL-2003 and the Penn
#: Treebank (``do n't``, ``Germany 's``); ``"keep"``, left in the word (``don't``, ``Germany's``), as in
#: adaptune's bundled NER data.
Clitics = Literal["split", "keep"]

#: Words that keep their full stop (spelt as here, without it), as CoNLL-2003 writes them: titles, company
#: forms, months, US states and three Latin abbreviations. Dotted forms (``U.S.``, ``e.g.``) and capital
#: initials (``J.``) keep it by rule, so they are not listed. Words that also end sentences (``No``, ``Ill``,
#: ``Mass``) are left out: ``"I said no."`` ends in ``no .``.
_ABBREVIATIONS: tuple[str, ...] = (
    *("Mr", "Mrs", "Ms", "Dr", "Prof", "Rev", "Gen", "Col", "Lt", "Sgt", "Capt", "Gov", "Sen", "Rep", "St"),
    *("Jr", "Sr", "Inc", "Corp", "Ltd", "Co", "Bros", "Dept", "vs", "etc", "approx"),
    *("Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sep", "Sept", "Oct", "Nov", "Dec"),
    *("Calif", "Fla", "Conn", "Ariz", "Colo", "Tenn", "Mich", "Minn"),
)
# Emoji: a pictograph (misc technical, misc symbols, dingbats, arrows, the U+1F000 planes) with its variation
# selectors, skin tones, keycap and tag characters, several joined by ZWJ into one cluster; two regional
# indicators make a flag.
_PICTOGRAPH = r"[\u2300-\u23ff\u2600-\u27bf\u2b00-\u2bff\U0001f000-\U0001faff]"
_EMOJI_TAIL = r"[\ufe0e\ufe0f\u20e3\U0001f3fb-\U0001f3ff\U000e0020-\U000e007f]*"
_EMOJI = rf"[\U0001f1e6-\U0001f1ff]{{2}}|{_PICTOGRAPH}{_EMOJI_TAIL}(?:\u200d{_PICTOGRAPH}{_EMOJI_TAIL})*"
# URLs stay whole but never end in sentence punctuation, a quote or a bracket they did not open.
_URL_CHAR = r"[^\s<>\"()\[\]{}]"
_URL_GROUP = rf"\({_URL_CHAR}*\)"
_URL_END = r"[^\s<>\"()\[\]{}.,;:!?'\u2019\u201d]"
_URL = rf"(?i:https?://|ftp://|www\.)(?:{_URL_CHAR}|{_URL_GROUP})*(?:{_URL_END}|{_URL_GROUP})"
_EMAIL = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
_CLITIC_FORMS = r"n['\u2019]t|['\u2019](?:s|re|m|ve|ll|d)"
_CLITIC_AT_END = re.compile(rf"(?i)(?<=\w)(?:{_CLITIC_FORMS})$")
_CLITIC_TOKEN = re.compile(rf"(?i)(?:{_CLITIC_FORMS})")
_CHARACTERS = re.compile(rf"{_EMOJI}|.", re.DOTALL)


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
        line_per_token: the file has one token per line from ``source``'s line on (CoNLL, BMES), so token ``i``
            is on line ``line + i``; otherwise every token is located at ``source``.
    """

    tokens: tuple[str, ...]
    tags: tuple[str, ...]
    text: str
    offsets: tuple[tuple[int, int], ...]
    source: str = ""
    line_per_token: bool = False

    def token_location(self, pos: int) -> tuple[str | None, int | None]:
        """``(file, line)`` of token ``pos``, for error messages (None where unknown)."""
        file, _, line = self.source.rpartition(":")
        if not line.isdigit():
            return (self.source or None), None
        return file or None, int(line) + (pos if self.line_per_token else 0)


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


def _combining_marks() -> str:
    r"""The combining marks (Unicode category M) as the body of a regex class: accents, vowel signs and the like
    belong to the letter before them, so ``\w`` alone would cut ``café`` written with U+0301, or Hindi."""
    ranges: list[str] = []
    start: int | None = None
    for code in range(0x20001):
        mark = code < 0x20000 and unicodedata.category(chr(code)).startswith("M")
        if mark and start is None:
            start = code
        elif not mark and start is not None:
            ranges.append(f"\\U{start:08x}-\\U{code - 1:08x}")
            start = None
    return "".join(ranges) + r"\U000e0100-\U000e01ef"


@functools.cache
def _word_pattern() -> re.Pattern[str]:
    """The pattern of :func:`_conll_spans`, one alternative per kind of token, first match wins. Built on first
    use: the class of combining marks takes a scan of the Unicode table."""
    marks = _combining_marks()
    letter = rf"[\w{marks}\u200c\u200d]"
    joiner = r"[-\u2010\u2011'\u2019./&]|(?<=\d)[,:](?=\d)"  # inside a word; "," and ":" only between digits
    alternatives = (
        _URL,
        _EMAIL,
        _EMOJI,
        r"(?:[^\W\d_]{1,3}\.){2,}(?!\w)",  # dotted abbreviations: U.S. a.m. Ph.D.
        r"[A-Z]\.(?!\w)",  # an initial: J.
        r"(?<![\s\S])\d{1,3}\.(?!\S)",  # a list number at the very start of the text: 1.
        rf"(?:{'|'.join(_ABBREVIATIONS)})\.(?!\w)",  # Mr. Inc. Oct.
        r"[A-Z]{1,3}\$",  # currencies: US$ C$
        rf"(?i:{_CLITIC_FORMS})(?!\w)",  # a clitic already on its own: 's n't
        rf"(?P<word>(?:[+.](?=\d))?{letter}+(?:(?:{joiner}){letter}+)*)",  # words, numbers: well-known 1,000 +44
        r"\.{2,}|-{2,}|\*{2,}|={2,}|~{2,}",  # ellipses and rules: ... --
        rf"\S[{marks}]*",  # any other character, alone: ( " , ! $ %
    )
    return re.compile("|".join(alternatives))


def _conll_spans(text: str, start: int, end: int, clitics: Clitics) -> Iterator[tuple[int, int]]:
    """Yield the CoNLL-style tokens of ``text[start:end]``, a stretch with no whitespace or CJK character (see
    :func:`token_example_from_text`)."""
    for match in _word_pattern().finditer(text, start, end):
        left, right = match.span()
        clitic = _CLITIC_AT_END.search(match.group()) if clitics == "split" and match.lastgroup == "word" else None
        if clitic is None:
            yield left, right
        else:
            yield left, left + clitic.start()
            yield left + clitic.start(), right


def _segment_spans(
    text: str, start: int, end: int, punctuation: Punctuation, clitics: Clitics
) -> Iterator[tuple[int, int]]:
    """Yield the tokens of ``text[start:end]``, which has no whitespace or CJK character: all of it, or its
    CoNLL-style tokens."""
    if punctuation == "attached":
        yield start, end
    else:
        yield from _conll_spans(text, start, end, clitics)


def _word_spans(
    text: str, start: int, end: int, punctuation: Punctuation, clitics: Clitics
) -> Iterator[tuple[int, int]]:
    """Yield the tokens of the whitespace-free run ``text[start:end]``: each CJK character on its own, the
    stretches between them split by :func:`_segment_spans`."""
    word: int | None = None
    for index in range(start, end):
        if is_cjk(text[index]):
            if word is not None:
                yield from _segment_spans(text, word, index, punctuation, clitics)
                word = None
            yield index, index + 1
        elif word is None:
            word = index
    if word is not None:
        yield from _segment_spans(text, word, end, punctuation, clitics)


def _spans(
    text: str, letters_in_cjk: LettersInCjk, punctuation: Punctuation, clitics: Clitics
) -> Iterator[tuple[int, int]]:
    """Yield ``(start, end)`` of each token of ``text``, as :func:`token_example_from_text` describes."""
    for run in _RUNS.finditer(text):
        start, end = run.span()
        if letters_in_cjk == "characters" and any(is_cjk_script(char) for char in run.group()):
            yield from (match.span() for match in _CHARACTERS.finditer(text, start, end))
        else:
            yield from _word_spans(text, start, end, punctuation, clitics)


def token_example_from_text(
    text: str,
    source: str = "",
    *,
    letters_in_cjk: LettersInCjk = "words",
    punctuation: Punctuation = "split",
    clitics: Clitics = "keep",
) -> TokenExample:
    """Split a raw, unlabelled string into tokens for prediction, the way the training data was split.

    The text is cut at whitespace into runs. In every run each CJK character (ideograph, kana, CJK punctuation
    or full-width form, see :func:`is_cjk`) is a token of its own, so Chinese written without spaces is read
    character by character, as character-level training data (BMES, CLUENER) is. The options should follow the
    training data; :func:`letters_in_cjk_of`, :func:`punctuation_of` and :func:`clitics_of` tell them from the
    training examples, and a token-classification adapter stores them.

    ``letters_in_cjk`` says what happens to the letters, digits and ASCII punctuation between CJK characters:

    - ``"words"`` (the default): they form words, split as ``punctuation`` says, as in adaptune's bundled NER
      data (``订单 202405286718 的``, ``极 光 X5 手 机``). ``"张三2019年在Google北京分公司工作，电话13800138000。"``
      gives ``张 三 2019 年 在 Google 北 京 分 公 司 工 作 ， 电 话 13800138000 。``.
    - ``"characters"``: a run holding a CJK ideograph or kana (:func:`is_cjk_script`) is split into
      characters, letters, digits and punctuation included, as in the public Chinese NER corpora: Resume NER
      has one character per line (``2 0 0 7 年``, ``M B A``), and CLUENER has entities that begin or end
      inside a run of letters or digits (``CPL`` in ``CPL2012``). The same text gives ``张 三 2 0 1 9 年 在 G o
      o g l e 北 京 ...  电 话 1 3 8 0 0 1 3 8 0 0 0 。``. Characters are code points, except that an emoji
      (with its skin tone, variation selector or ZWJ sequence, or a flag) is one token.

    ``punctuation`` says how the rest (English and other languages written with spaces) is split:

    - ``"split"`` (the default): CoNLL-2003 style. Punctuation and quotes at the start or end of a word are
      tokens of their own (``"Berlin."`` gives ``Berlin .``, ``("Hi")`` gives ``( " Hi " )``); hyphens,
      apostrophes, dots, ``/`` and ``&`` inside a word stay (``state-of-the-art``, ``O'Brien``, ``3.5``,
      ``1996/97``, ``S&P``), and so do ``,`` and ``:`` between digits (``1,000``, ``10:30``). An abbreviation
      keeps its full stop: dotted ones (``U.S.``, ``a.m.``, ``e.g.``), a capital initial (``J.``) and a short
      list of English ones (``Mr.``, ``Inc.``, ``Oct.``, ``vs.``), even at the end of a sentence (``moved to
      the U.S.`` ends in ``U.S.``; no CoNLL-2003 sentence ends in one to say otherwise); so does a number of
      one to three digits that opens the text (the list items of CoNLL's result tables: ``1. Michael``).
      URLs (``https://…``, ``www.…``) and e-mail addresses stay whole, less any sentence punctuation after
      them; every emoji is a token (``great👍`` gives ``great 👍``); ``...`` and ``--`` stay whole; ``US$``
      is one token; every other symbol is a token (``$``, ``%``, ``#``).
    - ``"attached"``: a run is split only at CJK characters, as before this option existed (``Berlin.``).

    ``clitics`` applies with ``punctuation="split"``: ``"keep"`` (the default) leaves ``don't`` and
    ``Germany's`` whole; ``"split"`` cuts them as the Penn Treebank and CoNLL-2003 do (``do n't``,
    ``Germany 's``, ``ca n't``). A clitic written apart (``'s``) is one token either way.

    To choose the tokens yourself, give predict ``{"tokens": [...]}`` instead of a string. ``text`` is kept as
    given and the offsets point into it: ``text[start:end] == token``; only whitespace is left out.
    """
    offsets = tuple(_spans(text, letters_in_cjk, punctuation, clitics))
    return TokenExample(
        tokens=tuple(text[start:end] for start, end in offsets),
        tags=(),
        text=text,
        offsets=offsets,
        source=source,
    )


def _is_punctuation(token: str) -> bool:
    """Whether every character of ``token`` is Unicode punctuation (``.``, ``,``, ``(``, ``"``, ``--``)."""
    return all(unicodedata.category(char).startswith("P") for char in token)


def _would_split(token: str) -> bool:
    """Whether the CoNLL-style splitting cuts ``token`` (``Berlin.``, ``(Paris``), clitics aside."""
    if token.isalnum():
        return False
    spans = _conll_spans(token, 0, len(token), "keep")
    next(spans, None)
    return next(spans, None) is not None


def _plain_tokens(examples: Iterable[TokenExample]) -> Iterator[str]:
    """Every non-empty token of ``examples`` that holds no CJK character."""
    for example in examples:
        yield from (token for token in example.tokens if token and not _CJK_CHARACTER.search(token))


def punctuation_of(examples: Iterable[TokenExample]) -> Punctuation | None:
    """Tell from training examples whether punctuation was split off words.

    Tokens holding a CJK character do not count. A token of punctuation only (``.``, ``,``, ``"``, ``--``) is
    a vote for ``"split"``; a token the CoNLL-style splitting would cut (``Berlin.``, ``(Paris``, ``"Hi``) is a
    vote for ``"attached"``. CoNLL-2003 has about 25 of the first for each of the second (its ``1.``, ``2.``
    of ranked lists), text split on whitespace far fewer.

    Returns:
        the winner (``"split"`` on a tie), or ``None`` when there is no vote (nothing to tell).
    """
    split = attached = 0
    for token in _plain_tokens(examples):
        if _is_punctuation(token):
            split += 1
        elif _would_split(token):
            attached += 1
    if not split and not attached:
        return None
    return "attached" if attached > split else "split"


def clitics_of(examples: Iterable[TokenExample]) -> Clitics | None:
    """Tell from training examples whether English clitics were split off words.

    A token that is a clitic (``'s``, ``n't``, ``'re``, ``'m``, ``'ve``, ``'ll``, ``'d``, any case, ``'`` or
    ``’``) is a vote for ``"split"``; a word ending in one (``don't``, ``it's``, ``Germany's``) for ``"keep"``.

    Returns:
        the winner (``"keep"`` on a tie), or ``None`` when there is no vote (nothing to tell).
    """
    split = keep = 0
    for token in _plain_tokens(examples):
        if _CLITIC_TOKEN.fullmatch(token):
            split += 1
        elif _CLITIC_AT_END.search(token):
            keep += 1
    if not split and not keep:
        return None
    return "split" if split > keep else "keep"


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
