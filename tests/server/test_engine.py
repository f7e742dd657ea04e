"""The multi-adapter engine without HTTP: mixed rows equal the offline Predictor; loading, refusing, limits."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from adaptune.inference import Predictor
from adaptune.server.engine import MultiAdapterEngine
from adaptune.server.errors import ServeError
from serving_kit import FOREIGN, FOUR_ADAPTERS, GROUPED, INTENTS, assert_same, make_adapter

TEXTS = ["Bob ordered a Kindle in Paris", "where is my order A1024-77?", "hello", "我想退款 please", "ok"]

Offline = Callable[[str, list[Any]], list[dict[str, Any]]]


def test_loads_compatible_adapters_and_lists_refused(engine: MultiAdapterEngine) -> None:
    facts = engine.describe()
    names = {a["name"]: a["batching"] for a in facts["adapters"]}
    assert names == {**dict.fromkeys(FOUR_ADAPTERS, "per-row"), GROUPED: "grouped"}
    (refused,) = facts["refused"]
    assert refused["name"] == FOREIGN and "fingerprint" in refused["reason"]


def test_one_mixed_run_equals_offline_predictor(engine: MultiAdapterEngine, offline: Offline) -> None:
    names = [*FOUR_ADAPTERS, GROUPED]
    rows = [row for name in names for row in engine.prepare(name, TEXTS)]
    order = list(range(len(rows)))
    order = order[::2] + order[1::2]  # interleave adapters inside the batch
    shuffled = engine.run([rows[i] for i in order])
    got = dict(zip(order, shuffled, strict=True))
    for k, name in enumerate(names):
        want = offline(name, TEXTS)
        for j, expected in enumerate(want):
            assert_same(got[k * len(TEXTS) + j], expected)


def test_adapters_give_different_answers(engine: MultiAdapterEngine) -> None:
    lora = engine.predict("intents-lora", TEXTS)
    bottleneck = engine.predict("intents-bottleneck", TEXTS)
    assert [p["scores"] for p in lora] != [p["scores"] for p in bottleneck]


def test_tag_output_has_character_offsets(engine: MultiAdapterEngine) -> None:
    (out,) = engine.predict("ner-lora", ["Bob ordered a Kindle in Paris"])
    assert out["tags"] and len(out["tags"]) == len(out["tokens"]) == 6
    for entity in out["entities"]:
        assert out["text"][entity["start"] : entity["end"]] == entity["text"]


def test_requests_are_checked_before_batching(engine: MultiAdapterEngine) -> None:
    with pytest.raises(ServeError) as err:
        engine.prepare("intents-lora", ["word " * 100])
    assert err.value.limit == "max_input_tokens" and err.value.status == 400
    with pytest.raises(ServeError) as err:
        engine.prepare("ner-lora", ["a text"], "classify")
    assert err.value.type == "wrong_task"
    with pytest.raises(ServeError) as err:
        engine.prepare("intents-lora", [{"text": ""}])
    assert err.value.type == "invalid_input" and "inputs[0]" in err.value.message
    for name in ["../intents-lora", "/etc/passwd", "a\\b", "..", "x/y"]:
        with pytest.raises(ServeError) as err:
            engine.prepare(name, ["hi"])
        assert err.value.status == 400 and err.value.type == "invalid_adapter_name"
        with pytest.raises(ServeError):
            engine.load(name)


def test_load_unload_reload(private_dir: Path, tiny_bert: Path, offline: Offline) -> None:
    engine = MultiAdapterEngine(str(tiny_bert), private_dir)
    queued = engine.prepare("intents-lora", TEXTS[:2])
    engine.unload("intents-lora")
    with pytest.raises(ServeError) as err:
        engine.prepare("intents-lora", TEXTS)
    assert err.value.status == 404
    results = engine.run([*queued, *engine.prepare("intents-bottleneck", TEXTS[:1])])
    assert [getattr(r, "status", None) for r in results] == [503, 503, None]  # queued rows of an unloaded adapter
    assert_same(results[2], offline("intents-bottleneck", TEXTS[:1])[0])
    engine.load("intents-lora")
    for got, want in zip(engine.predict("intents-lora", TEXTS), offline("intents-lora", TEXTS), strict=True):
        assert_same(got, want)
    with pytest.raises(ServeError) as err:
        engine.load("intents-lora")
    assert err.value.status == 409
    # new weights on disk: reload serves them
    make_adapter(private_dir / "intents-lora", tiny_bert, {"name": "lora", "r": 4}, "seq_cls", INTENTS, seed=99)
    before = engine.predict("intents-lora", TEXTS)
    engine.reload("intents-lora")
    after = engine.predict("intents-lora", TEXTS)
    assert [p["scores"] for p in before] != [p["scores"] for p in after]


def test_grouped_methods_do_not_touch_the_shared_base(private_dir: Path, tiny_bert: Path, offline: Offline) -> None:
    """BitFit trains the base's own biases: it must get private copies, or every other adapter would change."""
    make_adapter(private_dir / "bitfit", tiny_bert, {"name": "bitfit"}, "seq_cls", INTENTS, seed=5)
    make_adapter(private_dir / "ia3", tiny_bert, {"name": "ia3"}, "seq_cls", INTENTS, seed=6)
    engine = MultiAdapterEngine(str(tiny_bert), private_dir)
    assert {a["name"]: a["batching"] for a in engine.describe()["adapters"]}["bitfit"] == "grouped"
    rows = [r for name in ["bitfit", "ia3", "intents-lora", "ner-lora"] for r in engine.prepare(name, TEXTS[:2])]
    results = engine.run(rows)
    for k, name in enumerate(["bitfit", "ia3"]):
        want = Predictor.load(private_dir / name, base=str(tiny_bert)).predict(TEXTS[:2])
        for j in range(2):
            assert_same(results[2 * k + j], want[j])
    for k, name in enumerate(["intents-lora", "ner-lora"], start=2):
        for j, want in enumerate(offline(name, TEXTS[:2])):
            assert_same(results[2 * k + j], want)


def test_corrupt_and_foreign_folders_are_refused_with_reason(private_dir: Path, tiny_bert: Path) -> None:
    shutil.copytree(private_dir / "intents-lora", private_dir / "broken")
    config = private_dir / "broken" / "adapter_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "format_version": 99}))
    engine = MultiAdapterEngine(str(tiny_bert), private_dir)
    refused = {r["name"]: r["reason"] for r in engine.describe()["refused"]}
    assert set(refused) == {FOREIGN, "broken"} and "format version" in refused["broken"]
    with pytest.raises(ServeError) as err:
        engine.load(FOREIGN)
    assert err.value.status == 422 and err.value.type == "adapter_refused"


def test_symlink_out_of_the_folder_is_refused(private_dir: Path, tmp_path: Path, tiny_bert: Path) -> None:
    outside = shutil.copytree(private_dir / "intents-lora", tmp_path / "outside")
    (private_dir / "escape").symlink_to(outside)
    engine = MultiAdapterEngine(str(tiny_bert), private_dir, load_all=False)
    with pytest.raises(ServeError) as err:
        engine.load("escape")
    assert err.value.type == "invalid_adapter_name"


def test_engine_forward_is_one_pass_for_mixed_per_row_adapters(engine: MultiAdapterEngine) -> None:
    calls: list[int] = []
    handle = engine.backbone.model.register_forward_hook(lambda _m, args, _o: calls.append(1))
    try:
        engine.run([r for name in FOUR_ADAPTERS for r in engine.prepare(name, TEXTS[:2])])
    finally:
        handle.remove()
    assert calls == [1]
    assert torch.is_grad_enabled()
