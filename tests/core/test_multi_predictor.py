"""The core multi-adapter predictor, without HTTP: per-row and grouped adapters mixed in one run answer exactly as
each adapter's own Predictor does; routing by task kind; refusals as the core's exception types."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adaptune.generation import GenerationConfig, generate
from adaptune.inference import Predictor
from adaptune.inference.errors import AdapterNotFound, AdapterUnloaded, LimitExceeded, PredictorError, WrongTask
from adaptune.inference.jobs import GenerationJob
from adaptune.inference.multi import MultiPredictor
from adaptune.methods.base import PerRowBatched
from decoders.lm_tools import make_tiny_causal_llama
from serving_kit import INTENTS, TAGS, assert_same, make_adapter
from tiny import make_tiny_gpt2, make_tiny_llama
from virtual_checks import make_left_padding

TEXTS = ["Bob ordered a Kindle in Paris", "where is my order A1024-77?", "hello", "refund please", "ok"]

#: name -> (method, task, labels, how the predictor batches it)
ADAPTERS = {
    "lora": ({"name": "lora", "r": 4, "roles": ["query", "value"]}, "seq_cls", INTENTS, "per-row"),
    "bottleneck": ({"name": "bottleneck", "reduction_factor": 4}, "seq_cls", INTENTS, "per-row"),
    "head": ({"name": "head"}, "seq_cls", INTENTS, "per-row"),
    "ner": ({"name": "lora", "r": 2, "roles": ["ffn_in", "ffn_out"]}, "token_cls", TAGS, "per-row"),
    "dora": ({"name": "lora", "r": 2, "use_dora": True}, "seq_cls", INTENTS, "grouped"),
    "ia3": ({"name": "ia3"}, "seq_cls", INTENTS, "grouped"),
    "prompt": ({"name": "prompt", "num_virtual_tokens": 3}, "seq_cls", INTENTS, "grouped"),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    root = tmp_path_factory.mktemp("multi")
    for seed, (name, (method, task, labels, _)) in enumerate(ADAPTERS.items()):
        make_adapter(root / name, tiny_bert, method, task, labels, seed=seed)
    return root


@pytest.fixture(scope="module")
def predictor(folder: Path, tiny_bert: Path) -> MultiPredictor:
    return MultiPredictor(str(tiny_bert), folder, max_input_tokens=40)


def test_batching_follows_the_methods_capabilities(predictor: MultiPredictor) -> None:
    batching = {a["name"]: a["batching"] for a in predictor.describe()["adapters"]}
    assert batching == {name: spec[3] for name, spec in ADAPTERS.items()}
    assert predictor.describe()["refused"] == []
    for name in ["lora", "bottleneck", "head"]:
        assert predictor.get(name).kind == "classify"
    dora = predictor.get("dora").model
    assert dora is not None and isinstance(dora.method, PerRowBatched)  # LoRA has a per-row form, DoRA has not
    assert dora.method.per_row_parts(dora.backbone) is None


def test_one_mixed_run_equals_each_predictor(predictor: MultiPredictor, folder: Path, tiny_bert: Path) -> None:
    rows = [row for name in ADAPTERS for row in predictor.prepare(name, TEXTS)]
    order = list(range(len(rows)))
    order = order[1::3] + order[::3] + order[2::3]  # interleave per-row and grouped adapters
    answers = dict(zip(order, predictor.run([rows[i] for i in order]), strict=True))
    for k, name in enumerate(ADAPTERS):
        want = Predictor.load(folder / name, base=str(tiny_bert)).predict(TEXTS)
        for j, expected in enumerate(want):
            got = answers[k * len(TEXTS) + j]
            assert isinstance(got, dict), got
            assert_same(got, expected)


def test_per_row_adapters_share_one_forward(predictor: MultiPredictor) -> None:
    calls: list[int] = []
    handle = predictor.backbone.model.register_forward_hook(lambda _m, _a, _o: calls.append(1))
    try:
        predictor.run([r for name in ["lora", "bottleneck", "head", "ner"] for r in predictor.prepare(name, TEXTS)])
    finally:
        handle.remove()
    assert calls == [1]


def test_routing_by_kind_and_refusals(predictor: MultiPredictor) -> None:
    with pytest.raises(WrongTask):
        predictor.prepare("ner", ["a text"], "classify")
    with pytest.raises(WrongTask):
        predictor.prepare("lora", ["a text"], "tag")
    assert predictor.prepare("ner", ["a text"], "tag")
    with pytest.raises(WrongTask):
        predictor.stream("lora", "hi", GenerationConfig())  # a classifier does not generate
    with pytest.raises(LimitExceeded) as err:
        predictor.prepare("lora", ["word " * 60])
    assert err.value.limit == "max_input_tokens" and err.value.kind == "limit_exceeded"
    with pytest.raises(AdapterNotFound):
        predictor.prepare("nope", ["hi"])
    with pytest.raises(PredictorError) as refused:
        predictor.prepare("../lora", ["hi"])
    assert refused.value.kind == "invalid_adapter_name"


def test_queued_rows_of_an_unloaded_adapter(folder: Path, tiny_bert: Path) -> None:
    predictor = MultiPredictor(str(tiny_bert), folder)
    queued = predictor.prepare("bottleneck", TEXTS[:2]) + predictor.prepare("ia3", TEXTS[:1])
    predictor.unload("bottleneck")
    results = predictor.run(queued)
    assert [type(r) for r in results[:2]] == [AdapterUnloaded, AdapterUnloaded]
    assert isinstance(results[2], dict)
    predictor.load("bottleneck")
    assert predictor.get("bottleneck").per_row


def test_merged_lora_has_no_per_row_form(predictor: MultiPredictor, folder: Path, tiny_bert: Path) -> None:
    model = Predictor.load(folder / "lora", base=str(tiny_bert), merge=True).model
    assert model.method.per_row_parts(model.backbone) is None  # type: ignore[attr-defined]


def test_generation_adapters_run_on_their_own_model(tmp_path: Path) -> None:
    base = make_tiny_causal_llama(tmp_path / "llama")
    folder = tmp_path / "adapters"
    make_adapter(folder / "chat", base, {"name": "lora", "r": 4}, "causal_lm", [], seed=1, pooling="last")
    predictor = MultiPredictor(str(base), folder, max_input_tokens=30)
    assert predictor.describe()["adapters"][0]["batching"] == "grouped"  # generation: per adapter
    with pytest.raises(WrongTask):
        predictor.prepare("chat", ["hi"])
    config = GenerationConfig(max_new_tokens=3)
    jobs = [GenerationJob("chat", ["hello there"], config, True), GenerationJob("chat", ["word " * 40], config, True)]
    first, second = predictor.generate_jobs(jobs, max_prompts=4)
    alone = Predictor.load(folder / "chat", base=str(base)).model
    assert first == generate(alone, ["hello there"], config)
    assert isinstance(second, LimitExceeded) and second.limit == "max_input_tokens"
    assert "".join(predictor.stream("chat", "hello there", config)) == generate(alone, ["hello there"], config)[0].text
    assert torch.is_grad_enabled()


def test_per_row_rows_on_a_left_padded_decoder_equal_the_predictor(tmp_path: Path) -> None:
    """Decoders pad on the left; the shared pass numbers positions from the mask as ``AdaptedModel.forward``
    does, so absolute positions (GPT-2) and rotary ones (Llama) give each row what it gets alone."""
    texts = ["a short one", "this sentence is quite a bit longer than the first one", "mid length"]
    for make in (make_tiny_gpt2, make_tiny_llama):
        base = make_left_padding(tmp_path / make.__name__, make)
        root = tmp_path / f"{make.__name__}_adapters"
        make_adapter(root / "lora", base, {"name": "lora", "r": 4}, "seq_cls", INTENTS, seed=3, pooling="last")
        multi = MultiPredictor(str(base), root)
        assert multi.describe()["adapters"][0]["batching"] == "per-row"
        want = Predictor.load(root / "lora", base=str(base)).predict(texts)
        for got, expected in zip(multi.predict("lora", texts), want, strict=True):
            assert_same(got, expected)
