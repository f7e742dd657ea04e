"""``relation_cls``: entity markup and spans, the SemEval-2010 Task 8 file reader, marker insertion and
truncation, the official score against an independent re-implementation of the task's Perl scorer, training
through the public API (loss falls, markers train, save/load exact) and bad input named by file, line and field."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from adaptune import Predictor, load_config, train
from adaptune.api import TrainResult
from adaptune.config import validate_config
from adaptune.data.formats.relations import RelationExample, parse_markup, read_semeval
from adaptune.errors import DataError
from adaptune.evaluation.relations import semeval_report
from adaptune.io import load_adapter
from adaptune.registry import build_task
from adaptune.tasks.relation_cls import MARKERS, RelationClassification
from task_kit import PATTERNS, write_relations


def make_task() -> RelationClassification:
    task = build_task(validate_config({"task": {"name": "relation_cls"}}).task)
    assert isinstance(task, RelationClassification)
    return task


# --- markup and files ---------------------------------------------------------------------------------------
def test_markup_is_stripped_and_spans_point_at_the_entities() -> None:
    text, e1, e2 = parse_markup("The <e1>author</e1> of a keygen uses a <e2>disassembler</e2>.")
    assert text == "The author of a keygen uses a disassembler."
    assert text[slice(*e1)] == "author" and text[slice(*e2)] == "disassembler"
    text, e1, e2 = parse_markup("<e2>wine</e2> fills the <e1>bottle</e1>")  # e2 first is allowed
    assert (text[slice(*e1)], text[slice(*e2)]) == ("bottle", "wine")


@pytest.mark.parametrize(
    ("marked", "says"),
    [
        ("no entities here", "<e1> is missing"),
        ("<e1>a</e1> and b", "<e2> is missing"),
        ("<e1>a</e1> <e1>b</e1> <e2>c</e2>", "occurs twice"),
        ("</e1>a<e1> <e2>c</e2>", "must come after"),
        ("<e1>a <e2>b</e2> c</e1>", "overlap"),
        ("<e1> </e1> <e2>c</e2>", "blank"),
    ],
)
def test_bad_markup_is_refused(marked: str, says: str) -> None:
    with pytest.raises(DataError, match=says) as err:
        parse_markup(marked)
    assert err.value.field == "text"


SEMEVAL = (
    '1\t"The system as described above has its greatest application in an arrayed <e1>configuration</e1> of '
    'antenna <e2>elements</e2>."\r\nComponent-Whole(e2,e1)\r\nComment: Not a collection.\r\n\r\n'
    '2\t"The <e1>child</e1> was carefully wrapped and bound into the <e2>cradle</e2> by means of a cord."\r\n'
    "Other\r\nComment:\r\n\r\n"
)


def test_semeval_files_are_read_as_released(tmp_path: Path) -> None:
    path = tmp_path / "TRAIN.TXT"
    path.write_bytes(SEMEVAL.encode())
    examples = read_semeval(path)
    assert [(e.entity("e1"), e.entity("e2"), e.label) for e in examples] == [
        ("configuration", "elements", "Component-Whole(e2,e1)"),
        ("child", "cradle", "Other"),
    ]
    assert examples[1].source == f"{path}:5"
    path.write_bytes(SEMEVAL.replace("<e2>cradle</e2>", "cradle").encode())
    with pytest.raises(DataError, match="<e2> is missing") as err:
        read_semeval(path)
    assert (err.value.file, err.value.line, err.value.field) == (str(path), 5, "sentence")


def test_the_real_release_reads_completely(shared_data: Path) -> None:
    folder = shared_data / "semeval2010_task8"
    task = make_task()
    cfg = validate_config({"task": {"name": "relation_cls"}}).data
    train_set = task.read(str(folder / "TRAIN_FILE.TXT"), cfg, split="train")
    test_set = task.read(str(folder / "TEST_FILE_FULL.TXT"), cfg, split="test")
    assert (len(train_set), len(test_set)) == (8000, 2717)  # the counts of the dataset's README
    counts = Counter(e.label for e in train_set)
    assert counts["Other"] == 1410 and counts["Entity-Destination(e2,e1)"] == 1 and len(counts) == 19
    assert Counter(e.label for e in test_set)["Cause-Effect(e2,e1)"] == 194
    assert "Minneapolis-St. Paul" in train_set[1789].text  # id 1790, as released (not an edited copy)


def test_jsonl_spans_and_errors_name_line_and_field(tmp_path: Path) -> None:
    task = make_task()
    cfg = validate_config({"task": {"name": "relation_cls"}}).data
    path = write_relations(tmp_path / "spans.jsonl", 6, spans=True)
    examples = task.read(str(path), cfg, split="train")
    marked = task.read(str(write_relations(tmp_path / "marked.jsonl", 6)), cfg, split="train")
    assert [(e.text, e.e1, e.e2, e.label) for e in examples] == [(e.text, e.e1, e.e2, e.label) for e in marked]
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace('"e2": [', '"e2": ["x", ')
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        task.read(str(path), cfg, split="train")
    assert (err.value.line, err.value.field) == (4, "e2")


# --- tokens -------------------------------------------------------------------------------------------------
def test_markers_surround_the_entities_and_survive_truncation(tiny_bert: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    task = make_task()
    example = task.parse_input("a long sentence where the <e1>red apple</e1> lies far from the <e2>bottle</e2> here")
    enc = task.encode(example, tokenizer, [], 64)
    base = len(tokenizer)
    ids = enc.input_ids
    marks = [ids.index(base + k) for k in range(len(MARKERS))]
    assert marks == sorted(marks) and enc.starts == (marks[0], marks[2])
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.decode(ids[marks[0] + 1 : marks[1]]) == "red apple"
    assert tokenizer.decode(ids[marks[2] + 1 : marks[3]]) == "bottle"
    short = task.encode(example, tokenizer, [], 12)
    assert len(short.input_ids) == 12 and short.truncated
    assert all(base + k in short.input_ids for k in range(len(MARKERS)))
    assert short.input_ids[0] == tokenizer.cls_token_id and short.input_ids[-1] == tokenizer.sep_token_id


# --- the official score -------------------------------------------------------------------------------------
def perl_scorer_macro_f1(gold: list[str], pred: list[str]) -> float:
    """The official "(9+1)-way, directionality taken into account" macro-F1, computed as the task's Perl scorer
    does: a confusion matrix over undirected relations whose diagonal holds only exact (directed) matches, a
    "wrong direction" count per relation added to both its row and column sums, Other left out of the average."""

    def undirected(label: str) -> str:
        return label.split("(")[0]

    classes = sorted({undirected(x) for x in gold + pred})
    matrix = {g: dict.fromkeys(classes, 0) for g in classes}
    wrong_dir = dict.fromkeys(classes, 0)
    for g, p in zip(gold, pred, strict=True):
        if undirected(g) == undirected(p) and g != p:
            wrong_dir[undirected(g)] += 1
        else:
            matrix[undirected(g)][undirected(p)] += 1
    f1s = []
    for c in classes:
        if c == "Other":
            continue
        tp = matrix[c][c]
        column = sum(matrix[g][c] for g in classes) + wrong_dir[c]
        row = sum(matrix[c].values()) + wrong_dir[c]
        p = tp / column if column else 0.0
        r = tp / row if row else 0.0
        f1s.append(2 * p * r / (p + r) if p + r else 0.0)
    return sum(f1s) / len(f1s)


def test_official_score_equals_the_scorer_on_random_predictions() -> None:
    rng = random.Random(0)
    relations = ["Cause-Effect", "Component-Whole", "Member-Collection", "Message-Topic"]
    labels = ["Other"] + [f"{r}({d})" for r in relations for d in ("e1,e2", "e2,e1")]
    for _ in range(20):
        gold = [rng.choice(labels) for _ in range(200)]
        pred = [g if rng.random() < 0.5 else rng.choice(labels) for g in gold]
        assert semeval_report(gold, pred)["macro_f1"] == pytest.approx(perl_scorer_macro_f1(gold, pred), abs=1e-12)


def test_official_score_counts_direction_and_leaves_out_other() -> None:
    gold = ["Cause-Effect(e1,e2)", "Cause-Effect(e1,e2)", "Other", "Message-Topic(e2,e1)"]
    pred = ["Cause-Effect(e1,e2)", "Cause-Effect(e2,e1)", "Message-Topic(e2,e1)", "Message-Topic(e2,e1)"]
    report = semeval_report(gold, pred)
    cause, topic = report["relations"]["Cause-Effect"], report["relations"]["Message-Topic"]
    assert (cause["precision"], cause["recall"], cause["wrong_direction"]) == (0.5, 0.5, 1)
    assert (topic["precision"], topic["recall"]) == (0.5, 1.0)
    assert "Other" not in report["relations"]
    assert report["macro_f1"] == pytest.approx((0.5 + 2 / 3) / 2)


# --- training -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def relation_run(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    folder = tmp_path_factory.mktemp("relations")
    cfg = load_config(
        None,
        [
            f"model.name_or_path={tiny_bert}",
            "task.name=relation_cls",
            "method.name=lora",
            "method.r=4",
            f"data.train={write_relations(folder / 'train.jsonl', 160, seed=1)}",
            f"data.dev={write_relations(folder / 'dev.jsonl', 40, seed=2)}",
            "data.max_length=32",
            "data.batch_size=16",
            "training.epochs=6",
            "training.learning_rate=0.01",
            "training.progress=false",
            f"training.output_dir={folder / 'run'}",
        ],
    )
    return train(cfg)


def test_training_learns_the_relations_and_the_markers(relation_run: TrainResult) -> None:
    model = relation_run.model
    assert relation_run.results["metric"] == "official_f1"
    dev = relation_run.results["splits"]["dev"]["headline"]
    assert dev["accuracy"] > 1 / len(PATTERNS) + 0.2, dev  # chance is 0.2
    assert dev["official_f1"] > 0.3, dev
    head = model.head
    assert head.markers.shape == (len(MARKERS), model.info.hidden_size)
    initial = model.task._marker_init  # the embeddings of "[ ] < >" the markers started from
    assert initial is not None and not torch.allclose(head.markers.detach(), initial)
    stored = load_adapter(relation_run.adapter_dir)
    assert torch.equal(stored.tensors["head.markers"], head.markers.detach())  # the markers travel with the head


def test_save_load_gives_identical_predictions(relation_run: TrainResult) -> None:
    inputs = [
        "the <e1>apple</e1> is inside the <e2>bottle</e2> .",
        {"text": "the river came from the forest .", "e1": [4, 9], "e2": [24, 30]},
    ]
    loaded = Predictor.load(relation_run.adapter_dir)
    live = Predictor(relation_run.model, load_adapter(relation_run.adapter_dir).config)
    got = loaded.predict(inputs)
    assert got[1]["e1"] == {"text": "river", "start": 4, "end": 9}
    assert got[1]["e2"] == {"text": "forest", "start": 24, "end": 30}
    assert set(got[0]) == {"text", "e1", "e2", "relation", "score", "scores"}
    assert loaded.logits(inputs)[0].tolist() == live.logits(inputs)[0].tolist()


def test_prediction_input_errors_name_the_field() -> None:
    task = make_task()
    with pytest.raises(DataError) as err:
        task.parse_input({"text": "wine in a bottle", "e1": [0, 4]})
    assert err.value.field == "e2" and err.value.file is None
    with pytest.raises(DataError) as err:
        task.parse_input({"text": "wine in a bottle", "e1": [0, 4], "e2": [2, 6]})
    assert "overlap" in str(err.value)
    assert isinstance(task.parse_input("<e1>a</e1> b <e2>c</e2>"), RelationExample)
