"""``adaptune board``: a web page to train, evaluate and try adapters, in Chinese and English.

The page is plain HTML, CSS and JavaScript shipped as package data (``static/``): no Gradio, no front-end build
step, no CDN. The machines this runs on are often offline, a build step would be one more toolchain to install and
keep in step, and the page needs little: a form, tables, one line chart (a ``<canvas>``), server-sent events
(``EventSource``) and ``fetch``. Its strings are in one JSON catalogue per language (``static/i18n/en.json``,
``zh-CN.json``); the language follows the browser's (``navigator.language``) and can be switched.

It runs on the same FastAPI stack as ``adaptune serve`` (the ``server`` extra) and reuses the project's parts:
the run form is generated from the config schema (:mod:`.forms`), previews read data with the tasks' own readers
(:mod:`.datasets`), a run is ``python -m adaptune train <yaml>`` in a child process (:mod:`.jobs`) whose
checkpoints make stop and resume safe, runs are listed from a SQLite index in the runs folder
(:mod:`.runs_index`), reports come from the run folder's files (:mod:`.reports`) and tries from
:class:`~adaptune.inference.Predictor` (:mod:`.tryout`). The routes are in :mod:`.app`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI


def build_board(runs: str | Path, data: str | Path | None = None, *, max_upload_bytes: int = 200 << 20) -> FastAPI:
    """The board's FastAPI app over the runs folder ``runs`` and the data folder ``data`` (default
    ``<runs>/data``)."""
    from adaptune.board.app import create_app
    from adaptune.board.service import BoardSettings

    runs = Path(runs)
    return create_app(BoardSettings(runs, Path(data) if data else runs / "data", max_upload_bytes))


def serve_board(
    runs: str | Path,
    data: str | Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    max_upload_bytes: int = 200 << 20,
    log_level: str = "warning",
) -> None:
    """Run the board on uvicorn until interrupted (its training runs are then stopped and marked interrupted)."""
    import uvicorn

    app = build_board(runs, data, max_upload_bytes=max_upload_bytes)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
