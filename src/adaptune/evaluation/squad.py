"""Exact match and F1 of extractive answers, as the official SQuAD v1.1 and CMRC 2018 evaluation scripts compute them.

**English** (``evaluate-v1.1.py`` of SQuAD): both texts are normalised (lower case, ASCII punctuation removed, the
articles *a, an, the* removed, whitespace collapsed); exact match is equality of the normalised texts, F1 the
harmonic mean of precision and recall of their whitespace tokens counted as a multiset (bag of tokens).

**Chinese** (``cmrc2018_evaluate.py`` of CMRC 2018): the text is lowered and stripped, and the script's own
punctuation list (:data:`CMRC_PUNCTUATION`) removed; each Chinese character (U+4E00..U+9FA5) is a segment of its
own and runs of other characters are split into words by ``nltk.word_tokenize``, which
:func:`split_words` re-implements (NLTK's Treebank rules: quotes, ``, : ; ? ! ( ) ...`` and a final period split
off, numbers like ``3,36`` and ``3.88`` kept whole, clitics ``n't 's 'll`` apart), without NLTK's sentence
splitter, so a period inside a run stays with its word (CMRC answers hardly hold one). F1
is from the longest common *contiguous* run of segments (``find_lcs``); exact match is equality after removing the
punctuation. The script's list holds ``"……"`` as one two-character item, which a single character never equals,
so ``…`` is kept, as it is there.

Both take the maximum over the reference answers. Scores here are fractions (0-1), as every headline figure of
adaptune; the scripts print them times 100.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

Language = Literal["en", "zh"]

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_ASCII_PUNCTUATION = frozenset(string.punctuation)
#: ``sp_char`` of cmrc2018_evaluate.py, in its order (``"……"`` is one item there too).
CMRC_PUNCTUATION: tuple[str, ...] = (
    *("-", ":", "_", "*", "^", "/", "\\", "~", "`", "+", "="),
    *("，", "。", "：", "？", "！", "“", "”", "；", "’", "《", "》", "……", "·", "、"),
    *("「", "」", "（", "）", "－", "～", "『", "』"),
)
_CMRC_SET = frozenset(CMRC_PUNCTUATION)
_CHINESE = re.compile(r"[\u4e00-\u9fa5]")
_CONTRACTIONS = [
    ("can", "not"),
    ("d", "'ye"),
    ("gim", "me"),
    ("gon", "na"),
    ("got", "ta"),
    ("lem", "me"),
    ("more", "'n"),
]
#: NLTK's ``NLTKWordTokenizer`` (what ``word_tokenize`` runs per sentence), as substitutions applied in order:
#: starting quotes, punctuation, brackets, double dashes; then, with a space on either side, ending quotes,
#: clitics and contractions (``cannot`` -> ``can not``). The text is then split on whitespace.
_TREEBANK_FRONT = [
    (r"([«“‘„]|[`]+)", r" \1 "),
    (r"^\"", r"``"),
    (r"(``)", r" \1 "),
    (r"([ \(\[{<])(\"|\'{2})", r"\1 `` "),
    (r"(?i)(\')(?!re|ve|ll|m|t|s|d|n)(\w)\b", r"\1 \2"),
    (r"([^\.])(\.)([\]\)}>\"\'»”’ ]*)\s*$", r"\1 \2 \3 "),
    (r"([:,])([^\d])", r" \1 \2"),
    (r"([:,])$", r" \1 "),
    (r"\.{2,}", r" \g<0> "),
    (r"[;@#$%&]", r" \g<0> "),
    (r"([^\.])(\.)([\]\)}>\"\']*)\s*$", r"\1 \2\3 "),
    (r"[?!]", r" \g<0> "),
    (r"([^'])' ", r"\1 ' "),
    (r"[*]", r" \g<0> "),
    (r"[\]\[\(\)\{\}\<\>]", r" \g<0> "),
    (r"--", r" -- "),
]
_TREEBANK_BACK = [
    (r"([»”’])", r" \1 "),
    (r"''", " '' "),
    (r'"', " '' "),
    (r"([^' ])('[sS]|'[mM]|'[dD]|') ", r"\1 \2 "),
    (r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ", r"\1 \2 "),
    *((rf"(?i)\b({a})(?#X)({b})\b", r" \1 \2 ") for a, b in _CONTRACTIONS),
    (r"(?i)\b(wan)(?#X)(na)(?=\s)", r" \1 \2 "),
    (r"(?i) ('t)(?#X)(is)\b", r" \1 \2 "),
    (r"(?i) ('t)(?#X)(was)\b", r" \1 \2 "),
]
_FRONT = [(re.compile(p), r) for p, r in _TREEBANK_FRONT]
_BACK = [(re.compile(p), r) for p, r in _TREEBANK_BACK]
#: CJK ideographs (the unified block and extension A, compatibility ideographs) and kana: a passage holding
#: any is scored the Chinese way when ``language`` is ``auto``.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def has_cjk(text: str) -> bool:
    """Whether ``text`` holds a CJK ideograph or kana."""
    return _CJK.search(text) is not None


# -- SQuAD v1.1 ----------------------------------------------------------------------------------------------
def squad_normalise(text: str) -> str:
    """``normalize_answer`` of SQuAD's script: lower, drop ASCII punctuation, drop articles, collapse spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _ASCII_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_exact(prediction: str, reference: str) -> float:
    """1.0 when the normalised texts are equal, else 0.0."""
    return float(squad_normalise(prediction) == squad_normalise(reference))


