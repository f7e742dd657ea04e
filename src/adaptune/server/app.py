"""The HTTP layer: FastAPI routes over the core's :class:`~adaptune.inference.multi.MultiPredictor` (thin; no
model code). ``/v1/classify`` serves adapters whose task kind is ``classify``, ``/v1/tag`` those of kind ``tag``
(:data:`~adaptune.tasks.base.TaskKind`); the predictor's refusals become HTTP errors (:mod:`adaptune.server.errors`).

Routes: ``POST /v1/classify``, ``POST /v1/tag``, ``POST /v1/generate``; OpenAI-compatible ``GET /v1/models``,
``POST /v1/completions`` and ``POST /v1/chat/completions`` (SSE streaming; :mod:`adaptune.server.openai`);
adapter admin ``GET /v1/adapters`` and ``POST /v1/adapters/{name}/load|unload|reload``; ``GET /health``;
``GET /metrics`` (Prometheus text). Every error is ``{"error": {"type", "limit", "message"}}`` with a 4xx/5xx.

Limits (:class:`ServerSettings`): inputs per request (``max_batch``, also the most rows of one forward pass and
the most prompts decoded together), tokens per input (``max_input_tokens``), request body bytes
(``max_body_bytes``, 413); ``max_wait_ms`` is how long a micro-batch (classify/tag rows, or non-streaming
generation requests) waits for more. With ``api_key`` set, everything except ``/health`` and ``/openapi.json``
(``/docs`` and ``/redoc`` included) needs ``Authorization: Bearer <key>`` (else 401).

Adapters load on first use; ``max_loaded_adapters`` and ``adapter_memory_mb`` bound how many stay loaded (the least
recently used is evicted first, :mod:`adaptune.inference.residency`). ``load`` loads one now (not pinned: it can be
evicted later), ``unload`` stops serving it until ``load`` or ``reload``.

Several bases (:mod:`adaptune.server.routing`): one predictor and one :class:`Lane` (micro-batchers, threads) per
base; each request goes to the base serving its adapter, and the adapter limits apply to each base.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from adaptune import __version__
from adaptune.inference.errors import InvalidInput, PredictorError
from adaptune.inference.multi import MultiPredictor
from adaptune.server.batcher import MicroBatcher
from adaptune.server.errors import ServeError, http_error, limit_error
from adaptune.server.metrics import CLIENT_CLOSED, ServingMetrics
from adaptune.server.routing import Engines, EngineSet
from adaptune.server.schemas import (
    NOT_UTF8,
    AdapterAction,
    AdapterList,
    ErrorBody,
    Health,
    PredictRequest,
    PredictResponse,
)
from adaptune.tasks.base import TaskKind

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 404, 409, 413, 422, 500, 503, 507)
}


#: Requests with at most this many characters of input are tokenised on the event loop.
INLINE_TOKENIZE_CHARS = 8192


def _size(inputs: list[Any]) -> int:
    """Characters of input in a request (strings, and the string values of objects)."""
    return sum(len(item) if isinstance(item, str) else sum(len(str(v)) for v in item.values()) for item in inputs)


@dataclass
class ServerSettings:
    """Limits and batching of one server (the ``adaptune serve`` options)."""

    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_input_tokens: int = 512
    max_body_bytes: int = 1_000_000
    api_key: str | None = None
    padding_free: bool = True  # shared forward passes on real tokens only (encoders; adaptune.padding_free)
    # adapters loaded at once, least recently used evicted beyond (None: no limit); used by build_app
    max_loaded_adapters: int | None = None
    adapter_memory_mb: float | None = None


class BodyLimit:
    """ASGI middleware: refuse a request body over ``max_bytes`` with a 413 before the app parses it.

    The body is read here (at most ``max_bytes + 1`` bytes are kept) and replayed to the app. Then one task waits
    for the client to go away, so that :class:`RequestMetrics` sees a client that closes the connection before the
    answer even when the app never reads again; the app's later ``receive()`` calls get that message."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, int(declared))
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(send, size)
                return
            more = bool(message.get("more_body"))
        body, replayed = b"".join(chunks), False
        gone = asyncio.ensure_future(receive())  # http.disconnect: the client left, or the answer was sent

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await asyncio.shield(gone)  # a cancelled caller must not cancel the watch
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            await self.app(scope, replay, send)
        finally:
            gone.cancel()

    async def _refuse(self, send: Send, size: int) -> None:
        error = limit_error(
            "max_body_bytes", f"request body of {size}+ bytes; this server's max_body_bytes is {self.max_bytes}", 413
        )
        payload = json.dumps(error.body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


class RequestMetrics:
    """ASGI middleware (outermost): count every request by route template and status, and time it; a request whose
    client closed the connection before the whole answer was sent is counted with status 499
    (:data:`~adaptune.server.metrics.CLIENT_CLOSED`, nginx's "client closed request"), not as a server error."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status, answered, client_left = time.perf_counter(), 500, False, False

        async def watch_disconnect() -> Message:
            nonlocal client_left
            message = await receive()
            client_left = client_left or (message["type"] == "http.disconnect" and not answered)
            return message

        async def record_status(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True  # before the send: the server's own disconnect message follows the answer
            await send(message)

        try:
            await self.app(scope, watch_disconnect, record_status)
        finally:
            status = CLIENT_CLOSED if client_left else status
            route = scope.get("route")
            path = getattr(route, "path", None) or "<unmatched>"  # e.g. refused before routing (413)
            self.metrics.observe_request(path, scope.get("method", ""), status, time.perf_counter() - started)


def _error_response(err: ServeError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    async def on_serve_error(_request: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, ServeError)
        return _error_response(err)

    async def on_refusal(_request: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, PredictorError)
        return _error_response(http_error(err))

    async def on_validation(_request: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, RequestValidationError)
        first = err.errors()[0] if err.errors() else {}
        if first.get("type") == NOT_UTF8:  # its message names the field; the same status as the predictor's
            return _error_response(ServeError(400, InvalidInput.kind, str(first["msg"])))
        where = ".".join(str(part) for part in first.get("loc", ()))
        message = f"{where}: {first.get('msg', 'invalid request')}" if where else str(first.get("msg", "invalid"))
        return _error_response(ServeError(422, "invalid_request", message))

    async def on_http(_request: Request, err: Exception) -> JSONResponse:
        assert isinstance(err, StarletteHTTPException)
        kind = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
        return _error_response(ServeError(err.status_code, kind, str(err.detail)))

    app.add_exception_handler(ServeError, on_serve_error)
    app.add_exception_handler(PredictorError, on_refusal)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)


def api_key_check(api_key: str | None) -> Callable[..., Awaitable[None]]:
    """A dependency that demands ``Authorization: Bearer <api_key>`` (nothing when ``api_key`` is None)."""
    bearer = HTTPBearer(auto_error=False, description="The server's --api-key, when it was started with one.")

    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        if api_key is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise ServeError(401, "unauthorized", "missing or wrong API key: send 'Authorization: Bearer <key>'")

    return check


class Lane:
    """One base's share of the server: its predictor, the micro-batcher of its forward rows (on a model thread of
    its own), and its generation thread with the micro-batcher of its non-streaming generation requests."""

    def __init__(self, engine: MultiPredictor, settings: ServerSettings) -> None:
        self.engine = engine
        engine.max_input_tokens = settings.max_input_tokens  # one source for the limit
        self.batcher = MicroBatcher(engine.run, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms)
        self.generation_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adaptune-generate")
        # non-streaming generation requests arriving within max_wait_ms, decoded together on the generation thread
        self.generations = MicroBatcher(
            lambda jobs: engine.generate_jobs(jobs, settings.max_batch),
            max_batch=settings.max_batch,
            max_wait_ms=settings.max_wait_ms,
            executor=self.generation_thread,
        )

    async def start(self) -> None:
        await self.batcher.start()
        await self.generations.start()

    async def stop(self) -> None:
        await self.generations.stop()
        await self.batcher.stop()
        self.generation_thread.shutdown(wait=False, cancel_futures=True)


class Service:
    """What the routes share: the predictors (``engines``, one per base), each base's :class:`Lane`, the
    tokenising thread, the limits and the metrics."""

    def __init__(self, engines: EngineSet, settings: ServerSettings) -> None:
        self.engines = engines
        self.settings = settings
        self.lanes = {base: Lane(engine, settings) for base, engine in engines.items()}
        lanes = list(self.lanes.values())
        self.metrics = ServingMetrics(
            lambda: float(sum(len(lane.engine.entries) for lane in lanes)),
            lambda: float(sum(lane.batcher.queued for lane in lanes)),
            adapter_bytes=lambda: float(sum(lane.engine.residency.loaded_bytes for lane in lanes)),
            available_adapters=lambda: float(engines.adapter_count),
        )
        for base, lane in self.lanes.items():
            labels = {"base": base} if len(self.lanes) > 1 else {}  # one base: the metrics of a one-base server
            lane.engine.observers.append(functools.partial(self.metrics.observe_batch, **labels))
            lane.engine.residency.observers.append(functools.partial(self.metrics.observe_adapter, **labels))
            lane.engine.generation_observers.append(functools.partial(self.metrics.observe_generation_batch, **labels))
        self.prep = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adaptune-tokenize")
        self.admin_lock = asyncio.Lock()

    def lane(self, name: str) -> Lane:
        """The lane of the base serving adapter ``name`` (the first base's for a name none lists: its predictor
        refuses it)."""
        return self.lanes[self.engines.base_of(name)]

    async def start(self) -> None:
        for lane in self.lanes.values():
            await lane.start()

    async def stop(self) -> None:
        for lane in self.lanes.values():
            await lane.stop()
        self.prep.shutdown(wait=False)

    def check_count(self, count: int) -> None:
        """Refuse more inputs in one request than one forward pass takes."""
        if count > self.settings.max_batch:
            raise limit_error(
                "max_batch", f"{count} inputs in one request; this server's max_batch is {self.settings.max_batch}"
            )

    async def predict(self, body: PredictRequest, kind: TaskKind) -> JSONResponse:
        """Validate and tokenise, then queue the rows for a mixed batch of the adapter's base. Small requests are
        tokenised on the event loop (a thread hop costs more than the tokenizer); large ones on the tokenising
        thread."""
        self.check_count(len(body.inputs))
        lane = self.lane(body.adapter)
        if _size(body.inputs) <= INLINE_TOKENIZE_CHARS:
            rows = lane.engine.prepare(body.adapter, body.inputs, kind)
        else:
            loop = asyncio.get_running_loop()
            rows = await loop.run_in_executor(self.prep, lane.engine.prepare, body.adapter, body.inputs, kind)
        predictions = await lane.batcher.submit(rows)
        # the body is PredictResponse; built directly, since validating every nested prediction again costs more
        # than the rest of the request's HTTP handling
        return JSONResponse({"adapter": body.adapter, "predictions": predictions})

    async def admin(self, name: str, action: str) -> AdapterAction:
        """Load, unload or reload on the adapter's base (one at a time; the models keep serving meanwhile)."""
        async with self.admin_lock:
            if action == "unload":
                await asyncio.to_thread(self.engines.unload, name)
                return AdapterAction(name=name, status="unloaded")
            fn = self.engines.load if action == "load" else self.engines.reload
            entry = await asyncio.to_thread(fn, name)
            return AdapterAction(
                name=name, status="loaded" if action == "load" else "reloaded", adapter=entry.describe()
            )


