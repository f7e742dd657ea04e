"""What a run prints: warnings before training, dev lines that never wrap off a terminal, early stopping
announced, a one-line headline summary, sensible ``eval --out`` file names, and timings in the README."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

import adaptune.api
from adaptune import load_config, train
from adaptune.api import headline_line
from adaptune.cli import _report_name, app
from adaptune.tasks.base import EvalOutput
from adaptune.training.logging import say

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture(scope="module")
def cli_run(tiny_bert: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``adaptune train`` on the bilingual intents with the tiny BERT (MiniLM's vocabulary: much Chinese is
    ``[UNK]``), progress on, output not a terminal and only 60 columns wide."""
    out = tmp_path_factory.mktemp("cli_intents")
    intents = bundled_data / "intents"
    config = out / "intents.yaml"
    config.write_text(
        f"model: {{name_or_path: {tiny_bert}, pooling: mean}}\nmethod: {{name: bottleneck, reduction_factor: 4}}\n"
        f"data: {{train: {intents / 'train.jsonl'}, dev: {intents / 'dev.jsonl'}, test: {intents / 'test.jsonl'},"
        f" max_train_examples: 64, max_eval_examples: 16, batch_size: 16}}\n"
        f"training: {{max_steps: 4, eval_every: 2, progress: true, output_dir: {out / 'run'}}}\n",
        encoding="utf-8",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COLUMNS", "60")
        result = runner.invoke(app, ["train", str(config)])
    assert result.exit_code == 0, result.output
    return result, out / "run"


def test_unknown_token_share_is_warned_before_training(cli_run) -> None:  # type: ignore[no-untyped-def]
    result, run = cli_run
    lines = result.stderr.splitlines()
    warned = [i for i, line in enumerate(lines) if line.startswith("warning: ") and "[UNK]" in line]
    steps = [i for i, line in enumerate(lines) if line.startswith("step ")]
    assert warned and steps and warned[0] < steps[0], result.stderr
    assert "note:" not in result.stdout, "not repeated after training"
    notes = json.loads((run / "results.json").read_text(encoding="utf-8"))["notes"]
    assert any("[UNK]" in note for note in notes), "still kept in the run's notes"


def test_dev_lines_do_not_wrap_off_a_terminal(cli_run) -> None:  # type: ignore[no-untyped-def]
    result, _run = cli_run
    dev = [line for line in result.stderr.splitlines() if line.startswith("step 2: dev ")]
    assert len(dev) == 1 and len(dev[0]) > 60, result.stderr
    assert re.search(r"accuracy \d\.\d{4} .*weighted_f1 \d\.\d{4} .*loss \d\.\d{4}", dev[0])


def test_say_keeps_one_line_and_brackets() -> None:
    buffer = io.StringIO()
    text = "warning: 40.0% of the training tokens are [UNK]; " + "figure 0.1234 " * 10
    say(Console(file=buffer, width=40), text)
    assert buffer.getvalue() == text + "\n"


def test_summary_repeats_the_test_headline(cli_run) -> None:  # type: ignore[no-untyped-def]
    result, run = cli_run
    lines = result.stdout.strip().splitlines()
    adapter = run / "adapter"
    assert re.fullmatch(
        rf"test accuracy \d\.\d{{4}} \(macro_f1 \d\.\d{{4}}\) \| adapter: {re.escape(str(adapter))}", lines[-2]
    )
    figures = json.loads((run / "results.json").read_text(encoding="utf-8"))["splits"]["test"]["headline"]
    assert f"test accuracy {figures['accuracy']:.4f} (macro_f1 {figures['macro_f1']:.4f})" in lines[-2]
    assert lines[-1].startswith("report:  ")


def test_headline_line_picks_test_then_dev() -> None:
    dev = {"headline": {"accuracy": 0.5, "macro_f1": 0.25, "loss": 1.0}}
    test = {"headline": {"accuracy": 0.9556, "macro_f1": 0.95621, "micro_f1": 0.9556, "loss": 0.2}}
    assert headline_line({"metric": "accuracy", "splits": {"dev": dev, "test": test}}) == (
        "test accuracy 0.9556 (macro_f1 0.9562)"
    )
    assert headline_line({"metric": "accuracy", "splits": {"dev": dev}}) == "dev accuracy 0.5000 (macro_f1 0.2500)"
    ner = {"headline": {"f1": 0.8, "precision": 0.9, "recall": 0.72, "token_accuracy": 0.95, "loss": 0.3}}
    assert (
        headline_line({"metric": "f1", "splits": {"test": ner}}) == "test f1 0.8000 (precision 0.9000, recall 0.7200)"
    )
    lm = {"headline": {"loss": 2.0, "perplexity": 7.389}}
    assert headline_line({"metric": "loss", "splits": {"dev": lm}}) == "dev loss 2.0000 (perplexity 7.3890)"
    assert headline_line({"metric": "accuracy", "splits": {}}) is None


def test_early_stopping_is_announced(
    tiny_bert: Path,
    bundled_data: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    scripted = iter([0.50, 0.70, 0.65, 0.60])

    def fake_evaluate(model, split, cfg, dist=None):  # type: ignore[no-untyped-def]
        return EvalOutput(report={}, headline={"accuracy": next(scripted, 0.0)}), []

    monkeypatch.setattr(adaptune.api, "evaluate_split", fake_evaluate)
    monkeypatch.setattr(adaptune.api, "write_eval_report", lambda *a, **k: {"headline": {}, "files": {}})
    intents = bundled_data / "intents"
    cfg = load_config(
        None,
        [
            f"model.name_or_path={tiny_bert}",
            f"data.train={intents / 'train.jsonl'}",
            f"data.dev={intents / 'dev.jsonl'}",
            "data.max_train_examples=64",
            "data.max_eval_examples=16",
            "data.batch_size=8",
            "training.eval_every=2",
            "training.early_stopping_patience=2",
            "training.epochs=5",
            f"training.output_dir={tmp_path}",
        ],
    )
    run = train(cfg)
    assert run.results["stopped_early"] is True
    err = capsys.readouterr().err
    announced = [line for line in err.splitlines() if line.startswith("early stopping")]
    assert announced == [
        "early stopping at step 8 of 40: no dev accuracy gain in 2 evaluations (training.early_stopping_patience);"
        " keeping step 4 (dev accuracy 0.7000)"
    ], err
    assert err.index("step 8: dev accuracy 0.6000") < err.index("early stopping")


def test_eval_out_names_files_after_the_data(cli_run, bundled_data: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _result, run = cli_run
    data = bundled_data / "intents" / "test.jsonl"
    result = runner.invoke(app, ["eval", str(run / "adapter"), str(data), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    written = {p.name for p in (tmp_path / "report").iterdir()}
    assert {"eval_test.json", "eval_test.txt", "eval_test.md", "predictions_test.jsonl"} <= written
    assert not any("eval_eval" in name for name in written)
    assert f"report: {tmp_path / 'report' / 'eval_test.json'}" in result.stdout
    assert json.loads(result.stdout.strip().splitlines()[-1])["accuracy"] >= 0


@pytest.mark.parametrize(
    ("name", "expected"),
    [("data/other.conll", "other"), ("dev.tsv", "dev"), ("my data (v2).jsonl", "my_data_v2"), ("....jsonl", "eval")],
)
def test_report_name(name: str, expected: str) -> None:
    assert _report_name(Path(name)) == expected


@pytest.mark.parametrize("readme", ["README.md", "README.zh-CN.md"])
def test_readme_first_commands_say_how_long_they_take(readme: str) -> None:
    text = (ROOT / readme).read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, re.DOTALL)
    assert block is not None
    commands = block.group(1).strip().splitlines()
    assert len(commands) == 2 and all(re.search(r"# ~?\d[\d.-]* min", line) for line in commands), commands
    first_screen = text[: text.index("## ")]  # the measured parts: setup, the model's conversion, the demo, tests
    assert all(figure in first_screen for figure in ("3.5", "8-11", "1.5", "15", "6-9")), first_screen
