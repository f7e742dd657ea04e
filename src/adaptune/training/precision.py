"""The run's precision, decided once at its start: ``training.precision`` (and the ``bf16`` switches) to a choice.

:func:`resolve_precision` turns what the config asks for (:func:`requested_precision`) into a
:class:`~adaptune.hardware.PrecisionChoice` on the run's device (:func:`~adaptune.hardware.choose_precision`:
``auto`` measures the CPU's bf16 and fp32 matmul rates once per host) and returns the config with
``training.precision``, ``training.bf16`` and ``training.bf16_base`` set to that choice, so the loop, its speed
switches, evaluation and the run's ``config.yaml`` all read the same decision. Under several processes rank 0
decides for every rank.
"""

from __future__ import annotations

from dataclasses import replace

from adaptune.config import RunConfig, TrainingConfig
from adaptune.hardware import PrecisionChoice, choose_precision, requested
from adaptune.training.distributed import SINGLE, Distributed


def requested_precision(training: TrainingConfig) -> str:
    """``training.precision``; under ``auto``, ``bf16`` when ``training.bf16`` (or ``bf16_base``) asks for it."""
    return requested(training.precision, training.bf16 or training.bf16_base)


def decide(training: TrainingConfig, dist: Distributed = SINGLE) -> PrecisionChoice:
    """The choice for ``training`` on ``dist.device`` (rank 0's, on every rank). An explicit bf16 keeps the
    config's ``bf16_base``; ``auto``'s bf16 base (on a CPU) is dropped when the config sets ``bf16_base: false``
    itself."""
    asked = requested_precision(training)
    choice = dist.on_main(lambda: choose_precision(asked, dist.device))
    if asked == "bf16":
        choice = replace(choice, bf16_base=training.bf16_base)
    elif choice.bf16_base and "bf16_base" in training.model_fields_set and not training.bf16_base:
        choice = replace(choice, bf16_base=False)
    if choice.bf16_base:
        return replace(choice, reason=f"{choice.reason}; the frozen base weights are stored in bf16")
    return choice


def with_precision(config: RunConfig, choice: PrecisionChoice) -> RunConfig:
    """``config`` with ``training.precision``, ``bf16`` and ``bf16_base`` set to ``choice``."""
    training = config.training.model_copy(
        update={"precision": choice.name, "bf16": choice.bf16, "bf16_base": choice.bf16_base}
    )
    return config.model_copy(update={"training": training})


def resolve_precision(config: RunConfig, dist: Distributed = SINGLE) -> tuple[RunConfig, PrecisionChoice]:
    """The config with its precision decided (:func:`with_precision` of :func:`decide`), and the choice."""
    choice = decide(config.training, dist)
    return with_precision(config, choice), choice
