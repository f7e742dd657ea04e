"""The one training loop, shared by every method and task.

AdamW with warmup and linear/cosine decay, gradient accumulation and clipping, optional bf16 autocast (weights
stay fp32), evaluation every N steps or each epoch, best-weights tracking on a named metric, early stopping, a
JSONL metrics log, a progress bar, and checkpoints from which a killed run resumes to the same result.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaptune.config import RunConfig, flatten
from adaptune.data.batching import train_batches
from adaptune.errors import ConfigError
from adaptune.model import AdaptedModel
from adaptune.tasks.base import Encoded, EvalOutput
from adaptune.training.checkpoint import LoopState, find_checkpoint, load_checkpoint, save_checkpoint
from adaptune.training.fast import FastPath
from adaptune.training.logging import MetricsLog, ProgressBar
from adaptune.training.neftune import noisy_embeddings
from adaptune.training.schedule import LORA_B_SUFFIX, build_optimizer, build_scheduler

Evaluator = Callable[[AdaptedModel], EvalOutput]


@dataclass
class FitResult:
    """What training produced."""

    loop: LoopState
    best_state: dict[str, torch.Tensor] | None
    last_eval: EvalOutput | None
    metric: str
    train_tokens: int
    train_seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.train_tokens / self.train_seconds if self.train_seconds else 0.0


@dataclass
class Window:
    """Running totals since the last log line: real (non-pad) tokens, summed batch losses, compute seconds."""

    tokens: int = 0
    loss: float = 0.0
    batches: int = 0
    seconds: float = 0.0

    def add(self, tokens: int, loss: float, seconds: float) -> None:
        self.tokens, self.loss = self.tokens + tokens, self.loss + loss
        self.batches, self.seconds = self.batches + 1, self.seconds + seconds

    @property
    def mean_loss(self) -> float:
        return self.loss / max(1, self.batches)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    """Runs the loop for one :class:`AdaptedModel` on encoded training examples."""

    def __init__(
        self,
        model: AdaptedModel,
        train: Sequence[Encoded],
        config: RunConfig,
        *,
        out_dir: Path,
        evaluate: Evaluator | None,
        metric: str,
        pad_id: int,
        padding_side: str = "right",
    ) -> None:
        self.model, self.train, self.config, self.out_dir = model, train, config, out_dir
        self.cfg = config.training
        self.evaluate, self.metric, self.pad_id, self.padding_side = evaluate, metric, pad_id, padding_side
        self.lengths = [len(e) for e in train]
        self.batches_per_epoch = math.ceil(len(train) / config.data.batch_size)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / self.cfg.grad_accum_steps)
        self.total_steps = self.cfg.max_steps or math.ceil(self.cfg.epochs * self.steps_per_epoch)
        lr = self.cfg.learning_rate or model.method.default_learning_rate
        named = list(model.adapter_parameters().items()) + list(model.head.named_parameters())
        if self.cfg.loraplus_lr_ratio is not None and not any(n.endswith(LORA_B_SUFFIX) for n, _p in named):
            raise ConfigError(
                f"config key 'training.loraplus_lr_ratio' = {self.cfg.loraplus_lr_ratio} needs LoRA B matrices to "
                f"train, and method '{config.method.name}' has none: use method lora (or a stack with lora)"
            )
        self.optimizer = build_optimizer(named, lr, self.cfg.weight_decay, loraplus_lr_ratio=self.cfg.loraplus_lr_ratio)
        warmup = round(self.cfg.warmup_ratio * self.total_steps)
        self.scheduler = build_scheduler(self.optimizer, warmup=warmup, total=self.total_steps, kind=self.cfg.scheduler)
        self.state = LoopState()
        self.best_state: dict[str, torch.Tensor] | None = None
        self.last_eval: EvalOutput | None = None
        self.ckpt_root = out_dir / "checkpoints"
        self.train_tokens, self.train_seconds = 0, 0.0
        self.fingerprint = config.fingerprint()
        self.config_flat = {
            k: v
            for k, v in flatten(config.model_dump(mode="json")).items()
            if k not in ("training.progress", "training.output_dir")
        }
        self.fast = FastPath(model, self.cfg, self.lengths, out_dir, padding_side)

    # -- resume ---------------------------------------------------------------------------------------------
    def resume(self, checkpoint: Path | None = None) -> bool:
        """Restore the newest checkpoint (or ``checkpoint``); False when there is none."""
        folder = checkpoint or find_checkpoint(self.ckpt_root)
        if folder is None:
            return False
        restored = load_checkpoint(
            folder,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            config_fingerprint=self.fingerprint,
            config_flat=self.config_flat,
        )
        self.model.load_trainable_state(restored.trainable)
        self.state, self.best_state = restored.loop, restored.best
        return True

    def checkpoint(self) -> None:
        save_checkpoint(
            self.ckpt_root,
            loop=self.state,
            trainable=self.model.trainable_state(),
            best=self.best_state,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            config_fingerprint=self.fingerprint,
            config_flat=self.config_flat,
        )

    # -- the loop -------------------------------------------------------------------------------------------
    def fit(self, *, resume: bool = False) -> FitResult:
        """Train until ``total_steps``, early stopping, or the end of the epochs."""
        seed_everything(self.cfg.seed)
        self.model.mark_trainable()
        resumed = self.resume() if resume else False
        log = MetricsLog(self.out_dir / "metrics.jsonl", resume_step=self.state.step if resumed else None)
        with ProgressBar(self.total_steps, self.state.step, self.cfg.progress) as bar:
            if resumed:
                bar.message(f"resumed from step {self.state.step}")
            embeddings = self.model.backbone.get_input_embeddings()
            try:
                with noisy_embeddings(self.model, embeddings, self.cfg.neftune_noise_alpha):
                    while self.state.step < self.total_steps and not self.state.stopped_early:
                        self._epoch(log, bar)
            finally:
                self.fast.close()
        return FitResult(
            self.state, self.best_state, self.last_eval, self.metric, self.train_tokens, self.train_seconds
        )

    def _epoch(self, log: MetricsLog, bar: ProgressBar) -> None:
        """Run the rest of the current epoch (or until the last step, or early stopping)."""
        batches = train_batches(
            self.lengths,
            self.config.data.batch_size,
            seed=self.cfg.seed,
            epoch=self.state.epoch,
            bucket=self.config.data.bucket_by_length,
        )
        accum = self.cfg.grad_accum_steps
        self.model.train()
        self.fast.train_mode()
        window = Window()
        for index in range(self.state.batch_in_epoch, len(batches)):
            group_first = index - index % accum
            group_end = min(len(batches), group_first + accum)
            started = time.perf_counter()
            batch = self.model.task.collate([self.train[i] for i in batches[index]], self.pad_id, self.padding_side)
            loss = self._backward(batch, batches[index], scale=1.0 / (group_end - group_first))
            self.state.batch_in_epoch = index + 1
            if index + 1 == group_end:
                self._optimizer_step()
            window.add(int(batch["attention_mask"].sum()), loss, time.perf_counter() - started)
            if index + 1 < group_end:
                continue
            bar.update(self.state.step, window.mean_loss, window.tokens_per_s)
            if self.state.step % self.cfg.log_every == 0:
                log.write(
                    {
                        "step": self.state.step,
                        "epoch": self._epoch_float(),
                        "train_loss": window.mean_loss,
                        "lr": self.scheduler.get_last_lr()[0],
                        "tokens_per_s": window.tokens_per_s,
                    }
                )
                self._account(window)
                window = Window()
            last_of_epoch = index + 1 == len(batches)
            if last_of_epoch:
                self.state.epoch, self.state.batch_in_epoch = self.state.epoch + 1, 0
            if self._eval_due(last_of_epoch):
                self._evaluate(log, bar)
                self.checkpoint()
            if self.state.step >= self.total_steps or self.state.stopped_early:
                break
        self._account(window)

    def _account(self, window: Window) -> None:
        """Add a window's tokens and compute time (evaluation and checkpoints excluded) to the run totals."""
        self.train_tokens += window.tokens
        self.train_seconds += window.seconds

    def _backward(self, batch: dict[str, torch.Tensor], indices: list[int], scale: float) -> float:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if self.cfg.bf16 else nullcontext()
        with autocast:
            logits = self.fast.forward(batch, indices)
        loss = self.model.task.loss(logits, batch)
        (loss * scale).backward()
        return float(loss.detach())

    def _optimizer_step(self) -> None:
        if self.cfg.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(list(self.model.trainable()), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1

    def _epoch_float(self) -> float:
        return round(self.state.epoch + self.state.batch_in_epoch / max(1, self.batches_per_epoch), 4)

    def _eval_due(self, last_of_epoch: bool) -> bool:
        final = self.state.step >= self.total_steps
        if self.cfg.eval_every is not None:
            return final or self.state.step % self.cfg.eval_every == 0
        return final or last_of_epoch

    def _evaluate(self, log: MetricsLog, bar: ProgressBar) -> None:
        if self.evaluate is None:
            self.best_state = None
            return
        self.model.eval()
        with torch.no_grad():
            result = self.evaluate(self.model)
        self.model.train()
        self.fast.train_mode()
        self.last_eval = result
        if self.metric not in result.headline:
            raise ConfigError(
                f"config key 'training.metric' = {self.metric!r}: the task reports {', '.join(result.headline)}"
            )
        value = result.headline[self.metric]
        if self.metric.endswith("loss"):
            value = -value  # lower is better; stored negated so "greater is better" holds everywhere
        record: dict[str, Any] = {"step": self.state.step, "epoch": self._epoch_float()}
        record.update({f"eval_{k}": v for k, v in result.headline.items()})
        log.write(record)
        improved = self.state.best_metric is None or value > self.state.best_metric
        if improved:
            self.state.best_metric, self.state.best_step = value, self.state.step
            self.state.evals_without_gain = 0
            self.best_state = {k: v.clone() for k, v in self.model.trainable_state().items()}
        else:
            self.state.evals_without_gain += 1
            patience = self.cfg.early_stopping_patience
            self.state.stopped_early = patience is not None and self.state.evals_without_gain >= patience
        shown = "  ".join(f"{k} {v:.4f}" for k, v in result.headline.items())
        bar.message(f"step {self.state.step}: dev {shown}" + ("  (best)" if improved else ""))
        if self.state.stopped_early:
            bar.message(self._early_stop_line(), style="bold")

    def _early_stop_line(self) -> str:
        """The console line announcing early stopping (``results.json`` records it as ``stopped_early``)."""
        best = self.state.best_metric or 0.0
        shown = -best if self.metric.endswith("loss") else best
        evals = self.state.evals_without_gain
        return (
            f"early stopping at step {self.state.step} of {self.total_steps}: no dev {self.metric} gain in "
            f"{evals} evaluation{'s' if evals != 1 else ''} (training.early_stopping_patience); keeping step "
            f"{self.state.best_step} (dev {self.metric} {shown:.4f})"
        )