def squad_f1(prediction: str, reference: str) -> float:
    """Bag-of-tokens F1 of the normalised texts (0 when they share no token)."""
    pred, gold = squad_normalise(prediction).split(), squad_normalise(reference).split()
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


# -- CMRC 2018 -----------------------------------------------------------------------------------------------
def split_words(text: str) -> list[str]:
    """A run of non-Chinese text split into words as ``nltk.word_tokenize`` splits one sentence."""
    for pattern, replacement in _FRONT:
        text = pattern.sub(replacement, text)
    text = f" {text} "
    for pattern, replacement in _BACK:
        text = pattern.sub(replacement, text)
    return text.split()


def cmrc_segments(text: str, remove_punctuation: bool = True) -> list[str]:
    """``mixed_segmentation`` of the CMRC script: Chinese characters one by one, other runs split into words."""
    segments: list[str] = []
    run = ""
    for char in text.lower().strip():
        if remove_punctuation and char in _CMRC_SET:
            continue
        if _CHINESE.match(char) or char in _CMRC_SET:
            segments += split_words(run)
            run = ""
            segments.append(char)
        else:
            run += char
    return segments + split_words(run)


def cmrc_strip_punctuation(text: str) -> str:
    """``remove_punctuation`` of the CMRC script: lower, strip, drop the characters of its list."""
    return "".join(ch for ch in text.lower().strip() if ch not in _CMRC_SET)


def longest_common_run(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest contiguous run of segments that ``a`` and ``b`` share (``find_lcs``), O(|a| |b|)."""
    best, previous = 0, [0] * (len(b) + 1)
    for x in a:
        current = [0] * (len(b) + 1)
        for j, y in enumerate(b):
            if x == y:
                current[j + 1] = previous[j] + 1
                best = max(best, current[j + 1])
        previous = current
    return best


def cmrc_f1(prediction: str, reference: str) -> float:
    """F1 from the longest common run of segments (0 when there is none)."""
    pred, gold = cmrc_segments(prediction), cmrc_segments(reference)
    common = longest_common_run(gold, pred)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def cmrc_exact(prediction: str, reference: str) -> float:
    """1.0 when the texts are equal once lowered, stripped and without the script's punctuation."""
    return float(cmrc_strip_punctuation(prediction) == cmrc_strip_punctuation(reference))


# -- both ----------------------------------------------------------------------------------------------------
def answer_scores(prediction: str, references: Sequence[str], language: Language) -> tuple[float, float]:
    """``(exact match, F1)`` of one prediction: the maximum over ``references`` (0, 0 when there are none)."""
    exact, f1 = (squad_exact, squad_f1) if language == "en" else (cmrc_exact, cmrc_f1)
    if not references:
        return 0.0, 0.0
    return max(exact(prediction, r) for r in references), max(f1(prediction, r) for r in references)


def qa_report(
    predictions: Sequence[str], references: Sequence[Sequence[str]], languages: Sequence[Language]
) -> dict[str, Any]:
    """Mean exact match and F1 (fractions, 0-1) over questions, overall and by scoring language.

    Returns:
        ``{"exact_match", "f1", "n", "n_references", "by_language": {"en"|"zh": {"n", "exact_match", "f1",
        "script"}}}``.
    """
    if not len(predictions) == len(references) == len(languages):
        raise ValueError("predictions, references and languages need one entry per question")
    scores = [answer_scores(p, r, lang) for p, r, lang in zip(predictions, references, languages, strict=True)]
    scripts = {"en": "SQuAD v1.1 evaluate-v1.1.py", "zh": "CMRC 2018 cmrc2018_evaluate.py"}
    by_language: dict[str, Any] = {}
    for lang in sorted(set(languages)):
        mine = [s for s, other in zip(scores, languages, strict=True) if other == lang]
        by_language[lang] = {**_means(mine), "n": len(mine), "script": scripts[lang]}
    return {**_means(scores), "n": len(scores), "n_references": sum(map(len, references)), "by_language": by_language}


def _means(scores: Sequence[tuple[float, float]]) -> dict[str, float]:
    n = max(1, len(scores))
    return {"exact_match": sum(s[0] for s in scores) / n, "f1": sum(s[1] for s in scores) / n}


def format_qa_report(report: dict[str, Any], split: str, markdown: bool = False, digits: int = 4) -> str:
    """The table of a :func:`qa_report`: one row per scoring language and one for all questions (plain text
    for the console, or GitHub markdown)."""
    rows = [
        [lang, part["script"], str(part["n"]), f"{part['exact_match']:.{digits}f}", f"{part['f1']:.{digits}f}"]
        for lang, part in report["by_language"].items()
    ]
    rows.append(["all", "", str(report["n"]), f"{report['exact_match']:.{digits}f}", f"{report['f1']:.{digits}f}"])
    header = ["language", "script", "questions", "exact_match", "f1"]
    title = f"{split}: extractive QA (fractions, 0-1)"
    if markdown:
        lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|:--|:--|--:|--:|--:|"]
        return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)]) + "\n"
    widths = [max(len(row[col]) for row in [header, *rows]) for col in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    return "\n".join([title, "=" * len(title), lines[0], "-" * len(lines[0]), *lines[1:]]) + "\n"
