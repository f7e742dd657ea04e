"""Callbacks: how code outside the loop watches or steers a run without reaching into the :class:`Trainer`.

A callback subclasses :class:`Callback` and overrides the hooks it needs (the others do nothing), as with
transformers' ``TrainerCallback`` or Lightning's ``Callback``. Every hook gets the trainer first; its public
attributes (``state``, ``model``, ``optimizer``, ``scheduler``, ``train_tokens``, ``train_seconds``, ``metric``,
``total_steps``) are what a callback reads. A callback stops the run by setting ``trainer.state.stopped_early``
(as :class:`EarlyStopping` does; ``results.json`` records it as ``stopped_early``). An exception raised in a
hook ends the run where it was raised (the kill/resume tests raise in :meth:`Callback.on_before_optimizer_step`).

In one run the hooks fire in this order::

    on_fit_start
    per epoch:  on_epoch_start
                per optimiser step:  on_before_optimizer_step, on_step_end, on_log (every training.log_every
                                     steps), then at an evaluation point: on_log and on_evaluate (when there is a
                                     dev split), on_checkpoint
                on_epoch_end
    on_fit_end

The run's own behaviour is made of callbacks too (:func:`default_callbacks`, from the config): the metrics log,
early stopping, checkpoints. A trainer's callbacks are those, then the user's, in the order given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adaptune.config import TrainingConfig
from adaptune.tasks.base import EvalOutput
from adaptune.training.logging import MetricsLog

if TYPE_CHECKING:
    from adaptune.training.loop import Trainer


@dataclass(frozen=True)
class StepRecord:
    """One finished optimiser step (all its gradient-accumulation batches)."""

    #: Optimiser steps done, this one included.
    step: int
    #: Fractional epoch at the end of the step, as the metrics log writes it.
    epoch: float
    #: Real (non-pad) tokens in the step's batches.
    tokens: int
    #: Compute seconds of the step: collate, forward, backward and the optimiser step (no evaluation, checkpoint).
    seconds: float
    #: Mean training loss over the step's batches.
    loss: float
    #: The first optimiser group's learning rate after the step's scheduler update, as ``metrics.jsonl`` logs it.
    lr: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


class Callback:
    """Hooks into the training loop; each does nothing unless overridden."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Once, before the first step (after a resumed run restored its checkpoint: ``trainer.resumed``)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Before the first batch of ``epoch`` (0-based) that this run trains; a resumed run enters mid-epoch."""

    def on_before_optimizer_step(self, trainer: Trainer) -> None:
        """After the step's gradients are accumulated, before clipping and the optimiser update
        (``trainer.state.step`` still counts the steps before this one)."""

    def on_step_end(self, trainer: Trainer, step: StepRecord) -> None:
        """After each optimiser step and its scheduler update."""

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """A record for the metrics log: training figures every ``training.log_every`` steps (``train_loss``,
        ``lr``, ``tokens_per_s`` since the last one), and ``eval_<metric>`` figures after each evaluation."""

    def on_evaluate(self, trainer: Trainer, result: EvalOutput, improved: bool) -> None:
        """After a dev evaluation and best-weights tracking: ``improved`` when it is the best so far (then
        ``trainer.best_state`` holds these weights and ``trainer.state.evals_without_gain`` is 0)."""

    def on_checkpoint(self, trainer: Trainer) -> None:
        """At each evaluation point (``training.eval_every``, each epoch's end, the last step), with or without
        a dev split, after evaluation and early stopping: where a resumable checkpoint belongs."""

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        """When the loop leaves ``epoch``: at its end, or earlier at the last step or an early stop."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """Once, after the last step, when training ended without an error."""


class CallbackList(Callback):
    """Calls each hook on every callback, in order."""

    def __init__(self, callbacks: Sequence[Callback]) -> None:
        self.callbacks = list(callbacks)

    def on_fit_start(self, trainer: Trainer) -> None:
        for callback in self.callbacks:
            callback.on_fit_start(trainer)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        for callback in self.callbacks:
            callback.on_epoch_start(trainer, epoch)

    def on_before_optimizer_step(self, trainer: Trainer) -> None:
        for callback in self.callbacks:
            callback.on_before_optimizer_step(trainer)

    def on_step_end(self, trainer: Trainer, step: StepRecord) -> None:
        for callback in self.callbacks:
            callback.on_step_end(trainer, step)

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_log(trainer, record)

    def on_evaluate(self, trainer: Trainer, result: EvalOutput, improved: bool) -> None:
        for callback in self.callbacks:
            callback.on_evaluate(trainer, result, improved)

    def on_checkpoint(self, trainer: Trainer) -> None:
        for callback in self.callbacks:
            callback.on_checkpoint(trainer)

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        for callback in self.callbacks:
            callback.on_epoch_end(trainer, epoch)

    def on_fit_end(self, trainer: Trainer) -> None:
        for callback in self.callbacks:
            callback.on_fit_end(trainer)


class MetricsLogger(Callback):
    """Writes every :meth:`Callback.on_log` record to ``<output_dir>/metrics.jsonl``; a resumed run keeps the
    records up to the resumed step and drops the later ones (written after that checkpoint, before the kill)."""

    def __init__(self) -> None:
        self.log: MetricsLog | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        resume_step = trainer.state.step if trainer.resumed else None
        self.log = MetricsLog(trainer.out_dir / "metrics.jsonl", resume_step=resume_step)

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        assert self.log is not None, "on_fit_start opens the log"
        self.log.write(record)


class EarlyStopping(Callback):
    """Stops the run after ``patience`` evaluations in a row without a new best dev metric
    (``training.early_stopping_patience``), and says so on the console."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_evaluate(self, trainer: Trainer, result: EvalOutput, improved: bool) -> None:
        if not improved and trainer.state.evals_without_gain >= self.patience:
            trainer.state.stopped_early = True
            trainer.message(early_stop_line(trainer), style="bold")


def early_stop_line(trainer: Trainer) -> str:
    """The console line announcing early stopping (``results.json`` records it as ``stopped_early``)."""
    state, metric = trainer.state, trainer.metric
    best = state.best_metric or 0.0
    shown = -best if metric.endswith("loss") else best
    evals = state.evals_without_gain
    return (
        f"early stopping at step {state.step} of {trainer.total_steps}: no dev {metric} gain in "
        f"{evals} evaluation{'s' if evals != 1 else ''} (training.early_stopping_patience); keeping step "
        f"{state.best_step} (dev {metric} {shown:.4f})"
    )


class Checkpointing(Callback):
    """Writes a resumable checkpoint (``<output_dir>/checkpoints``) at every evaluation point."""

    def on_checkpoint(self, trainer: Trainer) -> None:
        trainer.checkpoint()


def default_callbacks(training: TrainingConfig, *, writes: bool = True) -> list[Callback]:
    """The run's own callbacks, from its config: metrics log, early stopping (when a patience is set), checkpoints.
    Without ``writes`` (ranks other than 0) only early stopping, which every rank decides alike."""
    stopping = [EarlyStopping(training.early_stopping_patience)] if training.early_stopping_patience is not None else []
    return [MetricsLogger(), *stopping, Checkpointing()] if writes else stopping
