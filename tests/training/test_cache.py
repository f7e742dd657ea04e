"""The activation cache trains on stored frozen-prefix outputs after the first epoch: the same losses as the run
that computes them again every time (float tolerance), far fewer block calls, a resumable run, no file left."""

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
from adaptune.training.fast import CACHE_FILE
from adaptune.training.loop import Trainer

BATCHES_PER_EPOCH = 6  # 48 examples, batch 8


def config(model: Path, data: Path, out: Path, *extra: str) -> RunConfig:
    return load_config(
        None,
        [
            f"model.name_or_path={model}",
            "model.pooling=mean",
            f"data.train={data / 'intents' / 'train.jsonl'}",
            "data.max_train_examples=48",
            "data.batch_size=8",
            "training.epochs=3",
            "training.log_every=1",
            "training.progress=false",
            f"training.output_dir={out}",
            *extra,
        ],
    )


def losses(out: Path) -> list[float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["train_loss"] for line in lines if "train_loss" in json.loads(line)]


class BlockCalls:
    """Counts forward calls of every BERT block."""

    def __init__(self) -> None:
        self.calls = 0
        self.handle = torch.nn.modules.module.register_module_forward_hook(self._count)

    def _count(self, module: torch.nn.Module, _args: object, _out: object) -> None:
        self.calls += type(module).__name__ == "BertLayer"


@pytest.mark.parametrize(
    ("method", "blocks_per_later_batch"),
    [
        (["method.name=head"], 0),
        (["method.name=lora", "method.layers=[-1]"], 1),
        (["method.name=bottleneck", "method.layers=[1]"], 1),
    ],
)
@pytest.mark.parametrize("where", ["memory", "mmap"])
def test_cache_gives_the_losses_of_the_uncached_run(
    tiny_bert: Path, bundled_data: Path, tmp_path: Path, method: list[str], blocks_per_later_batch: int, where: str
) -> None:
    plain = train(config(tiny_bert, bundled_data, tmp_path / "plain", *method, "training.frozen_prefix_no_grad=true"))
    counter = BlockCalls()
    try:
        cached = train(
            config(tiny_bert, bundled_data, tmp_path / "cached", *method, f"training.activation_cache={where}")
        )
    finally:
        counter.handle.remove()
    expected = losses(tmp_path / "plain")
    assert len(expected) == 3 * BATCHES_PER_EPOCH
    assert losses(tmp_path / "cached") == pytest.approx(expected, abs=2e-5)
    a, b = load_file(plain.adapter_dir / WEIGHTS_FILE), load_file(cached.adapter_dir / WEIGHTS_FILE)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=2e-5, rtol=1e-4, msg=key)
    # epoch 1 runs both blocks per batch, epochs 2-3 only the trained ones (no dev split: nothing else runs)
    assert counter.calls == BATCHES_PER_EPOCH * 2 + 2 * BATCHES_PER_EPOCH * blocks_per_later_batch
    assert not (tmp_path / "cached" / CACHE_FILE).exists(), "the memory-mapped file is removed after training"


class DieAtStep10(Callback):
    """Interrupts the run before its 11th optimiser step (gradients accumulated), as Ctrl-C there would."""

    def on_before_optimizer_step(self, trainer: Trainer) -> None:
        if trainer.state.step == 10:
            raise KeyboardInterrupt


def test_cache_run_resumes_after_a_kill(tiny_bert: Path, bundled_data: Path, tmp_path: Path) -> None:
    extra = ("method.name=lora", "method.layers=[-1]", "training.activation_cache=mmap", "training.eval_every=4")
    straight = train(config(tiny_bert, bundled_data, tmp_path / "straight", *extra))
    with pytest.raises(KeyboardInterrupt):
        train(config(tiny_bert, bundled_data, tmp_path / "killed", *extra), callbacks=[DieAtStep10()])
    resumed = train(config(tiny_bert, bundled_data, tmp_path / "killed", *extra), resume=True)
    a, b = load_file(straight.adapter_dir / WEIGHTS_FILE), load_file(resumed.adapter_dir / WEIGHTS_FILE)
    for key in a:  # the resumed run refills the cache from other batch compositions: equal to float rounding
        torch.testing.assert_close(b[key], a[key], atol=2e-5, rtol=1e-4, msg=key)
