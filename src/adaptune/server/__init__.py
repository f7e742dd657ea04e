"""``adaptune serve``: one base model (or several), every adapter of a folder on the base it was trained on,
mixed-adapter micro-batches over HTTP.

Needs the ``server`` extra (FastAPI, uvicorn); nothing here imports them until a server is built, so
``import adaptune`` works without them. The model side is the core's
:class:`~adaptune.inference.multi.MultiPredictor` (no HTTP; per-row kernels in :mod:`adaptune.per_row` and beside
their methods). Parts here: :mod:`.app` (routes and limits), :mod:`.openai` (OpenAI-compatible and generation
routes), :mod:`.schemas` (request and response bodies), :mod:`.batcher` (asyncio micro-batcher), :mod:`.metrics`
(Prometheus text), :mod:`.routing` (one predictor per base, requests routed by adapter), :mod:`.errors` (HTTP
errors, and the status of each refusal of the predictor); :mod:`.engine`
only keeps the old engine name importable.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI

    from adaptune.server.app import ServerSettings


def build_app(
    base: str | Sequence[str],
    adapters: str | Path,
    settings: ServerSettings | None = None,
    *,
    device: str = "auto",
    precision: str = "auto",
    quantize: str | None = None,
) -> FastAPI:
    """Load ``base`` once, or each of several bases once (on ``device``: auto, cpu, cuda, cuda:N), and list every
    adapter of ``adapters`` on the base it was trained on (each loads on first use, within ``settings``' adapter
    limits, which apply per base); return the FastAPI app serving them (``precision``: auto, fp32 or bf16;
    ``quantize``: None or "int8"; see :class:`~adaptune.inference.multi.MultiPredictor` and
    :func:`~adaptune.server.routing.build_engines`)."""
    from adaptune.server.app import ServerSettings, create_app
    from adaptune.server.routing import build_engines

    settings = settings or ServerSettings()
    engines = build_engines(base, adapters, settings, device=device, precision=precision, quantize=quantize)
    return create_app(engines, settings)


def serve(
    base: str | Sequence[str],
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
