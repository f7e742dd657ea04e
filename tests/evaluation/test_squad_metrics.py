"""Exact match and F1 of ``extractive_qa`` (:mod:`adaptune.evaluation.squad`) against the official SQuAD v1.1 and
CMRC 2018 evaluation scripts, re-implemented here from their published code, independently of the package: on
fixed predictions and on random text (hypothesis)."""

from __future__ import annotations

import re
import string
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptune.config import validate_config
from adaptune.data.formats.squad import Answer, QAExample
from adaptune.evaluation.squad import format_qa_report, split_words
from adaptune.registry import build_task
from adaptune.tasks.extractive_qa import ExtractiveQA, QAPrediction


def make_task(**options: object) -> ExtractiveQA:
    task = build_task(validate_config({"task": {"name": "extractive_qa", **options}}).task)
    assert isinstance(task, ExtractiveQA)
    return task


# --- metrics against the official scripts -------------------------------------------------------------------
def official_squad(prediction: str, truths: list[str]) -> tuple[float, float]:
    """evaluate-v1.1.py: normalize_answer, f1_score, exact_match_score, metric_max_over_ground_truths."""

    def normalize_answer(s: str) -> str:
        def remove_articles(text: str) -> str:
            return re.sub(r"\b(a|an|the)\b", " ", text)

        def white_space_fix(text: str) -> str:
            return " ".join(text.split())

        def remove_punc(text: str) -> str:
            exclude = set(string.punctuation)
            return "".join(ch for ch in text if ch not in exclude)

        return white_space_fix(remove_articles(remove_punc(s.lower())))

    def f1_score(prediction: str, ground_truth: str) -> float:
        prediction_tokens = normalize_answer(prediction).split()
        ground_truth_tokens = normalize_answer(ground_truth).split()
        common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
        num_same = sum(common.values())
        if num_same == 0:
            return 0
        precision = 1.0 * num_same / len(prediction_tokens)
        recall = 1.0 * num_same / len(ground_truth_tokens)
        return (2 * precision * recall) / (precision + recall)

    em = max(float(normalize_answer(prediction) == normalize_answer(t)) for t in truths)
    return em, max(f1_score(prediction, t) for t in truths)


SP_CHAR = ["-", ":", "_", "*", "^", "/", "\\", "~", "`", "+", "=", "，", "。", "：", "？", "！", "“", "”", "；", "’"]
SP_CHAR += ["《", "》", "……", "·", "、", "「", "」", "（", "）", "－", "～", "『", "』"]


def mixed_segmentation(in_str: str, rm_punc: bool = False) -> list[str]:
    """cmrc2018_evaluate.py's; ``nltk.word_tokenize`` is ``str.split`` here, which it equals on the
    space-separated words and numbers tested."""
    in_str = str(in_str).lower().strip()
    segs_out: list[str] = []
    temp_str = ""
    for char in in_str:
        if rm_punc and char in SP_CHAR:
            continue
        if re.search(r"[\u4e00-\u9fa5]", char) or char in SP_CHAR:
            if temp_str != "":
                segs_out.extend(temp_str.split())
                temp_str = ""
            segs_out.append(char)
        else:
            temp_str += char
    if temp_str != "":
        segs_out.extend(temp_str.split())
    return segs_out


def remove_punctuation(in_str: str) -> str:
    """cmrc2018_evaluate.py's."""
    return "".join(char for char in str(in_str).lower().strip() if char not in SP_CHAR)


def find_lcs(s1: list[str], s2: list[str]) -> int:
    """cmrc2018_evaluate.py's (the length only): the longest common contiguous run."""
    m = [[0 for _ in range(len(s2) + 1)] for _ in range(len(s1) + 1)]
    mmax = 0
    for i in range(len(s1)):
        for j in range(len(s2)):
            if s1[i] == s2[j]:
                m[i + 1][j + 1] = m[i][j] + 1
                mmax = max(mmax, m[i + 1][j + 1])
    return mmax


def official_cmrc(prediction: str, answers: list[str]) -> tuple[float, float]:
    """cmrc2018_evaluate.py: calc_em_score and calc_f1_score over the answers."""
    f1_scores = []
    for ans in answers:
        ans_segs = mixed_segmentation(ans, rm_punc=True)
        prediction_segs = mixed_segmentation(prediction, rm_punc=True)
        lcs_len = find_lcs(ans_segs, prediction_segs)
        if lcs_len == 0:
            f1_scores.append(0.0)
            continue
        precision = 1.0 * lcs_len / len(prediction_segs)
        recall = 1.0 * lcs_len / len(ans_segs)
        f1_scores.append((2 * precision * recall) / (precision + recall))
    em = float(any(remove_punctuation(ans) == remove_punctuation(prediction) for ans in answers))
    return em, max(f1_scores)


