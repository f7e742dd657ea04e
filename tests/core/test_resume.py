"""A run interrupted after a checkpoint and resumed ends with bitwise the same adapter as an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptune import load_config, train
from adaptune.config import RunConfig
from adaptune.io import WEIGHTS_FILE
from adaptune.training.callbacks import Callback
from adaptune.training.checkpoint import CheckpointError
from adaptune.training.loop import Trainer


class Killed(Exception):
    """Stands in for a SIGKILL between two optimiser steps."""


BOTTLENECK = ("method.name=bottleneck", "method.reduction_factor=4", "method.dropout=0.1")
#: LoRA+ adds a third optimiser group with its own learning rate, which the checkpoint must restore; NEFTune draws
#: noise from the generator the checkpoint restores
LORA_PLUS = (
    "method.name=lora",
    "method.dropout=0.1",
    "training.loraplus_lr_ratio=16",
    "training.neftune_noise_alpha=5",
)


def _config(model: Path, data: Path, out: Path, *extra: str, method: tuple[str, ...] = BOTTLENECK) -> RunConfig:
    return load_config(
        None,
        [
            f"model.name_or_path={model}",
            *method,
            f"data.train={data / 'train.jsonl'}",
            f"data.dev={data / 'dev.jsonl'}",
            "data.max_train_examples=96",
            "data.max_eval_examples=24",
            "data.batch_size=8",
            "training.epochs=3",
            "training.eval_every=5",
            "training.grad_accum_steps=2",
            "training.progress=false",
            f"training.output_dir={out}",
            *extra,
        ],
    )


class KillAt(Callback):
    """Dies before the optimiser step after ``step`` (its gradients accumulated), as a SIGKILL there would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_optimizer_step(self, trainer: Trainer) -> None:
        if trainer.state.step == self.step:
            raise Killed


@pytest.mark.parametrize("method", [BOTTLENECK, LORA_PLUS], ids=["bottleneck", "lora_plus_neftune"])
def test_resume_is_bitwise_exact(tiny_bert: Path, bundled_data: Path, tmp_path: Path, method: tuple[str, ...]) -> None:
    data = bundled_data / "intents"
    straight = train(_config(tiny_bert, data, tmp_path / "straight", method=method))
    kill = KillAt(12)  # after the checkpoint of step 10, mid-epoch, with accumulation and dropout
    with pytest.raises(Killed):
        train(_config(tiny_bert, data, tmp_path / "killed", method=method), callbacks=[kill])
    assert json.loads((tmp_path / "killed" / "checkpoints" / "latest.json").read_text())["step"] == 10
    resumed = train(_config(tiny_bert, data, tmp_path / "killed", method=method), resume=True)
    a, b = load_file(straight.adapter_dir / WEIGHTS_FILE), load_file(resumed.adapter_dir / WEIGHTS_FILE)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps), "the metrics log has no duplicated steps after resuming"


def test_checkpoint_from_another_config_is_refused(tiny_bert: Path, bundled_data: Path, tmp_path: Path) -> None:
    data = bundled_data / "intents"
    train(_config(tiny_bert, data, tmp_path / "run", "training.max_steps=5"))
    with pytest.raises(CheckpointError) as err:
        train(_config(tiny_bert, data, tmp_path / "run", "training.max_steps=5", "training.seed=3"), resume=True)
    assert "training.seed: 42 -> 3" in str(err.value)
