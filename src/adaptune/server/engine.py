"""Backwards compatibility: the multi-adapter predictor now lives in the core
(:class:`adaptune.inference.multi.MultiPredictor`); the app serves it directly and maps its refusals to HTTP errors
(:func:`adaptune.server.errors.http_error`).

:class:`MultiAdapterEngine` is that predictor with its refusals raised (and returned, for rows and generation
jobs) as :class:`~adaptune.server.errors.ServeError`, for code written against the old engine.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from adaptune.generation import Generation
from adaptune.inference.errors import PredictorError
from adaptune.inference.jobs import GenerationJob
from adaptune.inference.multi import MultiPredictor
from adaptune.inference.rows import Row
from adaptune.server.errors import ServeError, http_error

F = TypeVar("F", bound=Callable[..., Any])


def _as_http(fn: F) -> F:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PredictorError as err:
            raise http_error(err) from None

    return call  # type: ignore[return-value]


def _results_as_http(results: Sequence[Any]) -> list[Any]:
    return [http_error(r) if isinstance(r, PredictorError) else r for r in results]


class MultiAdapterEngine(MultiPredictor):
    """:class:`~adaptune.inference.multi.MultiPredictor` with refusals as :class:`ServeError` (HTTP status)."""

    load = _as_http(MultiPredictor.load)
    unload = _as_http(MultiPredictor.unload)
    reload = _as_http(MultiPredictor.reload)
    get = _as_http(MultiPredictor.get)
    prepare = _as_http(MultiPredictor.prepare)
    predict = _as_http(MultiPredictor.predict)
    stream = _as_http(MultiPredictor.stream)
    count_tokens = _as_http(MultiPredictor.count_tokens)

    def run(self, rows: Sequence[Row]) -> list[dict[str, Any] | ServeError]:  # type: ignore[override]
        return _results_as_http(super().run(rows))

    def generate_jobs(self, jobs: Sequence[GenerationJob], max_prompts: int) -> list[list[Generation] | Exception]:
        return _results_as_http(super().generate_jobs(jobs, max_prompts))


__all__ = ["GenerationJob", "MultiAdapterEngine", "Row", "ServeError"]
