"""The ``search:`` block without training: validation errors that name the file and the key, the conditional
method keys, values written as ``--set`` overrides, and ``adaptune train`` accepting such a YAML."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest
import typer
from typer.testing import CliRunner

from adaptune import load_config
from adaptune.cli_tune import tune as tune_command
from adaptune.config import parse_override_value
from adaptune.errors import ConfigError
from adaptune.extras import MissingExtraError
from adaptune.training.run_folder import OutputFolderError, claim_output_folder
from adaptune.tuning import tune
from adaptune.tuning.space import ParamSpace
from adaptune.tuning.study import SampledConfigError, make_pruner, run_trials
from adaptune.tuning.trials import override_text, read_search, sample, trial_config

LR = {"training.learning_rate": {"low": "1e-4", "high": 3e-2, "log": True}}


def error_of(path: Path, *overrides: str) -> str:
    with pytest.raises(ConfigError) as caught:
        read_search(path, overrides)
    message = str(caught.value)
    assert message.startswith(str(path)), message
    return message


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"training.learnig_rate": {"low": 0.001, "high": 0.01}}, "'training.learnig_rate' is not a config key"),
        ({"training.learnig_rate": {"low": 0.001, "high": 0.01}}, "did you mean 'training.learning_rate'?"),
        ({"trainer.epochs": {"low": 1, "high": 3}}, "'trainer.epochs' is not a config key: keys are section.key"),
        ({"method.r": {"choices": [4, 8]}}, "'method.r' is not a config key of method 'bottleneck'"),
        ({"training.output_dir": {"choices": ["a", "b"]}}, "'training.output_dir' cannot be searched"),
        ({"training.learning_rate": {"low": 0.01, "high": 0.001}}, "low (0.01) must be below high (0.001)"),
        ({"training.learning_rate": {"low": 0.0, "high": 0.1, "log": True}}, "log needs low > 0"),
        ({"training.learning_rate": {"low": 1e-4, "high": 2.0}}, "search.space.training.learning_rate: 2.0 is not"),
        ({"training.epochs": {"low": 1, "high": 4, "step": 0.5}}, "an int range (integer low and high) needs"),
        ({"training.epochs": {"low": "many", "high": 4}}, "search.space.training.epochs.low' = 'many'"),
        ({"training.epochs": {"low": 1, "high": 4, "choices": [1]}}, "give either choices or a range"),
        ({"method.reduction_factor": {"choices": [8, 8]}}, "repeat a value"),
        ({"method.name": {"choices": ["bottleneck", "lorra"]}}, "'lorra' is not a known method"),
        ({"data.batch_size": {"choices": [8, 0]}}, "search.space.data.batch_size: 0 is not a valid value"),
    ],
)
def test_a_bad_space_names_the_file_and_the_key(write_config, space: dict, expected: str) -> None:  # type: ignore[no-untyped-def]
    message = error_of(write_config(space))
    assert expected in message, message


def test_a_search_needs_a_block_a_dev_split_and_no_clash_with_set(write_config) -> None:  # type: ignore[no-untyped-def]
    assert "no 'search:' block" in error_of(write_config(None))
    assert "a search needs a dev split" in error_of(write_config(LR, data={"dev": None}))
    clash = error_of(write_config(LR), "training.learning_rate=0.001")
    assert "--set training.learning_rate fixes a key that search.space searches" in clash
    empty = error_of(write_config({}))
    assert "search.space" in empty, empty


def test_adaptune_train_accepts_and_ignores_the_search_block(write_config) -> None:  # type: ignore[no-untyped-def]
    with_search, without = load_config(write_config(LR)), load_config(write_config(None, name="plain"))
    assert with_search.search == {"space": LR}
    assert "search" not in with_search.model_dump()
    assert with_search.fingerprint() == without.fingerprint()


def test_the_metric_and_direction(write_config) -> None:  # type: ignore[no-untyped-def]
    setup = read_search(write_config(LR))
    assert (setup.metric, setup.direction) == ("accuracy", "maximize")  # seq_cls's selection metric
    setup = read_search(write_config(LR, search={"metric": "loss"}))
    assert (setup.metric, setup.direction) == ("loss", "minimize")
    setup = read_search(write_config(LR, training={"metric": "macro_f1"}, search={"direction": "minimize"}))
    assert (setup.metric, setup.direction) == ("macro_f1", "minimize")


def test_method_keys_follow_the_drawn_method(write_config) -> None:  # type: ignore[no-untyped-def]
    """``method.r`` only for lora, ``method.reduction_factor`` only for bottleneck; the YAML's own bottleneck key
    (``reduction_factor: 8``) is dropped when a trial draws lora, kept when it draws bottleneck."""
    space = {
        "method.name": {"choices": ["bottleneck", "lora"]},
        "method.r": {"choices": [2, 4]},
        "method.reduction_factor": {"choices": [16, 32]},
        "method.dropout": {"low": 0.0, "high": 0.2},
        **LR,
    }
    setup = read_search(write_config(space, method={"name": "bottleneck", "reduction_factor": 8, "dropout": 0.1}))
    lora = sample(optuna.trial.FixedTrial({"method.name": "lora", "method.r": 4, "method.dropout": 0.05,
                                           "training.learning_rate": 0.01}), setup.search)  # fmt: skip
    assert lora == {"method.name": "lora", "method.r": 4, "method.dropout": 0.05, "training.learning_rate": 0.01}
    cfg = trial_config(setup, lora, "out")
    assert cfg.method.name == "lora" and cfg.method.r == 4 and cfg.method.dropout == 0.05  # type: ignore[attr-defined]
    assert "reduction_factor" not in cfg.method.model_dump()
    fixed = {"method.name": "bottleneck", "method.reduction_factor": 32, "method.dropout": 0.0,
             "training.learning_rate": 0.001}  # fmt: skip
    bottleneck = sample(optuna.trial.FixedTrial(fixed), setup.search)
    assert "method.r" not in bottleneck
    cfg = trial_config(setup, bottleneck, "out")
    assert cfg.method.name == "bottleneck" and cfg.method.reduction_factor == 32  # type: ignore[attr-defined]
    kept = trial_config(setup, {"method.name": "bottleneck", "training.learning_rate": 0.001}, "out")
    assert kept.method.reduction_factor == 8 and kept.method.dropout == 0.1  # type: ignore[attr-defined]
    assert cfg.training.output_dir == "out" and cfg.data.dev == str(setup.path.parent / "dev.jsonl")


def test_a_key_of_no_searched_method_is_refused(write_config) -> None:  # type: ignore[no-untyped-def]
    space = {"method.name": {"choices": ["bottleneck", "lora"]}, "method.alpa": {"choices": [8.0, 16.0]}}
    message = error_of(write_config(space))
    assert "'method.alpa' is not a config key of method 'bottleneck' or 'lora'; did you mean 'method.alpha'?" in message


def test_ranges_draw_ints_floats_and_choices() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    specs = {
        "i": ParamSpace(low=2, high=5),
        "f": ParamSpace(low="1e-4", high=1e-2, log=True),
        "g": ParamSpace(low=0.0, high=1.0, step=0.25),
        "c": ParamSpace(choices=["a", 1, True, None]),
    }
    for _ in range(20):
        trial = study.ask()
        drawn = {name: spec.suggest(trial, name) for name, spec in specs.items()}
        assert isinstance(drawn["i"], int) and 2 <= drawn["i"] <= 5
        assert isinstance(drawn["f"], float) and 1e-4 <= drawn["f"] <= 1e-2
        assert drawn["g"] in (0.0, 0.25, 0.5, 0.75, 1.0)
        assert drawn["c"] in ("a", 1, True, None)
        study.tell(trial, 0.0)


@pytest.mark.parametrize("value", [1e-05, 0.001, 3, "lora", "true", "|", None, True, 16.0])
def test_values_read_back_through_set(value: object) -> None:
    text = override_text(value)
    assert parse_override_value(text) == value and type(parse_override_value(text)) is type(value)


def test_the_pruner_from_the_block(write_config) -> None:  # type: ignore[no-untyped-def]
    setup = read_search(write_config(LR, search={"prune_startup_trials": 2, "prune_warmup_steps": 4}))
    pruner = make_pruner(optuna, setup)
    assert isinstance(pruner, optuna.pruners.MedianPruner)
    assert (pruner._n_startup_trials, pruner._n_warmup_steps) == (2, 4)
    assert isinstance(
        make_pruner(optuna, read_search(write_config(LR, search={"pruner": "none"}))), optuna.pruners.NopPruner
    )


def test_the_command_reports_a_bad_key_in_one_line(write_config) -> None:  # type: ignore[no-untyped-def]
    app = typer.Typer()
    app.command()(tune_command)
    path = write_config({"training.learnig_rate": {"low": 0.001, "high": 0.01}})
    done = CliRunner().invoke(app, [str(path), "--trials", "2", "--study-dir", str(path.parent / "study")])
    assert done.exit_code == 2, done.output
    lines = [line for line in done.output.splitlines() if line.strip()]
    assert "training.learnig_rate" in done.output and "Traceback" not in done.output
    assert lines[0].startswith("error:") and not (path.parent / "study").exists()


def test_without_optuna_the_error_names_the_extra(write_config, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(MissingExtraError, match=r"needs the tune extra \(optuna is not installed\).*'\.\[tune\]'"):
        tune(write_config(LR), 1, study_dir=write_config(LR).parent / "study")


def test_a_study_dir_in_use_is_refused(write_config) -> None:  # type: ignore[no-untyped-def]
    path = write_config(LR)
    refused = pytest.raises(OutputFolderError, match=r"is in use by another run .*choose another --study-dir")
    with claim_output_folder(path.parent / "study", resume=True, overwrite=False), refused:
        tune(path, 1, study_dir=path.parent / "study")


def test_a_drawn_combination_the_config_refuses_fails_that_trial_only(write_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Each value is valid alone, the two together are not (padding_free with compile): every trial fails before
    training, and the search still runs its trials."""
    space = {"training.padding_free": {"choices": [True]}, "training.compile": {"choices": [True]}}
    lines: list[str] = []
    result = tune(write_config(space), 2, study_dir=tmp_path / "study", echo=lines.append)
    assert (result.failed, result.finished, result.best_config) == (2, 0, None)
    assert [line.split("  ")[0] for line in lines[1:]] == [
        "trial failed, not counted (#0)",
        "trial failed, not counted (#1)",
    ]
    assert all("failed: invalid config: config key 'training.padding_free'" in line for line in lines[1:])
    table = (tmp_path / "study" / "trials.md").read_text(encoding="utf-8")
    assert "2 trials: 0 complete, 0 pruned, 2 failed" in table and "- trial 1: invalid config:" in table
    assert "history.png not drawn: no trial has a dev value" in result.notes
    assert not list((tmp_path / "study").glob("trial-*")), "no run started"


def test_the_trial_loop_tells_each_outcome() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    outcomes = iter([0.5, optuna.TrialPruned(), SampledConfigError("no"), 0.7, RuntimeError("broken")])

    def objective(trial: optuna.Trial) -> float:
        trial.report(0.25, 1)
        outcome = next(outcomes)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    seen: list[int] = []
    run_trials(optuna, study, objective, 4, None, lambda study, trial: seen.append(trial.number))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", "FAIL", "COMPLETE"] and seen == [0, 1, 2, 3]
    assert study.trials[1].value == 0.25, "a pruned trial keeps its last reported value"
    with pytest.raises(RuntimeError, match="broken"):
        run_trials(optuna, study, objective, 3, None, lambda study, trial: None)
    assert study.trials[-1].state.name == "FAIL" and len(study.trials) == 5
    run_trials(optuna, study, lambda trial: 1.0, 3, 0.0, lambda study, trial: None)
    assert len(study.trials) == 5, "no trial starts once the timeout has passed"
