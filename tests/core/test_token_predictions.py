"""Token-task predictions: raw text split as the training data was, entities with offsets into the text, tags
that break the scheme repaired and flagged, the splitting choice stored in the adapter and read back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from seqeval.metrics.sequence_labeling import get_entities

from adaptune import Predictor, load_config, train
from adaptune.config import validate_config
from adaptune.data.records import token_example_from_text, token_example_from_words
from adaptune.errors import AdapterFileError, DataError
from adaptune.evaluation.tagging import extract_entities, repaired_entities, validate_tags
from adaptune.io import CONFIG_FILE, reseal
from adaptune.registry import build_task
from adaptune.tasks.token_cls import TokenClassification, entity_outputs

LABELS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER"]


def token_task(state: dict[str, Any] | None = None) -> TokenClassification:
    """A token-classification task with ``state`` loaded as from an adapter (BIO tags unless it says else)."""
    task = build_task(validate_config({"task": {"name": "token_cls"}}).task)
    assert isinstance(task, TokenClassification)
    task.load_learned_state({"tag_scheme": "IOB2", **(state or {})})
    return task


def predict_with_tags(task: TokenClassification, text: str, tags: list[str]) -> dict[str, Any]:
    """What predict returns for ``text`` when the model gives ``tags``, one per word, with probability 0.9."""
    example = task.parse_input(text)
    assert len(example.tokens) == len(tags), example.tokens
    return task.to_output(example, ([LABELS.index(t) for t in tags], [0.9] * len(tags)), LABELS)


def spans(output: dict[str, Any]) -> list[tuple[str, str, int, int, bool]]:
    return [(e["type"], e["text"], e["start"], e["end"], e["repaired"]) for e in output["entities"]]


# --- the README sentence ----------------------------------------------------------------------------------


def test_readme_sentence_gives_berlin_at_15_to_21() -> None:
    text = "Alice moved to Berlin."
    out = predict_with_tags(token_task(), text, ["B-PER", "O", "O", "B-LOC", "O"])
    assert out["tokens"] == ["Alice", "moved", "to", "Berlin", "."]
    assert spans(out) == [("PER", "Alice", 0, 5, False), ("LOC", "Berlin", 15, 21, False)]
    assert text[15:21] == "Berlin" and out["entities"][1]["score"] == pytest.approx(0.9)


def test_entities_slice_the_original_text_around_quotes_urls_and_emoji() -> None:
    text = "“Alice” (of Acme Inc.) wrote to bob@example.com from Berlin🇩🇪: see https://acme.example/x."
    task = token_task()
    example = task.parse_input(text)
    tags = ["O"] * len(example.tokens)
    for word, tag in (("Alice", "B-PER"), ("Acme", "B-ORG"), ("Inc.", "I-ORG"), ("Berlin", "B-LOC")):
        tags[example.tokens.index(word)] = tag
    out = predict_with_tags(task, text, tags)
    assert [(e["type"], e["text"]) for e in out["entities"]] == [
        ("PER", "Alice"),
        ("ORG", "Acme Inc."),
        ("LOC", "Berlin"),
    ]
    assert all(text[e["start"] : e["end"]] == e["text"] for e in out["entities"])
    assert "bob@example.com" in example.tokens and "https://acme.example/x" in example.tokens


def test_mixed_chinese_entities_keep_their_offsets() -> None:
    text = "张三在Berlin工作。"
    task = token_task({"letters_in_cjk": "words"})
    out = predict_with_tags(task, text, ["B-PER", "I-PER", "O", "B-LOC", "O", "O", "O"])
    assert spans(out) == [("PER", "张三", 0, 2, False), ("LOC", "Berlin", 3, 9, False)]


# --- the splitting choice: learned, stored, and what an old adapter gets --------------------------------------


def write(path: Path, sentences: list[str]) -> Path:
    """A two-column CoNLL file: each sentence's space-separated tokens, tagged O except capitalised words."""
    lines = []
    for sentence in sentences:
        lines += [f"{tok} {'B-LOC' if tok[:1].isupper() else 'O'}" for tok in sentence.split(" ")] + [""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


CONLL_STYLE = ["We moved to Berlin 's centre .", "They do n't like ( Paris ) , I 'm told ."]
WHITESPACE_STYLE = ["We moved to Berlin's centre.", "They don't like (Paris), I'm told."]


def test_the_choice_is_learned_from_training_data_and_round_trips(tmp_path: Path) -> None:
    learned = {}
    for name, sentences in (("conll", CONLL_STYLE), ("whitespace", WHITESPACE_STYLE)):
        task = token_task({"tag_scheme": None})
        task.read(str(write(tmp_path / f"{name}.conll", sentences)), task_data(), split="train")
        learned[name] = task.learned_state()
        again = token_task(json.loads(json.dumps(learned[name])))  # as written to and read from the adapter file
        assert again.learned_state() == learned[name]
        assert again.parse_input("Berlin's (Paris).") == task.parse_input("Berlin's (Paris).")
    assert learned["conll"] == {
        "tag_scheme": "IOB2",
        "letters_in_cjk": None,
        "punctuation": "split",
        "clitics": "split",
    }
    assert learned["whitespace"]["punctuation"] == "attached" and learned["whitespace"]["clitics"] == "keep"
    assert token_task(learned["conll"]).parse_input("Berlin's (Paris).").tokens == (
        "Berlin",
        "'s",
        "(",
        "Paris",
        ")",
        ".",
    )
    assert token_task(learned["whitespace"]).parse_input("Berlin's (Paris).").tokens == ("Berlin's", "(Paris).")


def test_training_data_that_tells_nothing_stores_the_defaults(tmp_path: Path) -> None:
    task = token_task({"tag_scheme": None})
    task.read(str(write(tmp_path / "plain.conll", ["We moved to Berlin"])), task_data(), split="train")
    assert (task.punctuation, task.clitics) == ("split", "keep")


def test_an_adapter_saved_before_the_choice_existed_splits_punctuation_and_keeps_clitics() -> None:
    old = token_task({"tag_scheme": "IOB2", "letters_in_cjk": None})  # the task state adaptune wrote before
    assert (old.punctuation, old.clitics) == (None, None)
    assert old.parse_input("Alice's flat in Berlin.").tokens == ("Alice's", "flat", "in", "Berlin", ".")
    assert old.parse_input({"text": "Berlin."}) == token_example_from_text("Berlin.")
    assert old.parse_input({"tokens": ["Berlin."]}).tokens == ("Berlin.",)


def test_an_unknown_stored_choice_is_refused() -> None:
    with pytest.raises(AdapterFileError, match=r"task_state.punctuation is 'nltk'; expected one of split, attached"):
        token_task({"punctuation": "nltk"})


def task_data() -> Any:
    return validate_config({"task": {"name": "token_cls"}}).data


@pytest.fixture(scope="module")
def clitic_adapter(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter trained (one short epoch, tiny BERT) on CoNLL-style data that splits clitics."""
    folder = tmp_path_factory.mktemp("clitics")
    data = write(folder / "train.conll", CONLL_STYLE * 4)
    cfg = load_config(
        None,
        [
            f"model.name_or_path={tiny_bert}",
            "task.name=token_cls",
            "method.name=lora",
            f"data.train={data}",
            f"data.dev={data}",
            "data.batch_size=8",
            "data.max_length=32",
            "training.epochs=1",
            "training.progress=false",
            f"training.output_dir={folder / 'run'}",
        ],
    )
    return train(cfg).adapter_dir


def test_the_choice_is_saved_in_the_adapter_and_used_by_predict(clitic_adapter: Path, tmp_path: Path) -> None:
    state = json.loads((clitic_adapter / CONFIG_FILE).read_text(encoding="utf-8"))["task_state"]
    assert (state["punctuation"], state["clitics"]) == ("split", "split")
    (out,) = Predictor.load(clitic_adapter).predict(["Berlin's mayor didn't come."])
    assert out["tokens"] == ["Berlin", "'s", "mayor", "did", "n't", "come", "."]
    assert all(out["text"][e["start"] : e["end"]] == e["text"] for e in out["entities"])
    assert all(isinstance(e["repaired"], bool) for e in out["entities"])

    old = tmp_path / "old-adapter"
    shutil.copytree(clitic_adapter, old)
    config = json.loads((old / CONFIG_FILE).read_text(encoding="utf-8"))
    for key in ("punctuation", "clitics"):
        del config["task_state"][key]
    (old / CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")
    reseal(old)  # an adapter saved before these fields existed: its description is what it was saved with
    (out,) = Predictor.load(old).predict(["Berlin's mayor didn't come."])
    assert out["tokens"] == ["Berlin's", "mayor", "didn't", "come", "."]


# --- repairing tags that break the scheme ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "scheme", "expected"),
    [
        # IOB2: an I- that does not continue its type starts an entity; what was well formed is not flagged
        (["B-ORG", "I-MISC"], "IOB2", [("ORG", 0, 1, False), ("MISC", 1, 2, True)]),
        (["O", "I-PER", "I-PER", "O"], "IOB2", [("PER", 1, 3, True)]),
        (["I-PER"], "IOB2", [("PER", 0, 1, True)]),
        (
            ["B-PER", "I-PER", "I-LOC", "B-LOC"],
            "IOB2",
            [("PER", 0, 2, False), ("LOC", 2, 3, True), ("LOC", 3, 4, False)],
        ),
        # IOBES / BMES: unclosed entities are kept, stray inside/end tags start one
        (["B-PER", "I-PER", "O", "S-LOC"], "IOBES", [("PER", 0, 2, True), ("LOC", 3, 4, False)]),
        (["O", "E-LOC", "B-ORG", "E-PER"], "IOBES", [("LOC", 1, 2, True), ("ORG", 2, 3, True), ("PER", 3, 4, True)]),
        (["M-ORG", "E-ORG", "B-PER", "M-PER", "E-PER"], "BMES", [("ORG", 0, 2, True), ("PER", 2, 5, False)]),
        # IOB1: an I- opening an entity is the scheme, not a repair
        (["I-PER", "B-PER", "O", "I-LOC"], "IOB1", [("PER", 0, 1, False), ("PER", 1, 2, False), ("LOC", 3, 4, False)]),
        (["O", "O"], "IOB2", []),
    ],
)
def test_invalid_tags_are_repaired_and_flagged(
    tags: list[str], scheme: str, expected: list[tuple[str, int, int, bool]]
) -> None:
    example = token_example_from_words([f"w{i}" for i in range(len(tags))], [], " ")
    out = entity_outputs(example, tags, [0.5] * len(tags), scheme)
    assert [(e["type"], *_words(example, e), e["repaired"]) for e in out] == expected
    assert all(example.text[e["start"] : e["end"]] == e["text"] for e in out)


def _words(example: Any, entity: dict[str, Any]) -> tuple[int, int]:
    """The word span of an entity, from its character offsets."""
    starts = [start for start, _ in example.offsets]
    ends = [end for _, end in example.offsets]
    return starts.index(entity["start"]), ends.index(entity["end"]) + 1


def test_the_readme_sentence_with_broken_tags_still_reports_berlin() -> None:
    out = predict_with_tags(token_task(), "Alice moved to Berlin.", ["I-PER", "O", "O", "B-ORG", "O"])
    assert spans(out) == [("PER", "Alice", 0, 5, True), ("ORG", "Berlin", 15, 21, False)]
    assert out["tags"] == ["I-PER", "O", "O", "B-ORG", "O"], "the raw tags are reported as the model gave them"


def test_repair_refuses_prefixes_the_scheme_does_not_use() -> None:
    with pytest.raises(DataError, match="does not allow"):
        repaired_entities(["E-PER"], "IOB2")


_TYPES = ("PER", "LOC")
_PREFIXES = {"IOB2": "BIO", "IOB1": "BIO", "IOBES": "BIOES", "BMES": "BMESO"}


def _tags(scheme: str) -> st.SearchStrategy[list[str]]:
    tag = st.sampled_from(["O"] + [f"{p}-{t}" for p in _PREFIXES[scheme] if p != "O" for t in _TYPES])
    return st.lists(tag, max_size=12)


def _seqeval(tags: list[str]) -> list[tuple[str, int, int]]:
    as_iobes = [f"I{t[1:]}" if t.startswith("M-") else t for t in tags]
    return [(kind, start, end + 1) for kind, start, end in get_entities(as_iobes)]


@settings(max_examples=200, deadline=None)
@given(data=st.data(), scheme=st.sampled_from(sorted(_PREFIXES)))
def test_repair_matches_seqeval_default_mode(data: st.DataObject, scheme: str) -> None:
    tags = data.draw(_tags(scheme))
    assert repaired_entities(tags, scheme) == _seqeval(tags)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), scheme=st.sampled_from(sorted(_PREFIXES)))
def test_well_formed_tags_need_no_repair(data: st.DataObject, scheme: str) -> None:
    tags = data.draw(_tags(scheme))
    try:
        validate_tags(tags, scheme)
    except DataError:
        return
    assert repaired_entities(tags, scheme) == extract_entities(tags, scheme)
