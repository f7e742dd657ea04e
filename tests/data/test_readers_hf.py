"""Reading folders written by ``datasets``' ``save_to_disk``: splits, ClassLabel names, and errors."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from adaptune.data.readers import detect_format, read_text_examples, read_token_examples
from adaptune.errors import DataError


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a two-split DatasetDict, a single Dataset, and a one-split DatasetDict."""
    root = tmp_path_factory.mktemp("hf")
    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["neg", "pos"]),
            "topics": datasets.Sequence(datasets.ClassLabel(names=["a", "b", "c"])),
            "tokens": datasets.Sequence(datasets.Value("string")),
            "ner_tags": datasets.Sequence(datasets.ClassLabel(names=["O", "B-PER", "I-PER"])),
        }
    )
    data = {
        "text": ["good film", "bad film", "no label"],
        "label": [1, 0, -1],
        "topics": [[0, 2], [1], []],
        "tokens": [["Ann", "Lee"], ["hi"], ["x"]],
        "ner_tags": [[1, 2], [0], [0]],
    }
    train = datasets.Dataset.from_dict(data, features=features)
    datasets.DatasetDict({"train": train, "test": train.select([0])}).save_to_disk(str(root / "dict"))
    datasets.DatasetDict({"validation": train.select([0, 1])}).save_to_disk(str(root / "one_split"))
    plain = datasets.Dataset.from_dict({"sentence": ["a", "b"], "label": [0, 1]})
    plain.save_to_disk(str(root / "plain"))
    return root


def test_class_labels_become_names(saved: Path) -> None:
    examples = read_text_examples(saved / "dict", hf_split="train", require_labels=False)
    assert [(e.text, e.labels) for e in examples] == [("good film", ("pos",)), ("bad film", ("neg",)), ("no label", ())]
    assert examples[1].source == f"{saved / 'dict'}:2"


def test_sequence_of_class_labels_is_multi_label(saved: Path) -> None:
    examples = read_text_examples(saved / "dict", hf_split="train", label_column="topics", require_labels=False)
    assert [e.labels for e in examples] == [("a", "c"), ("b",), ()]


def test_missing_label_names_the_row(saved: Path) -> None:
    with pytest.raises(DataError) as info:
        read_text_examples(saved / "dict", hf_split="train")
    assert (info.value.line, info.value.field) == (3, "label")
    assert "row 3 of split 'train'" in str(info.value)


def test_token_tags_become_names(saved: Path) -> None:
    examples = read_token_examples(saved / "dict", hf_split="test", tags_field="ner_tags")
    assert [(e.tokens, e.tags, e.text) for e in examples] == [(("Ann", "Lee"), ("B-PER", "I-PER"), "Ann Lee")]


def test_split_choice(saved: Path) -> None:
    with pytest.raises(DataError, match="several splits; choose one with hf_split: train, test"):
        read_text_examples(saved / "dict")
    with pytest.raises(DataError, match="no split 'dev'; available splits: train, test"):
        read_text_examples(saved / "dict", hf_split="dev")
    assert len(read_text_examples(saved / "one_split")) == 2


def test_plain_dataset_with_integer_labels(saved: Path) -> None:
    assert detect_format(saved / "plain") == "hf"
    examples = read_text_examples(saved / "plain", text_column="sentence")
    assert [e.labels for e in examples] == [("0",), ("1",)]


def test_folder_that_is_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="save_to_disk") as info:
        read_text_examples(tmp_path)
    assert info.value.file == str(tmp_path)
