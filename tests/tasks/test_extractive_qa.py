"""``extractive_qa`` on a tiny random BERT: passage windows, gold positions, unmatched offsets, training through the
public API, save/load, decoding limits, and exact match / F1 against the official SQuAD v1.1 and CMRC 2018
scripts (re-implemented here from their published code, independently of the package)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from adaptune import Predictor, load_config, train
from adaptune.api import TrainResult
from adaptune.config import validate_config
from adaptune.data.formats.squad import Answer, QAExample, locate_answer, read_qa_examples
from adaptune.errors import DataError
from adaptune.io import CONFIG_FILE
from adaptune.registry import build_task
from adaptune.tasks.extractive_qa import ExtractiveQA, QAPrediction
from task_kit import CITIES, NAMES, qa_rows


def make_task(**options: object) -> ExtractiveQA:
    task = build_task(validate_config({"task": {"name": "extractive_qa", **options}}).task)
    assert isinstance(task, ExtractiveQA)
    return task


@pytest.fixture(scope="module")
def tokenizer(tiny_bert: Path):  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(tiny_bert)


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def squad_file(path: Path, paragraphs: list[dict[str, object]]) -> Path:
    path.write_text(json.dumps({"version": "1.1", "data": [{"paragraphs": paragraphs}]}, indent=2), encoding="utf-8")
    return path


# --- windows ------------------------------------------------------------------------------------------------
LONG = " ".join(f"{NAMES[i % 12]} visited {CITIES[i % 10]} in {1990 + i} , and it rained." for i in range(12))


def test_windows_cover_every_character_and_offsets_map_back(tokenizer) -> None:  # type: ignore[no-untyped-def]
    task = make_task(doc_stride=8)
    example = QAExample("x", "who visited rome ?", LONG)
    encoded = task.encode(example, tokenizer, [], 40)
    windows = encoded.windows
    assert len(windows) > 3 and encoded.input_ids == windows[0].input_ids and len(encoded) == 40
    assert all(len(w) <= 40 for w in windows) and len(windows[-1]) <= len(windows[0])
    covered = set()
    for window in windows:
        tokens = tokenizer.convert_ids_to_tokens(window.input_ids)
        passage = tokens[window.context_start : window.context_start + len(window.offsets)]
        assert tokens[window.context_start + len(window.offsets)] == "[SEP]"
        for token, (begin, end) in zip(passage, window.offsets, strict=True):
            assert LONG[begin:end].lower() == token.removeprefix("##"), (token, LONG[begin:end])
            covered.update(range(begin, end))
    assert {i for i, ch in enumerate(LONG) if not ch.isspace()} <= covered, "every passage character is in a window"
    for left, right in itertools.pairwise(windows):
        assert left.offsets[-8:] == right.offsets[:8], "consecutive windows share doc_stride tokens"


def test_the_answer_is_found_in_the_windows_that_hold_it(tokenizer) -> None:  # type: ignore[no-untyped-def]
    task = make_task(doc_stride=8)
    start = LONG.index("2001")
    example = QAExample("x", "when ?", LONG, (Answer("2001", start, start),))
    encoded = task.encode(example, tokenizer, ["start", "end"], 40)
    holding = [w for w in encoded.windows if w.start > 0]
    assert 1 <= len(holding) <= 2
    for window in holding:
        begin = window.offsets[window.start - window.context_start][0]
        end = window.offsets[window.end - window.context_start][1]
        assert LONG[begin:end] == "2001"
    assert all((w.start, w.end) == (0, 0) for w in encoded.windows if w not in holding), "others point at [CLS]"
    batch = task.collate([encoded, encoded], tokenizer.pad_token_id)
    rows = len(encoded.windows)
    assert batch["input_ids"].shape == (2 * rows, 40) and batch["example_index"].tolist() == [0] * rows + [1] * rows
    left = task.collate([encoded, task.encode(QAExample("y", "a ?", "short one", ()), tokenizer, [], 40)], 0, "left")
    assert "labels" not in left, "no targets when a question is unlabelled"


def test_long_questions_are_cut_and_noted(tokenizer) -> None:  # type: ignore[no-untyped-def]
    task = make_task(max_question_tokens=6)
    encoded = task.encode(QAExample("x", LONG, "a short passage ."), tokenizer, [], 40)
    tokens = tokenizer.convert_ids_to_tokens(encoded.input_ids)
    assert encoded.truncated and tokens.index("[SEP]") == 7, "six question tokens after [CLS]"
    note = task.truncation_note("dev", [encoded], 40)
    assert note is not None and "1 of 1 questions cut to 6 tokens" in note


# --- unmatched offsets --------------------------------------------------------------------------------------
def test_offsets_are_recovered_near_or_counted_and_skipped(tokenizer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    context = "The 𠀀 river flows past the old mill and the new mill."
    assert locate_answer(context, "old mill", context.index("old mill")) == context.index("old mill")
    utf16 = context.index("old mill") + 1  # one character outside the BMP before it: two UTF-16 units
    assert locate_answer(context, "old mill", utf16) == context.index("old mill")
    assert locate_answer(context, "new mill", context.index("new mill") - 5) == context.index("new mill")
    assert locate_answer(context, "river", -1) == context.index("river")
    assert locate_answer(context, "mill", -1) is None, "two occurrences: ambiguous"
    assert locate_answer(context, "windmill", 3) is None
    rows = [
        {"question": "what flows ?", "context": context, "answers": [{"text": "river", "answer_start": 7}]},
        {"question": "q2 ?", "context": context, "answers": [{"text": "dam", "answer_start": 10}]},
        {"question": "q3 ?", "context": context, "answers": [{"text": "mill", "answer_start": -1}]},
    ]
    examples = read_qa_examples(write_jsonl(tmp_path / "train.jsonl", rows))
    assert examples[0].answers[0].recovered and examples[0].answers[0].start == context.index("river")
    assert [ex.answers[0].start for ex in examples[1:]] == [None, None]
    task = make_task()
    encoded = [task.encode(ex, tokenizer, ["start", "end"], 64) for ex in examples]
    assert [e.skipped for e in encoded] == [False, True, True]
    assert all(w.start == -100 for e in encoded[1:] for w in e.windows), "no target from a wrong offset"
    note = task.truncation_note("train", encoded, 64)
    assert note is not None and "2 answers' answer_start does not match" in note and "2 questions" in note
    assert "1 answers' text was found near" in note
    assert task.training_examples(list(encoded), 64) == [encoded[0]]
    assert "scored by text" in (task.truncation_note("dev", encoded, 64) or "")
    with pytest.raises(DataError, match="no training question has an answer"):
        task.label_names(examples[1:])


# --- training through the API -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qa_run(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    folder = tmp_path_factory.mktemp("qa")
    rows = qa_rows(120, seed=1)
    bad = dict(rows[0], id="bad", answers={"text": ["tokyo"], "answer_start": [3]})  # no such text: skipped
    train_file = write_jsonl(folder / "train.jsonl", [bad, *rows])
    dev = squad_file(
        folder / "dev.json",
        [
            {"context": r["context"], "qas": [{"id": r["id"], "question": r["question"], "answers": [a]}]}
            for r in qa_rows(24, seed=2)
            for a in [{"text": r["answers"]["text"][0], "answer_start": r["answers"]["answer_start"][0]}]  # type: ignore[index]
        ],
    )
    cfg = load_config(
        None,
        [
            f"model.name_or_path={tiny_bert}",
            "task.name=extractive_qa",
            "task.doc_stride=16",
            "method.name=bottleneck",
            "method.reduction_factor=4",
            f"data.train={train_file}",
            f"data.dev={dev}",
            "data.max_length=64",
            "data.batch_size=8",
            "training.epochs=3",
            "training.learning_rate=0.01",
            "training.log_every=1",
            "training.progress=false",
            f"training.output_dir={folder / 'run'}",
        ],
    )
    return train(cfg)


def test_training_lowers_the_loss_and_notes_the_skipped_answer(qa_run: TrainResult) -> None:
    lines = (qa_run.output_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    losses = [r["train_loss"] for r in map(json.loads, lines) if "train_loss" in r]
    assert len(losses) >= 30 and sum(losses[-8:]) / 8 < sum(losses[:8]) / 8 - 0.3, losses
    assert any("1 answers' answer_start does not match" in n and "1 questions" in n for n in qa_run.notes)
    dev = qa_run.results["splits"]["dev"]["headline"]
    assert set(dev) >= {"exact_match", "f1", "loss"} and 0 <= dev["exact_match"] <= dev["f1"] <= 1
    assert qa_run.results["metric"] == "f1"
    lines = (qa_run.output_dir / "predictions_dev.jsonl").read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    assert set(first) == {"question", "answer", "start", "end", "score"} and len(lines) == 24


def test_save_load_gives_identical_predictions(qa_run: TrainResult) -> None:
    items = [{"question": r["question"], "context": r["context"]} for r in qa_rows(6, seed=3)]
    description = json.loads((qa_run.adapter_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    in_memory = Predictor(qa_run.model, description)
    loaded = Predictor.load(qa_run.adapter_dir)
    assert loaded.predict(items) == in_memory.predict(items)
    a, b = loaded.logits(items), in_memory.logits(items)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].shape[1] == 2 and a[0].shape[0] >= 40, "every window's tokens, start and end"
    single = [loaded.predict([item])[0] for item in items]
    for one, many in zip(single, loaded.predict(items), strict=True):
        assert one["answer"] == many["answer"] and one["score"] == pytest.approx(many["score"], abs=1e-5)
    for item, out in zip(items, single, strict=True):
        assert item["context"][out["start"] : out["end"]] == out["answer"] and 0 < out["score"] <= 1
    saved = json.loads((qa_run.output_dir / "eval_dev.json").read_text(encoding="utf-8"))
    again = loaded.evaluate(qa_run.output_dir.parent / "dev.json")
    assert again.headline["f1"] == pytest.approx(saved["headline"]["f1"])


# --- decoding -----------------------------------------------------------------------------------------------
def test_decode_keeps_start_before_end_and_within_max_answer_length(tokenizer) -> None:  # type: ignore[no-untyped-def]
    task = make_task(max_answer_length=3, doc_stride=8)
    encoded = task.encode(QAExample("x", "who ?", LONG), tokenizer, [], 40)
    batch = task.collate([encoded], tokenizer.pad_token_id)
    rows, width = batch["input_ids"].shape
    window = encoded.windows[1]
    at = window.context_start
    logits = torch.zeros(rows, width, 2)
    logits[1, at + 10, 0] = 9.0  # the best start ...
    logits[1, at + 2, 1] = 9.0  # ... is after the best end: not a span
    logits[1, at + 20, 1] = 8.0  # too far from the start (max 3 tokens)
    logits[1, 0, :] = 20.0  # [CLS] and the question are never answers
    logits[1, at + 12, 1] = 5.0
    prediction = task.decode(logits, batch, [encoded])[0]
    assert isinstance(prediction, QAPrediction)
    assert (prediction.start, prediction.end) == (window.offsets[10][0], window.offsets[12][1])
    assert prediction.text == LONG[prediction.start : prediction.end] and 0 < prediction.score < 1
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        noisy = torch.randn(rows, width, 2, generator=generator) * 5
        for p in task.decode(noisy, batch, [encoded]):
            assert p.start <= p.end and len(tokenizer.tokenize(p.text)) <= 3


def test_decode_folds_left_padded_rows(tokenizer) -> None:  # type: ignore[no-untyped-def]
    task = make_task(doc_stride=8)
    short = task.encode(QAExample("s", "who ?", "bob lives in rome ."), tokenizer, [], 40)
    long = task.encode(QAExample("l", "who ?", LONG), tokenizer, [], 40)
    batch = task.collate([short, long], tokenizer.pad_token_id, "left")
    logits = torch.zeros(*batch["input_ids"].shape, 2)
    pad = batch["input_ids"].shape[1] - len(short)
    rome = short.windows[0].context_start + 3  # bob lives in [rome] .
    logits[0, pad + rome, :] = 5.0
    first = task.decode(logits, batch, [short, long])[0]
    assert first.text == "rome"


# --- bad input ----------------------------------------------------------------------------------------------
def test_bad_squad_files_name_file_line_and_field(tmp_path: Path) -> None:
    good = {"question": "who ?", "id": "a", "answers": [{"text": "bob", "answer_start": 0}]}
    path = squad_file(tmp_path / "d.json", [{"context": "bob is here", "qas": [good, {"id": "b", "answers": []}]}])
    with pytest.raises(DataError) as err:
        read_qa_examples(path)
    assert err.value.file == str(path) and err.value.field == "data[0].paragraphs[0].qas[1].question"
    bad_answers = dict(good, question="where ?", answers={"text": "bob"})
    path = squad_file(tmp_path / "e.json", [{"context": "bob is here", "qas": [good, bad_answers]}])
    with pytest.raises(DataError) as err:
        read_qa_examples(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert err.value.field == "data[0].paragraphs[0].qas[1].answers"
    assert err.value.line is not None and '"where ?"' in lines[err.value.line - 1]
    no_offset = dict(good, question="what ?", answers=[{"text": "bob"}])
    path = squad_file(tmp_path / "f.json", [{"context": "bob is here", "qas": [no_offset]}])
    with pytest.raises(DataError, match="integer character offset") as err:
        read_qa_examples(path)
    assert err.value.field == "data[0].paragraphs[0].qas[0].answers[0].answer_start"
    broken = tmp_path / "g.json"
    broken.write_text('{\n  "data": [\n    {"paragraphs": [}\n  ]\n}\n', encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON") as err:
        read_qa_examples(broken)
    assert err.value.line == 3


def test_bad_jsonl_lines_and_predict_inputs(tmp_path: Path) -> None:
    rows = qa_rows(3, seed=0)
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1])[:-3] + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="not valid JSON") as err:
        read_qa_examples(path)
    assert (err.value.file, err.value.line) == (str(path), 2)
    missing = {k: v for k, v in rows[2].items() if k != "question"}
    write_jsonl(path, [rows[0], rows[1], missing])
    with pytest.raises(DataError) as err:
        read_qa_examples(path)
    assert (err.value.line, err.value.field) == (3, "question")
    unlabelled = [{k: v for k, v in r.items() if k != "answers"} for r in rows]
    with pytest.raises(DataError, match="has no answers"):
        read_qa_examples(write_jsonl(path, unlabelled))
    assert read_qa_examples(path, require_labels=False)[0].answers == ()
    with pytest.raises(DataError, match="extractive_qa reads"):
        read_qa_examples(tmp_path / "x.csv")
    task = make_task()
    with pytest.raises(DataError) as err:
        task.parse_input({"question": "who ?"})
    assert err.value.field == "context"
    with pytest.raises(DataError) as err:
        task.parse_input("just a string")
    assert err.value.field == "question"


def test_reader_layouts_agree(tmp_path: Path) -> None:
    rows = qa_rows(4, seed=5)
    flat = read_qa_examples(write_jsonl(tmp_path / "a.jsonl", rows))
    listed = [
        dict(r, answers=[{"text": r["answers"]["text"][0], "answer_start": r["answers"]["answer_start"][0]}])
        for r in rows
    ]  # type: ignore[index]
    array = tmp_path / "b.json"
    array.write_text(json.dumps(listed), encoding="utf-8")
    nested = squad_file(
        tmp_path / "c.json",
        [{"context": r["context"], "qas": [{k: r[k] for k in ("id", "question", "answers")}]} for r in listed],
    )
    for other in (read_qa_examples(array), read_qa_examples(nested)):
        assert [(e.id, e.question, e.context, e.answers) for e in other] == [
            (e.id, e.question, e.context, e.answers) for e in flat
        ]
    assert flat[1].source == f"{tmp_path / 'a.jsonl'}:2"
