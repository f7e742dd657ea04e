"""The server's errors: :class:`ServeError` (an HTTP status and the JSON body ``{"error": {"type", "limit",
"message"}}``) and the HTTP status of each refusal of the core predictor (:mod:`adaptune.inference.errors`)."""

from __future__ import annotations

from typing import Any

from adaptune.inference.errors import (
    AdapterAlreadyLoaded,
    AdapterNameError,
    AdapterNotFound,
    AdapterRefused,
    AdapterTooLarge,
    AdapterUnloaded,
    InvalidInput,
    LimitExceeded,
    NonFiniteOutput,
    PredictorError,
    WrongTask,
)


class ServeError(Exception):
    """A request the server refuses or cannot answer, with the HTTP status to answer it with.

    ``type`` is a stable machine-readable kind (``limit_exceeded``, ``not_found``, ``invalid_request`` ...);
    ``limit`` names the limit that was hit (``max_input_tokens``, ``max_batch``, ``max_body_bytes``) or is None.
    """

    def __init__(self, status: int, type_: str, message: str, *, limit: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message
        self.limit = limit

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return {"error": {"type": self.type, "limit": self.limit, "message": self.message}}


def limit_error(limit: str, message: str, status: int = 400) -> ServeError:
    """A request over one of the server's limits (413 for the body size, 400 otherwise)."""
    return ServeError(status, "limit_exceeded", message, limit=limit)


#: The HTTP status of each refusal of the core predictor (any other :class:`PredictorError`: 400).
STATUS: dict[type[PredictorError], int] = {
    AdapterNameError: 400,
    AdapterNotFound: 404,
    AdapterAlreadyLoaded: 409,
    AdapterRefused: 422,
    WrongTask: 400,
    InvalidInput: 400,
    LimitExceeded: 400,
    AdapterUnloaded: 503,
    AdapterTooLarge: 507,  # over the server's whole adapter memory budget
    NonFiniteOutput: 500,  # the adapter is broken (NaN/inf weights), not the request
}


def http_error(err: PredictorError) -> ServeError:
    """The :class:`ServeError` answering a refusal of the core predictor: its status from :data:`STATUS`, its
    ``kind`` as the error type, its limit and message as they are."""
    status = next((code for cls, code in STATUS.items() if isinstance(err, cls)), 400)
    return ServeError(status, err.kind, err.message, limit=err.limit)
