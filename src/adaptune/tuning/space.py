"""The ``search:`` block of a run's YAML: which config keys a hyper-parameter search varies, over which values.

::

    search:
      metric: auto                 # training.metric (the task's selection metric), on dev
      space:
        training.learning_rate: {low: 1.0e-4, high: 3.0e-2, log: true}   # float range, log-uniform
        training.epochs: {low: 2, high: 5}                               # int range: low and high are integers
        method.name: {choices: [bottleneck, lora]}                       # the method itself
        method.reduction_factor: {choices: [8, 16, 32]}                  # only in trials that pick bottleneck
        method.r: {choices: [4, 8, 16]}                                  # only in trials that pick lora

A key is any dotted config key (``training.weight_decay``, ``method.dropout``, ``data.batch_size``). A range is
``{low, high}`` with optional ``log`` (sample ``log x`` uniformly, for scales such as learning rates) or ``step``
(a grid ``low, low + step, ...``); a categorical is ``{choices: [...]}`` of strings, numbers, booleans or null.

``RunConfig.search`` keeps the block as plain data (so ``adaptune train`` accepts such a file and loads nothing of
this); ``adaptune tune`` validates it with :class:`SearchConfig`. This module only describes the block's shape and
draws values through an optuna trial (duck-typed: nothing here imports optuna). Checking the keys against the run
config's schema, the conditional method keys and each trial's config are :mod:`adaptune.tuning.trials`.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Choice = str | int | float | bool | None


class SuggestingTrial(Protocol):
    """What :meth:`ParamSpace.suggest` needs of an ``optuna.Trial`` (or ``optuna.trial.FixedTrial``)."""

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int: ...

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...


class ParamSpace(BaseModel):
    """The values one config key takes in a search: a range ``{low, high, log?, step?}`` or ``{choices}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: int | float | None = Field(None, description="Smallest value of a range (integers: an int range).")
    high: int | float | None = Field(None, description="Largest value of a range, included.")
    log: bool = Field(False, description="Sample log(value) uniformly (low > 0), e.g. for learning rates.")
    step: int | float | None = Field(None, gt=0, description="Grid spacing of a range: low, low + step, ...")
    choices: list[Choice] | None = Field(None, description="The values of a categorical parameter.")

    @field_validator("low", "high", "step", mode="before")
    @classmethod
    def _number(cls, value: Any) -> Any:
        """YAML reads ``1e-4`` (no dot) as a string; a number is meant. Booleans are not numbers here."""
        if isinstance(value, bool):
            raise ValueError(f"expects a number, got {value!r}")
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"expects a number, got {value!r}") from None
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> ParamSpace:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("give either choices or a range (low, high, log, step), not both")
            if not self.choices:
                raise ValueError("choices is empty")
            typed = [(type(c).__name__, c) for c in self.choices]  # True and 1 are different choices
            if len(set(typed)) != len(typed):
                raise ValueError(f"choices {self.choices} repeat a value")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs low and high (or give choices)")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        if self.log and self.low <= 0:
            raise ValueError(f"log needs low > 0, got {self.low}")
        if self.is_int and self.step is not None and not isinstance(self.step, int):
            raise ValueError(f"an int range (integer low and high) needs an integer step, got {self.step}")
        return self

    @property
    def is_int(self) -> bool:
        """An integer range: low and high are both integers in the YAML (``{low: 2, high: 5}``)."""
        return self.choices is None and isinstance(self.low, int) and isinstance(self.high, int)

    def candidates(self) -> list[Any]:
        """Values that span the space (the choices, or both ends of a range): what is checked against the
        config's own validation before the search starts."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def suggest(self, trial: SuggestingTrial, name: str) -> Any:
        """Draw this parameter's value for ``trial`` (optuna's sampler decides how: TPE, random ...)."""
        if self.choices is not None:
            return trial.suggest_categorical(name, self.choices)
        assert self.low is not None and self.high is not None  # checked by the validator
        if self.is_int:
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        step = float(self.step) if self.step is not None else None
        return trial.suggest_float(name, float(self.low), float(self.high), step=step, log=self.log)


class SearchConfig(BaseModel):
    """A hyper-parameter search over a run config (``adaptune tune``); ``adaptune train`` ignores it."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    metric: str = Field(
        "auto", description="Dev metric the search optimises; 'auto': the run's selection metric (training.metric)."
    )
    direction: Literal["auto", "maximize", "minimize"] = Field(
        "auto", description="auto: minimise metrics named *loss and perplexity, maximise the others."
    )
    space: dict[str, ParamSpace] = Field(
        min_length=1, description="Dotted config key -> its range {low, high, log, step} or {choices: [...]}."
    )
    startup_trials: int = Field(10, ge=0, description="Random trials before TPE models the results.")
    pruner: Literal["median", "none"] = Field(
        "median",
        description="median: stop a trial whose dev metric at an evaluation is worse than the median of earlier "
        "trials at the same step (optuna's MedianPruner); none: every trial runs to its end.",
    )
    prune_startup_trials: int = Field(3, ge=0, description="Finished trials before any trial is pruned.")
    prune_warmup_steps: int = Field(0, ge=0, description="Optimiser steps of a trial before it can be pruned.")
