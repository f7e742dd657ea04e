"""One server, several bases (``adaptune serve --base A --base B``): a tiny BERT with a classifier and a tiny Llama
with a chat LoRA behind one process, each adapter answered by its own base exactly as a one-base server answers it;
an adapter of a third base refused with the reason; admin routes by name; the routing set and the CLI."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from adaptune.errors import ConfigError
from adaptune.inference import Predictor
from adaptune.inference.multi import MultiPredictor
from adaptune.server import build_app
from adaptune.server.app import ServerSettings
from adaptune.server.routing import EngineSet, build_engines
from decoders.lm_tools import make_tiny_causal_llama
from serving_kit import INTENTS, assert_same, make_adapter, running_server

SETTINGS = ServerSettings(max_batch=8, max_wait_ms=20, max_input_tokens=60, max_loaded_adapters=4)
LORA = {"name": "lora", "r": 4, "roles": ["query", "value"]}
TEXTS = ["where is my order A1024-77?", "hello there", "refund please"]
MESSAGES = [{"role": "user", "content": "where is my parcel?"}]


@dataclass(frozen=True)
class Setup:
    bert: str
    llama: str
    other: str
    folder: Path


def make_folder(folder: Path, setup: tuple[Path, Path, Path]) -> Path:
    """``intents`` (BERT classifier), ``chat`` (Llama chat LoRA) and ``foreign`` (a third base, not served)."""
    bert, llama, other = setup
    make_adapter(folder / "intents", bert, LORA, "seq_cls", INTENTS, seed=1)
    make_adapter(folder / "chat", llama, {"name": "lora", "r": 4}, "causal_lm", [], seed=2, pooling="last")
    make_adapter(folder / "foreign", other, {"name": "lora", "r": 2}, "seq_cls", INTENTS, seed=3)
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path, other_tiny_bert: Path) -> Setup:
    root = tmp_path_factory.mktemp("multi_base")
    llama = make_tiny_causal_llama(root / "llama")
    folder = make_folder(root / "adapters", (tiny_bert, llama, other_tiny_bert))
    return Setup(str(tiny_bert), str(llama), str(other_tiny_bert), folder)


@pytest.fixture(scope="module")
def urls(setup: Setup) -> Iterator[dict[str, str]]:
    """The two-base server and, for comparison, a one-base server of each base on the same folder."""
    with ExitStack() as stack:
        apps = {
            "both": build_app([setup.bert, setup.llama], setup.folder, SETTINGS),
            "bert": build_app(setup.bert, setup.folder, SETTINGS),
            "llama": build_app(setup.llama, setup.folder, SETTINGS),
        }
        yield {key: stack.enter_context(running_server(app)) for key, app in apps.items()}


def post(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{url}{path}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def without_ids(answer: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI answer without what differs between two calls (``id``, ``created``)."""
    return {k: v for k, v in answer.items() if k not in ("id", "created")}


REQUESTS = [
    ("/v1/classify", {"adapter": "intents", "inputs": TEXTS}, "bert"),
    ("/v1/generate", {"adapter": "chat", "prompts": ["where is my parcel?", "refund"], "max_new_tokens": 6}, "llama"),
    ("/v1/chat/completions", {"model": "chat", "messages": MESSAGES, "max_tokens": 6, "temperature": 0}, "llama"),
]


