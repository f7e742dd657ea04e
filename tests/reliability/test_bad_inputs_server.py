"""Bad inputs at the server (and ``adaptune serve`` / ``adaptune predict``), each with the test that covers it.

=========================================  =========================================================================
bad input                                  tests
=========================================  =========================================================================
lone surrogate escape in request text      test_lone_surrogate_is_a_400_naming_the_field (every text route: classify,
                                           tag, generate, completions, chat, streams, stop strings, object inputs)
adapter whose weights hold NaN             test_nan_adapter_is_a_json_500_naming_it (server, per-row and grouped),
                                           test_nan_adapter_fails_only_its_own_rows (mixed batch),
                                           test_nan_adapter_offline_predictor_raises, test_nan_adapter_cli_predict
docs pages without the API key             test_docs_need_the_key_when_one_is_set, test_docs_are_open_without_a_key
client that closes before the answer       test_client_that_leaves_is_counted_499_not_as_an_error
markup in ``adaptune serve --help``        test_serve_help_shows_the_whole_text (already escaped at HEAD)
=========================================  =========================================================================
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from adaptune import cli
from adaptune.inference import Predictor
from adaptune.inference.errors import NonFiniteOutput
from adaptune.inference.multi import MultiPredictor
from adaptune.io import load_adapter, save_adapter
from adaptune.server.app import ServerSettings, create_app
from decoders.lm_tools import make_tiny_causal_llama
from serving_kit import API_KEY, INTENTS, SETTINGS, TAGS, make_adapter, running_server

AUTH = {"Authorization": f"Bearer {API_KEY}"}
JSON_AUTH = {**AUTH, "Content-Type": "application/json"}
LORA = {"name": "lora", "r": 4}
PROMPT = {"name": "prompt", "num_virtual_tokens": 4}  # grouped: its own forward, not the shared per-row one


def poison(folder: Path) -> Path:
    """Write NaN into the head weight of the adapter at ``folder`` and save it again properly, so that it loads."""
    adapter = load_adapter(folder)
    tensors = {key: tensor.clone() for key, tensor in adapter.tensors.items()}
    tensors["head.classifier.weight"][0, 0] = float("nan")
    description = {k: v for k, v in adapter.config.items() if k not in ("format", "format_version", "weights")}
    return save_adapter(folder, tensors, description)


@pytest.fixture(scope="module")
def bert_adapters(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    """A classifier and a tagger, and three adapters with a NaN in their head (per-row, tagger, grouped)."""
    folder = tmp_path_factory.mktemp("adapters")
    make_adapter(folder / "intents-lora", tiny_bert, LORA, "seq_cls", INTENTS, seed=0)
    make_adapter(folder / "ner-lora", tiny_bert, LORA, "token_cls", TAGS, seed=1)
    poison(make_adapter(folder / "nan-lora", tiny_bert, LORA, "seq_cls", INTENTS, seed=2))
    poison(make_adapter(folder / "nan-ner", tiny_bert, LORA, "token_cls", TAGS, seed=3))
    poison(make_adapter(folder / "nan-prompt", tiny_bert, PROMPT, "seq_cls", INTENTS, seed=4))
    return folder


@pytest.fixture(scope="module")
def engine(bert_adapters: Path, tiny_bert: Path) -> MultiPredictor:
    return MultiPredictor(str(tiny_bert), bert_adapters, max_input_tokens=SETTINGS.max_input_tokens)


@pytest.fixture(scope="module")
def bert_url(engine: MultiPredictor) -> Iterator[str]:
    """A real server on loopback over the BERT adapters, with the API key."""
    with running_server(create_app(engine, SETTINGS)) as url:
        yield url


@pytest.fixture(scope="module")
def llama_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real server on loopback over a causal_lm LoRA adapter (``chat-lora``) on a tiny Llama, with the key."""
    root = tmp_path_factory.mktemp("gen")
    base = make_tiny_causal_llama(root / "llama")
    make_adapter(root / "adapters" / "chat-lora", base, LORA, "causal_lm", [], seed=1, pooling="last")
    predictor = MultiPredictor(str(base), root / "adapters", max_input_tokens=SETTINGS.max_input_tokens)
    with running_server(create_app(predictor, SETTINGS)) as url:
        yield url


