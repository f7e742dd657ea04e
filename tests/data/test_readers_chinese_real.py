"""The readers on whole published Chinese datasets from ``../shared/data``: TNEWS, ChnSentiCorp, CLUENER2020 and
Resume NER, and predict's character splitting checked against how those files are tokenised."""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter
from pathlib import Path

import pytest

from adaptune.data.readers import read_text_examples, read_token_examples
from adaptune.data.records import is_cjk, is_cjk_script, letters_in_cjk_of, token_example_from_text
from adaptune.evaluation.tagging import extract_entities

# dev.json label counts, from the table in ../shared/data/tnews/README.md
TNEWS_DEV_COUNTS = {
    "news_story": 215,
    "news_culture": 736,
    "news_entertainment": 910,
    "news_sports": 767,
    "news_finance": 956,
    "news_house": 378,
    "news_car": 791,
    "news_edu": 646,
    "news_tech": 1089,
    "news_military": 716,
    "news_travel": 693,
    "news_world": 905,
    "news_stock": 45,
    "news_agriculture": 494,
    "news_game": 659,
}
# CLUENER train.json line 1507 nests two company spans inside a book title [15, 34]; flat BIO tags keep the book.
CLUENER_DROPPED = {("train.json", 1507): {("company", 16, 19), ("company", 23, 26)}}


def shared_file(shared_data: Path, *parts: str) -> Path:
    """A file of ``../shared/data``: a missing one fails the test under ``CI`` and skips it otherwise."""
    path = shared_data.joinpath(*parts)
    if not path.is_file():
        message = f"shared data file not found: {path}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def json_lines(path: Path) -> list[dict[str, object]]:
    """Every line of a JSON Lines file, decoded."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_tnews_dev_reads_label_names(shared_data: Path) -> None:
    path = shared_file(shared_data, "tnews", "dev.json")
    names = {row["label_desc"] for row in json_lines(shared_file(shared_data, "tnews", "labels.json"))}
    examples = read_text_examples(path)
    assert len(examples) == 10_000
    assert Counter(label for e in examples for label in e.labels) == TNEWS_DEV_COUNTS
    assert set(TNEWS_DEV_COUNTS) == names
    first = examples[0]
    assert (first.text, first.labels, first.source) == (
        "江疏影甜甜圈自拍，迷之角度竟这么好看，美吸引一切事物",
        ("news_entertainment",),
        f"{path}:1",
    )
    for row, example in zip(json_lines(path), examples, strict=True):
        assert (example.text, example.labels) == (str(row["sentence"]).strip(), (row["label_desc"],))


@pytest.mark.parametrize(("name", "rows", "negative"), [("train.tsv", 9600, 4801), ("dev.tsv", 1200, 607)])
def test_chnsenticorp_text_is_read_verbatim(shared_data: Path, name: str, rows: int, negative: int) -> None:
    """Each text is its line's last tab-separated field as written: quote characters are not csv quoting."""
    path = shared_file(shared_data, "chnsenticorp", name)
    examples = read_text_examples(path)
    assert len(examples) == rows
    assert Counter(e.labels for e in examples) == {("0",): negative, ("1",): rows - negative}
    lines = path.read_text(encoding="utf-8").split("\n")[1:-1]
    assert [(e.text, e.labels[0]) for e in examples] == [
        (line.split("\t")[-1].strip(), line.split("\t")[-2]) for line in lines
    ]
    assert [e.source for e in examples] == [f"{path}:{number}" for number in range(2, rows + 2)]
    if name == "train.tsv":
        assert all(examples[line - 2].text.startswith('"') for line in (944, 4242, 5366))
        assert sum('"' in e.text for e in examples) == 55


def file_spans(row: dict[str, object]) -> set[tuple[str, int, int]]:
    """``(type, start, end_inclusive)`` of every span in a CLUENER row, checking ``text[start:end+1]``."""
    text, found = str(row["text"]), set()
    for entity_type, mentions in row["label"].items():  # type: ignore[attr-defined]
        for mention, spans in mentions.items():
            for start, end in spans:
                assert text[start : end + 1] == mention, (row, mention, start, end)
                found.add((entity_type, start, end))
    return found


@pytest.mark.parametrize("name", ["train.json", "dev.json"])
def test_cluener_spans_round_trip_through_bio(shared_data: Path, name: str) -> None:
    """Every span of the file equals ``text[start:end+1]`` (end inclusive), and the reader's BIO tags decode back
    to exactly the file's spans, offsets mapped through the tokens; only the one nested span is dropped."""
    path = shared_file(shared_data, "cluener2020", name)
    rows, examples = json_lines(path), read_token_examples(path)
    assert len(examples) == len(rows) == {"train.json": 10_748, "dev.json": 1_343}[name]
    for line, (row, example) in enumerate(zip(rows, examples, strict=True), start=1):
        assert example.text == row["text"] and example.source == f"{path}:{line}"
        decoded = {
            (entity_type, example.offsets[start][0], example.offsets[end - 1][1] - 1)
            for entity_type, start, end in extract_entities(example.tags, "IOB2")
        }
        assert decoded == file_spans(row) - CLUENER_DROPPED.get((name, line), set()), f"line {line}"


@pytest.mark.parametrize(
    ("folder", "names"),
    [
        ("cluener2020", ("train.json", "dev.json")),
        ("resume_ner", ("train.char.bmes", "dev.char.bmes", "test.char.bmes")),
    ],
)
def test_predict_splits_chinese_text_as_the_files_do(shared_data: Path, folder: str, names: tuple[str, ...]) -> None:
    """CLUENER's reader and Resume's BMES files are per character: predict splits their text the same way."""
    for name in names:
        examples = read_token_examples(shared_file(shared_data, folder, name))
        assert letters_in_cjk_of(examples) == "characters"
        for example in examples:
            predicted = token_example_from_text(example.text, letters_in_cjk="characters")
            assert (predicted.tokens, predicted.offsets) == (example.tokens, example.offsets), example.source


def test_bundled_ner_keeps_letter_runs_whole(bundled_data: Path) -> None:
    """adaptune's own bilingual NER data writes letters and digits in Chinese text as whole tokens."""
    examples = read_token_examples(bundled_data / "ner" / "train.conll")
    assert letters_in_cjk_of(examples) == "words"
    chinese = [e for e in examples if any(is_cjk_script(char) for char in e.text)]
    assert len(chinese) == 125
    for example in chinese:
        # The text as a user would type it: no spaces around Chinese characters, one between two other tokens.
        text = example.tokens[0]
        for previous, token in itertools.pairwise(example.tokens):
            text += token if is_cjk(previous[-1]) or is_cjk(token[0]) else " " + token
        assert token_example_from_text(text).tokens == example.tokens, example.source
