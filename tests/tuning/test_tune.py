"""Searches that train: a 3-trial study and what it writes, resuming after an interruption and a killed trial,
pruning, and a conditional method search through the command (tiny random BERT, 16 training examples)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import typer
import yaml
from typer.testing import CliRunner

from adaptune import load_config
from adaptune.cli_tune import tune as tune_command
from adaptune.errors import ConfigError
from adaptune.training.callbacks import Callback
from adaptune.training.loop import Trainer
from adaptune.tuning import tune
from adaptune.tuning.report import KILLED

SPACE = {
    "training.learning_rate": {"low": "1e-4", "high": 3e-2, "log": True},
    "training.epochs": {"low": 1, "high": 2},
    "method.reduction_factor": {"choices": [8, 16]},
}
PNG = b"\x89PNG\r\n\x1a\n"


def dotted(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def states(study_dir: Path, name: str = "search") -> list[str]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{study_dir / 'study.sqlite3'}")
    return [t.state.name for t in sorted(study.trials, key=lambda t: t.number)]


def csv_rows(study_dir: Path) -> list[dict[str, str]]:
    with (study_dir / "trials.csv").open(encoding="utf-8", newline="") as stream:
        return list(csv.DictReader(stream))


def test_a_search_writes_the_best_config_tables_and_plots(write_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lines: list[str] = []
    study_dir = tmp_path / "study"
    result = tune(write_config(SPACE), 3, study_dir=study_dir, seed=0, echo=lines.append)
    assert (result.complete, result.pruned, result.failed, result.finished) == (3, 0, 0, 3)
    assert [line.split("  ")[0] for line in lines[1:]] == [f"trial {k + 1}/3 (#{k})" for k in range(3)]
    assert all(" s" in line and "dev accuracy" in line and "best " in line for line in lines[1:])
    rows = csv_rows(study_dir)
    assert [row["state"] for row in rows] == ["COMPLETE"] * 3
    values = [float(row["value"]) for row in rows]
    assert result.best_value == max(values) and float(rows[result.best_trial]["value"]) == result.best_value
    for row in rows:  # each trial ran with its drawn values, applied like --set overrides
        ran = yaml.safe_load((study_dir / f"trial-{row['number']}" / "config.yaml").read_text(encoding="utf-8"))
        assert ran["training"]["learning_rate"] == float(row["training.learning_rate"])
        assert ran["method"]["reduction_factor"] == float(row["method.reduction_factor"])
        assert ran["training"]["output_dir"] == str(study_dir / f"trial-{row['number']}")
        run = json.loads((study_dir / f"trial-{row['number']}" / "results.json").read_text(encoding="utf-8"))
        assert run["splits"]["dev"]["headline"]["accuracy"] == float(row["value"])
    best = load_config(result.best_config)
    assert result.best_config == study_dir / "best.yaml" and best.search is None
    assert set(result.best_params) == set(SPACE)
    for key, value in result.best_params.items():
        assert dotted(best, key) == value, key
    assert best.training.output_dir == "runs/search-best" and best.data.dev == str(tmp_path / "data" / "dev.jsonl")
    assert "search:" not in (study_dir / "best.yaml").read_text(encoding="utf-8")
    table = (study_dir / "trials.md").read_text(encoding="utf-8")
    assert "3 trials: 3 complete, 0 pruned, 0 failed" in table and f"Best: trial {result.best_trial}" in table
    assert "| trial | state | dev accuracy | pruned at step | seconds | training.learning_rate |" in table
    for name in ("history.png", "importance.png"):
        assert (study_dir / name).read_bytes().startswith(PNG), name


class InterruptSecondRun(Callback):
    """Ctrl-C in the second trial's first optimiser step."""

    def __init__(self) -> None:
        self.runs = 0

    def on_fit_start(self, trainer: Trainer) -> None:
        self.runs += 1

    def on_before_optimizer_step(self, trainer: Trainer) -> None:
        if self.runs == 2:
            raise KeyboardInterrupt


