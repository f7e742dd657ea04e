"""The server over real HTTP on loopback: concurrent mixed-adapter clients, limits, names, key, metrics, OpenAPI."""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from adaptune.inference.multi import MultiPredictor as MultiAdapterEngine
from adaptune.server.app import ServerSettings, create_app
from serving_kit import API_KEY, FOUR_ADAPTERS, GROUPED, INTENTS, assert_same, make_adapter, running_server

Offline = Callable[[str, list[Any]], list[dict[str, Any]]]
TEXTS = [
    "Bob ordered a Kindle in Paris",
    "where is my order A1024-77?",
    "hello there",
    "我想退款",
    "can I change the delivery address to Berlin?",
    "Alice moved to London last year",
    {"text": "refund please", "text_pair": "order 77"},
]


def route_for(name: str) -> str:
    return "/v1/tag" if name == "ner-lora" else "/v1/classify"


def check_error(response: httpx.Response, status: int, kind: str, limit: str | None = None) -> str:
    """The response is the JSON error of ``status`` and ``kind`` (naming ``limit``); return its message."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == kind and error["limit"] == limit
    assert isinstance(error["message"], str) and error["message"]
    return str(error["message"])


def test_concurrent_clients_mixing_adapters_match_offline(base_url: str, offline: Offline) -> None:
    names = [*FOUR_ADAPTERS, GROUPED]
    rng = random.Random(0)
    jobs = []
    for _ in range(48):
        name = rng.choice(names)
        inputs = rng.sample([t for t in TEXTS if name != "ner-lora" or isinstance(t, str)], rng.randint(1, 3))
        jobs.append((name, inputs))

    def call(job: tuple[str, list[Any]]) -> dict[str, Any]:
        name, inputs = job
        headers = {"Authorization": f"Bearer {API_KEY}"}
        response = httpx.post(f"{base_url}{route_for(name)}", json={"adapter": name, "inputs": inputs}, headers=headers)
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(call, jobs))
    for (name, inputs), answer in zip(jobs, answers, strict=True):
        assert answer["adapter"] == name
        for got, want in zip(answer["predictions"], offline(name, inputs), strict=True):
            assert_same(got, want)
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        text = http.get("/metrics").text
    mixed = float(re.search(r'adaptune_batch_adapters_bucket\{le="1"\} (\S+)', text).group(1))  # type: ignore[union-attr]
    total = float(re.search(r"adaptune_batch_adapters_count (\S+)", text).group(1))  # type: ignore[union-attr]
    assert total > mixed, "no micro-batch mixed two adapters"


def test_tag_returns_entities_with_offsets(client: httpx.Client, offline: Offline) -> None:
    inputs = ["Bob ordered a Kindle in Paris", {"tokens": ["Alice", "moved", "to", "London"]}]
    response = client.post("/v1/tag", json={"model": "ner-lora", "inputs": inputs})
    assert response.status_code == 200
    for got, want in zip(response.json()["predictions"], offline("ner-lora", inputs), strict=True):
        assert_same(got, want)
        for entity in got["entities"]:
            assert got["text"][entity["start"] : entity["end"]] == entity["text"]


def test_bad_request_in_a_busy_batch_affects_no_one(base_url: str, offline: Offline) -> None:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    good = {"adapter": "intents-lora", "inputs": ["hello there"]}
    bad = {"adapter": "intents-lora", "inputs": ["hello there", "word " * 200]}

    def call(body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{base_url}/v1/classify", json=body, headers=headers)

    with ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(pool.map(call, [good, bad, good, bad, good, good]))
    want = offline("intents-lora", ["hello there"])[0]
    for body, response in zip([good, bad, good, bad, good, good], responses, strict=True):
        if body is bad:
            check_error(response, 400, "limit_exceeded", "max_input_tokens")
        else:
            assert_same(response.json()["predictions"][0], want)


def test_limits_are_4xx_json_naming_the_limit(client: httpx.Client) -> None:
    message = check_error(
        client.post("/v1/classify", json={"adapter": "intents-lora", "inputs": ["hi"] * 9}),
        400,
        "limit_exceeded",
        "max_batch",
    )
    assert "9 inputs" in message and "max_batch is 8" in message
    too_long = client.post("/v1/classify", json={"adapter": "intents-lora", "inputs": ["ok", "word " * 50]})
    assert "inputs[1]" in check_error(too_long, 400, "limit_exceeded", "max_input_tokens")
    big = {"adapter": "intents-lora", "inputs": ["x" * 5000]}
    check_error(client.post("/v1/classify", json=big), 413, "limit_exceeded", "max_body_bytes")

    def chunks() -> Any:  # no content-length: the limit is counted as the body arrives
        yield b'{"adapter": "intents-lora", "inputs": ["'
        for _ in range(10):
            yield b"y" * 500
        yield b'"]}'

    chunked = client.post("/v1/classify", content=chunks(), headers={"content-type": "application/json"})
    check_error(chunked, 413, "limit_exceeded", "max_body_bytes")


@pytest.mark.parametrize("name", ["../intents-lora", "/etc/passwd", "..", "a\\b", "x/../intents-lora", "C:\\x"])
def test_path_like_adapter_names_are_refused(client: httpx.Client, name: str) -> None:
    check_error(client.post("/v1/classify", json={"adapter": name, "inputs": ["hi"]}), 400, "invalid_adapter_name")
    encoded = httpx.URL(f"/v1/adapters/{name.replace('/', '%2F').replace('.', '%2E')}/load")
    check_error(client.post(encoded), 400, "invalid_adapter_name")


def test_errors_for_unknown_adapter_wrong_task_and_bad_body(client: httpx.Client) -> None:
    check_error(client.post("/v1/classify", json={"adapter": "nope", "inputs": ["hi"]}), 404, "not_found")
    check_error(client.post("/v1/classify", json={"adapter": "ner-lora", "inputs": ["hi"]}), 400, "wrong_task")
    check_error(client.post("/v1/tag", json={"adapter": "intents-lora", "inputs": ["hi"]}), 400, "wrong_task")
    check_error(client.post("/v1/classify", json={"adapter": "intents-lora", "inputs": []}), 422, "invalid_request")
    check_error(
        client.post("/v1/classify", content=b"{not json", headers={"content-type": "application/json"}),
        422,
        "invalid_request",
    )
    check_error(client.get("/v1/nothing-here"), 404, "not_found")


def test_api_key(base_url: str) -> None:
    body = {"adapter": "intents-lora", "inputs": ["hi"]}
    check_error(httpx.post(f"{base_url}/v1/classify", json=body), 401, "unauthorized")
    wrong = httpx.post(f"{base_url}/v1/classify", json=body, headers={"Authorization": "Bearer nope"})
    check_error(wrong, 401, "unauthorized")
    assert wrong.headers["www-authenticate"] == "Bearer"
    check_error(httpx.get(f"{base_url}/v1/adapters"), 401, "unauthorized")
    check_error(httpx.get(f"{base_url}/metrics"), 401, "unauthorized")
    assert httpx.get(f"{base_url}/health").json()["status"] == "ok"


def test_metrics_text(client: httpx.Client) -> None:
    client.post("/v1/classify", json={"adapter": "intents-lora", "inputs": ["hello", "refund"]})
    client.post("/v1/classify", json={"adapter": "intents-lora", "inputs": ["hi"] * 9})
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert "# TYPE adaptune_requests_total counter" in text
    assert re.search(r'adaptune_requests_total\{method="POST",route="/v1/classify",status="200"\} [1-9]', text)
    assert re.search(r'adaptune_request_errors_total\{route="/v1/classify",status="400"\} [1-9]', text)
    assert re.search(r'adaptune_items_total\{adapter="intents-lora"\} [1-9]', text)
    assert "# TYPE adaptune_request_duration_seconds histogram" in text
    assert 'adaptune_batch_size_bucket{le="+Inf"}' in text
    assert "adaptune_adapters_loaded 5" in text


def test_openapi_schema(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in ["/v1/classify", "/v1/tag", "/v1/adapters", "/health", "/metrics", "/v1/models"]:
        assert path in paths, path
    for action in ["load", "unload", "reload"]:
        assert f"/v1/adapters/{{name}}/{action}" in paths
    classify = paths["/v1/classify"]["post"]
    assert classify["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/PredictRequest")
    assert classify["responses"]["413"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    assert client.get("/openapi.json", headers={"Authorization": ""}).status_code == 200


def test_admin_load_unload_reload(private_dir: Path, tiny_bert: Path, offline: Offline) -> None:
    engine = MultiAdapterEngine(str(tiny_bert), private_dir)
    with running_server(create_app(engine, ServerSettings(max_wait_ms=1))) as url, httpx.Client(base_url=url) as http:
        listed = http.get("/v1/adapters").json()
        assert {a["name"] for a in listed["adapters"]} == {*FOUR_ADAPTERS, GROUPED}
        assert [r["name"] for r in listed["refused"]] == ["foreign-lora"]
        assert http.post("/v1/adapters/intents-lora/unload").json()["status"] == "unloaded"
        check_error(http.post("/v1/classify", json={"adapter": "intents-lora", "inputs": ["hi"]}), 404, "not_found")
        assert "intents-lora" not in [m["id"] for m in http.get("/v1/models").json()["data"]]
        loaded = http.post("/v1/adapters/intents-lora/load").json()
        assert loaded["status"] == "loaded" and loaded["adapter"]["batching"] == "per-row"
        check_error(http.post("/v1/adapters/intents-lora/load"), 409, "already_loaded")
        check_error(http.post("/v1/adapters/foreign-lora/load"), 422, "adapter_refused")
        check_error(http.post("/v1/adapters/missing/load"), 404, "not_found")
        got = http.post("/v1/classify", json={"adapter": "intents-lora", "inputs": ["hi"]}).json()["predictions"][0]
        assert_same(got, offline("intents-lora", ["hi"])[0])
        make_adapter(private_dir / "new-one", tiny_bert, {"name": "bottleneck"}, "seq_cls", INTENTS, seed=11)
        make_adapter(private_dir / "intents-lora", tiny_bert, {"name": "lora"}, "seq_cls", INTENTS, seed=12)
        assert http.post("/v1/adapters/new-one/load").json()["adapter"]["method"] == "bottleneck"
        assert http.post("/v1/adapters/intents-lora/reload").json()["status"] == "reloaded"
        after = http.post("/v1/classify", json={"adapter": "intents-lora", "inputs": ["hi"]}).json()["predictions"][0]
        assert after["scores"] != got["scores"]
