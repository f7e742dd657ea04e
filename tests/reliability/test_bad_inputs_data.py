"""Bad inputs of issue "Hardening 2": each is refused with our error naming the file, line and field, not a crash.

====================================================  ===============================================================
bad input                                             tests
====================================================  ===============================================================
lone surrogate (``\\ud800`` escape) in training text   test_train_refuses_a_lone_surrogate,
                                                      test_cli_train_refuses_a_lone_surrogate
lone surrogate in any text field a reader takes       test_readers_refuse_a_lone_surrogate (text, text_pair, label,
                                                      tokens, CLUENER text, CLUENER mention, chat messages, Alpaca)
lone surrogate in predict's input                     test_cli_predict_refuses_a_lone_surrogate (file and stdin),
                                                      test_cli_predict_refuses_a_lone_surrogate_in_tokens,
                                                      test_predictor_refuses_a_lone_surrogate (the Python API)
blank line in predict's input                         test_cli_predict_refuses_a_blank_line
output lines out of step with input lines             test_cli_predict_gives_one_output_line_per_input_line
predict error without the input file                  test_cli_predict_errors_name_the_file_and_line (bad JSON, missing
                                                      field, not UTF-8, surrogate, blank line; file and ``<stdin>``)
tag with a prefix and no type (``B-``, ``S-`` ...)     test_typeless_tag_is_refused,
                                                      test_typeless_tag_with_a_named_scheme,
                                                      test_detect_scheme_locates_a_typeless_tag
``text_pair`` for an adapter trained on single texts  test_text_pair_on_a_single_text_adapter_is_refused,
                                                      test_server_core_refuses_a_text_pair_it_was_not_trained_with
no ``text_pair`` for an adapter trained on pairs      test_pair_adapter_needs_a_text_pair,
                                                      test_cli_predict_text_pair_refusal_names_file_line_and_field
adapter saved before pairs were recorded              test_adapter_saved_without_the_pair_record_takes_either
====================================================  ===============================================================
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from adaptune import Predictor, train
from adaptune.api import TrainResult
from adaptune.cli import app
from adaptune.config import DataConfig, validate_config
from adaptune.data.chat import chat_from_row
from adaptune.data.formats.jsonfile import read_jsonl_rows
from adaptune.data.readers import read_text_examples, read_token_examples
from adaptune.errors import DataError
from adaptune.evaluation.tagging import detect_scheme
from adaptune.io import CONFIG_FILE, reseal
from adaptune.registry import build_task
from bad_input_kit import cli_error, data_error, jsonl, write
from bad_input_kit import short_config as run_config

runner = CliRunner()
SURROGATE = "\\ud800"  # the six characters of a JSON escape: json.loads gives a lone surrogate
INTENTS = [("where is my parcel", "order"), ("I want my money back", "refund"), ("hello there", "greeting")]


def located(error: DataError) -> tuple[str | None, int | None, str | None]:
    return error.file, error.line, error.field


# --- lone surrogates -----------------------------------------------------------------------------------------


def surrogate_rows(folder: Path) -> Path:
    good = json.dumps({"text": "where is my parcel", "label": "order"})
    return write(folder, "train.jsonl", f'{good}\n{{"text": "hi {SURROGATE}", "label": "greeting"}}\n')


def test_train_refuses_a_lone_surrogate(tiny_bert: Path, tmp_path: Path) -> None:
    path = surrogate_rows(tmp_path)
    error = data_error(train, run_config(tiny_bert, tmp_path, f"data.train={path}"))
    assert located(error) == (str(path), 2, "text")
    assert "lone surrogate (U+D800 at character 4)" in str(error) and "not UTF-8 encodable" in str(error)


def test_cli_train_refuses_a_lone_surrogate(tiny_bert: Path, tmp_path: Path) -> None:
    path = surrogate_rows(tmp_path)
    config = write(
        tmp_path,
        "c.yaml",
        f"model: {{name_or_path: '{tiny_bert}'}}\ndata: {{train: '{path}'}}\n"
        f"training: {{max_steps: 1, progress: false, output_dir: '{tmp_path / 'run'}'}}\n",
    )
    assert f"{path}:2: field 'text': the text holds a lone surrogate" in cli_error(["train", str(config)])


CLUENER_TEXT = '{"text": "Bob ' + SURROGATE + '", "label": {"name": {"Bob": [[0, 2]]}}}'
CLUENER_MENTION = '{"text": "Bob x", "label": {"name": {"B' + SURROGATE + '": [[0, 1]]}}}'
CHAT = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "' + SURROGATE + '"}]}'
ALPACA = '{"instruction": "say ' + SURROGATE + '", "output": "ok"}'


@pytest.mark.parametrize(
    ("name", "line", "read", "field"),
    [
        ("text", '{"text": "a ' + SURROGATE + '", "label": "x"}', read_text_examples, "text"),
        (
            "text_pair",
            '{"text": "a", "text_pair": "b ' + SURROGATE + '", "label": "x"}',
            lambda p: read_text_examples(p, text_pair_column="text_pair"),
            "text_pair",
        ),
        ("label", '{"text": "a", "label": "x' + SURROGATE + '"}', read_text_examples, "label"),
        ("tokens", '{"tokens": ["Bob", "' + SURROGATE + '"], "tags": ["B-PER", "O"]}', read_token_examples, "tokens"),
        ("cluener text", CLUENER_TEXT, read_token_examples, "text"),
        ("cluener mention", CLUENER_MENTION, read_token_examples, "label"),
        (
            "chat",
            CHAT,
            lambda p: [chat_from_row(r) for r in read_jsonl_rows(p.read_text(), str(p))],
            "messages[1].content",
        ),
        ("alpaca", ALPACA, lambda p: [chat_from_row(r) for r in read_jsonl_rows(p.read_text(), str(p))], "instruction"),
    ],
)
def test_readers_refuse_a_lone_surrogate(
    tmp_path: Path, name: str, line: str, read: Callable[[Path], Any], field: str
) -> None:
    good = {
        "tokens": '{"tokens": ["Bob"], "tags": ["B-PER"]}',
        "cluener text": '{"text": "Bob", "label": {"name": {"Bob": [[0, 2]]}}}',
        "cluener mention": '{"text": "Bob", "label": {"name": {"Bob": [[0, 2]]}}}',
        "chat": '{"messages": [{"role": "user", "content": "hi"}]}',
        "alpaca": '{"instruction": "hi", "output": "ok"}',
    }.get(name, '{"text": "fine", "text_pair": "fine", "label": "y"}')
    path = write(tmp_path, "data.jsonl", f"{good}\n{line}\n")
    error = data_error(read, path)
    assert located(error) == (str(path), 2, field) and "lone surrogate" in str(error), str(error)


@pytest.fixture(scope="module")
def single(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """An adapter trained on single texts."""
    folder = tmp_path_factory.mktemp("single")
    path = jsonl(folder, "train.jsonl", [{"text": t, "label": lab} for t, lab in INTENTS])
    return train(run_config(tiny_bert, folder, f"data.train={path}"))


@pytest.fixture(scope="module")
def pairs(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """An adapter trained on text pairs."""
    folder = tmp_path_factory.mktemp("pairs")
    rows = [{"text": t, "context": "order A1", "label": lab} for t, lab in INTENTS]
    path = jsonl(folder, "train.jsonl", rows)
    return train(run_config(tiny_bert, folder, f"data.train={path}", "data.text_pair_column=context"))


@pytest.fixture(scope="module")
def tagger(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    folder = tmp_path_factory.mktemp("tagger")
    path = write(folder, "train.conll", "Alice B-PER\nlives O\nin O\nParis B-LOC\n\nBob B-PER\nwent O\n")
    return train(run_config(tiny_bert, folder, "task.name=token_cls", f"data.train={path}"))


@pytest.mark.parametrize(
    ("content", "field"),
    [('{"text": "hi ' + SURROGATE + '"}', "text"), ('{"text": "hi", "meta": ["' + SURROGATE + '"]}', "meta[0]")],
)
def test_cli_predict_refuses_a_lone_surrogate(single: TrainResult, tmp_path: Path, content: str, field: str) -> None:
    source = write(tmp_path, "in.jsonl", f"hello\n{content}\n")
    adapter = str(single.adapter_dir)
    message = f"{source}:2: field '{field}': the text holds a lone surrogate"
    assert message in cli_error(["predict", adapter, str(source)])
    stdin = cli_error(["predict", adapter, "-"], input=f"hello\n{content}\n")
    assert message.replace(str(source), "<stdin>") in stdin


def test_cli_predict_refuses_a_lone_surrogate_in_tokens(tagger: TrainResult) -> None:
    line = '{"tokens": ["Bob", "' + SURROGATE + '"]}'
    output = cli_error(["predict", str(tagger.adapter_dir), "-"], input=f"{line}\n")
    assert "<stdin>:1: field 'tokens[1]': the text holds a lone surrogate" in output


def test_predictor_refuses_a_lone_surrogate(single: TrainResult, tagger: TrainResult) -> None:
    predictor = Predictor.load(single.adapter_dir)
    for item in ["hi \ud800", {"text": "hi \ud800"}]:
        error = data_error(predictor.predict, ["fine", item])
        assert (error.line, error.field) == (2, "text") and "lone surrogate" in str(error)
    error = data_error(Predictor.load(tagger.adapter_dir).predict, [{"tokens": ["Bob", "\udc80"]}])
    assert (error.line, error.field) == (1, "tokens") and "token 1 holds a lone surrogate (U+DC80" in str(error)


# --- blank lines and where predict's errors are ----------------------------------------------------------------


def test_cli_predict_refuses_a_blank_line(single: TrainResult, tmp_path: Path) -> None:
    adapter = str(single.adapter_dir)
    assert "<stdin>:2: blank line" in cli_error(["predict", adapter, "-"], input="hello\n\nhi there\n")
    source = write(tmp_path, "in.txt", "hello\nhi there\n   \n")
    assert f"{source}:3: blank line" in cli_error(["predict", adapter, str(source)])


def test_cli_predict_gives_one_output_line_per_input_line(single: TrainResult, tmp_path: Path) -> None:
    # the final newline starts no line; U+2028 and U+0085 are characters of a line, not line breaks
    source = write(tmp_path, "in.txt", "hello\r\nsee\u2028you\nwhere\u0085is it\n")
    result = runner.invoke(app, ["predict", str(single.adapter_dir), str(source)])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["text"] for line in result.stdout.split("\n")[:-1]] == [
        "hello",
        "see\u2028you",
        "where\u0085is it",
    ]


@pytest.mark.parametrize(
    ("content", "where", "message"),
    [
        (b'hello\n{"text": }\n', 2, "not valid JSON"),
        (b'hello\n{"txt": "hi"}\n', 2, "field 'text': needs a non-empty string"),
        (b"hello\ncaf\xe9\n", 2, "not UTF-8 (byte 0xe9)"),
        (b'{"text": "\\udfff"}\n', 1, "field 'text': the text holds a lone surrogate"),
        (b"hello\n\nhi\n", 2, "blank line"),
    ],
)
def test_cli_predict_errors_name_the_file_and_line(
    single: TrainResult, tmp_path: Path, content: bytes, where: int, message: str
) -> None:
    source = write(tmp_path, "in.jsonl", content)
    adapter = str(single.adapter_dir)
    assert f"{source}:{where}: {message}" in cli_error(["predict", adapter, str(source)])
    assert f"<stdin>:{where}: {message}" in cli_error(["predict", adapter, "-"], input=content)


# --- tags with a prefix and no type --------------------------------------------------------------------------


def token_task(**task: Any) -> Any:
    return build_task(validate_config({"task": {"name": "token_cls", **task}}).task)


@pytest.mark.parametrize(
    ("name", "content", "line", "tag"),
    [
        ("t.conll", "EU B-ORG\nrejects O\n\nPeter B-\nBlackburn I-PER\n", 4, "B-"),
        ("t.conll", "EU B-ORG\nrejects O\n\nPeter B-PER\nBlackburn I-\n", 5, "I-"),
        ("t.bmes", "张 B-PER\n三 E-PER\n\n在 S-\n", 4, "S-"),
        ("t.bmes", "张 B-PER\n三 E-\n", 2, "E-"),
        ("t.bmes", "张 B-PER\n三 M--\n李 E-PER\n", 2, "M--"),
    ],
)
def test_typeless_tag_is_refused(tmp_path: Path, name: str, content: str, line: int, tag: str) -> None:
    path = write(tmp_path, name, content)
    error = data_error(token_task().read, str(path), DataConfig(), split="train")
    assert located(error) == (str(path), line, "tag") and f"tag {tag!r} has no entity type" in str(error)


def test_typeless_tag_with_a_named_scheme(tmp_path: Path) -> None:
    path = write(tmp_path, "t.conll", "EU B-ORG\nrejects O\n\nPeter B-\n")
    error = data_error(token_task(tag_scheme="BIO").read, str(path), DataConfig(), split="train")
    assert located(error) == (str(path), 4, "tag") and "'B-' has no entity type" in str(error)
    rows = write(tmp_path, "t.jsonl", '{"tokens": ["EU"], "tags": ["B-ORG"]}\n{"tokens": ["x"], "tags": ["S-"]}\n')
    error = data_error(token_task(tag_scheme="BIOES").read, str(rows), DataConfig(), split="dev")
    assert located(error) == (str(rows), 2, "tag")


def test_detect_scheme_locates_a_typeless_tag() -> None:
    error = data_error(detect_scheme, [["B-PER", "O"], ["O", "I-"]], lambda i, pos: ("x.conll", 10 * i + pos))
    assert located(error) == ("x.conll", 11, "tag") and "token 2 of the sentence: tag 'I-'" in str(error)
    assert detect_scheme([["B", "I", "O"]]) == "IOB2", "an untyped tag without '-' stays a chunk of type '_'"


# --- text pairs ----------------------------------------------------------------------------------------------


def test_text_pair_on_a_single_text_adapter_is_refused(single: TrainResult) -> None:
    desc = json.loads((single.adapter_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    assert desc["task_state"]["text_pair"] is False
    predictor = Predictor.load(single.adapter_dir)
    error = data_error(predictor.predict, ["hello", {"text": "refund please", "text_pair": "order 77"}])
    assert (error.line, error.field) == (2, "text_pair")
    assert "trained on single texts" in str(error) and "takes no text_pair" in str(error)
    assert predictor.predict([{"text": "refund please", "text_pair": None}])[0]["label"] in single.model.labels


def test_pair_adapter_needs_a_text_pair(pairs: TrainResult) -> None:
    desc = json.loads((pairs.adapter_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    assert desc["task_state"]["text_pair"] is True
    predictor = Predictor.load(pairs.adapter_dir)
    for item in ["refund please", {"text": "refund please"}]:
        error = data_error(predictor.predict, [{"text": "hi", "text_pair": "order 1"}, item])
        assert (error.line, error.field) == (2, "text_pair") and "trained on text pairs" in str(error)
    error = data_error(predictor.predict, [{"text": "hi", "text_pair": 7}])
    assert error.field == "text_pair" and "needs a non-empty string" in str(error)
    assert predictor.predict([{"text": "hi", "text_pair": "order 1"}])[0]["label"] in pairs.model.labels


def test_cli_predict_text_pair_refusal_names_file_line_and_field(
    single: TrainResult, pairs: TrainResult, tmp_path: Path
) -> None:
    source = write(tmp_path, "in.jsonl", 'hello\n{"text": "refund please", "text_pair": "order 77"}\n')
    output = cli_error(["predict", str(single.adapter_dir), str(source)])
    assert f"{source}:2: field 'text_pair': this adapter was trained on single texts" in output
    output = cli_error(["predict", str(pairs.adapter_dir), "-"], input="hello\n")
    assert "<stdin>:1: field 'text_pair': this adapter was trained on text pairs" in output


def test_server_core_refuses_a_text_pair_it_was_not_trained_with(
    single: TrainResult, pairs: TrainResult, tiny_bert: Path, tmp_path: Path
) -> None:
    from adaptune.inference.errors import InvalidInput
    from adaptune.inference.multi import MultiPredictor

    shutil.copytree(single.adapter_dir, tmp_path / "single")
    shutil.copytree(pairs.adapter_dir, tmp_path / "pairs")
    multi = MultiPredictor(str(tiny_bert), tmp_path)
    with pytest.raises(InvalidInput, match=r"inputs\[1\]: field 'text_pair': this adapter was trained on single"):
        multi.prepare("single", ["hello", {"text": "refund", "text_pair": "order 77"}])
    with pytest.raises(InvalidInput, match=r"inputs\[0\]: field 'text_pair': this adapter was trained on text pairs"):
        multi.prepare("pairs", ["hello"])


def test_adapter_saved_without_the_pair_record_takes_either(pairs: TrainResult, tmp_path: Path) -> None:
    adapter = Path(shutil.copytree(pairs.adapter_dir, tmp_path / "adapter"))
    desc = json.loads((adapter / CONFIG_FILE).read_text(encoding="utf-8"))
    del desc["task_state"]["text_pair"]  # as adaptune wrote it before it recorded pairs
    (adapter / CONFIG_FILE).write_text(json.dumps(desc), encoding="utf-8")
    reseal(adapter)
    outputs = Predictor.load(adapter).predict(["hello", {"text": "hi", "text_pair": "order 1"}])
    assert [output["label"] in pairs.model.labels for output in outputs] == [True, True]
