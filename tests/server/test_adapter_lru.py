"""Adapters load on first use and stay loaded as a least-recently-used set within ``max_loaded`` adapters and
``max_memory_mb`` of tensors (``adaptune serve --max-loaded-adapters/--adapter-memory-mb``): in the core predictor
and over real HTTP on loopback."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from adaptune.inference import Predictor
from adaptune.inference.errors import AdapterNotFound, AdapterTooLarge, WrongTask
from adaptune.inference.multi import MultiPredictor
from adaptune.inference.residency import MB, AdapterEvent
from adaptune.server import build_app
from adaptune.server.app import ServerSettings
from serving_kit import INTENTS, TAGS, assert_same, make_adapter, running_server

LORA = {"name": "lora", "r": 4, "roles": ["query", "value"]}
#: Four LoRA classifiers of the same shapes (so the same bytes), a tagger, a grouped one and a large LoRA.
SMALL = ["a", "b", "c", "d"]
TEXTS = ["where is my order A1024-77?", "hello there", "refund please"]

Offline = Callable[[str, list[Any]], list[dict[str, Any]]]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    root = tmp_path_factory.mktemp("lru")
    for seed, name in enumerate(SMALL):
        make_adapter(root / name, tiny_bert, LORA, "seq_cls", INTENTS, seed=seed)
    make_adapter(root / "ner", tiny_bert, LORA, "token_cls", TAGS, seed=10)
    make_adapter(root / "prompt", tiny_bert, {"name": "prompt", "num_virtual_tokens": 4}, "seq_cls", INTENTS, seed=11)
    make_adapter(
        root / "big", tiny_bert, {"name": "lora", "r": 32, "roles": ["query", "value"]}, "seq_cls", INTENTS, seed=12
    )
    return root


@pytest.fixture(scope="module")
def offline(folder: Path, tiny_bert: Path) -> Offline:
    predictors: dict[str, Predictor] = {}

    def predict(name: str, inputs: list[Any]) -> list[dict[str, Any]]:
        if name not in predictors:
            predictors[name] = Predictor.load(folder / name, base=str(tiny_bert))
        return predictors[name].predict(inputs)

    return predict


@pytest.fixture(scope="module")
def small_bytes(folder: Path, tiny_bert: Path) -> int:
    """Tensor bytes of one of the small LoRA adapters once loaded."""
    probe = MultiPredictor(str(tiny_bert), folder, load_all=False)
    probe.get("a")
    nbytes = probe.available["a"].nbytes
    assert nbytes is not None and nbytes > 0
    return nbytes


def lazy(tiny_bert: Path, folder: Path, **limits: Any) -> MultiPredictor:
    return MultiPredictor(str(tiny_bert), folder, load_all=False, **limits)


# -- the core predictor -----------------------------------------------------------------------------------------
def test_adapters_are_listed_at_start_and_load_on_first_use(folder: Path, tiny_bert: Path, offline: Offline) -> None:
    predictor = lazy(tiny_bert, folder)
    facts = predictor.describe()
    assert [a["name"] for a in facts["adapters"]] == ["a", "b", "big", "c", "d", "ner", "prompt"]
    assert not any(a["loaded"] for a in facts["adapters"]) and predictor.entries == {}
    assert facts["budget"] == {
        "max_loaded_adapters": None,
        "adapter_memory_mb": None,
        "loaded": 0,
        "loaded_bytes": 0,
        "loads": 0,
        "evictions": 0,
    }
    with pytest.raises(WrongTask):  # checked from the listing: nothing loads
        predictor.prepare("ner", ["a text"], "classify")
    with pytest.raises(AdapterNotFound):
        predictor.prepare("nope", ["hi"])
    rows = predictor.prepare("a", TEXTS)
    assert predictor.entries == {}  # tokenised from the listing alone
    for got, want in zip(predictor.run(rows), offline("a", TEXTS), strict=True):
        assert_same(got, want)  # type: ignore[arg-type]
    listed = {a["name"]: a for a in predictor.describe()["adapters"]}
    assert listed["a"]["loaded"] and listed["a"]["batching"] == "per-row" and listed["a"]["bytes"] > 0
    assert not listed["b"]["loaded"] and listed["b"]["batching"] is None
    assert list(predictor.entries) == ["a"] and predictor.residency.loads == 1


def test_bad_folders_are_refused_at_start_without_loading(
    folder: Path, tiny_bert: Path, other_tiny_bert: Path, tmp_path: Path
) -> None:
    root = Path(shutil.copytree(folder, tmp_path / "adapters"))
    weights = root / "b" / "adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])  # truncated
    config = root / "c" / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "format_version": 99}))
    make_adapter(root / "foreign", other_tiny_bert, LORA, "seq_cls", INTENTS, seed=5)
    predictor = lazy(tiny_bert, root)
    refused = {r["name"]: r["reason"] for r in predictor.describe()["refused"]}
    assert set(refused) == {"b", "c", "foreign"} and predictor.residency.loads == 0
    assert "truncated" in refused["b"] and "format version" in refused["c"] and "fingerprint" in refused["foreign"]
    with pytest.raises(AdapterNotFound):
        predictor.prepare("b", ["hi"])


def test_eviction_by_count_is_least_recently_used(folder: Path, tiny_bert: Path) -> None:
    predictor = lazy(tiny_bert, folder, max_loaded=2)
    events: list[AdapterEvent] = []
    predictor.residency.observers.append(events.append)
    predictor.predict("a", TEXTS[:1])
    predictor.predict("b", TEXTS[:1])
    predictor.predict("a", TEXTS[:1])  # a is now the most recently used
    predictor.predict("c", TEXTS[:1])
    assert set(predictor.entries) == {"a", "c"}
    predictor.prepare("a", TEXTS[:1])  # a request that arrives counts as use, before its batch runs
    predictor.predict("prompt", TEXTS[:1])  # a grouped adapter takes a place like any other
    assert set(predictor.entries) == {"a", "prompt"}
    assert [(e.kind, e.name) for e in events if e.kind == "evict"] == [("evict", "b"), ("evict", "c")]
    assert [e.trigger for e in events if e.kind == "load"] == ["request"] * 4
    assert all(e.seconds > 0 for e in events if e.kind == "load")
    assert predictor.residency.describe()["evictions"] == 2 and predictor.residency.loads == 4


def test_eviction_by_memory_budget(folder: Path, tiny_bert: Path, small_bytes: int) -> None:
    predictor = lazy(tiny_bert, folder, max_memory_mb=2.5 * small_bytes / MB)  # room for two small ones
    for name in ["a", "b", "a", "c"]:
        predictor.predict(name, TEXTS[:1])
    assert set(predictor.entries) == {"a", "c"}
    assert predictor.residency.loaded_bytes == 2 * small_bytes
    prompt_bytes = predictor.available["prompt"].file_bytes
    predictor.predict("prompt", TEXTS[:1])  # its private model shares the base: only its own tensors count
    assert predictor.available["prompt"].nbytes is not None and predictor.available["prompt"].nbytes < 4 * prompt_bytes
    assert predictor.residency.loaded_bytes <= 2.5 * small_bytes


def test_an_adapter_over_the_whole_budget_is_a_clear_error(folder: Path, tiny_bert: Path, small_bytes: int) -> None:
    predictor = lazy(tiny_bert, folder, max_memory_mb=2.5 * small_bytes / MB)
    predictor.predict("a", TEXTS[:1])
    (result,) = predictor.run(predictor.prepare("big", TEXTS[:1]))
    assert isinstance(result, AdapterTooLarge) and "adapter memory budget" in result.message
    with pytest.raises(AdapterTooLarge):  # measured once: refused before batching from then on
        predictor.prepare("big", TEXTS[:1])
    assert set(predictor.entries) == {"a"}  # nothing was evicted for it


def test_an_evicted_adapter_reloads_with_identical_outputs(folder: Path, tiny_bert: Path) -> None:
    predictor = lazy(tiny_bert, folder, max_loaded=1)
    before = predictor.predict("a", TEXTS)
    queued = predictor.prepare("a", TEXTS)
    predictor.predict("b", TEXTS[:1])
    assert "a" not in predictor.entries
    assert predictor.run(queued) == before  # rows queued before the eviction load it again
    assert predictor.predict("a", TEXTS) == before
    assert predictor.residency.evictions == 2


def test_a_batch_of_more_adapters_than_the_limit_runs_in_groups(
    folder: Path, tiny_bert: Path, offline: Offline
) -> None:
    predictor = lazy(tiny_bert, folder, max_loaded=2)
    predictor.predict("d", TEXTS[:1])
    loaded: list[int] = []
    predictor.residency.observers.append(lambda _event: loaded.append(len(predictor.residency.loaded)))
    passes: list[int] = []
    handle = predictor.backbone.model.register_forward_hook(lambda _m, _a, _o: passes.append(1))
    names = ["a", "b", "c", "d", "ner"]
    try:
        rows = [row for name in names for row in predictor.prepare(name, TEXTS[:2])]
        results = predictor.run(rows[::2] + rows[1::2])  # adapters interleaved in the batch
    finally:
        handle.remove()
    got = dict(zip(list(range(0, 10, 2)) + list(range(1, 10, 2)), results, strict=True))
    for k, name in enumerate(names):
        for j, want in enumerate(offline(name, TEXTS[:2])):
            assert_same(got[2 * k + j], want)  # type: ignore[arg-type]
    assert len(passes) == 3  # d (already loaded) first with one more, then two, then one: never over the limit
    assert max(loaded) <= 2 and len(predictor.entries) == 2


# -- over HTTP --------------------------------------------------------------------------------------------------
def served(tiny_bert: Path, folder: Path, **limits: Any) -> Any:
    return running_server(build_app(str(tiny_bert), folder, ServerSettings(max_batch=8, max_wait_ms=20, **limits)))


def metric(text: str, name: str) -> float | None:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


def test_server_is_lazy_and_refuses_before_any_load(folder: Path, tiny_bert: Path) -> None:
    with served(tiny_bert, folder, max_loaded_adapters=2) as url, httpx.Client(base_url=url) as http:
        listed = http.get("/v1/adapters").json()
        assert len(listed["adapters"]) == 7 and not any(a["loaded"] for a in listed["adapters"])
        assert listed["budget"]["max_loaded_adapters"] == 2 and listed["budget"]["loaded"] == 0
        assert http.get("/health").json()["adapters"] == 7
        assert len(http.get("/v1/models").json()["data"]) == 7
        assert http.post("/v1/classify", json={"adapter": "nope", "inputs": ["hi"]}).json()["error"]["type"] == (
            "not_found"
        )
        wrong = http.post("/v1/classify", json={"adapter": "ner", "inputs": ["hi"]})
        assert wrong.status_code == 400 and wrong.json()["error"]["type"] == "wrong_task"
        long = http.post("/v1/classify", json={"adapter": "a", "inputs": ["word " * 600]})
        assert long.status_code == 400 and long.json()["error"]["limit"] == "max_input_tokens"
        text = http.get("/metrics").text
        assert metric(text, "adaptune_adapters_loaded") == 0 and metric(text, "adaptune_adapters_available") == 7
        assert "adaptune_adapter_loads_total{" not in text


def test_concurrent_mixed_traffic_over_the_limit_matches_offline(
    folder: Path, tiny_bert: Path, offline: Offline, small_bytes: int
) -> None:
    jobs = [(name, TEXTS[i % 3 : i % 3 + 1 + i % 2]) for i, name in enumerate(["a", "b", "c", "d", "prompt"] * 8)]
    with served(tiny_bert, folder, max_loaded_adapters=2) as url:

        def call(job: tuple[str, list[str]]) -> httpx.Response:
            return httpx.post(f"{url}/v1/classify", json={"adapter": job[0], "inputs": job[1]}, timeout=60)

        with ThreadPoolExecutor(max_workers=8) as pool:
            responses = list(pool.map(call, jobs))
        for (name, inputs), response in zip(jobs, responses, strict=True):
            assert response.status_code == 200, response.text
            for got, want in zip(response.json()["predictions"], offline(name, inputs), strict=True):
                assert_same(got, want)
        text = httpx.get(f"{url}/metrics").text
        loads = metric(text, 'adaptune_adapter_loads_total{trigger="request"}')
        evictions = metric(text, "adaptune_adapter_evictions_total")
        assert loads is not None and evictions is not None and loads == evictions + 2
        assert metric(text, 'adaptune_adapter_load_seconds_count{trigger="request"}') == loads
        assert metric(text, "adaptune_adapters_loaded") == 2
        assert (metric(text, "adaptune_adapter_bytes") or 0) > 0
        budget = httpx.get(f"{url}/v1/adapters").json()["budget"]
        assert budget["loaded"] == 2 and budget["loads"] == loads and budget["evictions"] == evictions


def test_too_large_over_http(folder: Path, tiny_bert: Path, small_bytes: int) -> None:
    with served(tiny_bert, folder, adapter_memory_mb=2.5 * small_bytes / MB) as url, httpx.Client(base_url=url) as http:
        for _ in range(2):  # at its load, then from the listing
            answer = http.post("/v1/classify", json={"adapter": "big", "inputs": ["hi"]})
            assert answer.status_code == 507 and answer.json()["error"]["type"] == "adapter_too_large"
        assert http.post("/v1/classify", json={"adapter": "a", "inputs": ["hi"]}).status_code == 200
        listed = {a["name"]: a for a in http.get("/v1/adapters").json()["adapters"]}
        assert listed["big"]["bytes"] > 2.5 * small_bytes and not listed["big"]["loaded"]


def test_admin_load_unload_reload_with_a_limit(folder: Path, tiny_bert: Path, offline: Offline) -> None:
    with served(tiny_bert, folder, max_loaded_adapters=2) as url, httpx.Client(base_url=url) as http:

        def loaded() -> set[str]:
            return {a["name"] for a in http.get("/v1/adapters").json()["adapters"] if a["loaded"]}

        answer = http.post("/v1/adapters/a/load").json()
        assert answer["status"] == "loaded" and answer["adapter"]["batching"] == "per-row"
        assert http.post("/v1/adapters/a/load").status_code == 409
        http.post("/v1/adapters/b/load")
        http.post("/v1/adapters/c/load")  # not pinned: a, the least recently used, makes room
        assert loaded() == {"b", "c"}
        assert http.post("/v1/adapters/c/unload").json()["status"] == "unloaded"
        assert http.post("/v1/classify", json={"adapter": "c", "inputs": ["hi"]}).status_code == 404
        assert "c" not in {m["id"] for m in http.get("/v1/models").json()["data"]}
        assert http.post("/v1/adapters/c/load").json()["status"] == "loaded"
        assert http.post("/v1/adapters/b/reload").json()["status"] == "reloaded"
        assert loaded() == {"b", "c"}
        got = http.post("/v1/classify", json={"adapter": "a", "inputs": ["hi"]}).json()["predictions"][0]
        assert_same(got, offline("a", ["hi"])[0])
        assert loaded() == {"a", "b"}  # c was used before b's reload
        assert http.post("/v1/adapters/missing/load").status_code == 404
        text = http.get("/metrics").text
        assert metric(text, 'adaptune_adapter_loads_total{trigger="admin"}') == 5
        assert metric(text, 'adaptune_adapter_loads_total{trigger="request"}') == 1
        assert metric(text, "adaptune_adapter_evictions_total") == 2


def test_serve_command_passes_the_limits(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import adaptune.server
    from adaptune.cli import app

    seen: dict[str, Any] = {}
    monkeypatch.setattr(adaptune.server, "serve", lambda *args, **kwargs: seen.update(kwargs))
    command = ["serve", "--base", "x", "--adapters", str(tmp_path), "--max-loaded-adapters", "64"]
    result = CliRunner().invoke(app, [*command, "--adapter-memory-mb", "1.5"])
    assert result.exit_code == 0, result.output
    assert seen["settings"].max_loaded_adapters == 64 and seen["settings"].adapter_memory_mb == 1.5
    assert CliRunner().invoke(app, [*command[:-1], "0"]).exit_code == 2