ENGLISH = [
    ("The Eiffel Tower", ["Eiffel Tower", "the tower"]),
    ("in 1889, Paris", ["1889"]),
    ("Denver Broncos", ["Denver Broncos", "The Denver Broncos!"]),
    ("a cat and the dog", ["the cat", "dog and cat"]),
    ("", ["something"]),
    ("Saint-Étienne (France)", ["saint étienne"]),
    ("the the the", ["the"]),
]
CHINESE = [
    ("北京市", ["北京", "首都北京"]),
    ("《战国无双3》", ["战国无双3"]),
    ("光荣和ω-force", ["光荣和ω-force", "光荣"]),
    ("1990 年 3 月", ["1990年3月"]),
    ("", ["上海"]),
    ("中国科学院大学", ["国科大", "中国科学院"]),
    ("王小明 iphone 15", ["iphone 15 王小明"]),
]


def _evaluated(task: ExtractiveQA, cases: list[tuple[str, list[str]]], context: str) -> dict[str, object]:
    examples = [
        QAExample(str(i), "q", context, tuple(Answer(a, None, -1) for a in refs)) for i, (_, refs) in enumerate(cases)
    ]
    predictions = [QAPrediction(p, 0, len(p), 1.0) for p, _ in cases]
    return task.evaluate(examples, predictions, []).report


def test_scores_equal_the_official_scripts() -> None:
    task = make_task()
    report = _evaluated(task, ENGLISH, "an English passage")
    official = [official_squad(p, refs) for p, refs in ENGLISH]
    assert report["exact_match"] == pytest.approx(sum(e for e, _ in official) / len(official))
    assert report["f1"] == pytest.approx(sum(f for _, f in official) / len(official))
    assert report["by_language"]["en"]["n"] == len(ENGLISH) and report["unmatched_answers"] == 10  # type: ignore[index]
    chinese = _evaluated(task, CHINESE, "一段中文文章")
    official = [official_cmrc(p, refs) for p, refs in CHINESE]
    assert chinese["exact_match"] == pytest.approx(sum(e for e, _ in official) / len(official))
    assert chinese["f1"] == pytest.approx(sum(f for _, f in official) / len(official))
    assert set(chinese["by_language"]) == {"zh"}  # type: ignore[arg-type]


def test_chinese_is_scored_by_character() -> None:
    report = _evaluated(make_task(), [("北京市", ["北京"])], "北京是首都")
    assert report["exact_match"] == 0.0 and report["f1"] == pytest.approx(0.8), "2 of 3 characters: P 2/3, R 1"
    as_english = _evaluated(make_task(language="en"), [("北京市", ["北京"])], "北京是首都")
    assert as_english["f1"] == 0.0, "one whitespace token each, and they differ"
    assert _evaluated(make_task(), [("北京。", ["北京"])], "北京")["exact_match"] == 1.0, "punctuation removed"


def texts(pieces: list[str], min_size: int = 0) -> st.SearchStrategy[str]:
    """Strings joined from ``pieces`` (characters or longer bits)."""
    return st.lists(st.sampled_from(pieces), min_size=min_size, max_size=12).map("".join)


CHINESE_PIECES = [*"北京上海的是年ab1 ，。-", "……", "…"]
ENGLISH_PIECES = [*"ab the,.!-", "an ", "The ", "a "]


@settings(max_examples=150, deadline=None)
@given(texts(CHINESE_PIECES), st.lists(texts(CHINESE_PIECES, 1), min_size=1, max_size=3))
def test_cmrc_scores_equal_the_script_on_random_text(prediction: str, references: list[str]) -> None:
    report = _evaluated(make_task(language="zh"), [(prediction, references)], "中")
    em, f1 = official_cmrc(prediction, references)
    assert report["exact_match"] == em and report["f1"] == pytest.approx(f1)


@settings(max_examples=150, deadline=None)
@given(texts(ENGLISH_PIECES), st.lists(texts(ENGLISH_PIECES, 1), min_size=1, max_size=3))
def test_squad_scores_equal_the_script_on_random_text(prediction: str, references: list[str]) -> None:
    report = _evaluated(make_task(language="en"), [(prediction, references)], "x")
    em, f1 = official_squad(prediction, references)
    assert report["exact_match"] == em and report["f1"] == pytest.approx(f1)


def test_the_report_table_has_a_row_per_language() -> None:
    report = _evaluated(make_task(), [("北京", ["北京"])], "北京是首都")
    table = format_qa_report(report, "dev")  # type: ignore[arg-type]
    assert "CMRC 2018" in table and table.splitlines()[-1].split() == ["all", "1", "1.0000", "1.0000"]
    assert "| zh | CMRC 2018" in format_qa_report(report, "dev", markdown=True)  # type: ignore[arg-type]


def test_words_are_split_as_nltk_word_tokenize_splits_them() -> None:
    """The examples of NLTK's own documentation of NLTKWordTokenizer and word_tokenize."""
    assert split_words("Good muffins cost $3.88 (roughly 3,36 euros)") == [
        *("Good", "muffins", "cost", "$", "3.88", "(", "roughly", "3,36", "euros", ")"),
    ]
    assert split_words("two of them. Thanks.")[-2:] == ["Thanks", "."]
    assert split_words("they don't cannot") == ["they", "do", "n't", "can", "not"]
    assert split_words('"hi" there, you') == ["``", "hi", "''", "there", ",", "you"]
