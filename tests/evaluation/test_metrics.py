"""Metrics and reports: hand-computed values, sklearn agreement, strict entities vs seqeval."""

from __future__ import annotations

import json
import math
import os
import random
import unicodedata
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from seqeval.metrics import classification_report as seqeval_report
from seqeval.metrics import f1_score as seqeval_f1
from seqeval.scheme import IOB1, IOB2, IOBES
from sklearn.metrics import precision_recall_fscore_support

from adaptune.errors import DataError
from adaptune.evaluation.metrics import (
    TOKEN_REPORT_NOTE,
    classification_report,
    confusion,
    entity_report,
    format_report_markdown,
    format_report_table,
    multilabel_report,
    token_report,
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
TYPES = ("PER", "LOC", "ORG")
PREFIXES = {"IOB2": "BI", "IOB1": "BI", "IOBES": "BIES"}
SEQEVAL_CLASSES = {"IOB2": IOB2, "IOB1": IOB1, "IOBES": IOBES}
SCORE_KEYS = (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score"))


def row(p: float, r: float, f: float, support: int) -> dict[str, Any]:
    return {
        "precision": pytest.approx(p),
        "recall": pytest.approx(r),
        "f1": pytest.approx(f),
        "support": support,
    }


# --- single-label and multi-label -----------------------------------------------------------------


def test_classification_report_hand_computed() -> None:
    report = classification_report(["a", "a", "b", "c"], ["a", "b", "b", "a"], ["a", "b", "c"])
    assert report["accuracy"] == 0.5
    assert report["n"] == 4
    assert report["per_class"] == {
        "a": row(0.5, 0.5, 0.5, 2),
        "b": row(0.5, 1.0, 2 / 3, 1),
        "c": row(0.0, 0.0, 0.0, 1),
    }
    assert report["micro"] == row(0.5, 0.5, 0.5, 4)
    assert report["macro"] == row(1 / 3, 0.5, (0.5 + 2 / 3) / 3, 4)
    assert report["weighted"] == row(0.375, 0.5, (1.0 + 2 / 3) / 4, 4)
    json.dumps(report)  # plain Python types only


def test_classification_report_input_checks() -> None:
    with pytest.raises(ValueError, match="y_true has 2 items but y_pred has 1"):
        classification_report(["a", "b"], ["a"], ["a", "b"])
    with pytest.raises(ValueError, match="y_true contains labels not in `labels`: 'z'"):
        classification_report(["a", "z"], ["a", "a"], ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        classification_report([], [], ["a"])
    outside = classification_report(["a", "b"], ["a", "??"], ["a", "b"])
    assert outside["accuracy"] == 0.5
    assert outside["per_class"]["b"] == row(0.0, 0.0, 0.0, 1)


def test_multilabel_report_hand_computed() -> None:
    report = multilabel_report([{"a"}, {"a", "b"}, set()], [["a"], ["b"], ["c"]], ["a", "b"])
    assert report["subset_accuracy"] == report["accuracy"] == pytest.approx(1 / 3)
    assert report["hamming_loss"] == pytest.approx(1 / 6)  # one wrong decision out of 3 x 2
    assert report["per_class"] == {"a": row(1.0, 0.5, 2 / 3, 2), "b": row(1.0, 1.0, 1.0, 1)}
    assert report["micro"] == row(1.0, 2 / 3, 0.8, 3)
    assert report["macro"] == row(1.0, 0.75, (2 / 3 + 1.0) / 2, 3)
    assert report["n"] == 3


def test_multilabel_report_with_one_label_is_not_a_binary_problem() -> None:
    report = multilabel_report([{"a"}, set(), {"a"}], [{"a"}, {"a"}, set()], ["a"])
    assert report["per_class"]["a"] == row(0.5, 0.5, 0.5, 2)


def test_multilabel_report_agrees_with_sklearn() -> None:
    rng = random.Random(3)
    labels = ["x", "y", "z", "w"]
    true = [{lab for lab in labels if rng.random() < 0.4} for _ in range(60)]
    pred = [{lab for lab in labels if rng.random() < 0.4} for _ in range(60)]
    report = multilabel_report(true, pred, labels)
    t = np.array([[lab in s for lab in labels] for s in true])
    p = np.array([[lab in s for lab in labels] for s in pred])
    for average in ("micro", "macro", "weighted"):
        ref = precision_recall_fscore_support(t, p, average=average, zero_division=0)
        assert report[average]["precision"] == pytest.approx(ref[0], abs=1e-12)
        assert report[average]["recall"] == pytest.approx(ref[1], abs=1e-12)
        assert report[average]["f1"] == pytest.approx(ref[2], abs=1e-12)


def test_confusion_rows_are_true_labels() -> None:
    assert confusion(["a", "a", "b", "c"], ["a", "b", "b", "a"], ["a", "b", "c"]) == [
        [1, 1, 0],
        [0, 1, 0],
        [1, 0, 0],
    ]


# --- entity level ---------------------------------------------------------------------------------


def test_entity_report_hand_computed() -> None:
    true = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    pred = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
    report = entity_report(true, pred, "BIO")
    assert (report["precision"], report["recall"], report["f1"]) == (0.5, 0.5, 0.5)
    assert report["per_type"] == {"MISC": row(0.0, 0.0, 0.0, 1), "PER": row(1.0, 1.0, 1.0, 1)}
    assert report["macro"] == report["weighted"] == row(0.5, 0.5, 0.5, 2)
    assert (report["support"], report["n_pred"], report["n_correct"]) == (2, 2, 1)
    assert (report["n_sentences"], report["scheme"]) == (2, "IOB2")


def test_entity_report_is_strict() -> None:
    # the predicted I-PER I-PER is not an entity in strict IOB2; a lenient scorer would count it
    report = entity_report([["B-PER", "I-PER", "O"]], [["I-PER", "I-PER", "O"]], "BIO")
    assert (report["precision"], report["recall"], report["f1"], report["n_pred"]) == (0, 0, 0, 0)
    # an IOBES entity that is never closed counts for nothing
    report = entity_report([["B-PER", "E-PER"]], [["B-PER", "I-PER"]], "IOBES")
    assert (report["recall"], report["n_pred"]) == (0.0, 0)


def test_entity_report_without_entities_is_zero_not_nan() -> None:
    report = entity_report([["O", "O"]], [["O", "O"]], "BIO")
    assert report["per_type"] == {}
    assert report["f1"] == report["macro"]["f1"] == report["weighted"]["f1"] == 0.0


def test_entity_report_input_checks() -> None:
    with pytest.raises(ValueError, match="2 sentences"):
        entity_report([["O"], ["O"]], [["O"]], "BIO")
    with pytest.raises(ValueError, match="sentence 0: 2 true tags but 1 predicted"):
        entity_report([["O", "O"]], [["O"]], "BIO")
    with pytest.raises(DataError, match="prefix 'E'"):
        entity_report([["B-PER"]], [["E-PER"]], "BIO")


def assert_matches_seqeval(true: list[list[str]], pred: list[list[str]], scheme: str) -> None:
    """Our strict entity report equals seqeval's strict classification_report and f1_score."""
    cls = IOBES if scheme == "BMES" else SEQEVAL_CLASSES[scheme]
    ours = entity_report(true, pred, scheme)
    if scheme == "BMES":
        true, pred = ([[f"I{t[1:]}" if t[0] == "M" else t for t in s] for s in x] for x in (true, pred))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns on empty averages
        ref = seqeval_report(true, pred, mode="strict", scheme=cls, output_dict=True, zero_division=0)
        ref_f1 = seqeval_f1(true, pred, mode="strict", scheme=cls)
    assert math.isclose(ours["f1"], ref_f1, rel_tol=0, abs_tol=1e-9)
    assert set(ours["per_type"]) == {key for key in ref if not key.endswith(" avg")}
    for kind, scores in ours["per_type"].items():
        assert scores["support"] == ref[kind]["support"]
        for key, ref_key in SCORE_KEYS:
            assert math.isclose(scores[key], ref[kind][ref_key], rel_tol=0, abs_tol=1e-9)
    for average in ("micro", "macro", "weighted"):
        expected = ref[f"{average} avg"]
        assert ours[average]["support"] == expected["support"]
        for key, ref_key in SCORE_KEYS:
            value = 0.0 if math.isnan(expected[ref_key]) else expected[ref_key]  # no types at all
            assert math.isclose(ours[average][key], value, rel_tol=0, abs_tol=1e-9)
    for key, ref_key in SCORE_KEYS:
        assert math.isclose(ours[key], ref["micro avg"][ref_key], rel_tol=0, abs_tol=1e-9)


@st.composite
def paired_tag_sequences(draw: st.DrawFn, scheme: str) -> tuple[list[list[str]], list[list[str]]]:
    """Random true/predicted sentences; about half the predicted tags copy the true tag."""
    alphabet = ["O", "O"] + [f"{p}-{t}" for p in PREFIXES[scheme] for t in TYPES]
    tag = st.sampled_from(alphabet)
    token = st.tuples(tag, st.one_of(st.none(), tag))
    sentences = draw(st.lists(st.lists(token, max_size=12), min_size=1, max_size=6))
    true = [[t for t, _ in sentence] for sentence in sentences]
    pred = [[t if p is None else p for t, p in sentence] for sentence in sentences]
    return true, pred


@pytest.mark.parametrize("scheme", ["IOB2", "IOBES", "IOB1"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_entity_report_matches_seqeval_on_random_tags(scheme: str, data: st.DataObject) -> None:
    true, pred = data.draw(paired_tag_sequences(scheme))
    assert_matches_seqeval(true, pred, scheme)


# --- real data ------------------------------------------------------------------------------------


def shared_file(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"shared data file missing: {path}")
        pytest.skip(f"shared data file missing: {path} (under CI this fails)")
    return path


def read_column_file(path: Path, limit: int) -> list[list[str]]:
    """Tag column (last field) of a CoNLL-style file, first ``limit`` sentences, no -DOCSTART-."""
    sentences: list[list[str]] = []
    current: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if fields and fields[0] != "-DOCSTART-":
            current.append(fields[-1])
        elif current:
            sentences.append(current)
            current = []
            if len(sentences) == limit:
                return sentences
    return sentences + ([current] if current else [])


def perturb(sentences: list[list[str]], tags: list[str], rate: float, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [[rng.choice(tags) if rng.random() < rate else t for t in s] for s in sentences]


def test_entity_report_matches_seqeval_on_conll2003() -> None:
    true = read_column_file(shared_file("conll2003", "valid.txt"), 300)
    assert len(true) == 300
    tags = sorted({tag for sentence in true for tag in sentence})
    for seed, rate in ((0, 0.05), (1, 0.2)):
        pred = perturb(true, tags, rate, seed)
        assert_matches_seqeval(true, pred, "IOB2")
    assert entity_report(true, true)["f1"] == 1.0  # auto-detected IOB2


def test_entity_report_matches_seqeval_on_resume_bmes() -> None:
    true = read_column_file(shared_file("resume_ner", "dev.char.bmes"), 300)
    tags = sorted({tag for sentence in true for tag in sentence})
    pred = perturb(true, tags, 0.1, 2)
    assert_matches_seqeval(true, pred, "BMES")
    assert entity_report(true, pred)["scheme"] == "BMES"


# --- token level and formatting -------------------------------------------------------------------


def test_token_report_counts_o_tokens_and_says_so() -> None:
    true = [["B-PER", "I-PER", "O", "O"], ["O", "B-LOC"]]
    pred = [["B-PER", "O", "O", "O"], ["O", "B-PER"]]
    report = token_report(true, pred)
    assert report["note"] == TOKEN_REPORT_NOTE
    assert "secondary" in (token_report.__doc__ or "").lower()
    assert list(report["per_class"]) == ["B-LOC", "B-PER", "I-PER", "O"]
    assert report["accuracy"] == pytest.approx(4 / 6)
    assert report["per_class"]["O"] == row(0.75, 1.0, 6 / 7, 3)
    assert entity_report(true, pred, "BIO")["f1"] == 0.0  # the entity-level view is much harsher


def test_format_report_table_aligns_columns() -> None:
    report = entity_report([["B-PER", "I-PER", "O", "B-地点"]], [["B-PER", "I-PER", "O", "B-PER"]], "BIO")
    text = format_report_table(report, "NER dev")
    lines = text.splitlines()
    assert lines[0] == "NER dev"
    assert lines[2].split() == ["class", "precision", "recall", "f1", "support"]
    table = [line for line in lines[2:] if line and not line.startswith("-") and ":" not in line]
    widths = {sum(1 + (unicodedata.east_asian_width(ch) in "WF") for ch in line) for line in table}
    assert len(widths) == 1, text  # CJK names padded by display width
    assert any(line.split() == ["PER", "0.5000", "1.0000", "0.6667", "1"] for line in lines)
    assert any(
        line.startswith("micro avg") and line.split()[2:] == ["0.5000", "0.5000", "0.5000", "2"] for line in lines
    )
    assert "weighted avg" in text and "n_correct: 1" in text


def test_format_report_markdown() -> None:
    report = classification_report(["a|b", "c"], ["a|b", "a|b"], ["a|b", "c"])
    text = format_report_markdown(report, "Intent")
    lines = text.splitlines()
    assert lines[0] == "### Intent"
    assert lines[2] == "| class | precision | recall | f1 | support |"
    assert lines[3] == "|:--|--:|--:|--:|--:|"
    assert "| a\\|b | 0.5000 | 1.0000 | 0.6667 | 1 |" in lines
    assert "| **macro avg** | 0.2500 | 0.5000 | 0.3333 | 2 |" in lines
    assert "accuracy: 0.5000" in text
    token_text = format_report_markdown(token_report([["O"]], [["O"]]), "tokens", digits=2)
    assert f"note: {TOKEN_REPORT_NOTE}" in token_text and "| O | 1.00 | 1.00 | 1.00 | 1 |" in token_text
