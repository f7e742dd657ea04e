"""OpenAI-compatible routes (``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``) and ``/v1/generate``.

``model`` names the adapter. Non-streaming generation requests are micro-batched: those that arrive within
``max_wait_ms`` of each other for one adapter, with the same ``chat`` flag and decoding settings, are decoded in
one :func:`adaptune.generation.generate_requests` call (up to ``max_batch`` prompts), each with its own
``max_tokens`` and ``stop``; seeded sampled requests run alone, so that their text never depends on other
requests (:meth:`adaptune.inference.multi.MultiPredictor.generate_jobs`). Everything runs on the adapter's
own model, on its base's generation thread beside the classify/tag micro-batches. Streams
(:func:`~adaptune.generation.stream`) are not batched: they advance one step per call on that thread, so
concurrent streams take turns token by token.

OpenAI semantics kept: ``temperature: 0`` is greedy, any other temperature samples (OpenAI's default is 1);
``/v1/completions`` continues the raw prompt text, ``/v1/chat/completions`` renders the messages with the chat
template. A streamed answer's ``finish_reason`` is ``length`` when it used ``max_tokens`` tokens (counted by
re-tokenising the text), else ``stop``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from adaptune.generation import Generation, GenerationConfig, Prompt
from adaptune.inference.jobs import GenerationJob
from adaptune.server.errors import ServeError
from adaptune.server.schemas import (
    ChatRequest,
    CompletionRequest,
    GenerateRequest,
    GenerateResponse,
    GenerationOut,
    SamplingFields,
)

if TYPE_CHECKING:
    from adaptune.server.app import Lane, Service

_DONE = object()


@dataclass
class Stream:
    """The text pieces of one streamed request, with the lane (base) whose generation thread advances them."""

    lane: Lane
    name: str
    pieces: Iterator[str]


def decoding(fields: SamplingFields, max_new_tokens: int, do_sample: bool | None = None) -> GenerationConfig:
    """A :class:`GenerationConfig` from request fields; without ``do_sample``, temperature 0 means greedy."""
    sample = fields.temperature > 0 if do_sample is None else do_sample and fields.temperature > 0
    stop = [fields.stop] if isinstance(fields.stop, str) else list(fields.stop or [])
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=fields.temperature if fields.temperature > 0 else 1.0,
        top_p=fields.top_p,
        top_k=fields.top_k,
        repetition_penalty=fields.repetition_penalty,
        stop=stop,
        seed=fields.seed,
    )


class Generator:
    """Runs generation on the generation thread of the adapter's base for the routes (and counts it in the
    metrics)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    async def generate(
        self, name: str, prompts: Sequence[Prompt], config: GenerationConfig, chat: bool
    ) -> list[Generation]:
        """Queue one request for a generation batch; its results (or its error) when the batch has run."""
        self.service.check_count(len(prompts))
        lane = self.service.lane(name)
        (out,) = await lane.generations.submit([GenerationJob(name, prompts, config, chat)])
        self._count(name, len(prompts), sum(g.completion_tokens for g in out))
        return list(out)

    async def open_stream(self, name: str, prompt: Prompt, config: GenerationConfig, chat: bool) -> Stream:
        """Check the request (errors are raised here, before the response starts) and return its stream."""
        lane = self.service.lane(name)
        loop = asyncio.get_running_loop()
        pieces = await loop.run_in_executor(
            lane.generation_thread, lambda: lane.engine.stream(name, prompt, config, chat=chat)
        )
        return Stream(lane, name, pieces)

    async def pieces(self, stream: Stream) -> AsyncIterator[str]:
        """Advance a stream one piece at a time on its base's generation thread."""
        loop = asyncio.get_running_loop()
        while True:
            piece = await loop.run_in_executor(stream.lane.generation_thread, next, stream.pieces, _DONE)
            if piece is _DONE:
                return
            yield str(piece)

    async def usage_of(self, stream: Stream, text: str, max_new: int) -> tuple[int, str]:
        """``(completion tokens, finish_reason)`` of a streamed text (counted by re-tokenising it, on the
        generation thread: the adapter's tokenizer is used by that thread only)."""
        loop = asyncio.get_running_loop()
        lane = stream.lane
        tokens = await loop.run_in_executor(lane.generation_thread, lane.engine.count_tokens, stream.name, text)
        self._count(stream.name, 1, tokens)
        return tokens, "length" if tokens >= max_new else "stop"

    def _count(self, name: str, prompts: int, tokens: int) -> None:
        self.service.metrics.items.inc(prompts, adapter=name)
        self.service.metrics.generated.inc(tokens, adapter=name)


