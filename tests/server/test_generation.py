"""Generation over HTTP on a tiny causal Llama: /v1/generate, OpenAI completions and chat (SSE and the client)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from adaptune.generation import GenerationConfig, generate
from adaptune.inference import Predictor
from adaptune.inference.multi import MultiPredictor as MultiAdapterEngine
from adaptune.server.app import ServerSettings, create_app
from serving_kit import running_server

KEY = "gen-key"
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "where is my parcel?"}]


@pytest.fixture(scope="module")
def gen_url(llama_setup: tuple[Path, Path]) -> Iterator[str]:
    base, folder = llama_setup
    engine = MultiAdapterEngine(str(base), folder)
    settings = ServerSettings(api_key=KEY, max_batch=4, max_input_tokens=60)
    with running_server(create_app(engine, settings)) as url:
        yield url


def offline(
    llama_setup: tuple[Path, Path], name: str, prompts: list[Any], config: GenerationConfig, chat: bool
) -> list[Any]:
    base, folder = llama_setup
    model = Predictor.load(folder / name, base=str(base)).model
    return generate(model, prompts, config, chat=chat)


def http(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=120)


@pytest.mark.parametrize("name", ["chat-lora", "chat-prompt"])
def test_generate_matches_offline(gen_url: str, llama_setup: tuple[Path, Path], name: str) -> None:
    prompts = ["where is my parcel?", "refund"]
    with http(gen_url) as client:
        body = client.post("/v1/generate", json={"adapter": name, "prompts": prompts, "max_new_tokens": 6}).json()
    want = offline(llama_setup, name, prompts, GenerationConfig(max_new_tokens=6), chat=True)
    assert [g["text"] for g in body["generations"]] == [w.text for w in want]
    assert [g["completion_tokens"] for g in body["generations"]] == [w.completion_tokens for w in want]
    assert [g["prompt_tokens"] for g in body["generations"]] == [w.prompt_tokens for w in want]


def test_generate_passes_the_repetition_penalty(gen_url: str, llama_setup: tuple[Path, Path]) -> None:
    (echo,) = offline(llama_setup, "chat-lora", ["where is my parcel?"], GenerationConfig(max_new_tokens=8), chat=True)
    prompts = [echo.text]  # a prompt made of what greedy decoding says: the penalty has something to act on
    request = {"adapter": "chat-lora", "prompts": prompts, "max_new_tokens": 8, "repetition_penalty": 3.0}
    with http(gen_url) as client:
        body = client.post("/v1/generate", json=request).json()
    config = GenerationConfig(max_new_tokens=8, repetition_penalty=3.0)
    (want,) = offline(llama_setup, "chat-lora", prompts, config, chat=True)
    assert body["generations"][0]["text"] == want.text
    assert body["generations"][0]["completion_tokens"] == want.completion_tokens
    (plain,) = offline(llama_setup, "chat-lora", prompts, GenerationConfig(max_new_tokens=8), chat=True)
    assert plain.text != want.text  # the penalty changes this reply, so the server did not drop it


def test_completions_continue_raw_text(gen_url: str, llama_setup: tuple[Path, Path]) -> None:
    with http(gen_url) as client:
        body = client.post(
            "/v1/completions", json={"model": "chat-lora", "prompt": "the order", "max_tokens": 5, "temperature": 0}
        ).json()
    (want,) = offline(llama_setup, "chat-lora", ["the order"], GenerationConfig(max_new_tokens=5), chat=False)
    assert body["object"] == "text_completion" and body["model"] == "chat-lora"
    assert body["choices"][0]["text"] == want.text and body["choices"][0]["finish_reason"] == want.finish_reason
    assert body["usage"]["completion_tokens"] == want.completion_tokens


def test_openai_client_chat_and_stream(gen_url: str, llama_setup: tuple[Path, Path]) -> None:
    client = openai.OpenAI(base_url=f"{gen_url}/v1", api_key=KEY, max_retries=0)
    assert {m.id for m in client.models.list().data} == {"chat-lora", "chat-prompt"}
    reply = client.chat.completions.create(model="chat-lora", messages=MESSAGES, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    (want,) = offline(llama_setup, "chat-lora", [MESSAGES], GenerationConfig(max_new_tokens=8), chat=True)
    assert reply.choices[0].message.content == want.text
    assert reply.choices[0].finish_reason == want.finish_reason
    assert reply.usage is not None and reply.usage.completion_tokens == want.completion_tokens
    pieces = client.chat.completions.create(
        model="chat-lora",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=8,
        temperature=0,
        stream=True,
    )
    chunks = list(pieces)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want.text
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{gen_url}/v1", api_key="wrong", max_retries=0).models.list()


def test_sse_wire_format(gen_url: str) -> None:
    body = {"model": "chat-prompt", "prompt": "hello", "max_tokens": 4, "temperature": 0, "stream": True}
    with http(gen_url) as client, client.stream("POST", "/v1/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    events = [json.loads(line[len("data: ") :]) for line in lines[:-1]]
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def test_generation_limits_and_task_checks(gen_url: str) -> None:
    with http(gen_url) as client:
        long_prompt = {"model": "chat-lora", "messages": [{"role": "user", "content": "word " * 80}]}
        response = client.post("/v1/chat/completions", json=long_prompt)
        assert response.status_code == 400 and response.json()["error"]["limit"] == "max_input_tokens"
        streamed = client.post("/v1/chat/completions", json={**long_prompt, "stream": True})
        assert streamed.status_code == 400 and streamed.json()["error"]["limit"] == "max_input_tokens"
        many = client.post("/v1/generate", json={"adapter": "chat-lora", "prompts": ["a"] * 5})
        assert many.status_code == 400 and many.json()["error"]["limit"] == "max_batch"
        wrong = client.post("/v1/classify", json={"adapter": "chat-lora", "inputs": ["hi"]})
        assert wrong.status_code == 400 and wrong.json()["error"]["type"] == "wrong_task"
        missing = client.post("/v1/completions", json={"model": "nope", "prompt": "hi"})
        assert missing.status_code == 404
