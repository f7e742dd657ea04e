"""What every train_speed worker shares, in plain torch (importable from .venv and .venv-adapters alike).

The orchestrator (``train_speed.py``) writes a *plan*: tokenised training examples, the batches of each epoch
(indices, length-bucketed by adaptune's ``train_batches``), the dev examples in length-sorted batches, and the
hyper-parameters. A peer worker replays the plan with :func:`train_peer` and :func:`infer`; the adaptune worker
runs adaptune's own Trainer, which makes the very same batches from the same seed (checked). Timed per batch:
collate, forward, loss, backward, clipping and the optimiser step, as in adaptune's loop. (The matmul peak that
MFU divides by is :func:`adaptune.hardware.matmul_peak`, measured by the orchestrators, which run in .venv.)
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Forward = Callable[[dict[str, torch.Tensor]], torch.Tensor]

#: The benchmarked methods: adaptune's defaults, which the peers are configured to match (AdamW learning rate
#: from adaptune's method default; "_top2": only the top two of MiniLM's six blocks carry the adapter).
METHODS: dict[str, dict[str, Any]] = {
    "head": {"learning_rate": 1e-2, "top": None},
    "bottleneck": {"learning_rate": 3e-3, "top": None},
    "lora": {"learning_rate": 1e-3, "top": None},
    "prefix": {"learning_rate": 1e-3, "top": None},
    "lora_top2": {"learning_rate": 1e-3, "top": 2},
    "bottleneck_top2": {"learning_rate": 3e-3, "top": 2},
}
LORA = {"r": 8, "alpha": 16.0}
BOTTLENECK = {"reduction_factor": 16, "activation": "relu"}
PREFIX = {"num_virtual_tokens": 20, "hidden": 512}


def base_method(method: str) -> str:
    """``lora_top2`` -> ``lora``."""
    return method.removesuffix("_top2")


def top_layers(method: str, num_layers: int) -> list[int] | None:
    """Indices of the blocks a top-k variant adapts (None: all)."""
    top = METHODS[method]["top"]
    return list(range(num_layers - top, num_layers)) if top else None


@dataclass
class Plan:
    """The shared work: examples, batches per epoch, dev batches and hyper-parameters."""

    model_dir: str
    pad_id: int
    num_labels: int
    train: list[dict[str, Any]]
    epochs: list[list[list[int]]]
    dev: list[dict[str, Any]]
    dev_batches: list[list[int]]
    hparams: dict[str, Any]

    @classmethod
    def read(cls, path: str | Path) -> Plan:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self)), encoding="utf-8")


@dataclass
class Measured:
    """What one worker reports (the orchestrator adds FLOPs, MFU and ratios)."""

    epoch_seconds: list[float] = field(default_factory=list)
    epoch_tokens: list[int] = field(default_factory=list)
    epoch_examples: list[int] = field(default_factory=list)
    epoch_sq_tokens: list[int] = field(default_factory=list)
    train_losses: list[float] = field(default_factory=list)
    dev_metric: float = 0.0
    infer_examples_per_s: float = 0.0
    adapter_bytes: int = 0
    trainable_params: int = 0
    peak_rss_mb: float = 0.0
    notes: list[str] = field(default_factory=list)


class MeanPoolHead(nn.Module):
    """adaptune's ``seq_cls`` head with mean pooling: masked mean, dropout 0.1, linear: ``(B,T,d) -> (B,C)``."""

    def __init__(self, hidden: int, num_labels: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_labels)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return self.classifier(self.dropout(pooled.to(self.classifier.weight.dtype)))  # type: ignore[no-any-return]


def collate(rows: list[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask`` ``(B, T)`` and ``labels`` ``(B,)``."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row["input_ids"])] = torch.tensor(row["input_ids"])
        mask[i, : len(row["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([r["label"] for r in rows])}


def autocast(precision: str) -> Any:
    """bf16 autocast on CPU for ``bf16`` rows, nothing for ``fp32``."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def optimizer_and_schedule(
    params: list[tuple[str, nn.Parameter]], hp: dict[str, Any], total_steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """adaptune's AdamW (no decay on 1-d tensors) with linear warmup then linear decay."""
    decay = [p for _n, p in params if p.ndim >= 2]
    no_decay = [p for _n, p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": hp["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=hp["learning_rate"])
    warmup = round(hp["warmup_ratio"] * total_steps)

    def multiplier(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, 1.0 - min(1.0, (step - warmup) / max(1, total_steps - warmup)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, multiplier)


def train_peer(forward: Forward, params: list[tuple[str, nn.Parameter]], plan: Plan, precision: str) -> Measured:
    """Replay the plan's batches: per batch collate, forward, cross-entropy, backward, clip, AdamW step."""
    out = Measured(trainable_params=sum(p.numel() for _n, p in params))
    total = sum(len(batches) for batches in plan.epochs)
    opt, sched = optimizer_and_schedule(params, plan.hparams, total)
    trained = [p for _n, p in params]
    for batches in plan.epochs:
        seconds, tokens, sq = 0.0, 0, 0
        for indices in batches:
            started = time.perf_counter()
            batch = collate([plan.train[i] for i in indices], plan.pad_id)
            with autocast(precision):
                logits = forward(batch)
            loss = F.cross_entropy(logits.float(), batch["labels"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, plan.hparams["max_grad_norm"])
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            seconds += time.perf_counter() - started
            lengths = batch["attention_mask"].sum(1)
            tokens, sq = tokens + int(lengths.sum()), sq + int((lengths**2).sum())
            out.train_losses.append(float(loss.detach()))
        out.epoch_seconds.append(seconds)
        out.epoch_tokens.append(tokens)
        out.epoch_examples.append(sum(len(b) for b in batches))
        out.epoch_sq_tokens.append(sq)
    return out


def infer(forward: Forward, plan: Plan, precision: str) -> tuple[float, float]:
    """Dev accuracy and inference examples/s over the plan's length-sorted dev batches."""
    correct, started = 0, time.perf_counter()
    with torch.no_grad(), autocast(precision):
        for indices in plan.dev_batches:
            batch = collate([plan.dev[i] for i in indices], plan.pad_id)
            correct += int((forward(batch).argmax(-1) == batch["labels"]).sum())
    seconds = time.perf_counter() - started
    return correct / len(plan.dev), len(plan.dev) / seconds


def folder_bytes(folder: str | Path) -> int:
    """Total size of the files in a folder (an adapter as its tool saves it)."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, MB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def set_threads(threads: int) -> None:
    """The same intra-op thread count in every worker."""
    torch.set_num_threads(max(1, threads or (os.cpu_count() or 1)))


def finish(out: Measured, path: str | Path) -> None:
    """Write the worker's record (peak RSS taken last)."""
    out.peak_rss_mb = peak_rss_mb()
    Path(path).write_text(json.dumps(asdict(out)), encoding="utf-8")
