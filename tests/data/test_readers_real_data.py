"""The readers on the first few hundred lines of real datasets from ``../shared/data``."""

from __future__ import annotations

import json
from pathlib import Path

from adaptune.data.readers import read_text_examples, read_token_examples

CONLL_TAGS = {"O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"}
RESUME_TYPES = {"NAME", "CONT", "RACE", "TITLE", "EDU", "ORG", "PRO", "LOC"}


def head(source: Path, target: Path, lines: int, *, whole_sentences: bool = False) -> Path:
    """Copy the first ``lines`` lines of ``source`` (up to the next blank line if ``whole_sentences``)."""
    kept: list[str] = []
    with source.open(encoding="utf-8", newline="") as handle:
        for line in handle:
            if len(kept) >= lines and (not whole_sentences or not line.strip()):
                break
            kept.append(line)
    target.write_text("".join(kept), encoding="utf-8", newline="")
    return target


def test_sst2_dev(shared_data: Path, tmp_path: Path) -> None:
    path = head(shared_data / "sst2" / "dev.tsv", tmp_path / "dev.tsv", 300)
    examples = read_text_examples(path, text_column="sentence")
    assert len(examples) == 299
    assert examples[0].text == "it 's a charming and often affecting journey ."
    assert examples[0].labels == ("1",) and examples[0].source == f"{path}:2"
    assert {e.labels for e in examples} == {("0",), ("1",)}
    assert all(e.text == e.text.strip() for e in examples)


def test_conll2003_valid(shared_data: Path, tmp_path: Path) -> None:
    path = head(shared_data / "conll2003" / "valid.txt", tmp_path / "valid.txt", 400, whole_sentences=True)
    examples = read_token_examples(path)
    first = examples[0]
    assert first.tokens[:3] == ("CRICKET", "-", "LEICESTERSHIRE")
    assert first.tags[:3] == ("O", "O", "B-ORG") and first.source == f"{path}:3"
    assert (examples[1].tokens, examples[1].tags) == (("LONDON", "1996-08-30"), ("B-LOC", "O"))
    assert all(tag in CONLL_TAGS for e in examples for tag in e.tags)
    assert not any("-DOCSTART-" in e.tokens for e in examples)
    assert all(e.text == " ".join(e.tokens) for e in examples)


def test_resume_ner_dev(shared_data: Path, tmp_path: Path) -> None:
    source = shared_data / "resume_ner" / "dev.char.bmes"
    path = head(source, tmp_path / "dev.char.bmes", 400, whole_sentences=True)
    examples = read_token_examples(path)
    first = examples[0]
    assert first.text.startswith("吴重阳，中国国籍")
    assert first.tags[:4] == ("B-NAME", "M-NAME", "E-NAME", "O")
    assert all(e.text == "".join(e.tokens) for e in examples)
    for tag in {tag for e in examples for tag in e.tags} - {"O"}:
        prefix, entity_type = tag.split("-", 1)
        assert prefix in {"B", "M", "E", "S"} and entity_type in RESUME_TYPES


def test_cluener_dev(shared_data: Path, tmp_path: Path) -> None:
    path = head(shared_data / "cluener2020" / "dev.json", tmp_path / "dev.json", 200)
    examples = read_token_examples(path)
    assert len(examples) == 200
    assert examples[0].tags[:3] == ("B-name", "I-name", "I-name")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    for row, example in zip(rows, examples, strict=True):
        assert example.text == row["text"] and len(example.tokens) == len(row["text"])
        for entity_type, mentions in row["label"].items():
            for spans in mentions.values():
                for start, end in spans:
                    assert example.tags[start] == f"B-{entity_type}"
                    assert set(example.tags[start + 1 : end + 1]) <= {f"I-{entity_type}"}