def create_app(engine: Engines | EngineSet, settings: ServerSettings | None = None) -> FastAPI:
    """The FastAPI application serving the adapters of ``engine`` under ``settings``: one :class:`MultiPredictor`,
    several (one per base: a sequence, or a mapping base -> predictor) or an :class:`EngineSet`; each request goes
    to the base serving its adapter."""
    engines = engine if isinstance(engine, EngineSet) else EngineSet(engine)
    service = Service(engines, settings or ServerSettings())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        yield
        await service.stop()

    app = FastAPI(
        title="adaptune server",
        version=__version__,
        description="One or more base models, many adapters each: mixed-adapter micro-batches over HTTP.",
        lifespan=lifespan,
        docs_url=None,  # served by _add_doc_routes, behind the API key
        redoc_url=None,
    )
    app.state.service = service
    _install_error_handlers(app)
    auth = [Depends(api_key_check(service.settings.api_key))]
    _add_prediction_routes(app, service, auth)
    _add_admin_routes(app, service, auth)
    _add_doc_routes(app, auth)
    from adaptune.server.openai import add_generation_routes

    add_generation_routes(app, service, auth)
    app.add_middleware(BodyLimit, max_bytes=service.settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=service.metrics)
    return app


def _add_prediction_routes(app: FastAPI, service: Service, auth: list[Any]) -> None:
    @app.post("/v1/classify", response_model=PredictResponse, responses=ERRORS, dependencies=auth, tags=["predict"])
    async def classify(body: PredictRequest) -> JSONResponse:
        """Classify each input with an adapter whose task classifies (label, score, scores)."""
        return await service.predict(body, "classify")

    @app.post("/v1/tag", response_model=PredictResponse, responses=ERRORS, dependencies=auth, tags=["predict"])
    async def tag(body: PredictRequest) -> JSONResponse:
        """Tag each input with an adapter whose task tags tokens: entities with character offsets (start, end)."""
        return await service.predict(body, "tag")

    @app.post("/v1/relations", response_model=PredictResponse, responses=ERRORS, dependencies=auth, tags=["predict"])
    async def relations(body: PredictRequest) -> JSONResponse:
        """Classify the directed relation between two marked entities of each input (``<e1>..</e1>`` and
        ``<e2>..</e2>`` in the text, or character spans ``e1``/``e2``): relation, score, scores, the entities."""
        return await service.predict(body, "relation")

    @app.post("/v1/answer", response_model=PredictResponse, responses=ERRORS, dependencies=auth, tags=["predict"])
    async def answer(body: PredictRequest) -> JSONResponse:
        """Find each question's answer in its passage (``{"question", "context"}``): answer text, character start
        and end in the context, score."""
        return await service.predict(body, "answer")


