"""The training loop's parts: schedules, batching, early stopping on a scripted metric, bf16 autocast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import adaptune.api
from adaptune import load_config, train
from adaptune.data.batching import eval_batches, train_batches
from adaptune.errors import ConfigError
from adaptune.io import WEIGHTS_FILE
from adaptune.methods.base import ParamGroup
from adaptune.tasks.base import EvalOutput
from adaptune.training.schedule import build_optimizer, build_scheduler, lr_multiplier


def test_linear_and_cosine_schedules() -> None:
    assert lr_multiplier(0, warmup=4, total=20, kind="linear") == pytest.approx(0.25)
    assert lr_multiplier(3, warmup=4, total=20, kind="linear") == pytest.approx(1.0)
    assert lr_multiplier(12, warmup=4, total=20, kind="linear") == pytest.approx(0.5)
    assert lr_multiplier(20, warmup=4, total=20, kind="linear") == pytest.approx(0.0)
    assert lr_multiplier(12, warmup=4, total=20, kind="cosine") == pytest.approx(0.5)
    assert lr_multiplier(20, warmup=4, total=20, kind="cosine") == pytest.approx(0.0)
    assert lr_multiplier(15, warmup=4, total=20, kind="constant") == 1.0


def test_train_batches_cover_every_example_once_and_bucket_lengths() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 200, size=1000).tolist()
    batches = train_batches(lengths, 16, seed=1, epoch=0)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    assert batches == train_batches(lengths, 16, seed=1, epoch=0), "deterministic for (seed, epoch)"
    assert batches != train_batches(lengths, 16, seed=1, epoch=1), "reshuffled each epoch"
    plain = train_batches(lengths, 16, seed=1, epoch=0, bucket=False)

    def padded(bs: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) for b in bs)

    assert padded(batches) < 0.6 * padded(plain), "bucketing cuts padding"
    ordered = eval_batches(lengths, 64)
    assert sorted(i for b in ordered for i in b) == list(range(1000))


def _config(model: Path, data: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return load_config(
        None,
        [
            f"model.name_or_path={model}",
            "model.pooling=mean",
            f"data.train={data / 'train.jsonl'}",
            f"data.dev={data / 'dev.jsonl'}",
            "data.max_train_examples=64",
            "data.max_eval_examples=16",
            "data.batch_size=8",
            "training.progress=false",
            f"training.output_dir={out}",
            *extra,
        ],
    )


def test_early_stopping_keeps_the_best_weights(
    tiny_bert: Path, bundled_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted = iter([0.50, 0.70, 0.65, 0.60, 0.90, 0.95])
    calls: list[int] = []

    def fake_evaluate(model, split, cfg, dist=None):  # type: ignore[no-untyped-def]
        calls.append(1)
        return EvalOutput(report={}, headline={"accuracy": next(scripted, 0.0)}), []

    monkeypatch.setattr(adaptune.api, "evaluate_split", fake_evaluate)
    monkeypatch.setattr(adaptune.api, "write_eval_report", lambda *a, **k: {"headline": {}, "files": {}})
    run = train(
        _config(
            tiny_bert,
            bundled_data / "intents",
            tmp_path,
            "training.eval_every=2",
            "training.early_stopping_patience=2",
            "training.epochs=5",
        )
    )
    assert run.results["stopped_early"] is True
    assert run.results["best_step"] == 4 and run.results["steps"] == 8
    assert len(calls) == 4 + 1, "4 evaluations during training, then the final report on dev"
    best = load_file(tmp_path / "checkpoints" / "step-0000008" / "state.safetensors")
    saved = load_file(run.adapter_dir / WEIGHTS_FILE)
    assert all((best[f"best.{k}"] == v).all() for k, v in saved.items()), "the adapter holds the best step's weights"


def test_bf16_autocast_keeps_fp32_weights(tiny_bert: Path, bundled_data: Path, tmp_path: Path) -> None:
    run = train(
        _config(
            tiny_bert,
            bundled_data / "intents",
            tmp_path,
            "training.bf16=true",
            "training.max_steps=4",
            "training.log_every=1",
            "training.scheduler=cosine",
        )
    )
    saved = load_file(run.adapter_dir / WEIGHTS_FILE)
    assert {str(t.dtype) for t in saved.values()} == {"torch.float32"}
    losses = [
        json.loads(line)["train_loss"]
        for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if "train_loss" in line
    ]
    assert len(losses) == 4 and all(np.isfinite(losses))


def test_loraplus_groups_keep_their_ratio_under_the_schedule() -> None:
    named = [
        ("enc.q.lora.lora_a.weight", torch.nn.Parameter(torch.zeros(4, 8))),
        ("enc.q.lora.lora_b.weight", torch.nn.Parameter(torch.zeros(8, 4))),
        ("classifier.bias", torch.nn.Parameter(torch.zeros(3))),
    ]
    optimizer = build_optimizer(named, 1e-3, 0.01, groups=[ParamGroup((named[1][0],), 16.0, "lora_b")])
    fast = [g for g in optimizer.param_groups if any(p is named[1][1] for p in g["params"])]
    assert len(fast) == 1 and fast[0]["lr"] == pytest.approx(16e-3) and len(fast[0]["params"]) == 1
    scheduler = build_scheduler(optimizer, warmup=2, total=10, kind="linear")
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    rates = sorted(g["lr"] for g in optimizer.param_groups)
    assert rates[-1] == pytest.approx(16 * rates[0]) and rates[0] > 0
    assert len(build_optimizer(named, 1e-3, 0.01).param_groups) == 2  # off: the usual two groups


def test_loraplus_moves_lora_b_by_its_ratio(tiny_bert: Path, bundled_data: Path, tmp_path: Path) -> None:
    """One AdamW step from B = 0 moves every B entry by about the learning rate (sign of the gradient): with
    LoRA+ by the ratio times it."""
    moved = {}
    for ratio in (None, 16):
        out = tmp_path / str(ratio)
        extra = [] if ratio is None else [f"training.loraplus_lr_ratio={ratio}"]
        settings = ["training.max_steps=1", "training.warmup_ratio=0", "training.scheduler=constant"]
        lr = ["training.learning_rate=0.001", "training.weight_decay=0"]
        run = train(_config(tiny_bert, bundled_data / "intents", out, "method.name=lora", *settings, *lr, *extra))
        saved = load_file(run.adapter_dir / WEIGHTS_FILE)
        moved[ratio] = max(float(t.abs().max()) for k, t in saved.items() if k.endswith("lora_b.weight"))
    assert moved[None] == pytest.approx(0.001, rel=0.05)
    assert moved[16] == pytest.approx(16 * moved[None], rel=0.05)


def test_loraplus_needs_lora(tiny_bert: Path, bundled_data: Path, tmp_path: Path) -> None:
    config = _config(tiny_bert, bundled_data / "intents", tmp_path, "method.name=bottleneck")
    config.training.loraplus_lr_ratio = 16
    with pytest.raises(ConfigError, match=r"training.loraplus_lr_ratio.*bottleneck"):
        train(config)
