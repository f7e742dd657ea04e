"""CPU cost of dropout: torch's ``F.dropout`` vs :func:`adaptune.fast_dropout.fast_dropout` (``training.fast_dropout``).

    nice -n 10 .venv/bin/python benchmarks/dropout_speed.py              # ~1 minute on 2 cores
    nice -n 10 .venv/bin/python benchmarks/dropout_speed.py --steps 5    # shorter

Measured, with torch's default threads:

1. one dropout call (p = 0.1), forward and forward + backward, on the shapes of an all-MiniLM-L6-v2 step at batch
   32 x 14 tokens: ``416 x 384`` (embeddings, attention output, FFN output), ``416 x 1536`` (the FFN width, for
   comparison) and ``32 x 12 x 14 x 14`` (attention probabilities); and one attention with dropout, forward +
   backward: transformers' SDPA vs the attention registered by :mod:`adaptune.fast_dropout`;
2. one LoRA training step (forward, loss, backward, AdamW step) of a BERT the size of MiniLM (hidden 384, 6 layers,
   12 heads, intermediate 1536, dropout 0.1, random weights built from a config), batch 32 x 14 of random tokens,
   through :class:`~adaptune.training.fast.FastPath` with the switch off and on, the two alternating.

Times are the best of ``--repeats`` rounds (dropout calls) and the median and minimum of ``--steps`` steps
(training): other processes may share the CPU. Results: ``benchmarks/results/dropout_speed.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, BertConfig, BertModel

from adaptune.backbone import load_backbone
from adaptune.config import TrainingConfig, validate_config
from adaptune.fast_dropout import fast_dropout
from adaptune.hardware import host_record
from adaptune.model import AdaptedModel
from adaptune.registry import build_method, build_task
from adaptune.tasks.base import Encoded
from adaptune.training.fast import FastPath

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
SHAPES = {"416x384": (416, 384), "416x1536": (416, 1536), "32x12x14x14": (32, 12, 14, 14)}
P = 0.1


def best_ms(fn: Callable[[], Any], calls: int, repeats: int) -> float:
    """The fastest of ``repeats`` rounds of ``calls`` calls, in ms per call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return round(best * 1e3, 3)


def dropout_calls(repeats: int) -> dict[str, dict[str, float]]:
    """ms per call of each dropout on each shape, forward (``*_fwd``) and forward + backward (``*_fwd_bwd``)."""
    out: dict[str, dict[str, float]] = {}
    for name, shape in SHAPES.items():
        x = torch.randn(shape)
        xg = torch.randn(shape, requires_grad=True)
        upstream = torch.randn(shape)
        row = {
            "torch_fwd": best_ms(lambda x=x: F.dropout(x, P, training=True), 10, repeats),
            "fast_fwd": best_ms(lambda x=x: fast_dropout(x, P), 10, repeats),
            "torch_fwd_bwd": best_ms(lambda x=xg, g=upstream: F.dropout(x, P, training=True).backward(g), 10, repeats),
            "fast_fwd_bwd": best_ms(lambda x=xg, g=upstream: fast_dropout(x, P).backward(g), 10, repeats),
        }
        row["speedup_fwd"] = round(row["torch_fwd"] / row["fast_fwd"], 2)
        row["speedup_fwd_bwd"] = round(row["torch_fwd_bwd"] / row["fast_fwd_bwd"], 2)
        out[name] = row
    return out


def attention_calls(repeats: int) -> dict[str, float]:
    """ms of one MiniLM attention (32 x 12 heads x 14 x 32, no padding) with dropout 0.1, forward + backward:
    transformers' SDPA (torch's dropout inside, the math path) vs :data:`~adaptune.fast_dropout.IMPLEMENTATION`."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from adaptune.fast_dropout import _attention

    module = torch.nn.Module()
    module.is_causal = False  # type: ignore[assignment]
    q, k, v = (torch.randn(32, 12, 14, 32, requires_grad=True) for _ in range(3))
    upstream = torch.randn(32, 14, 12, 32)

    def run(attention: Callable[..., Any]) -> None:
        out, _ = attention(module, q, k, v, None, dropout=P, scaling=32**-0.5)
        out.backward(upstream)

    row = {
        "sdpa_fwd_bwd": best_ms(lambda: run(sdpa_attention_forward), 10, repeats),
        "fast_fwd_bwd": best_ms(lambda: run(_attention), 10, repeats),
    }
    row["speedup"] = round(row["sdpa_fwd_bwd"] / row["fast_fwd_bwd"], 2)
    return row


def minilm_sized_model(folder: Path) -> AdaptedModel:
    """LoRA (adaptune's defaults) on a random BERT with MiniLM's sizes and tokenizer, a two-label head."""
    from tiny import minilm_dir

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    cfg = validate_config({"model": {"name_or_path": str(folder), "pooling": "mean"}, "method": {"name": "lora"}})
    model = AdaptedModel(load_backbone(cfg.model), build_method(cfg.method), build_task(cfg.task), ["a", "b"])
    model.mark_trainable()
    return model.train()


def training_steps(steps: int) -> dict[str, float]:
    """Median ms of a LoRA training step, batch 32 x 14, with ``training.fast_dropout`` off and on."""
    with tempfile.TemporaryDirectory() as tmp:
        model = minilm_sized_model(Path(tmp) / "model")
        ids = torch.randint(1000, 20000, (32, 14), generator=torch.Generator().manual_seed(0)).tolist()
        pad_id = int(model.info.tokenizer.pad_token_id)
        batch = model.task.collate([Encoded(row, target=i % 2) for i, row in enumerate(ids)], pad_id)
        optimizer = torch.optim.AdamW(model.trainable(), lr=1e-4)
        times: dict[str, list[float]] = {"plain": [], "fast_dropout": []}
        for step in range(steps + 2):  # the first round warms both up
            for name in times:
                fast = FastPath(model, TrainingConfig(fast_dropout=name != "plain"), [14] * 32, Path(tmp), "right")
                fast.train_mode()
                start = time.perf_counter()
                loss = model.task.loss(fast.forward(batch, list(range(32))), batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if step >= 2:
                    times[name].append(time.perf_counter() - start)
                fast.close()
    out: dict[str, float] = {}
    for name, seconds in times.items():
        out[f"{name}_median_ms"] = round(statistics.median(seconds) * 1e3, 2)
        out[f"{name}_min_ms"] = round(min(seconds) * 1e3, 2)
    out["speedup_median"] = round(out["plain_median_ms"] / out["fast_dropout_median_ms"], 3)
    out["speedup_min"] = round(out["plain_min_ms"] / out["fast_dropout_min_ms"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=15, help="timed training steps per variant")
    parser.add_argument("--repeats", type=int, default=5, help="rounds of 10 dropout calls per measurement")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "dropout_speed.json")
    args = parser.parse_args()
    record = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "p": P,
        "dropout_ms": dropout_calls(args.repeats),
        "attention_ms_32x12x14x32": attention_calls(args.repeats),
        "lora_step_minilm_sized_32x14": training_steps(args.steps),
        "host": host_record(probe=True),
    }
    print(json.dumps(record, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
