"""The one training loop, shared by every method and task.

AdamW with warmup and linear/cosine decay, gradient accumulation and clipping, optional bf16 autocast (weights
stay fp32), evaluation every N steps or each epoch, best-weights tracking on a named metric and a progress bar.
Early stopping, the JSONL metrics log and the checkpoints from which a killed run resumes to the same result are
callbacks (:mod:`adaptune.training.callbacks`), as is anything a user adds.
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
from adaptune.methods.base import ParamGroup, ParamGroups
from adaptune.model import AdaptedModel
from adaptune.registry import methods_with
from adaptune.tasks.base import Encoded, EvalOutput
from adaptune.training.callbacks import Callback, CallbackList, StepRecord, default_callbacks
from adaptune.training.checkpoint import LoopState, find_checkpoint, load_checkpoint, save_checkpoint
from adaptune.training.fast import FastPath
from adaptune.training.logging import ProgressBar
from adaptune.training.neftune import noisy_embeddings
from adaptune.training.schedule import build_optimizer, build_scheduler

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
    """Running totals over some batches (one optimiser step's, or those since the last log line): real (non-pad)
    tokens, summed batch losses, compute seconds."""

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
    """Runs the loop for one :class:`AdaptedModel` on encoded training examples.

    ``callbacks`` (:class:`~adaptune.training.callbacks.Callback`) run after the run's own ones (metrics log,
    early stopping, checkpoints: :func:`~adaptune.training.callbacks.default_callbacks`), in the order given.
    """

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
        callbacks: Sequence[Callback] = (),
        data: dict[str, Any] | None = None,
    ) -> None:
        self.model, self.train, self.config, self.out_dir = model, train, config, out_dir
        self.data = data or {}  # data_digest by split: recorded in checkpoints, checked on resume
        self.cfg = config.training
        self.evaluate, self.metric, self.pad_id, self.padding_side = evaluate, metric, pad_id, padding_side
        self.callbacks = CallbackList([*default_callbacks(self.cfg), *callbacks])
        self.lengths = [len(e) for e in train]
        self.batches_per_epoch = math.ceil(len(train) / config.data.batch_size)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / self.cfg.grad_accum_steps)
        self.total_steps = self.cfg.max_steps or math.ceil(self.cfg.epochs * self.steps_per_epoch)
        lr = self.cfg.learning_rate or model.method.default_learning_rate
        named = list(model.adapter_parameters().items()) + list(model.head.named_parameters())
        if not named:
            raise ConfigError(
                f"nothing to train: method '{config.method.name}' adds no parameters and task '{config.task.name}' "
                "keeps its head frozen; choose a method that trains part of the backbone (adaptune methods lists them)"
            )
        groups = self._method_groups()
        self.optimizer = build_optimizer(named, lr, self.cfg.weight_decay, groups=groups)
        warmup = round(self.cfg.warmup_ratio * self.total_steps)
        self.scheduler = build_scheduler(self.optimizer, warmup=warmup, total=self.total_steps, kind=self.cfg.scheduler)
        self.state = LoopState()
        self.resumed = False
        self.best_state: dict[str, torch.Tensor] | None = None
        self.last_eval: EvalOutput | None = None
        self.ckpt_root = out_dir / "checkpoints"
        self.train_tokens, self.train_seconds = 0, 0.0
        self.window = Window()  # since the last log line: the progress bar and the logged training figures
        self.bar: ProgressBar | None = None
        self.fingerprint = config.fingerprint()
        self.config_flat = {
            k: v
            for k, v in flatten(config.model_dump(mode="json")).items()
            if k not in ("training.progress", "training.output_dir")
        }
        self.fast = FastPath(model, self.cfg, self.lengths, out_dir, padding_side)

    def _method_groups(self) -> list[ParamGroup]:
        """The method's own optimiser groups (:class:`ParamGroups`: LoRA+); a :class:`ConfigError` when
        ``training.loraplus_lr_ratio`` is set and the method gives none."""
        method = self.model.method
        groups = method.param_groups(self.model.backbone, self.cfg) if isinstance(method, ParamGroups) else []
        if self.cfg.loraplus_lr_ratio is not None and not any(group.names for group in groups):
            raise ConfigError(
                f"config key 'training.loraplus_lr_ratio' = {self.cfg.loraplus_lr_ratio} needs a method that "
                f"gives its parameters their own learning rate, and method '{self.config.method.name}' gives "
                f"none: use one of {', '.join(methods_with(ParamGroups))} (a stack with a trainable lora member)"
            )
        return groups

    def message(self, text: str, style: str | None = None) -> None:
        """A console line (on stderr, when ``training.progress``), printed above the progress bar."""
        if self.bar is not None:
            self.bar.message(text, style)

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
            data=self.data,
        )
        self.model.load_trainable_state(restored.trainable)
        self.state, self.best_state = restored.loop, restored.best
        return True

    def checkpoint(self) -> None:
        """Write a resumable checkpoint of the current step (the :class:`Checkpointing` callback calls this)."""
        save_checkpoint(
            self.ckpt_root,
            loop=self.state,
            trainable=self.model.trainable_state(),
            best=self.best_state,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            config_fingerprint=self.fingerprint,
            config_flat=self.config_flat,
            data=self.data,
        )

    # -- the loop -------------------------------------------------------------------------------------------
    def fit(self, *, resume: bool = False) -> FitResult:
        """Train until ``total_steps``, early stopping, or the end of the epochs."""
        seed_everything(self.cfg.seed)
        self.model.mark_trainable()
        self.resumed = self.resume() if resume else False
        with ProgressBar(self.total_steps, self.state.step, self.cfg.progress) as self.bar:
            if self.resumed:
                self.message(f"resumed from step {self.state.step}")
            self.callbacks.on_fit_start(self)
            embeddings = self.model.backbone.get_input_embeddings()
            try:
                with noisy_embeddings(self.model, embeddings, self.cfg.neftune_noise_alpha):
                    while self.state.step < self.total_steps and not self.state.stopped_early:
                        self._epoch()
            finally:
                self.fast.close()
            self.callbacks.on_fit_end(self)
        return FitResult(
            self.state, self.best_state, self.last_eval, self.metric, self.train_tokens, self.train_seconds
        )

    def _epoch(self) -> None:
        """Run the rest of the current epoch (or until the last step, or early stopping)."""
        epoch = self.state.epoch
        batches = train_batches(
            self.lengths,
            self.config.data.batch_size,
            seed=self.cfg.seed,
            epoch=epoch,
            bucket=self.config.data.bucket_by_length,
        )
        accum = self.cfg.grad_accum_steps
        self.model.train()
        self.fast.train_mode()
        self.window, step = Window(), Window()
        self.callbacks.on_epoch_start(self, epoch)
        for index in range(self.state.batch_in_epoch, len(batches)):
            group_first = index - index % accum
            group_end = min(len(batches), group_first + accum)
            started = time.perf_counter()
            batch = self.model.task.collate([self.train[i] for i in batches[index]], self.pad_id, self.padding_side)
            loss = self._backward(batch, batches[index], scale=1.0 / (group_end - group_first))
            self.state.batch_in_epoch = index + 1
            if index + 1 == group_end:
                self._optimizer_step()
            seconds = time.perf_counter() - started
            for window in (step, self.window):
                window.add(int(batch["attention_mask"].sum()), loss, seconds)
            if index + 1 < group_end:
                continue
            self._end_step(step)
            step = Window()
            last_of_epoch = index + 1 == len(batches)
            if last_of_epoch:
                self.state.epoch, self.state.batch_in_epoch = epoch + 1, 0
            if self._eval_due(last_of_epoch):
                self._evaluate()
                self.callbacks.on_checkpoint(self)
            if self.state.step >= self.total_steps or self.state.stopped_early:
                break
        self.callbacks.on_epoch_end(self, epoch)

    def _end_step(self, step: Window) -> None:
        """Count a finished optimiser step (compute time only) and report it; a log record every ``log_every``."""
        self.train_tokens += step.tokens
        self.train_seconds += step.seconds
        lr = self.scheduler.get_last_lr()[0]
        epoch = self._epoch_float()
        record = StepRecord(self.state.step, epoch, step.tokens, step.seconds, step.mean_loss, lr)
        self.callbacks.on_step_end(self, record)
        if self.bar is not None:
            self.bar.update(self.state.step, self.window.mean_loss, self.window.tokens_per_s)
        if self.state.step % self.cfg.log_every == 0:
            figures = {"train_loss": self.window.mean_loss, "lr": lr, "tokens_per_s": self.window.tokens_per_s}
            self.callbacks.on_log(self, {"step": self.state.step, "epoch": epoch, **figures})
            self.window = Window()

    def _backward(self, batch: dict[str, torch.Tensor], indices: list[int], scale: float) -> float:
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if self.cfg.bf16 else nullcontext()
        with autocast:
            logits = self.fast.forward(batch, indices)
        loss = self.model.task.loss(logits, batch)
        (loss * scale).backward()
        return float(loss.detach())

    def _optimizer_step(self) -> None:
        self.callbacks.on_before_optimizer_step(self)
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

    def _evaluate(self) -> None:
        """Score dev, log it, track the best weights; then the callbacks' ``on_evaluate`` (early stopping)."""
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
        record: dict[str, Any] = {"step": self.state.step, "epoch": self._epoch_float()}
        record.update({f"eval_{k}": v for k, v in result.headline.items()})
        self.callbacks.on_log(self, record)
        improved = self._track_best(result.headline[self.metric])
        shown = "  ".join(f"{k} {v:.4f}" for k, v in result.headline.items())
        self.message(f"step {self.state.step}: dev {shown}" + ("  (best)" if improved else ""))
        self.callbacks.on_evaluate(self, result, improved)

    def _track_best(self, value: float) -> bool:
        """Keep the weights when ``value`` of the metric is the best so far; count evaluations without gain."""
        if self.metric.endswith("loss"):
            value = -value  # lower is better; stored negated so "greater is better" holds everywhere
        improved = self.state.best_metric is None or value > self.state.best_metric
        if improved:
            self.state.best_metric, self.state.best_step = value, self.state.step
            self.state.evals_without_gain = 0
            self.best_state = {k: v.clone() for k, v in self.model.trainable_state().items()}
        else:
            self.state.evals_without_gain += 1
        return improved
