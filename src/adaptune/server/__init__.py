"""``adaptune serve``: one base model, every adapter of a folder, mixed-adapter micro-batches over HTTP.

Needs the ``server`` extra (FastAPI, uvicorn); nothing here imports them until a server is built, so
``import adaptune`` works without them. The model side is the core's
:class:`~adaptune.inference.multi.MultiPredictor` (no HTTP; per-row kernels in :mod:`adaptune.per_row` and beside
their methods). Parts here: :mod:`.app` (routes and limits), :mod:`.openai` (OpenAI-compatible and generation
routes), :mod:`.schemas` (request and response bodies), :mod:`.batcher` (asyncio micro-batcher), :mod:`.metrics`
(Prometheus text), :mod:`.errors` (HTTP errors, and the status of each refusal of the predictor); :mod:`.engine`
only keeps the old engine name importable.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from adaptune.server.app import ServerSettings


def build_app(
    base: str,
    adapters: str | Path,
    settings: ServerSettings | None = None,
    *,
    device: str = "auto",
    precision: str = "auto",
    quantize: str | None = None,
) -> FastAPI:
    """Load ``base`` once (on ``device``: auto, cpu, cuda, cuda:N) and list every compatible adapter of
    ``adapters`` (each loads on first use, within ``settings``' adapter limits); return the FastAPI app serving them
    (``precision``: auto, fp32 or bf16; ``quantize``: None or "int8"; see
    :class:`~adaptune.inference.multi.MultiPredictor`)."""
    from adaptune.inference.multi import MultiPredictor
    from adaptune.server.app import ServerSettings, create_app

    settings = settings or ServerSettings()
    predictor = MultiPredictor(
        base,
        adapters,
        max_input_tokens=settings.max_input_tokens,
        padding_free=settings.padding_free,
        device=device,
        load_all=False,  # every adapter is listed now and loads on first use
        max_loaded=settings.max_loaded_adapters,
        max_memory_mb=settings.adapter_memory_mb,
        precision=precision,
        quantize=quantize,
    )
    return create_app(predictor, settings)


def serve(
    base: str,
    adapters: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServerSettings | None = None,
    log_level: str = "info",
    threads: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    quantize: str | None = None,
) -> None:
    """Build the app (:func:`build_app`) and run it on uvicorn until interrupted; ``threads`` sets torch's
    intra-op threads (a busy or small machine serves faster with fewer threads than cores)."""
    import torch
    import uvicorn

    if threads:
        torch.set_num_threads(threads)

    app = build_app(base, adapters, settings, device=device, precision=precision, quantize=quantize)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


__all__ = ["build_app", "serve"]
