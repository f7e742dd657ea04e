"""Concurrent non-streaming generation requests decoded together: each gets what it gets alone (offline
``generate``), per-request max_new_tokens and stop strings, adapters and seeded sampling kept apart, a refused
request failing alone, and the batches counted in the metrics."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from adaptune.generation import Generation, GenerationConfig, generate
from adaptune.inference import Predictor
from adaptune.model import AdaptedModel
from adaptune.server.app import ServerSettings, create_app
from adaptune.server.engine import GenerationJob, MultiAdapterEngine
from adaptune.server.errors import ServeError
from serving_kit import running_server

KEY = "batch-key"
#: A window wide enough that requests sent together always land in one batch.
SETTINGS = ServerSettings(api_key=KEY, max_batch=8, max_wait_ms=200, max_input_tokens=60)
PROMPTS = ["where is my parcel?", "refund please", "hello there", "tell me about the weather today"]


@pytest.fixture(scope="module")
def gen_engine(llama_setup: tuple[Path, Path]) -> MultiAdapterEngine:
    base, folder = llama_setup
    return MultiAdapterEngine(str(base), folder, max_input_tokens=SETTINGS.max_input_tokens)


@pytest.fixture(scope="module")
def url(gen_engine: MultiAdapterEngine) -> Iterator[str]:
    with running_server(create_app(gen_engine, SETTINGS)) as address:
        yield address


@pytest.fixture(scope="module")
def alone(llama_setup: tuple[Path, Path]) -> Callable[..., list[Generation]]:
    """``alone(adapter, prompts, config, chat=True)``: offline ``generate`` on the adapter (models cached)."""
    base, folder = llama_setup
    models: dict[str, AdaptedModel] = {}

    def run(name: str, prompts: list[Any], config: GenerationConfig, chat: bool = True) -> list[Generation]:
        if name not in models:
            models[name] = Predictor.load(folder / name, base=str(base)).model
        return generate(models[name], prompts, config, chat=chat)

    return run


def concurrently(url: str, requests: list[tuple[str, dict[str, Any]]]) -> list[httpx.Response]:
    """POST every ``(path, body)`` at once (one thread and client each, released together); responses in order."""
    barrier = threading.Barrier(len(requests))

    def send(request: tuple[str, dict[str, Any]]) -> httpx.Response:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as client:
            barrier.wait()
            return client.post(request[0], json=request[1])

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(send, requests))


def batches(url: str) -> tuple[int, int]:
    """(generation batches, requests in them) so far, from ``GET /metrics``."""
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    count = re.search(r"^adaptune_generation_batch_requests_count (\d+)$", text, re.M)
    total = re.search(r"^adaptune_generation_batch_requests_sum (\d+)$", text, re.M)
    return (int(count.group(1)), int(total.group(1))) if count and total else (0, 0)


def texts(response: httpx.Response) -> list[tuple[str, int, str]]:
    assert response.status_code == 200, response.text
    return [(g["text"], g["completion_tokens"], g["finish_reason"]) for g in response.json()["generations"]]


def expected(outs: list[Generation]) -> list[tuple[str, int, str]]:
    return [(g.text, g.completion_tokens, g.finish_reason) for g in outs]


def test_concurrent_greedy_requests_are_merged_and_answered_as_alone(
    url: str, alone: Callable[..., list[Generation]]
) -> None:
    (full,) = alone("chat-lora", [PROMPTS[0]], GenerationConfig(max_new_tokens=12))
    words = full.text.split()
    assert len(words) >= 3, full.text
    bodies: list[dict[str, Any]] = [
        {"prompts": [PROMPTS[0]], "max_new_tokens": 12, "stop": words[2]},  # ends on its stop string
        {"prompts": PROMPTS[1:3], "max_new_tokens": 3},
        {"prompts": [PROMPTS[3]], "max_new_tokens": 9, "stop": ["zzz", "qq"]},
        {"prompts": [PROMPTS[2]], "max_new_tokens": 6, "temperature": 0.3, "seed": 5},  # greedy: seed ignored
        {"prompts": [PROMPTS[0], PROMPTS[3]], "max_new_tokens": 1},
    ]
    before = batches(url)
    responses = concurrently(url, [("/v1/generate", {"adapter": "chat-lora", **b}) for b in bodies])
    after = batches(url)
    for body, response in zip(bodies, responses, strict=True):
        stop = [body["stop"]] if isinstance(body.get("stop"), str) else body.get("stop", [])
        config = GenerationConfig(max_new_tokens=body["max_new_tokens"], stop=stop)
        assert texts(response) == expected(alone("chat-lora", body["prompts"], config)), body
    assert texts(responses[0])[0][2] == "stop"
    assert after[1] - before[1] == len(bodies)  # every request counted once
    assert after[0] - before[0] < len(bodies)  # in fewer batches than requests


def test_completions_and_chat_merge_within_their_own_kind(url: str, alone: Callable[..., list[Generation]]) -> None:
    """Raw-text completions and chat requests are never decoded together (chat flag), each is right."""
    completions = [
        {"model": "chat-lora", "prompt": p, "max_tokens": n, "temperature": 0}
        for p, n in [("the order", 5), ("a refund", 7)]
    ]
    chats = [
        {"model": "chat-lora", "messages": [{"role": "user", "content": p}], "max_tokens": 6, "temperature": 0}
        for p in PROMPTS[:2]
    ]
    before = batches(url)
    responses = concurrently(
        url, [("/v1/completions", b) for b in completions] + [("/v1/chat/completions", b) for b in chats]
    )
    assert batches(url)[0] - before[0] >= 2
    for body, response in zip(completions, responses[:2], strict=True):
        (want,) = alone("chat-lora", [body["prompt"]], GenerationConfig(max_new_tokens=body["max_tokens"]), chat=False)
        choice = response.json()["choices"][0]
        assert (choice["text"], choice["finish_reason"]) == (want.text, want.finish_reason)
    for body, response in zip(chats, responses[2:], strict=True):
        (want,) = alone("chat-lora", [body["messages"][0]["content"]], GenerationConfig(max_new_tokens=6))
        reply = response.json()
        assert reply["choices"][0]["message"]["content"] == want.text
        assert reply["usage"]["completion_tokens"] == want.completion_tokens


def test_two_adapters_are_not_merged_and_both_are_right(
    url: str, gen_engine: MultiAdapterEngine, alone: Callable[..., list[Generation]]
) -> None:
    requests = [(name, prompt) for prompt in PROMPTS[:2] for name in ("chat-lora", "chat-prompt")]
    bodies = [{"adapter": name, "prompts": [prompt], "max_new_tokens": 6} for name, prompt in requests]
    responses = concurrently(url, [("/v1/generate", b) for b in bodies])
    for (name, prompt), response in zip(requests, responses, strict=True):
        assert texts(response) == expected(alone(name, [prompt], GenerationConfig(max_new_tokens=6)))
    seen: list[tuple[int, int]] = []  # the grouping itself, on the engine: one batch per adapter
    gen_engine.generation_observers.append(lambda jobs, prompts: seen.append((jobs, prompts)))
    try:
        config = GenerationConfig(max_new_tokens=2)
        jobs = [GenerationJob(name, [prompt], config, True) for name, prompt in requests]
        outs = gen_engine.generate_jobs(jobs, max_prompts=8)
    finally:
        gen_engine.generation_observers.pop()
    assert sorted(seen) == [(2, 2), (2, 2)]
    for (name, prompt), out in zip(requests, outs, strict=True):
        assert out == alone(name, [prompt], config)


def test_engine_splits_at_max_prompts_and_runs_seeded_sampling_alone(gen_engine: MultiAdapterEngine) -> None:
    seen: list[tuple[int, int]] = []
    gen_engine.generation_observers.append(lambda jobs, prompts: seen.append((jobs, prompts)))
    greedy = GenerationConfig(max_new_tokens=2)
    sampled = GenerationConfig(max_new_tokens=2, do_sample=True)
    jobs = [
        GenerationJob("chat-lora", PROMPTS[:3], greedy, True),
        GenerationJob("chat-lora", PROMPTS[:2], greedy, True),
        GenerationJob("chat-lora", PROMPTS[:2], greedy, True),  # 3 + 2 + 2 > 5: a second batch
        GenerationJob("chat-lora", PROMPTS[:1], sampled, True),
        GenerationJob("chat-lora", PROMPTS[:1], sampled, True),  # unseeded sampling merges
        GenerationJob("chat-lora", PROMPTS[:1], sampled.model_copy(update={"seed": 1}), True),
        GenerationJob("chat-lora", PROMPTS[:1], sampled.model_copy(update={"seed": 1}), True),  # seeded: alone
        GenerationJob("nope", PROMPTS[:1], greedy, True),
        GenerationJob("chat-lora", ["word " * 80], greedy, True),
    ]
    try:
        outs = gen_engine.generate_jobs(jobs, max_prompts=5)
    finally:
        gen_engine.generation_observers.pop()
    assert seen == [(2, 5), (1, 2), (2, 2), (1, 1), (1, 1)]
    assert [len(out) for out in outs[:7]] == [3, 2, 2, 1, 1, 1, 1]  # type: ignore[arg-type]
    assert outs[5] == outs[6]  # the same seed, run alone: the same text
    assert isinstance(outs[7], ServeError) and outs[7].status == 404
    assert isinstance(outs[8], ServeError) and outs[8].limit == "max_input_tokens"


def test_seeded_sampling_does_not_depend_on_concurrent_requests(
    url: str, alone: Callable[..., list[Generation]]
) -> None:
    seeded = {"adapter": "chat-lora", "prompts": [PROMPTS[0]], "max_new_tokens": 8, "do_sample": True, "seed": 11}
    config = GenerationConfig(max_new_tokens=8, do_sample=True, temperature=1.0, seed=11)
    want = expected(alone("chat-lora", [PROMPTS[0]], config))
    (by_itself,) = concurrently(url, [("/v1/generate", seeded)])
    assert texts(by_itself) == want
    others = [
        {"adapter": "chat-lora", "prompts": [PROMPTS[1]], "max_new_tokens": 8, "do_sample": True},
        {"adapter": "chat-lora", "prompts": [PROMPTS[2]], "max_new_tokens": 8, "do_sample": True},
        {"adapter": "chat-lora", "prompts": [PROMPTS[3]], "max_new_tokens": 8},
    ]
    responses = concurrently(url, [("/v1/generate", b) for b in [seeded, *others]])
    assert texts(responses[0]) == want
    assert all(r.status_code == 200 for r in responses)


def test_a_refused_request_fails_alone(url: str, alone: Callable[..., list[Generation]]) -> None:
    good = [{"adapter": "chat-lora", "prompts": [p], "max_new_tokens": 5} for p in PROMPTS[:3]]
    long = {"adapter": "chat-lora", "prompts": ["word " * 80], "max_new_tokens": 5}
    missing = {"adapter": "nope", "prompts": ["hi"], "max_new_tokens": 5}
    responses = concurrently(url, [("/v1/generate", b) for b in [good[0], long, good[1], missing, good[2]]])
    assert responses[1].status_code == 400 and responses[1].json()["error"]["limit"] == "max_input_tokens"
    assert responses[3].status_code == 404
    for body, response in zip(good, [responses[0], responses[2], responses[4]], strict=True):
        assert texts(response) == expected(alone("chat-lora", body["prompts"], GenerationConfig(max_new_tokens=5)))