def test_each_base_answers_as_its_one_base_server(urls: dict[str, str], setup: Setup) -> None:
    alone = []
    for path, body, base in REQUESTS:  # one at a time: the same batches, so the same numbers to the last digit
        got, want = post(urls["both"], path, body), post(urls[base], path, body)
        assert without_ids(got) == without_ids(want)
        alone.append(want)
    classified, generated, chatted = alone
    offline = Predictor.load(setup.folder / "intents", base=setup.bert).predict(TEXTS)
    for got, want in zip(classified["predictions"], offline, strict=True):
        assert_same(got, want)
    assert all(g["completion_tokens"] > 0 for g in generated["generations"])

    def call(index: int) -> tuple[int, dict[str, Any]]:
        path, body, _ = REQUESTS[index % 3]
        return index % 3, post(urls["both"], path, body)

    with ThreadPoolExecutor(max_workers=6) as pool:  # both bases busy at once, batches mixing requests
        for index, got in pool.map(call, range(12)):
            if index == 0:
                for mine, want in zip(got["predictions"], classified["predictions"], strict=True):
                    assert_same(mine, want)
            else:
                assert without_ids(got) == without_ids(alone[index])
    stream = {"model": "chat", "messages": MESSAGES, "max_tokens": 6, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{urls['both']}/v1/chat/completions", json=stream, timeout=60) as response:
        events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    assert len(events) > 2 and events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert (
        "".join(e["choices"][0]["delta"].get("content", "") for e in events)
        == chatted["choices"][0]["message"]["content"]
    )


def test_requests_are_checked_by_the_adapters_base(urls: dict[str, str]) -> None:
    url = urls["both"]
    wrong = httpx.post(f"{url}/v1/classify", json={"adapter": "chat", "inputs": ["hi"]})
    assert wrong.status_code == 400 and wrong.json()["error"]["type"] == "wrong_task"
    wrong = httpx.post(f"{url}/v1/generate", json={"adapter": "intents", "prompts": ["hi"]})
    assert wrong.status_code == 400 and wrong.json()["error"]["type"] == "wrong_task"
    long = httpx.post(f"{url}/v1/generate", json={"adapter": "chat", "prompts": ["word " * 80]})
    assert long.status_code == 400 and long.json()["error"]["limit"] == "max_input_tokens"
    for name in ("foreign", "nope"):
        missing = httpx.post(f"{url}/v1/classify", json={"adapter": name, "inputs": ["hi"]})
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    bad = httpx.post(f"{url}/v1/classify", json={"adapter": "../intents", "inputs": ["hi"]})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_adapter_name"


def test_health_adapters_models_and_metrics_show_both_bases(urls: dict[str, str], setup: Setup) -> None:
    url = urls["both"]
    assert httpx.get(f"{url}/health").json() == {
        "status": "ok",
        "base": setup.bert,
        "bases": [setup.bert, setup.llama],
        "adapters": 2,
    }
    assert httpx.get(f"{urls['llama']}/health").json()["bases"] == [setup.llama]
    listed = httpx.get(f"{url}/v1/adapters").json()
    assert listed["base"] == setup.bert
    assert {a["name"]: a["base"] for a in listed["adapters"]} == {"intents": setup.bert, "chat": setup.llama}
    assert [(b["name"], b["adapters"], b["budget"]["max_loaded_adapters"]) for b in listed["bases"]] == [
        (setup.bert, 1, 4),
        (setup.llama, 1, 4),
    ]
    assert listed["budget"]["per_base"] is True and listed["budget"]["max_loaded_adapters"] == 4
    (refused,) = listed["refused"]
    assert refused["name"] == "foreign"
    assert setup.other in refused["reason"] and "none of this server's bases" in refused["reason"]
    assert f"--base {setup.other}" in refused["reason"]
    one_base = httpx.get(f"{urls['bert']}/v1/adapters").json()  # a one-base server: the reason of that base
    assert {r["name"] for r in one_base["refused"]} == {"chat", "foreign"} and "per_base" not in one_base["budget"]
    models = httpx.get(f"{url}/v1/models").json()["data"]
    assert [(m["id"], m["base"], m["task"]) for m in models] == [
        ("chat", setup.llama, "causal_lm"),
        ("intents", setup.bert, "seq_cls"),
    ]
    post(url, "/v1/classify", {"adapter": "intents", "inputs": ["hi"]})
    post(url, "/v1/generate", {"adapter": "chat", "prompts": ["hi"], "max_new_tokens": 2})
    text = httpx.get(f"{url}/metrics").text
    assert f'adaptune_batch_size_count{{base="{setup.bert}"}}' in text
    assert f'adaptune_generation_batch_prompts_count{{base="{setup.llama}"}}' in text
    assert 'adaptune_items_total{adapter="intents"}' in text and "adaptune_adapters_available 2" in text
    assert "adaptune_batch_size_count{base=" not in httpx.get(f"{urls['bert']}/metrics").text


def test_admin_routes_by_name(setup: Setup, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(setup.folder, tmp_path / "adapters"))
    shutil.copytree(folder / "intents", folder / "bad name")  # refused by every base for its name, listed once
    app = build_app([setup.bert, setup.llama], folder, ServerSettings(max_wait_ms=1))
    with running_server(app) as url, httpx.Client(base_url=url, timeout=60) as http:

        def bases() -> dict[str, str]:
            return {a["name"]: a["base"] for a in http.get("/v1/adapters").json()["adapters"]}

        assert http.post("/v1/adapters/chat/unload").json()["status"] == "unloaded"
        assert http.post("/v1/generate", json={"adapter": "chat", "prompts": ["hi"]}).status_code == 404
        refused = {r["name"]: r["reason"] for r in http.get("/v1/adapters").json()["refused"]}
        assert list(refused) == ["bad name", "foreign"] and "is not allowed" in refused["bad name"]  # chat: unloaded
        assert http.post("/v1/adapters/chat/load").json()["status"] == "loaded"
        make_adapter(folder / "greet", Path(setup.bert), {"name": "bottleneck"}, "seq_cls", INTENTS, seed=4)
        lora = {"name": "lora", "r": 2}
        make_adapter(folder / "chat2", Path(setup.llama), lora, "causal_lm", [], seed=5, pooling="last")
        assert http.post("/v1/adapters/greet/load").json()["adapter"]["method"] == "bottleneck"
        assert http.post("/v1/adapters/chat2/load").status_code == 200
        assert bases() == {"intents": setup.bert, "greet": setup.bert, "chat": setup.llama, "chat2": setup.llama}
        refused = http.post("/v1/adapters/foreign/load")
        assert refused.status_code == 422 and refused.json()["error"]["type"] == "adapter_refused"
        assert "none of this server's bases" in refused.json()["error"]["message"]
        assert http.post("/v1/adapters/missing/load").status_code == 404
        # the folder of "intents" now holds a chat adapter: reload moves it to the Llama base
        shutil.rmtree(folder / "intents")
        make_adapter(folder / "intents", Path(setup.llama), lora, "causal_lm", [], seed=6, pooling="last")
        assert http.post("/v1/adapters/intents/reload").status_code == 200
        assert bases()["intents"] == setup.llama
        reply = http.post("/v1/generate", json={"adapter": "intents", "prompts": ["hi"], "max_new_tokens": 3})
        assert reply.status_code == 200 and reply.json()["generations"][0]["completion_tokens"] > 0


def test_engine_set_routes_and_refuses_ambiguous_sets(setup: Setup) -> None:
    bert = MultiPredictor(setup.bert, setup.folder, load_all=False)
    llama = MultiPredictor(setup.llama, setup.folder, load_all=False)
    engines = EngineSet([bert, llama])
    assert list(engines) == [setup.bert, setup.llama] and engines.adapter_count == 2
    assert engines.route("intents") is bert and engines.route("chat") is llama and engines.route("nope") is bert
    assert engines.owner("foreign") is None and list(engines.refused()) == ["foreign"]
    alone = EngineSet(bert)  # one base: its own facts
    assert alone.refused() == bert.refused and alone.budget() == bert.residency.describe()
    assert EngineSet({"encoder": bert, "decoder": llama}).describe()["base"] == "encoder"
    twin = MultiPredictor(setup.bert, setup.folder, load_all=False)
    with pytest.raises(ConfigError, match="given twice"):
        EngineSet([bert, twin])
    with pytest.raises(ConfigError, match="adapter 'intents' matches base 'a' and base 'b'"):
        EngineSet({"a": bert, "b": twin})
    with pytest.raises(ConfigError, match="given twice"):
        build_engines([setup.llama, setup.llama], setup.folder, SETTINGS)


def test_serve_command_builds_one_predictor_per_base(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from adaptune.cli import app

    served: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda application, **_: served.append(application))
    command = ["serve", "--base", setup.bert, "--base", setup.llama, "--adapters", str(setup.folder)]
    result = CliRunner().invoke(app, [*command, "--max-loaded-adapters", "1"])
    assert result.exit_code == 0, result.output
    engines = served[0].state.service.engines
    assert list(engines) == [setup.bert, setup.llama]
    assert engines.route("chat").base_name == setup.llama and engines.route("intents").base_name == setup.bert
    assert [engine.residency.max_loaded for _, engine in engines.items()] == [1, 1]  # the limits apply per base
    twice = CliRunner().invoke(app, [*command, "--base", setup.bert])
    assert twice.exit_code == 2 and "given twice" in twice.output
