"""The one training loop, shared by every method and task.

AdamW with warmup and linear/cosine decay, gradient accumulation and clipping, bf16 autocast where
``training.precision`` picks it (weights stay fp32), evaluation every N steps or each epoch, best-weights tracking
on a named metric and a progress bar.
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
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from adaptune.config import NOT_IN_FINGERPRINT, RunConfig, flatten
from adaptune.data.batching import train_batches
from adaptune.errors import ConfigError
from adaptune.hardware import PrecisionChoice
from adaptune.inference import to_device
from adaptune.methods.base import ParamGroup, ParamGroups
from adaptune.model import AdaptedModel
from adaptune.registry import methods_with
from adaptune.tasks.base import Encoded, EvalOutput
from adaptune.training.callbacks import Callback, CallbackList, StepRecord, default_callbacks
from adaptune.training.checkpoint import (
    CheckpointError,
    LoopState,
    find_checkpoint,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from adaptune.training.distributed import SINGLE, Distributed, check_switches
from adaptune.training.fast import FastPath
from adaptune.training.logging import ProgressBar
from adaptune.training.neftune import noisy_embeddings
from adaptune.training.precision import resolve_precision, with_precision
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


class TrainStep(nn.Module):
    """The training forward as a module, ``(batch, indices) -> logits`` through the :class:`FastPath`, so that
    :class:`~torch.nn.parallel.DistributedDataParallel` wraps it and its gradient hooks see every step."""

    def __init__(self, model: AdaptedModel, fast: FastPath) -> None:
        super().__init__()
        self.model = model
        self.fast = fast

    def forward(self, batch: dict[str, torch.Tensor], indices: list[int]) -> torch.Tensor:
        return self.fast.forward(batch, indices)


def data_parallel(model: AdaptedModel, fast: FastPath, device: torch.device) -> DistributedDataParallel:
    """DDP over the trained parameters only: the frozen base and every buffer are left out of its start-up
    broadcast and of the gradient all-reduce (each rank loaded the same base)."""
    step = TrainStep(model, fast)
    frozen = [name for name, p in step.named_parameters() if not p.requires_grad]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        step, frozen + [name for name, _ in step.named_buffers()]
    )
    return DistributedDataParallel(
        step, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
    )


class Trainer:
    """Runs the loop for one :class:`AdaptedModel` on encoded training examples.

    ``callbacks`` (:class:`~adaptune.training.callbacks.Callback`) run after the run's own ones (metrics log,
    early stopping, checkpoints: :func:`~adaptune.training.callbacks.default_callbacks`), in the order given, on
    every rank (``trainer.dist.is_main`` tells rank 0). Under several processes (``dist``,
    :mod:`adaptune.training.distributed`) each rank trains on its share of every epoch's batches.
    ``precision``: the run's :class:`~adaptune.hardware.PrecisionChoice` when the caller decided it (the API
    does, to report it); otherwise the config's ``training.precision`` is decided here
    (:func:`~adaptune.training.precision.resolve_precision`). :attr:`config` holds the decided precision.
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
        dist: Distributed = SINGLE,
        precision: PrecisionChoice | None = None,
    ) -> None:
        check_switches(config.training, dist.world)
        # the run's precision, decided once (adaptune.training.precision): every reader of the config sees it
        if precision is None:
            config, precision = resolve_precision(config, dist)
        self.precision = precision
        config = with_precision(config, precision)
        self.model, self.train, self.config, self.out_dir = model, train, config, out_dir
        self.dist = dist
        self.data = data or {}  # data_digest by split: recorded in checkpoints, checked on resume
        self.cfg = config.training
        self.evaluate, self.metric, self.pad_id, self.padding_side = evaluate, metric, pad_id, padding_side
        self.callbacks = CallbackList([*default_callbacks(self.cfg, writes=dist.is_main), *callbacks])
        self.lengths = [len(e) for e in train]
        self.batches_per_epoch = math.ceil(len(train) / config.data.batch_size)  # over all ranks
        self.learning_rate = lr = self.cfg.learning_rate or model.method.default_learning_rate
        named = list(model.adapter_parameters().items()) + list(model.head.named_parameters())
        if not named:
            raise ConfigError(
                f"nothing to train: method '{config.method.name}' adds no parameters and task '{config.task.name}' "
                "keeps its head frozen; choose a method that trains part of the backbone (adaptune methods lists them)"
            )
        groups = self._method_groups()
        self.optimizer = build_optimizer(named, lr, self.cfg.weight_decay, groups=groups)
        self._plan(self.cfg.grad_accum_steps)
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
            k: v for k, v in flatten(config.model_dump(mode="json")).items() if k not in NOT_IN_FINGERPRINT
        }
        self.fast = FastPath(model, self.cfg, self.lengths, out_dir, padding_side)
        self.ddp: DistributedDataParallel | None = None
        self.resume_note = ""

    def _plan(self, accum: int) -> None:
        """Steps and learning-rate schedule for ``accum`` batches per rank and optimiser step: a step takes
        ``world * accum`` global batches (the *global group*), ``ceil(batches / (world * accum))`` steps an epoch."""
        self.accum = accum
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / (self.dist.world * accum))
        self.total_steps = self.cfg.max_steps or math.ceil(self.cfg.epochs * self.steps_per_epoch)
        warmup = round(self.cfg.warmup_ratio * self.total_steps)
        self.scheduler = build_scheduler(self.optimizer, warmup=warmup, total=self.total_steps, kind=self.cfg.scheduler)

    def _keep_global_group(self, folder: Path, saved: int) -> None:
        """Resuming on another number of processes: take ``saved`` global batches per step as the checkpoint's
        run did (the same steps, schedule and result), by accumulating ``saved / world`` batches per rank."""
        world = self.dist.world
        if saved == world * self.accum:
            return
        if saved % world:
            raise CheckpointError(
                f"checkpoint {folder} was made taking {saved} batches per optimiser step (processes x "
                f"training.grad_accum_steps); {world} processes cannot share that evenly: resume on a number of "
                f"processes that divides {saved}"
            )
        self._plan(saved // world)
        self.resume_note = f" ({world} process(es) accumulating {self.accum} batches: {saved} per step, as before)"

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

        def read() -> tuple[Path, tuple[dict[str, Any], bytes]] | None:
            folder = checkpoint or find_checkpoint(self.ckpt_root)
            return None if folder is None else (folder, read_checkpoint(folder))

        found = self.dist.on_main(read)  # rank 0 reads, every rank restores
        if found is None:
            return False
        folder, read_back = found
        self._keep_global_group(folder, int(read_back[0]["loop"].get("global_group") or self.cfg.grad_accum_steps))
        restored = load_checkpoint(
            folder,
            read=read_back,
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
        self.state.global_group = self.dist.world * self.accum
        if self.dist.active:
            self.dist.check_same("config", self.fingerprint)
            self.dist.check_same("training and dev data", self.data)
            self.ddp = data_parallel(self.model, self.fast, self.dist.device)
            if not self.dist.is_main:  # its own dropout draws: other ranks' masks would repeat rank 0's
                torch.manual_seed(self.cfg.seed + 1_000_003 * self.dist.rank + self.state.step)
        with ProgressBar(self.total_steps, self.state.step, self.cfg.progress and self.dist.is_main) as self.bar:
            if self.resumed:
                self.message(f"resumed from step {self.state.step}{self.resume_note}")
            self.callbacks.on_fit_start(self)
            embeddings = self.model.backbone.get_input_embeddings()
            try:
                with noisy_embeddings(self.model, embeddings, self.cfg.neftune_noise_alpha):
                    while self.state.step < self.total_steps and not self.state.stopped_early:
                        self._epoch()
            finally:
                self.fast.close()
            tokens, _ = self.dist.sum([float(self.train_tokens), 0.0])
            self.train_tokens = int(tokens)  # every rank's; the seconds are this rank's (they ran side by side)
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
        accum = self.accum
        start = self.state.batch_in_epoch  # global batches of this epoch already trained on (by all ranks)
        mine = self.dist.shard(batches[start:])
        self.model.train()
        self.fast.train_mode()
        self.window, step = Window(), Window()
        self.callbacks.on_epoch_start(self, epoch)
        for index, indices in enumerate(mine):
            group_first = index - index % accum
            group_end = min(len(mine), group_first + accum)
            started = time.perf_counter()
            batch = self.model.task.collate([self.train[i] for i in indices], self.pad_id, self.padding_side)
            loss = self._backward(batch, indices, scale=1.0 / (group_end - group_first), sync=index + 1 == group_end)
            self.state.batch_in_epoch = min(len(batches), start + (index + 1) * self.dist.world)
            if index + 1 == group_end:
                self._optimizer_step()
            seconds = time.perf_counter() - started
            for window in (step, self.window):
                window.add(int(batch["attention_mask"].sum()), loss, seconds)
            if index + 1 < group_end:
                continue
            self._end_step(step)
            step = Window()
            last_of_epoch = index + 1 == len(mine)
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
            loss, batches, tokens = self.dist.sum([self.window.loss, self.window.batches, self.window.tokens])
            tokens_per_s = tokens / self.window.seconds if self.window.seconds else 0.0  # all ranks side by side
            figures = {"train_loss": loss / max(1.0, batches), "lr": lr, "tokens_per_s": tokens_per_s}
            self.callbacks.on_log(self, {"step": self.state.step, "epoch": epoch, **figures})
            self.window = Window()

    def _backward(self, batch: dict[str, torch.Tensor], indices: list[int], scale: float, sync: bool) -> float:
        """Forward and backward one batch; under DDP the gradients are all-reduced only when ``sync`` (the last
        batch of an accumulation group)."""
        device = self.dist.device
        batch = to_device(batch, device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if self.cfg.bf16 else nullcontext()
        no_sync = self.ddp.no_sync() if self.ddp is not None and not sync else nullcontext()
        with no_sync:
            with autocast:
                logits = self.ddp(batch, indices) if self.ddp is not None else self.fast.forward(batch, indices)
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
