"""Property tests: well-formed files read back exactly, and any bytes give examples or a DataError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adaptune.data.readers import read_text_examples, read_token_examples
from adaptune.data.records import token_example_from_text
from adaptune.errors import DataError

PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.sampled_from(["neg", "pos", "neutral", "sports|news"])
texts = st.text(min_size=1, max_size=40).filter(lambda text: text.strip() != "")
tsv_texts = st.text(
    alphabet=st.characters(blacklist_characters="\t\n\r\x00", blacklist_categories=("Cs",)), min_size=1, max_size=40
).filter(lambda text: text.strip() != "")

# Pieces that make random bytes look like the formats often enough to reach the deeper checks.
_PIECES = [
    b"{", b"}", b"[", b"]", b'"', b",", b":", b"\t", b"\n", b"\r", b" ", b"1", b"-1", b"0.5", b"null", b"true",
    b'"text"', b'"label"', b'"tokens"', b'"tags"', b"text", b"label", b"O", b"B-X", b"-DOCSTART-", b"\xff",
    b"\xef\xbb\xbf", b"\x00", "中".encode(), b"1" * 5000, b"[" * 3000,
]  # fmt: skip
garbage = st.one_of(st.binary(max_size=300), st.lists(st.sampled_from(_PIECES), max_size=40).map(b"".join))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder the property tests overwrite their files in (hypothesis reruns a test many times)."""
    return tmp_path_factory.mktemp("properties")


@PROPERTY_SETTINGS
@given(rows=st.lists(st.tuples(texts, names), min_size=1, max_size=8))
def test_jsonl_round_trip(workdir: Path, rows: list[tuple[str, str]]) -> None:
    path = workdir / "round.jsonl"
    lines = [json.dumps({"text": text, "label": label}, ensure_ascii=False) for text, label in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    examples = read_text_examples(path)
    assert [(e.text, e.labels) for e in examples] == [(text.strip(), (label,)) for text, label in rows]


@PROPERTY_SETTINGS
@given(rows=st.lists(st.tuples(tsv_texts, names), min_size=1, max_size=8))
def test_tsv_round_trip(workdir: Path, rows: list[tuple[str, str]]) -> None:
    path = workdir / "round.tsv"
    path.write_text("text\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in rows), encoding="utf-8")
    examples = read_text_examples(path, label_separator="|")
    expected = [(text.strip(), tuple(label.split("|"))) for text, label in rows]
    assert [(e.text, e.labels) for e in examples] == expected


@PROPERTY_SETTINGS
@given(text=st.text(max_size=60))
def test_token_example_from_text_offsets(text: str) -> None:
    example = token_example_from_text(text)
    assert all(
        example.text[start:end] == token for token, (start, end) in zip(example.tokens, example.offsets, strict=True)
    )
    assert all(token.strip() == token and token for token in example.tokens)
    assert "".join(example.tokens) == "".join(text.split())


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".conll", ".bmes"])
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=garbage)
def test_garbage_gives_examples_or_data_error(workdir: Path, suffix: str, content: bytes) -> None:
    path = workdir / f"garbage{suffix}"
    path.write_bytes(content)
    readers = (read_token_examples,) if suffix in (".conll", ".bmes") else (read_text_examples,)
    if suffix in (".jsonl", ".json"):
        readers = (read_text_examples, read_token_examples)
    for read in readers:
        try:
            examples = read(path)
        except DataError as error:
            assert error.file == str(path)
        else:
            assert examples
