"""The board's HTTP routes (FastAPI, as the server): a static page and a JSON API over :class:`Board`.

``GET /`` the page; ``/static/*`` its script, style and string catalogues. ``GET /api/form`` the run form (from
the config schema, :mod:`.forms`); ``POST /api/uploads?name=`` a data file as the raw body (refused over
``max_upload_bytes`` with a 413); ``POST /api/preview`` its first rows and label counts. ``GET/POST /api/runs``
list / start runs; ``POST /api/runs/{id}/stop|resume``; ``GET /api/runs/{id}/events`` the metrics log as
server-sent events; ``.../report``, ``.../errors``, ``POST .../predict``, ``GET .../generate`` (SSE),
``.../adapter.zip``, ``.../config.yaml``, ``.../files/{name}``. Every error is ``{"error": {"type", "message",
...}}`` (a data error adds ``file``, ``line`` and ``field``), never a traceback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from adaptune.board import datasets, forms, reports
from adaptune.board.jobs import JobError
from adaptune.board.paths import PathRefused
from adaptune.board.service import Board, BoardSettings, MetricsTail, UnknownRun
from adaptune.errors import AdaptuneError, DataError
from adaptune.server.app import _install_error_handlers
from adaptune.server.errors import ServeError, limit_error

STATIC = Path(str(files("adaptune.board") / "static"))
#: AdaptuneError subclass -> (HTTP status, error type); any other AdaptuneError is a 400 ``invalid``.
STATUS: dict[type[AdaptuneError], tuple[int, str]] = {
    UnknownRun: (404, "not_found"),
    reports.NotReady: (404, "not_ready"),
    PathRefused: (403, "path_refused"),
    JobError: (409, "conflict"),
    DataError: (400, "data_error"),
}


def error_body(err: Exception) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of an error: its type, message and, for a data error, its file, line and field."""
    if isinstance(err, ServeError):
        return err.status, err.body()
    if not isinstance(err, AdaptuneError):
        return 500, {"error": {"type": "internal", "message": f"{type(err).__name__}: {err}"}}
    status, kind = next((found for cls, found in STATUS.items() if isinstance(err, cls)), (400, "invalid"))
    body: dict[str, Any] = {"type": kind, "message": str(err)}
    if isinstance(err, DataError):
        body.update(file=err.file, line=err.line, field=err.field, reason=err.message)
    return status, {"error": body}


def _install_board_errors(app: FastAPI) -> None:
    _install_error_handlers(app)  # the server's: request validation, 404/405, ServeError

    async def on_error(_request: Request, err: Exception) -> JSONResponse:
        status, body = error_body(err)
        return JSONResponse(body, status_code=status)

    app.add_exception_handler(AdaptuneError, on_error)
    app.add_exception_handler(Exception, on_error)


def sse(event: str, data: Any) -> str:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


async def run_events(board: Board, run_id: str, request: Request) -> AsyncIterator[str]:
    """The run's metrics log as events (``metric`` per record, ``reset`` when a resume rewrote it), its
    ``status`` when it changes, and ``end`` once it no longer runs and the log is read to its end."""
    tail, status = MetricsTail(board.folder(run_id) / "metrics.jsonl"), None
    while not await request.is_disconnected():
        row = board.row(run_id)
        records = tail.read()
        if tail.reset:
            yield sse("reset", {})
        for record in records:
            yield sse("metric", record)
        if row.status != status:
            status = row.status
            yield sse("status", row.as_dict())
        if status != "running" and not records:
            yield sse("end", {})
            return
        await asyncio.sleep(board.settings.poll_s)


def generation_events(board: Board, adapter: Path, text: str) -> Iterator[str]:
    """A streamed reply as events: ``piece`` per decoded piece, then ``end``; a failure as ``failure``."""
    try:
        for piece in board.predictors.stream(adapter, text):
            yield sse("piece", {"text": piece})
    except Exception as err:  # the stream has started: the error goes in it
        yield sse("failure", error_body(err)[1])
    yield sse("end", {})


async def save_upload(board: Board, request: Request, name: str) -> dict[str, Any]:
    """Stream the body into ``<data>/uploads/<name>``, refusing it over the size limit (nothing is kept)."""
    limit = board.settings.max_upload_bytes
    refusal = f"upload of more than {limit} bytes; this board's max_upload_bytes is {limit} (--max-upload-mb)"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise limit_error("max_upload_bytes", refusal, 413)
    target = board.upload_target(name)
    partial, size = target.with_name(f".{target.name}.part"), 0
    try:
        with partial.open("wb") as out:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise limit_error("max_upload_bytes", refusal, 413)
                out.write(chunk)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return {"path": str(target), "name": target.name, "bytes": size}


