"""Token-classification readers (conll, bmes, jsonl/json, CLUENER spans) and the token example helpers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from adaptune.data.readers import read_token_examples
from adaptune.data.records import TokenExample, token_example_from_text, token_example_from_words
from adaptune.errors import DataError

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP B-LOC
"""


def write(directory: Path, name: str, content: str | bytes) -> Path:
    """Write ``content`` (text as UTF-8) to ``directory/name`` and return the path."""
    path = directory / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def data_error(path: Path, **kwargs: object) -> DataError:
    """Read token examples from ``path``, which must raise :class:`DataError`, and return the error."""
    with pytest.raises(DataError) as info:
        read_token_examples(path, **kwargs)  # type: ignore[arg-type]
    return info.value


def assert_offsets_match(example: TokenExample) -> None:
    """Every token sits in the example's text at its offsets."""
    assert len(example.offsets) == len(example.tokens)
    for token, (start, end) in zip(example.tokens, example.offsets, strict=True):
        assert example.text[start:end] == token


# --- conll -----------------------------------------------------------------------------------------------


def test_conll_round_trip(tmp_path: Path) -> None:
    path = write(tmp_path, "train.txt", CONLL)
    examples = read_token_examples(path)
    assert [e.tokens for e in examples] == [("EU", "rejects", "German"), ("Peter", "Blackburn"), ("BRUSSELS",)]
    assert [e.tags for e in examples] == [("B-ORG", "O", "B-MISC"), ("B-PER", "I-PER"), ("B-LOC",)]
    assert examples[0].text == "EU rejects German"
    assert examples[0].offsets == ((0, 2), (3, 10), (11, 17))
    assert [e.source for e in examples] == [f"{path}:3", f"{path}:7", f"{path}:12"]
    for example in examples:
        assert_offsets_match(example)


def test_conll_chooses_columns_and_handles_crlf_and_tabs(tmp_path: Path) -> None:
    path = write(tmp_path, "t.conll", "EU\tNNP\tB-ORG\r\nrejects\tVBZ\tO\r\n")
    (example,) = read_token_examples(path, tag_column=1)
    assert example.tags == ("NNP", "VBZ")
    (example,) = read_token_examples(path, token_column=-1, tag_column=0)
    assert (example.tokens, example.tags) == (("B-ORG", "O"), ("EU", "rejects"))


def test_conll_line_with_too_few_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.conll", "EU NNP B-ORG\nrejects VBZ\n")
    error = data_error(path)
    assert (error.file, error.line, error.field) == (str(path), 2, "tag column -1")
    assert "bad.conll:2" in str(error) and "expected 3 columns" in str(error)


def test_conll_column_out_of_range(tmp_path: Path) -> None:
    error = data_error(write(tmp_path, "a.conll", "EU B-ORG\n"), tag_column=3)
    assert (error.line, error.field) == (1, "tag column 3") and "no column 3" in str(error)


def test_conll_single_column(tmp_path: Path) -> None:
    path = write(tmp_path, "raw.conll", "Hello\nworld\n\nBye\n")
    error = data_error(path)
    assert (error.line, error.field) == (1, "tag column -1")
    examples = read_token_examples(path, require_labels=False)
    assert [(e.tokens, e.tags) for e in examples] == [(("Hello", "world"), ()), (("Bye",), ())]


def test_conll_mixed_numeric_and_named_tags(tmp_path: Path) -> None:
    error = data_error(write(tmp_path, "m.conll", "a O\nb B-X\n\nc 0\n"))
    assert (error.line, error.field) == (4, "tag column -1") and "mix numbers and names" in str(error)


@pytest.mark.parametrize("content", ["", "\n\n", "-DOCSTART- -X- O\n\n"])
def test_conll_without_sentences(tmp_path: Path, content: str) -> None:
    error = data_error(write(tmp_path, "e.conll", content))
    assert "e.conll" in str(error) and ("empty" in str(error) or "no sentences" in str(error))


def test_conll_not_utf8(tmp_path: Path) -> None:
    error = data_error(write(tmp_path, "l.conll", "a O\n\nnaïve O\n".encode("latin-1")))
    assert error.line == 3 and "not UTF-8" in str(error)


