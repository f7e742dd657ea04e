"""``adaptune serve``: every adapter of a folder over HTTP, on one or several base models (:mod:`adaptune.server`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from adaptune.cli_common import DEVICE_HELP, PRECISION_HELP, QUANTIZE_HELP, Precision, Quantize, fail
from adaptune.errors import AdaptuneError


def serve(
    base: Annotated[
        list[str],
        typer.Option(
            help="Base model (hub id or folder) the adapters were trained on; give --base several times to serve "
            "adapters of several bases from one process (each adapter on the base it records)."
        ),
    ],
    adapters: Annotated[Path, typer.Option(help="Folder of adapter folders; each is served under its folder name.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    api_key: Annotated[
        str | None, typer.Option(envvar="ADAPTUNE_API_KEY", help="Require 'Authorization: Bearer <key>'.")
    ] = None,
    max_batch: Annotated[int, typer.Option(help="Most inputs per request and rows per forward pass.")] = 32,
    max_wait_ms: Annotated[float, typer.Option(help="Longest wait for a micro-batch to fill.")] = 5.0,
    max_input_tokens: Annotated[int, typer.Option(help="Longest input (or prompt) in tokens.")] = 512,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body in bytes.")] = 1_000_000,
    threads: Annotated[int | None, typer.Option(help="torch threads for the model (default: torch's).")] = None,
    padding_free: Annotated[
        bool, typer.Option(help="Run mixed batches on their real tokens only (encoder bases; same results).")
    ] = True,
    max_loaded_adapters: Annotated[
        int | None,
        typer.Option(min=1, help="Most adapters loaded at once, per base; least recently used evicted first."),
    ] = None,
    adapter_memory_mb: Annotated[
        float | None, typer.Option(help="Most MiB of adapter tensors loaded at once, per base (LRU eviction beyond).")
    ] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    precision: Annotated[Precision, typer.Option(help=PRECISION_HELP)] = Precision.auto,
    quantize: Annotated[Quantize | None, typer.Option(help=QUANTIZE_HELP)] = None,
) -> None:
    """Serve every adapter in a folder over HTTP, each on the base it was trained on (classify, tag, generate,
    OpenAI-compatible; needs the server extra: .venv/bin/pip install -e '.\\[server]', or scripts/setup.sh --test)."""
    from adaptune.server import serve as run_server
    from adaptune.server.app import ServerSettings

    settings = ServerSettings(
        max_batch,
        max_wait_ms,
        max_input_tokens,
        max_body_bytes,
        api_key,
        padding_free,
        max_loaded_adapters=max_loaded_adapters,
        adapter_memory_mb=adapter_memory_mb,
    )
    try:
        run_server(
            base,
            adapters,
            host=host,
            port=port,
            settings=settings,
            threads=threads,
            device=device,
            precision=precision.value,
            quantize=quantize.value if quantize else None,
        )
    except (AdaptuneError, FileNotFoundError) as err:
        fail(err)
