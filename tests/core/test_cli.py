"""The CLI is thin over the API: train, info, predict (stdin and file), eval, and errors without tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adaptune.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def ner_adapter(tiny_bert: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli_ner")
    config = out / "ner.yaml"
    ner = bundled_data / "ner"
    config.write_text(
        f"model: {{name_or_path: {tiny_bert}}}\nmethod: {{name: bottleneck, reduction_factor: 4}}\n"
        f"task: {{name: token_cls}}\n"
        f"data: {{train: {ner / 'train.conll'}, dev: {ner / 'dev.conll'}, max_train_examples: 64,"
        f" max_eval_examples: 16, batch_size: 16}}\n"
        f"training: {{epochs: 1, progress: false, output_dir: {out / 'run'}}}\n",
        encoding="utf-8",
    )
    result = runner.invoke(app, ["train", str(config), "--set", "training.learning_rate=0.01"])
    assert result.exit_code == 0, result.output
    assert "entity level" in result.output and "adapter:" in result.output
    return out / "run" / "adapter"


def test_info(ner_adapter: Path) -> None:
    result = runner.invoke(app, ["info", str(ner_adapter)])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["task"]["name"] == "token_cls" and "B-PER" in info["labels"] and info["file_bytes"] > 0


def test_predict_stdin_and_file(ner_adapter: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["predict", str(ner_adapter), "-"], input="Alice lives in Paris\n张三在北京\n")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [line["text"] for line in lines] == ["Alice lives in Paris", "张三在北京"]
    assert lines[1]["tokens"] == ["张", "三", "在", "北", "京"]
    source = tmp_path / "in.jsonl"
    source.write_text('{"tokens": ["Bob", "in", "Rome"]}\n', encoding="utf-8")
    result = runner.invoke(app, ["predict", str(ner_adapter), str(source)])
    assert result.exit_code == 0 and json.loads(result.output)["tokens"] == ["Bob", "in", "Rome"]


def test_predict_bad_json_line(ner_adapter: Path, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('plain text\n{"tokens": [}\n', encoding="utf-8")
    result = runner.invoke(app, ["predict", str(ner_adapter), str(source)])
    assert result.exit_code == 2
    assert f"{source}:2" in result.output and "Traceback" not in result.output


def test_eval_writes_report(ner_adapter: Path, bundled_data: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["eval", str(ner_adapter), str(bundled_data / "ner" / "test.conll"), "--out", str(tmp_path / "report")]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["f1"] >= 0
    assert (tmp_path / "report" / "eval_test.json").is_file(), "named after the data file, as a training run names it"


def test_config_error_is_a_message(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("training: {epocs: 3}\n", encoding="utf-8")
    result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 2
    assert "training.epocs" in result.output and "did you mean 'epochs'" in result.output
    assert "Traceback" not in result.output


def test_missing_adapter_is_a_message(tmp_path: Path) -> None:
    result = runner.invoke(app, ["predict", str(tmp_path / "none")], input="hi\n")
    assert result.exit_code == 2 and "does not exist" in result.output