def sse(events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    """Server-sent events: one ``data: <json>`` per event, then ``data: [DONE]``."""

    async def body() -> AsyncIterator[str]:
        async for event in events:
            yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def add_generation_routes(app: FastAPI, service: Service, auth: list[Any]) -> None:
    """Register ``/v1/models``, ``/v1/generate``, ``/v1/completions`` and ``/v1/chat/completions`` on ``app``."""
    from adaptune.server.app import ERRORS

    gen = Generator(service)

    @app.get("/v1/models", dependencies=auth, tags=["openai"])
    async def models() -> dict[str, Any]:
        """Every adapter served (loaded or not) of every base as an OpenAI model object (``id`` = adapter name)."""
        created = int(time.time())
        data = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "adaptune",
                "task": listing.task_name,
                "base": base,
            }
            for base, engine in service.engines.items()
            for name, listing in list(engine.available.items())
        ]
        return {"object": "list", "data": sorted(data, key=lambda model: str(model["id"]))}

    @app.post("/v1/generate", response_model=GenerateResponse, responses=ERRORS, dependencies=auth, tags=["generate"])
    async def generate_route(body: GenerateRequest) -> GenerateResponse:
        """Generate for each prompt (one user message each, rendered with the chat template)."""
        config = decoding(body, body.max_new_tokens, body.do_sample)
        out = await gen.generate(body.adapter, body.prompts, config, True)
        return GenerateResponse(adapter=body.adapter, generations=[GenerationOut(**vars(g)) for g in out])

    _add_completions(app, gen, auth, ERRORS)
    _add_chat(app, gen, auth, ERRORS)


def _add_completions(app: FastAPI, gen: Generator, auth: list[Any], errors: dict[int | str, Any]) -> None:
    @app.post("/v1/completions", responses=errors, dependencies=auth, tags=["openai"], response_model=None)
    async def completions(body: CompletionRequest) -> dict[str, Any] | StreamingResponse:
        """OpenAI completions: continue the raw prompt text (``stream: true`` for SSE, one prompt)."""
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        config = decoding(body, body.max_tokens)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time())}
        head["model"] = body.model
        if body.stream:
            gen.service.check_count(len(prompts))
            if len(prompts) != 1:
                raise ServeError(400, "invalid_request", "stream: true takes one prompt")
            stream = await gen.open_stream(body.model, prompts[0], config, False)
            return sse(_completion_events(gen, stream, head, config.max_new_tokens))
        out = await gen.generate(body.model, prompts, config, False)
        choices = [
            {"index": i, "text": g.text, "finish_reason": g.finish_reason, "logprobs": None} for i, g in enumerate(out)
        ]
        counts = usage(sum(g.prompt_tokens for g in out), sum(g.completion_tokens for g in out))
        return {**head, "choices": choices, "usage": counts}


async def _completion_events(
    gen: Generator, stream: Stream, head: dict[str, Any], max_new: int
) -> AsyncIterator[dict[str, Any]]:
    text = ""
    async for piece in gen.pieces(stream):
        text += piece
        yield {**head, "choices": [{"index": 0, "text": piece, "finish_reason": None, "logprobs": None}]}
    _, reason = await gen.usage_of(stream, text, max_new)
    yield {**head, "choices": [{"index": 0, "text": "", "finish_reason": reason, "logprobs": None}]}


def _add_chat(app: FastAPI, gen: Generator, auth: list[Any], errors: dict[int | str, Any]) -> None:
    @app.post("/v1/chat/completions", responses=errors, dependencies=auth, tags=["openai"], response_model=None)
    async def chat_completions(body: ChatRequest) -> dict[str, Any] | StreamingResponse:
        """OpenAI chat completions: the messages rendered with the chat template (``stream: true`` for SSE)."""
        messages = [m.model_dump() for m in body.messages]
        config = decoding(body, body.max_completion_tokens or body.max_tokens or 256)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": body.model}
        if body.stream:
            stream = await gen.open_stream(body.model, messages, config, True)
            return sse(_chat_events(gen, stream, head, config.max_new_tokens))
        (out,) = await gen.generate(body.model, [messages], config, True)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": out.text},
            "finish_reason": out.finish_reason,
            "logprobs": None,
        }
        return {
            **head,
            "object": "chat.completion",
            "choices": [choice],
            "usage": usage(out.prompt_tokens, out.completion_tokens),
        }


async def _chat_events(
    gen: Generator, stream: Stream, head: dict[str, Any], max_new: int
) -> AsyncIterator[dict[str, Any]]:
    def chunk(delta: dict[str, Any], reason: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
        return {**head, "object": "chat.completion.chunk", "choices": [choice]}

    yield chunk({"role": "assistant", "content": ""}, None)
    text = ""
    async for piece in gen.pieces(stream):
        text += piece
        yield chunk({"content": piece}, None)
    _, reason = await gen.usage_of(stream, text, max_new)
    yield chunk({}, reason)
