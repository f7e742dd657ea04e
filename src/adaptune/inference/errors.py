"""What the multi-adapter predictor refuses (:mod:`adaptune.inference.multi`), as exception types.

Each carries a stable machine-readable :attr:`PredictorError.kind` and, for a limit, the limit's name; the server
maps the types to HTTP status codes (:mod:`adaptune.server.errors`), a Python caller catches them by type.
:class:`NonFiniteOutput` is raised by the offline :class:`~adaptune.inference.Predictor` too (``adaptune predict``
prints it as one line, as every :class:`~adaptune.errors.AdaptuneError`).
"""

from __future__ import annotations

from typing import ClassVar

from adaptune.errors import AdaptuneError


class PredictorError(AdaptuneError):
    """A request, adapter name or adapter folder the multi-adapter predictor refuses.

    ``kind``: what went wrong, stable across versions (``not_found``, ``wrong_task`` ...); ``limit``: the limit
    that was hit (``max_input_tokens``) or None.
    """

    kind: ClassVar[str] = "refused"

    def __init__(self, message: str, *, limit: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.limit = limit


class AdapterNameError(PredictorError, ValueError):
    """An adapter name that could reach outside the adapters folder (``/``, ``..``, ``\\``, absolute paths)."""

    kind = "invalid_adapter_name"


class AdapterNotFound(PredictorError, LookupError):
    """No such adapter loaded, or no such folder in the adapters folder."""

    kind = "not_found"


class AdapterAlreadyLoaded(PredictorError):
    """``load`` of an adapter that is loaded already (``reload`` swaps it)."""

    kind = "already_loaded"


class AdapterRefused(PredictorError, ValueError):
    """An adapter folder the predictor cannot serve on its base (another base model, unknown method ...)."""

    kind = "adapter_refused"


class WrongTask(PredictorError):
    """An adapter whose task is of another kind than the call serves (a tagger asked to classify)."""

    kind = "wrong_task"


class InvalidInput(PredictorError, ValueError):
    """An input the adapter's task cannot parse."""

    kind = "invalid_input"


class LimitExceeded(PredictorError):
    """An input over one of the predictor's limits (``limit`` names it)."""

    kind = "limit_exceeded"


class AdapterUnloaded(PredictorError):
    """A prepared row whose adapter was unloaded (or reloaded) before it ran."""

    kind = "adapter_unloaded"


class NonFiniteOutput(PredictorError):
    """An adapter whose forward pass gave NaN or infinite scores: its weights (or its base's) likely hold NaN/inf,
    e.g. from a training run that diverged. Raised instead of answering a NaN score (which JSON cannot carry)."""

    kind = "non_finite_output"


class AdapterTooLarge(PredictorError):
    """An adapter whose loaded tensors alone take more than the predictor's adapter memory budget
    (``max_memory_mb``, ``adaptune serve --adapter-memory-mb``): it can never be loaded within it."""

    kind = "adapter_too_large"