def error_of(response: httpx.Response, status: int, kind: str) -> str:
    """The response is the server's JSON error of ``status`` and ``kind`` (strict JSON); return its message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = json.loads(response.text, parse_constant=lambda c: pytest.fail(f"{c} in the JSON answer"))
    assert body["error"]["type"] == kind, body
    return str(body["error"]["message"])


# -- lone surrogates -------------------------------------------------------------------------------------------
S = "\\ud800"  # the JSON escape itself: JSON allows it, UTF-8 cannot encode what it decodes to
SURROGATE_CASES = [
    ("bert", "/v1/classify", f'{{"adapter": "intents-lora", "inputs": ["hi {S}"]}}', "inputs[0]"),
    ("bert", "/v1/classify", f'{{"adapter": "intents-lora", "inputs": ["ok", "hi {S}"]}}', "inputs[1]"),
    ("bert", "/v1/classify", f'{{"adapter": "intents-lora", "inputs": [{{"text": "hi {S}"}}]}}', "inputs[0].text"),
    (
        "bert",
        "/v1/classify",
        f'{{"adapter": "intents-lora", "inputs": [{{"text": "a", "text_pair": "b {S}"}}]}}',
        "inputs[0].text_pair",
    ),
    ("bert", "/v1/tag", f'{{"adapter": "ner-lora", "inputs": ["Bob {S}"]}}', "inputs[0]"),
    ("bert", "/v1/tag", f'{{"model": "ner-lora", "inputs": [{{"tokens": ["Bob", "{S}"]}}]}}', "inputs[0].tokens[1]"),
    ("llama", "/v1/generate", f'{{"adapter": "chat-lora", "prompts": ["ok", "hi {S}"]}}', "prompts[1]"),
    ("llama", "/v1/generate", f'{{"adapter": "chat-lora", "prompts": ["hi"], "stop": ["{S}"]}}', "stop[0]"),
    ("llama", "/v1/completions", f'{{"model": "chat-lora", "prompt": "hi {S}"}}', "prompt"),
    ("llama", "/v1/completions", f'{{"model": "chat-lora", "prompt": "hi {S}", "stream": true}}', "prompt"),
    ("llama", "/v1/completions", f'{{"model": "chat-lora", "prompt": ["a", "{S}"]}}', "prompt[1]"),
    (
        "llama",
        "/v1/chat/completions",
        f'{{"model": "chat-lora", "messages": [{{"role": "user", "content": "hi {S}"}}]}}',
        "messages[0].content",
    ),
    (
        "llama",
        "/v1/chat/completions",
        f'{{"model": "chat-lora", "stream": true, "messages": [{{"role": "user", "content": "{S}"}}]}}',
        "messages[0].content",
    ),
]


@pytest.mark.parametrize(("server", "route", "body", "field"), SURROGATE_CASES)
def test_lone_surrogate_is_a_400_naming_the_field(
    request: pytest.FixtureRequest, server: str, route: str, body: str, field: str
) -> None:
    url = request.getfixturevalue(f"{server}_url")
    response = httpx.post(f"{url}{route}", content=body.encode("ascii"), headers=JSON_AUTH, timeout=60)
    message = error_of(response, 400, "invalid_input")
    assert message.startswith(f"{field}: "), message
    assert "lone surrogate" in message and "not UTF-8 encodable" in message


# -- NaN weights -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "route"), [("nan-lora", "classify"), ("nan-ner", "tag"), ("nan-prompt", "classify")])
def test_nan_adapter_is_a_json_500_naming_it(bert_url: str, name: str, route: str) -> None:
    good = {"adapter": "ner-lora" if route == "tag" else "intents-lora", "inputs": ["where is my order?"]}
    bad = {"adapter": name, "inputs": ["where is my order?"]}
    with ThreadPoolExecutor(max_workers=2) as pool:  # likely one micro-batch: the good request is not harmed
        futures = [
            pool.submit(httpx.post, f"{bert_url}/v1/{route}", json=b, headers=AUTH, timeout=60) for b in (bad, good)
        ]
        bad_answer, good_answer = (f.result() for f in futures)
    message = error_of(bad_answer, 500, "non_finite_output")
    assert repr(name) in message and "NaN" in message
    assert good_answer.status_code == 200, good_answer.text


def test_nan_adapter_fails_only_its_own_rows(engine: MultiPredictor) -> None:
    rows = engine.prepare("intents-lora", ["hello"]) + engine.prepare("nan-lora", ["hello", "refund"])
    rows += engine.prepare("nan-prompt", ["hello"]) + engine.prepare("intents-lora", ["refund please"])
    results = engine.run(rows)
    assert [type(r).__name__ for r in results] == [
        "dict",
        "NonFiniteOutput",
        "NonFiniteOutput",
        "NonFiniteOutput",
        "dict",
    ]
    assert "'nan-prompt'" in str(results[3])


def test_nan_adapter_offline_predictor_raises(bert_adapters: Path, tiny_bert: Path) -> None:
    predictor = Predictor.load(bert_adapters / "nan-lora", base=str(tiny_bert))
    with pytest.raises(NonFiniteOutput, match=r"nan-lora'.*non-finite scores.*NaN"):
        predictor.predict(["where is my order?"])


def test_nan_adapter_cli_predict(bert_adapters: Path) -> None:
    result = CliRunner().invoke(cli.app, ["predict", str(bert_adapters / "nan-ner")], input="Bob lives in Paris\n")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "non-finite scores" in lines[0], result.output


# -- docs behind the key ---------------------------------------------------------------------------------------
DOCS = ["/docs", "/redoc", "/docs/oauth2-redirect"]


def test_docs_need_the_key_when_one_is_set(bert_url: str) -> None:
    for path in DOCS:
        assert "API key" in error_of(httpx.get(f"{bert_url}{path}"), 401, "unauthorized")
        wrong = httpx.get(f"{bert_url}{path}", headers={"Authorization": "Bearer wrong"})
        error_of(wrong, 401, "unauthorized")
        page = httpx.get(f"{bert_url}{path}", headers=AUTH)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), path
    assert "/openapi.json" in httpx.get(f"{bert_url}/docs", headers=AUTH).text
    for path in ["/health", "/openapi.json"]:
        assert httpx.get(f"{bert_url}{path}").status_code == 200, path


def test_docs_are_open_without_a_key(bert_adapters: Path, tiny_bert: Path) -> None:
    predictor = MultiPredictor(str(tiny_bert), bert_adapters)
    with running_server(create_app(predictor, ServerSettings())) as url:
        for path in DOCS:
            page = httpx.get(f"{url}{path}")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), path


# -- clients that leave ----------------------------------------------------------------------------------------
def _close_mid_request(url: str, body: bytes, send: int) -> None:
    """Send the headers of a POST /v1/classify and the first ``send`` bytes of ``body``, then close the socket."""
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"POST /v1/classify HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(head.encode() + body[:send])
        time.sleep(0.2)


def _requests_by_status(url: str, pattern: str = "adaptune_requests_total") -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", headers=AUTH).text
    found = re.findall(rf'^{pattern}\{{method="POST",route="([^"]*)",status="(\d+)"\}} (\S+)$', text, re.M)
    return {f"{route} {status}": float(value) for route, status, value in found}


def test_client_that_leaves_is_counted_499_not_as_an_error(bert_adapters: Path, tiny_bert: Path) -> None:
    predictor = MultiPredictor(str(tiny_bert), bert_adapters)
    slow = ServerSettings(max_wait_ms=1500, api_key=API_KEY)  # every answer waits 1.5 s for its micro-batch
    body = json.dumps({"adapter": "intents-lora", "inputs": ["where is my order?"]}).encode()
    with running_server(create_app(predictor, slow)) as url:
        started = time.monotonic()
        assert httpx.post(f"{url}/v1/classify", content=body, headers=JSON_AUTH, timeout=60).status_code == 200
        assert time.monotonic() - started >= 1.0  # the route is slow enough to leave before the answer
        _close_mid_request(url, body, send=len(body) // 2)  # leaves while the body is being sent
        _close_mid_request(url, body, send=len(body))  # leaves while the request waits for its batch
        deadline = time.monotonic() + 60
        counts = _requests_by_status(url)
        while counts.get("/v1/classify 499", 0) < 1 or counts.get("<unmatched> 499", 0) < 1:
            assert time.monotonic() < deadline, counts
            time.sleep(0.1)
            counts = _requests_by_status(url)
        assert counts == {"/v1/classify 200": 1, "/v1/classify 499": 1, "<unmatched> 499": 1}
        text = httpx.get(f"{url}/metrics", headers=AUTH).text
        assert "adaptune_request_errors_total{" not in text, text


# -- adaptune serve --help -------------------------------------------------------------------------------------
SERVE_HELP = (
    "Serve every adapter in a folder over HTTP, each on the base it was trained on (classify, tag, generate, "
    "OpenAI-compatible; needs the server extra: .venv/bin/pip install -e '.[server]', or scripts/setup.sh --test)."
)


@pytest.mark.parametrize("columns", ["200", "60"])
def test_serve_help_shows_the_whole_text(columns: str) -> None:
    """The real command's help, through rich (as installed): no markup eaten, at any terminal width."""
    env = {**os.environ, "COLUMNS": columns, "NO_COLOR": "1"}
    env.pop("TYPER_USE_RICH", None)
    command = [sys.executable, "-m", "adaptune.cli", "serve", "--help"]
    shown = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=True).stdout
    assert "".join(SERVE_HELP.split()) in "".join(shown.replace("│", " ").split()), shown