def test_a_rerun_resumes_after_an_interruption_and_a_kill(write_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Trial 1 is interrupted (optuna records it failed); a trial left running, as by a process killed with
    SIGKILL, is marked failed on the rerun, which then runs trials until 3 are finished in total."""
    path, study_dir = write_config(SPACE), tmp_path / "study"
    with pytest.raises(KeyboardInterrupt):
        tune(path, 3, study_dir=study_dir, callbacks=[InterruptSecondRun()], echo=lambda line: None)
    assert states(study_dir) == ["COMPLETE", "FAIL"]
    left = optuna.load_study(study_name="search", storage=f"sqlite:///{study_dir / 'study.sqlite3'}").ask()
    assert left.number == 2 and states(study_dir)[-1] == "RUNNING"
    lines: list[str] = []
    result = tune(path, 3, study_dir=study_dir, echo=lines.append)
    assert states(study_dir) == ["COMPLETE", "FAIL", "FAIL", "COMPLETE", "COMPLETE"]
    assert (result.finished, result.failed) == (3, 2)
    assert any("trial 2 was still running" in line for line in lines)
    assert [line.split("  ")[0] for line in lines if line.startswith("trial ")] == ["trial 2/3 (#3)", "trial 3/3 (#4)"]
    errors = {row["number"]: row["error"] for row in csv_rows(study_dir)}
    assert errors["1"] == "interrupted (KeyboardInterrupt)" and errors["2"] == KILLED
    again = tune(path, 3, study_dir=study_dir, echo=lines.append)  # nothing left to do
    assert again.finished == 3 and len(states(study_dir)) == 5 and again.best_trial == result.best_trial
    changed = write_config({**SPACE, "training.weight_decay": {"low": 0.0, "high": 0.1}})
    with pytest.raises(ConfigError, match="run with another config or search space"):
        tune(changed, 4, study_dir=study_dir, echo=lines.append)


def test_a_pruned_trial_stops_its_run(write_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A pruner that prunes every evaluation (accuracy is never above 2): the run stops at its first one. The
    timeout has passed when that trial ends: no second trial starts."""
    study_dir = tmp_path / "study"
    path = write_config({"training.learning_rate": SPACE["training.learning_rate"]}, training={"eval_every": 1})
    lines: list[str] = []
    pruner = optuna.pruners.ThresholdPruner(lower=2.0)
    result = tune(path, 3, study_dir=study_dir, timeout=0.01, pruner=pruner, echo=lines.append)
    assert (result.complete, result.pruned) == (0, 1) and result.best_config is None
    assert "trial 1/3 (#0)" in lines[-1]
    run = json.loads((study_dir / "trial-0" / "results.json").read_text(encoding="utf-8"))
    assert run["stopped_early"] is True and run["steps"] == 1  # of 4: two epochs of two steps
    assert "pruned at step 1 (dev accuracy" in lines[-1]
    assert csv_rows(study_dir)[0]["pruned_at_step"] == "1" and not (study_dir / "best.yaml").exists()
    assert "importance.png not drawn: 0 complete trial(s)" in (study_dir / "trials.md").read_text(encoding="utf-8")
    assert (study_dir / "history.png").read_bytes().startswith(PNG)


def test_the_command_runs_a_conditional_method_search(write_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The YAML trains bottleneck with reduction_factor 8; the search draws lora: that key is dropped, method.r
    drawn. (Which keys a trial draws for each method: tests/tuning/test_space.py.)"""
    space = {"method.name": {"choices": ["lora"]}, "method.r": {"choices": [2, 4]}}
    path, study_dir = write_config(space, name="methods"), tmp_path / "study"
    app = typer.Typer()
    app.command()(tune_command)
    args = [str(path), "--trials", "1", "--study-dir", str(study_dir), "--set", "training.epochs=1"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "trial 1/1 (#0)  method.name=lora  method.r=" in done.output
    assert f"train it: adaptune train {study_dir / 'best.yaml'}" in done.output
    ran = yaml.safe_load((study_dir / "trial-0" / "config.yaml").read_text(encoding="utf-8"))
    assert ran["method"]["name"] == "lora" and ran["method"]["r"] in (2, 4) and "reduction_factor" not in ran["method"]
    assert ran["training"]["epochs"] == 1.0
    best = load_config(study_dir / "best.yaml")
    assert best.method.name == "lora" and best.training.output_dir == "runs/methods-best"
    assert "note: importance.png not drawn: 1 complete trial(s)" in done.output
