"""The micro-batcher: rows of concurrent requests, for any mix of adapters, gathered into one model call.

Requests put their prepared rows on an :class:`asyncio.Queue` and await one future per row. One collector task
takes the first waiting row, then every row already queued, then waits up to ``max_wait_ms`` for more until
``max_batch`` rows are gathered, and hands the batch to ``run`` on a single worker thread (the event loop never
runs the model). Rows of one request may land in different batches; the request completes when all its rows have.

A failure of a whole batch (an exception from ``run``, never expected) is retried row by row, so that one row
that breaks the model cannot fail the other requests of its batch.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from adaptune.server.errors import ServeError

R = TypeVar("R")


@dataclass
class _Pending:
    row: Any
    future: asyncio.Future[Any]


class MicroBatcher:
    """Gather rows into batches of at most ``max_batch`` rows, waiting at most ``max_wait_ms`` for a batch to fill.

    ``run(rows) -> results`` answers a batch (one result per row; a result that is an exception is raised to
    that row's request). Start with :meth:`start` inside the event loop, stop with :meth:`stop`. ``executor``: the
    single worker thread to run batches on (its owner shuts it down); by default the batcher's own.
    """

    def __init__(
        self,
        run: Callable[[Sequence[Any]], Sequence[Any]],
        *,
        max_batch: int,
        max_wait_ms: float,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.run = run
        self.max_batch = max_batch
        self.max_wait = max(0.0, max_wait_ms) / 1000
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task[None] | None = None
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="adaptune-model")

    @property
    def queued(self) -> int:
        """Rows waiting for a batch."""
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        """Start the collector task on the running loop."""
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._collect(), name="adaptune-batcher")

    async def stop(self) -> None:
        """Stop collecting; rows still queued are answered with a 503."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue is not None and not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(ServeError(503, "shutting_down", "the server is shutting down"))
        if self._owns_executor:
            self._executor.shutdown(wait=True)

    async def call(self, fn: Callable[..., R], *args: Any) -> R:
        """Run ``fn(*args)`` on the model's worker thread, in turn with the batches."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def submit(self, rows: Sequence[Any]) -> list[Any]:
        """Queue ``rows`` and return their results in order; a row's error is raised (the first one)."""
        if self._queue is None:
            raise RuntimeError("the batcher is not started")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in rows]
        for row, future in zip(rows, futures, strict=True):
            self._queue.put_nowait(_Pending(row, future))
        results = await asyncio.gather(*futures, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return list(results)

    async def _collect(self) -> None:
        assert self._queue is not None
        queue = self._queue
        loop = asyncio.get_running_loop()
        while True:
            batch = [await queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                if not queue.empty():
                    batch.append(queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(queue.get(), remaining))
                except TimeoutError:
                    break
            await self._execute(batch)

    async def _execute(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.future.done()]  # a client that went away cancelled its futures
        if not live:
            return
        try:
            results = list(await self.call(self.run, [p.row for p in live]))
        except Exception:  # isolate the culprit: every row alone
            results = [await self._alone(p.row) for p in live]
        for pending, result in zip(live, results, strict=True):
            if pending.future.done():
                continue
            if isinstance(result, BaseException):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(result)

    async def _alone(self, row: Any) -> Any:
        try:
            return (await self.call(self.run, [row]))[0]
        except Exception as err:
            return ServeError(500, "server_error", f"the model failed on this input: {type(err).__name__}: {err}")