def _add_doc_routes(app: FastAPI, auth: list[Any]) -> None:
    """``/docs`` (Swagger UI, and its ``/docs/oauth2-redirect`` page) and ``/redoc``, FastAPI's pages, but behind
    the API key like every route except ``/health`` and ``/openapi.json`` (FastAPI's own take no dependencies)."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html

    def under_root(request: Request, path: str) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/") + path

    @app.get("/docs", response_class=HTMLResponse, dependencies=auth, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=under_root(request, str(app.openapi_url)),
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=under_root(request, "/docs/oauth2-redirect"),
        )

    @app.get("/docs/oauth2-redirect", response_class=HTMLResponse, dependencies=auth, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", response_class=HTMLResponse, dependencies=auth, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        return get_redoc_html(openapi_url=under_root(request, str(app.openapi_url)), title=f"{app.title} - ReDoc")


def _add_admin_routes(app: FastAPI, service: Service, auth: list[Any]) -> None:
    @app.get("/health", response_model=Health, tags=["ops"])
    async def health() -> Health:
        """Liveness: the bases are loaded and the server answers (``base``: the first; ``bases``: all)."""
        engines = service.engines
        return Health(status="ok", base=next(iter(engines)), bases=list(engines), adapters=engines.adapter_count)

    @app.get("/metrics", response_class=PlainTextResponse, dependencies=auth, tags=["ops"])
    async def metrics() -> PlainTextResponse:
        """Prometheus text format: requests, errors, latency, batch sizes, adapters per batch, loaded adapters,
        adapter loads (and their seconds) and evictions."""
        return PlainTextResponse(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/adapters", response_model=AdapterList, responses=ERRORS, dependencies=auth, tags=["adapters"])
    async def adapters() -> AdapterList:
        """Every adapter served (name, its base, method, task, labels, per-row or grouped batching, loaded or not,
        its tensor bytes once loaded), the bases, refused folders, and the adapter budget with what is loaded."""
        return AdapterList(**service.engines.describe())

    for action in ("load", "unload", "reload"):
        app.add_api_route(
            f"/v1/adapters/{{name:path}}/{action}",
            _admin_endpoint(service, action),
            methods=["POST"],
            response_model=AdapterAction,
            responses=ERRORS,
            dependencies=auth,
            tags=["adapters"],
            name=f"{action}_adapter",
            summary=f"{action.capitalize()} an adapter of the adapters folder by name",
        )


def _admin_endpoint(service: Service, action: str) -> Callable[[str], Awaitable[AdapterAction]]:
    async def endpoint(name: str) -> AdapterAction:
        return await service.admin(name, action)

    return endpoint