def create_app(settings: BoardSettings) -> FastAPI:
    """The board's app over the folders of ``settings``; runs left running by an earlier board are recovered."""
    board = Board(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        board.jobs.recover()
        yield
        board.jobs.shutdown()

    app = FastAPI(title="adaptune board", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.board = board
    _install_board_errors(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_page_routes(app, board)
    _add_run_routes(app, board)
    _add_result_routes(app, board)
    return app


def _add_page_routes(app: FastAPI, board: Board) -> None:
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/form")
    def run_form() -> dict[str, Any]:
        return {**forms.form(), "max_upload_bytes": board.settings.max_upload_bytes}

    @app.post("/api/uploads")
    async def upload(request: Request, name: str) -> dict[str, Any]:
        return await save_upload(board, request, name)

    @app.post("/api/preview")
    def preview(body: dict[str, Any]) -> dict[str, Any]:
        path = board.data_path(str(body.get("path") or ""))
        return datasets.preview(path, body.get("task") or {}, body.get("data") or {})


def _add_run_routes(app: FastAPI, board: Board) -> None:
    @app.get("/api/runs")
    def list_runs() -> list[dict[str, Any]]:
        return [row.as_dict() for row in board.index.all()]

    @app.post("/api/runs", status_code=201)
    def start_run(body: dict[str, Any]) -> dict[str, Any]:
        return board.create_run(body).as_dict()

    @app.get("/api/runs/{run_id}")
    def get_run(run_id: str) -> dict[str, Any]:
        return board.row(run_id).as_dict()

    @app.post("/api/runs/{run_id}/stop")
    def stop_run(run_id: str) -> dict[str, Any]:
        board.jobs.stop(board.row(run_id).id)
        return board.row(run_id).as_dict()

    @app.post("/api/runs/{run_id}/resume")
    def resume_run(run_id: str) -> dict[str, Any]:
        return board.resume(run_id).as_dict()

    @app.get("/api/runs/{run_id}/events")
    def events(run_id: str, request: Request) -> StreamingResponse:
        board.row(run_id)
        stream = run_events(board, run_id, request)
        return StreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _add_result_routes(app: FastAPI, board: Board) -> None:
    @app.get("/api/runs/{run_id}/report")
    def report(run_id: str) -> dict[str, Any]:
        return reports.report(board.folder(run_id))

    @app.get("/api/runs/{run_id}/errors")
    def errors(run_id: str, split: str = "dev", limit: int = 20) -> dict[str, Any]:
        return reports.worst_errors(board.folder(run_id), split, limit)

    @app.post("/api/runs/{run_id}/predict")
    def predict(run_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return board.predictors.predict(_adapter(board, run_id), str(body.get("text") or ""))

    @app.get("/api/runs/{run_id}/kind")
    def kind(run_id: str) -> dict[str, str]:
        return {"kind": board.predictors.kind(_adapter(board, run_id))}

    @app.get("/api/runs/{run_id}/generate")
    def generate(run_id: str, text: str) -> StreamingResponse:
        stream = generation_events(board, _adapter(board, run_id), text)
        return StreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/api/runs/{run_id}/adapter.zip")
    def adapter_zip(run_id: str) -> Response:
        headers = {"Content-Disposition": f'attachment; filename="{run_id}-adapter.zip"'}
        return Response(reports.adapter_zip(board.folder(run_id)), media_type="application/zip", headers=headers)

    @app.get("/api/runs/{run_id}/config.yaml")
    def config_yaml(run_id: str) -> FileResponse:
        path = reports.reproduce_yaml(board.folder(run_id))
        return FileResponse(path, media_type="application/yaml", filename=f"{run_id}.yaml")

    @app.get("/api/runs/{run_id}/files/{name}")
    def run_file(run_id: str, name: str) -> FileResponse:
        return FileResponse(reports.shown_file(board.folder(run_id), name))


def _adapter(board: Board, run_id: str) -> Path:
    adapter = board.folder(run_id) / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise reports.NotReady(f"run {run_id!r} has no adapter yet: it is saved when training ends")
    return adapter
