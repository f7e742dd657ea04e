"""Callbacks: what a user callback sees, early stopping as one, and the trained model ``train`` hands back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import adaptune.api
from adaptune import Predictor, load_config, train
from adaptune.config import RunConfig
from adaptune.io import load_adapter
from adaptune.tasks.base import EvalOutput
from adaptune.training.callbacks import Callback, StepRecord
from adaptune.training.loop import Trainer


def _config(model: Path, data: Path, out: Path, *extra: str) -> RunConfig:
    return load_config(
        None,
        [
            f"model.name_or_path={model}",
            "model.pooling=mean",
            f"data.train={data / 'intents' / 'train.jsonl'}",
            f"data.dev={data / 'intents' / 'dev.jsonl'}",
            "data.max_train_examples=48",
            "data.max_eval_examples=16",
            "data.batch_size=8",
            "training.progress=false",
            f"training.output_dir={out}",
            *extra,
        ],
    )


class Recorder(Callback):
    """Writes down every hook call, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.steps: list[StepRecord] = []
        self.logged: list[dict[str, Any]] = []
        self.improved: list[bool] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        self.events.append(("fit_start", trainer.state.step))

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        self.events.append(("epoch_start", epoch))

    def on_before_optimizer_step(self, trainer: Trainer) -> None:
        self.events.append(("before_step", trainer.state.step + 1))

    def on_step_end(self, trainer: Trainer, step: StepRecord) -> None:
        self.events.append(("step", step.step))
        self.steps.append(step)

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.logged.append(record)

    def on_evaluate(self, trainer: Trainer, result: EvalOutput, improved: bool) -> None:
        self.events.append(("evaluate", trainer.state.step, trainer.state.stopped_early))
        self.improved.append(improved)

    def on_checkpoint(self, trainer: Trainer) -> None:
        latest = json.loads((trainer.ckpt_root / "latest.json").read_text())["step"]
        self.events.append(("checkpoint", trainer.state.step, latest))

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        self.events.append(("epoch_end", epoch))

    def on_fit_end(self, trainer: Trainer) -> None:
        self.events.append(("fit_end", trainer.state.step))


def test_a_callback_sees_every_step_and_evaluation_in_order(
    tiny_bert: Path, bundled_data: Path, tmp_path: Path
) -> None:
    """48 examples in batches of 8, 2 batches a step: 3 steps an epoch, 2 epochs; dev every 2 steps and at the end."""
    recorder = Recorder()
    cfg = _config(
        tiny_bert, bundled_data, tmp_path, "training.epochs=2", "training.grad_accum_steps=2", "training.eval_every=2"
    )
    cfg.training.log_every = 1
    run = train(cfg, callbacks=[recorder])
    expected: list[tuple[Any, ...]] = [("fit_start", 0)]
    for epoch, steps in enumerate([(1, 2, 3), (4, 5, 6)]):
        expected.append(("epoch_start", epoch))
        for step in steps:
            expected += [("before_step", step), ("step", step)]
            if step % 2 == 0:
                expected += [("evaluate", step, False), ("checkpoint", step, step)]
        expected.append(("epoch_end", epoch))
    expected.append(("fit_end", 6))
    assert recorder.events == expected
    assert run.results["steps"] == 6 and recorder.improved[0] is True and len(recorder.improved) == 3
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert recorder.logged == log, "the metrics log is what the callbacks were given"
    trained = [r for r in log if "train_loss" in r]
    assert [s.loss for s in recorder.steps] == [r["train_loss"] for r in trained], "log_every 1: one step a line"
    assert [s.lr for s in recorder.steps] == [r["lr"] for r in trained]
    assert [s.epoch for s in recorder.steps] == [r["epoch"] for r in trained]
    assert all(s.tokens > 0 and s.seconds > 0 for s in recorder.steps)


def test_early_stopping_stops_where_it_did(
    tiny_bert: Path, bundled_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted = iter([0.50, 0.70, 0.65, 0.60, 0.90, 0.95])

    def fake_evaluate(model, split, cfg, dist=None):  # type: ignore[no-untyped-def]
        return EvalOutput(report={}, headline={"accuracy": next(scripted, 0.0)}), []

    monkeypatch.setattr(adaptune.api, "evaluate_split", fake_evaluate)
    monkeypatch.setattr(adaptune.api, "write_eval_report", lambda *a, **k: {"headline": {}, "files": {}})
    recorder = Recorder()
    extra = ("training.eval_every=2", "training.early_stopping_patience=2", "training.epochs=5")
    run = train(_config(tiny_bert, bundled_data, tmp_path, *extra), callbacks=[recorder])
    assert run.results["stopped_early"] is True
    assert run.results["best_step"] == 4 and run.results["steps"] == 8
    evaluations = [e[1:] for e in recorder.events if e[0] == "evaluate"]
    assert evaluations == [(2, False), (4, False), (6, False), (8, True)], "early stopping runs before the user's"
    assert recorder.improved == [True, True, False, False]
    assert recorder.events[-3:] == [("checkpoint", 8, 8), ("epoch_end", 1), ("fit_end", 8)]


def test_a_callback_can_stop_the_run(tiny_bert: Path, bundled_data: Path, tmp_path: Path) -> None:
    class StopAt3(Callback):
        def on_step_end(self, trainer: Trainer, step: StepRecord) -> None:
            if step.step == 3:
                trainer.state.stopped_early = True

    run = train(_config(tiny_bert, bundled_data, tmp_path, "training.epochs=3"), callbacks=[StopAt3()])
    assert run.results["steps"] == 3 and run.results["stopped_early"] is True


def test_train_result_model_predicts_as_the_saved_adapter(tiny_bert: Path, bundled_data: Path, tmp_path: Path) -> None:
    texts = ["where is my order A1024-77?", "cancel it please", "hello there"]
    run = train(_config(tiny_bert, bundled_data, tmp_path, "method.name=lora", "training.max_steps=4"))
    in_memory = Predictor(run.model, load_adapter(run.adapter_dir).config).logits(texts)
    loaded = Predictor.load(run.adapter_dir).logits(texts)
    assert all(torch.equal(a, b) for a, b in zip(in_memory, loaded, strict=True))
