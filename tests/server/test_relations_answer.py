"""``POST /v1/relations`` and ``POST /v1/answer`` over real HTTP on loopback: the answers equal each adapter's own
Predictor; relation adapters (LoRA) share the per-row batch with classification adapters, entity markers
included; QA adapters (several windows per question) are served on their own model; wrong-kind and bad inputs
get the same errors as ``/v1/classify``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from adaptune.inference import Predictor
from adaptune.inference.multi import MultiPredictor
from adaptune.server.app import create_app
from serving_kit import API_KEY, INTENTS, SETTINGS, assert_same, make_adapter, running_server

RELATIONS = ["Content-Container(e1,e2)", "Content-Container(e2,e1)", "Other"]
ADAPTERS = {
    "rel-lora": ({"name": "lora", "r": 4}, "relation_cls", RELATIONS),
    "rel-bottleneck": ({"name": "bottleneck", "reduction_factor": 4}, "relation_cls", RELATIONS),
    "intents": ({"name": "lora", "r": 4}, "seq_cls", INTENTS),
    "qa": ({"name": "lora", "r": 4}, "extractive_qa", ["start", "end"]),
}
REL_INPUTS = ["the <e1>apple</e1> is in the <e2>box</e2>", {"text": "a box holds a pen", "e1": [2, 5], "e2": [14, 17]}]
QA_INPUTS = [{"question": "where does bob live?", "context": "bob lives in paris. alice lives in rome."}]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    root = tmp_path_factory.mktemp("rel_qa")
    for seed, (name, (method, task, labels)) in enumerate(ADAPTERS.items()):
        make_adapter(root / name, tiny_bert, method, task, labels, seed=seed)
    return root


@pytest.fixture(scope="module")
def engine(folder: Path, tiny_bert: Path) -> MultiPredictor:
    return MultiPredictor(str(tiny_bert), folder, max_input_tokens=SETTINGS.max_input_tokens)


@pytest.fixture(scope="module")
def client(engine: MultiPredictor) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with running_server(create_app(engine, SETTINGS)) as url, httpx.Client(base_url=url, headers=headers) as http:
        yield http


def offline(folder: Path, tiny_bert: Path, name: str, inputs: list) -> list[dict]:
    return Predictor.load(folder / name, base=str(tiny_bert)).predict(inputs)


def test_batching_of_the_new_kinds(engine: MultiPredictor) -> None:
    batching = {a["name"]: a["batching"] for a in engine.describe()["adapters"]}
    assert batching == {"rel-lora": "per-row", "rel-bottleneck": "per-row", "intents": "per-row", "qa": "grouped"}


def test_relations_route_equals_the_predictor(client: httpx.Client, folder: Path, tiny_bert: Path) -> None:
    for name in ("rel-lora", "rel-bottleneck"):
        reply = client.post("/v1/relations", json={"adapter": name, "inputs": REL_INPUTS})
        assert reply.status_code == 200, reply.text
        got = reply.json()["predictions"]
        for g, w in zip(got, offline(folder, tiny_bert, name, REL_INPUTS), strict=True):
            assert_same(g, w)
        assert got[1]["e1"] == {"text": "box", "start": 2, "end": 5}


def test_mixed_per_row_batch_with_markers_equals_each_predictor(
    engine: MultiPredictor, folder: Path, tiny_bert: Path
) -> None:
    rows = engine.prepare("rel-lora", REL_INPUTS, "relation") + engine.prepare("intents", ["refund please"])
    rows += engine.prepare("rel-bottleneck", REL_INPUTS[:1], "relation")
    got = engine.run(rows)
    want = offline(folder, tiny_bert, "rel-lora", REL_INPUTS) + offline(folder, tiny_bert, "intents", ["refund please"])
    want += offline(folder, tiny_bert, "rel-bottleneck", REL_INPUTS[:1])
    for g, w in zip(got, want, strict=True):
        assert isinstance(g, dict)
        assert_same(g, w)


def test_answer_route_equals_the_predictor(client: httpx.Client, folder: Path, tiny_bert: Path) -> None:
    reply = client.post("/v1/answer", json={"adapter": "qa", "inputs": QA_INPUTS})
    assert reply.status_code == 200, reply.text
    got = reply.json()["predictions"][0]
    want = offline(folder, tiny_bert, "qa", QA_INPUTS)[0]
    assert got["answer"] == want["answer"] and (got["start"], got["end"]) == (want["start"], want["end"])
    assert QA_INPUTS[0]["context"][got["start"] : got["end"]] == got["answer"]


@pytest.mark.parametrize(
    ("route", "adapter", "inputs", "status", "says"),
    [
        ("/v1/relations", "intents", ["a text"], 400, "kind 'classify'"),
        ("/v1/answer", "rel-lora", QA_INPUTS, 400, "kind 'relation'"),
        ("/v1/relations", "rel-lora", ["no markup here"], 400, "<e1> is missing"),
        ("/v1/answer", "qa", [{"context": "no question"}], 400, "question"),
    ],
)
def test_wrong_kind_and_bad_inputs_are_refused(
    client: httpx.Client, route: str, adapter: str, inputs: list, status: int, says: str
) -> None:
    reply = client.post(route, json={"adapter": adapter, "inputs": inputs})
    assert reply.status_code == status, reply.text
    assert says in reply.text