# --- bmes ------------------------------------------------------------------------------------------------


def test_bmes_is_character_level(tmp_path: Path) -> None:
    path = write(tmp_path, "dev.char.bmes", "吴 B-NAME\n重 M-NAME\n阳 E-NAME\n， O\nMBA S-EDU\n\n中 S-CONT\n")
    first, second = read_token_examples(path)
    assert first.tokens == ("吴", "重", "阳", "，", "MBA")
    assert first.tags == ("B-NAME", "M-NAME", "E-NAME", "O", "S-EDU")
    assert first.text == "吴重阳，MBA"
    assert first.offsets[-1] == (4, 7)
    assert_offsets_match(first)
    assert (second.text, second.source) == ("中", f"{path}:7")


def test_bmes_token_may_be_a_unicode_space(tmp_path: Path) -> None:
    (example,) = read_token_examples(write(tmp_path, "s.bmes", "甲 O\n\u3000 O\n乙 O\n"))
    assert example.tokens == ("甲", "\u3000", "乙")


# --- jsonl / json token rows -----------------------------------------------------------------------------


def test_jsonl_tokens_and_tags(tmp_path: Path) -> None:
    rows = [{"tokens": ["New", "York"], "tags": ["B-LOC", "I-LOC"]}, {"tokens": ["hi"], "tags": ["O"]}]
    path = write(tmp_path, "t.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    examples = read_token_examples(path)
    assert examples[0] == TokenExample(("New", "York"), ("B-LOC", "I-LOC"), "New York", ((0, 3), (4, 8)), f"{path}:1")
    assert examples[1].source == f"{path}:2"


def test_json_array_tokens_with_custom_fields_and_int_tags(tmp_path: Path) -> None:
    path = write(tmp_path, "t.json", json.dumps([{"words": ["a", "b"], "ner_tags": [0, 3]}]))
    (example,) = read_token_examples(path, tokens_field="words", tags_field="ner_tags")
    assert example.tags == ("0", "3")


def test_jsonl_length_mismatch_names_tags_field(tmp_path: Path) -> None:
    path = write(tmp_path, "t.jsonl", '{"tokens": ["a"], "tags": ["O"]}\n{"tokens": ["a", "b"], "tags": ["O"]}\n')
    error = data_error(path)
    assert (error.line, error.field) == (2, "tags") and "1 tags for 2 tokens" in str(error)


@pytest.mark.parametrize(
    ("row", "field", "words"),
    [
        ({"tokens": "a b", "tags": ["O"]}, "tokens", "expected a list, found a string"),
        ({"tokens": [], "tags": []}, "tokens", "no tokens"),
        ({"tokens": ["a", " "], "tags": ["O", "O"]}, "tokens", "token 1 is empty"),
        ({"tokens": ["a"], "tags": [None]}, "tags", "found null"),
        ({"tokens": ["a"]}, "tags", "no field 'tags'; fields present: tokens"),
        ({"words": ["a"], "tags": ["O"]}, "tokens", "no field 'tokens'"),
        ({"text": "abc", "label": "pos"}, "tokens", "no field 'tokens'; fields present: text, label"),
    ],
)
def test_jsonl_bad_token_rows(tmp_path: Path, row: dict[str, object], field: str, words: str) -> None:
    error = data_error(write(tmp_path, "t.jsonl", json.dumps(row) + "\n"))
    assert (error.line, error.field) == (1, field) and words in str(error)


def test_jsonl_unlabelled_tokens(tmp_path: Path) -> None:
    path = write(tmp_path, "t.jsonl", '{"tokens": ["a", "b"]}\n{"tokens": ["c"], "tags": []}\n')
    assert [e.tags for e in read_token_examples(path, require_labels=False)] == [(), ()]


# --- CLUENER spans ---------------------------------------------------------------------------------------


def test_cluener_spans_become_character_bio(tmp_path: Path) -> None:
    row = {"text": "温格的球队战胜曼联", "label": {"name": {"温格": [[0, 1]]}, "organization": {"曼联": [[7, 8]]}}}
    path = write(tmp_path, "dev.json", json.dumps(row, ensure_ascii=False) + "\n")
    (example,) = read_token_examples(path)
    assert example.tokens == tuple(row["text"])  # type: ignore[arg-type]
    assert example.tags == ("B-name", "I-name", "O", "O", "O", "O", "O", "B-organization", "I-organization")
    assert example.text == row["text"] and example.source == f"{path}:1"
    assert_offsets_match(example)


def test_cluener_skips_whitespace_characters(tmp_path: Path) -> None:
    row = {"text": "看 Johns 了", "label": {"name": {"Johns": [[2, 6]]}}}
    (example,) = read_token_examples(write(tmp_path, "c.jsonl", json.dumps(row) + "\n"))
    assert example.tokens == ("看", "J", "o", "h", "n", "s", "了")
    assert example.tags == ("O", "B-name", "I-name", "I-name", "I-name", "I-name", "O")
    assert example.text == "看 Johns 了" and example.offsets[1] == (2, 3)
    assert_offsets_match(example)


@pytest.mark.parametrize(
    ("label", "words"),
    [
        ({"name": {"温格": [[0, 2]]}}, "covers '温格的', not '温格' (end is inclusive)"),
        ({"name": {"温格": [[8, 9]]}}, "is not [start, end] inside the text"),
        ({"name": {"温格": [[1, 0]]}}, "is not [start, end] inside the text"),
        ({"name": {"温格": [0, 1]}}, "is not [start, end]"),
        ({"name": ["温格"]}, "should map mentions to spans"),
        ({"name": {"温格": "0-1"}}, "should be a list"),
    ],
)
def test_cluener_bad_spans(tmp_path: Path, label: dict[str, object], words: str) -> None:
    row = {"text": "温格的球队", "label": label}
    path = write(tmp_path, "c.jsonl", '{"text": "温格", "label": {}}\n' + json.dumps(row, ensure_ascii=False) + "\n")
    error = data_error(path)
    assert (error.line, error.field) == (2, "label") and words in str(error)


def test_cluener_overlapping_spans_keep_the_outer_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    row = {"text": "《招商银行》", "label": {"book": {"《招商银行》": [[0, 5]]}, "company": {"招商银行": [[1, 4]]}}}
    path = write(tmp_path, "c.jsonl", json.dumps(row, ensure_ascii=False) + "\n")
    with caplog.at_level(logging.WARNING):
        (example,) = read_token_examples(path)
    assert example.tags == ("B-book",) + ("I-book",) * 5
    assert f"{path}:1" in caplog.text and "company" in caplog.text


def test_cluener_unlabelled_rows(tmp_path: Path) -> None:
    path = write(tmp_path, "test.json", '{"id": 0, "text": "浙商银行"}\n')
    (example,) = read_token_examples(path, require_labels=False)
    assert (example.tokens, example.tags) == (("浙", "商", "银", "行"), ())
    error = data_error(path)
    assert (error.line, error.field) == (1, "label") and "fields present: id, text" in str(error)


# --- helpers in records ----------------------------------------------------------------------------------


def test_token_example_from_words() -> None:
    example = token_example_from_words(["a", "bc"], ["O", "B-X"], " ", "f:1")
    assert example == TokenExample(("a", "bc"), ("O", "B-X"), "a bc", ((0, 1), (2, 4)), "f:1")
    assert token_example_from_words(["中", "国"], [], "").offsets == ((0, 1), (1, 2))
    with pytest.raises(ValueError, match="2 tokens but 1 tags"):
        token_example_from_words(["a", "b"], ["O"])


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("  New  York is big ", ("New", "York", "is", "big")),
        ("我爱北京。", ("我", "爱", "北", "京", "。")),
        ("我爱 New York！ok", ("我", "爱", "New", "York", "！", "ok")),
        ("iPhone手机，「好」", ("iPhone", "手", "机", "，", "「", "好", "」")),
        ("カタカナ　ひら", ("カ", "タ", "カ", "ナ", "ひ", "ら")),
        ("", ()),
        (" \t\n", ()),
    ],
)
def test_token_example_from_text(text: str, tokens: tuple[str, ...]) -> None:
    example = token_example_from_text(text)
    assert example.tokens == tokens and example.tags == () and example.text == text
    assert_offsets_match(example)
