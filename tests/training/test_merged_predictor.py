"""``Predictor.load(..., merge=True)`` folds LoRA into the base weights and predicts what the unmerged one does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adaptune import Predictor, load_config, train
from adaptune.errors import ConfigError

TEXTS = ["where is my parcel?", "我想退款", "the app crashes every time I log in", "thanks!"]


def trained(tiny_bert: Path, bundled_data: Path, out: Path, method: str) -> Path:
    cfg = load_config(
        None,
        [
            f"model.name_or_path={tiny_bert}",
            f"method.name={method}",
            f"data.train={bundled_data / 'intents' / 'train.jsonl'}",
            "data.max_train_examples=32",
            "data.batch_size=8",
            "training.max_steps=6",
            "training.learning_rate=0.05",
            "training.progress=false",
            f"training.output_dir={out}",
        ],
    )
    return train(cfg).adapter_dir


def test_merged_lora_predicts_like_unmerged(tiny_bert: Path, bundled_data: Path, tmp_path: Path) -> None:
    adapter = trained(tiny_bert, bundled_data, tmp_path / "lora", "lora")
    plain, merged = Predictor.load(adapter), Predictor.load(adapter, merge=True)
    loras = [m for m in merged.model.backbone.modules() if hasattr(m, "merged")]
    assert loras and all(m.merged for m in loras)
    assert not any(m.merged for m in plain.model.backbone.modules() if hasattr(m, "merged"))
    a, b = plain.logits(TEXTS), merged.logits(TEXTS)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(y, x, atol=1e-5, rtol=1e-5)
    assert [p["label"] for p in merged.predict(TEXTS)] == [p["label"] for p in plain.predict(TEXTS)]


def test_merge_refuses_a_method_that_cannot_merge(tiny_bert: Path, bundled_data: Path, tmp_path: Path) -> None:
    adapter = trained(tiny_bert, bundled_data, tmp_path / "bn", "bottleneck")
    with pytest.raises(ConfigError, match="cannot be merged"):
        Predictor.load(adapter, merge=True)
