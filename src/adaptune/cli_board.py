"""The ``adaptune board`` command, registered on the app in :mod:`adaptune.cli`: thin, over
:func:`adaptune.board.serve_board`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def board(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 7860,
    runs: Annotated[Path, typer.Option(help="Runs folder: one folder per run and the index (board.sqlite).")] = Path(
        "runs/board"
    ),
    data: Annotated[
        Path | None,
        typer.Option(help="Data folder: uploads go there; data files and model folders must be in it or in RUNS."),
    ] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest upload, in MB (2^20 bytes).")] = 200.0,
) -> None:
    """A web page (Chinese and English) to train, evaluate and try adapters: pick a model and a data file, start and
    stop runs, watch their curves, read their reports and errors, try them and download them (needs the server
    extra: .venv/bin/pip install -e '.\\[server]', or scripts/setup.sh --test)."""
    from adaptune.board import serve_board

    typer.echo(f"adaptune board: http://{host}:{port}/ (runs: {runs}, data: {data or runs / 'data'})")
    serve_board(runs, data, host=host, port=port, max_upload_bytes=int(max_upload_mb * (1 << 20)))
