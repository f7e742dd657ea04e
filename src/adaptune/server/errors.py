"""The one error type of the server: an HTTP status and the JSON body ``{"error": {"type", "limit", "message"}}``."""

from __future__ import annotations

from typing import Any


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
