"""``stack``: a task bottleneck trained on top of a frozen, previously trained language bottleneck on one tiny BERT;
the frozen member does not move, the file names both members and loads without the member's folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from adaptune import Predictor
from adaptune.config import validate_config
from adaptune.errors import ConfigError
from adaptune.export import merge_to_hf
from adaptune.io import CONFIG_FILE, load_adapter
from adaptune.methods.bottleneck import BottleneckAdapter
from adaptune.methods.stack import Stack
from adaptune.registry import build_method
from method_checks import TEXTS, Run, assert_only_owned_changed, assert_round_trip, backbone, randomise, train_tiny
from virtual_checks import attach_full

LANG = {"name": "bottleneck", "reduction_factor": 4}


@pytest.fixture(scope="module")
def lang_adapter(tiny_bert: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 'language' bottleneck trained alone (NER data), far from its identity init."""
    ner = f"data.train={bundled_data / 'ner' / 'train.conll'}"
    run = train_tiny(
        tmp_path_factory.mktemp("lang"), tiny_bert, bundled_data, LANG, "task.name=token_cls", ner,
        "training.learning_rate=0.05",
    )  # fmt: skip
    return run.result.adapter_dir


def _members(lang_dir: Path, **task: Any) -> str:
    members = [
        {"name": "lang", "adapter": str(lang_dir), "trainable": False},  # the method comes from the folder
        {"name": "task", "method": {**LANG, **task}},
    ]
    return json.dumps(members)


@pytest.fixture(scope="module")
def stack_run(
    lang_adapter: Path, tiny_bert: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Run, Path]:
    """The task member trained on intents over a copy of the language adapter (the copy is deleted later)."""
    copy = tmp_path_factory.mktemp("lang_copy") / "adapter"
    shutil.copytree(lang_adapter, copy)
    tmp = tmp_path_factory.mktemp("stack")
    method = {"name": "stack", "members": _members(copy)}
    return train_tiny(tmp, tiny_bert, bundled_data, method, "training.learning_rate=0.05"), copy


def test_frozen_member_keeps_its_trained_tensors(stack_run: tuple[Run, Path], lang_adapter: Path) -> None:
    run, _ = stack_run
    lang = {k[len("adapter.") :]: v for k, v in load_adapter(lang_adapter).tensors.items() if k.startswith("adapter.")}
    frozen = run.model.method.frozen_parameters(run.model.backbone)
    assert len(frozen) == len(lang) == 8  # 2 layers x (down, up) x (weight, bias)
    for name, param in frozen.items():
        plain = name.removeprefix("lang.").replace(".bottleneck_lang.", ".bottleneck.")
        assert torch.equal(param, lang[plain]), f"{name} changed"
        assert not param.requires_grad
    assert any(torch.count_nonzero(p) for n, p in frozen.items() if ".up.weight" in n), "a trained adapter"


def test_only_the_task_member_and_the_head_train(stack_run: tuple[Run, Path], tiny_bert: Path) -> None:
    run, _ = stack_run
    owned = assert_only_owned_changed(run, tiny_bert)
    assert owned and all(name.startswith("task.") and ".bottleneck_task." in name for name in owned)
    assert all(torch.count_nonzero(p) for n, p in owned.items() if ".up.weight" in n), "W_up moved off zero"
    head = sum(p.numel() for p in run.model.head.parameters())
    assert run.result.trainable_params == sum(p.numel() for p in owned.values()) + head


def test_adapter_file_names_every_member(stack_run: tuple[Run, Path], lang_adapter: Path) -> None:
    run, copy = stack_run
    adapter = load_adapter(run.result.adapter_dir)
    names = {k.split(".")[1] for k in adapter.tensors if k.startswith("adapter.")}
    assert names == {"lang", "task"}
    assert "adapter.lang.encoder.layer.0.output.dense.bottleneck_lang.up.weight" in adapter.tensors
    assert "adapter.task.encoder.layer.1.output.dense.bottleneck_task.down.bias" in adapter.tensors
    lang, task = adapter.config["method"]["members"]
    assert (lang["name"], lang["trainable"], lang["adapter"]) == ("lang", False, None)
    assert lang["method"]["name"] == "bottleneck" and lang["method"]["reduction_factor"] == 4
    source = load_adapter(lang_adapter).config["weights"]["sha256"]  # the copy's bytes are the same
    assert lang["source"] == {"path": str(copy.resolve()), "sha256": source}
    assert (task["name"], task["trainable"], task["adapter"], task["source"]) == ("task", True, None, None)


def test_save_load_is_exact_and_needs_no_member_folder(stack_run: tuple[Run, Path]) -> None:
    run, copy = stack_run
    shutil.rmtree(copy)
    assert_round_trip(run)


def test_members_compose_in_order(tiny_bert: Path) -> None:
    """Two bottlenecks on one host: distinct attributes, and the upper one reads the lower one's output."""
    bb = backbone(tiny_bert)
    members = [{"name": "lang", "method": LANG}, {"name": "task", "method": LANG}]
    method = attach_full(bb, name="stack", members=members)
    randomise(method.owned_parameters(bb.model), std=0.3)
    host = bb.model.encoder.layer[0].output.dense
    lang, task = host.bottleneck_lang, host.bottleneck_task
    assert isinstance(lang, BottleneckAdapter) and isinstance(task, BottleneckAdapter)
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        plain = torch.nn.functional.linear(x, host.weight, host.bias)
        assert torch.allclose(host(x), task(lang(plain)), atol=1e-6)
    method.detach(bb.model)
    assert not any("bottleneck" in name for name, _ in bb.model.named_parameters())


def test_plain_names_match_a_single_method_file(tiny_bert: Path) -> None:
    bb = backbone(tiny_bert)
    method = attach_full(bb, name="stack", members=[{"name": "x_1", "method": LANG}])
    assert isinstance(method, Stack)
    inner = method.members[0][1]
    names = {inner.plain_name(n) for n in inner.owned_parameters(bb.model)}
    bb2 = backbone(tiny_bert)
    assert names == set(attach_full(bb2, **LANG).owned_parameters(bb2.model))


def _edited_copy(src: Path, dst: Path, edit: dict[str, Any]) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / CONFIG_FILE).read_text(encoding="utf-8"))
    for key, value in edit.items():
        section, field = key.split(".")
        config[section][field] = value
    (dst / CONFIG_FILE).write_text(json.dumps(config), encoding="utf-8")
    return dst


def test_member_from_another_base_or_method_is_refused(lang_adapter: Path, tiny_bert: Path, tmp_path: Path) -> None:
    other = _edited_copy(lang_adapter, tmp_path / "other", {"base_model.fingerprint": "0" * 32})
    with pytest.raises(ConfigError, match="stack member 'lang'.*was trained on base model.*not on this model"):
        attach_full(backbone(tiny_bert), name="stack", members=json.loads(_members(other)))
    members = [{"name": "lang", "adapter": str(lang_adapter), "method": {**LANG, "reduction_factor": 8}}]
    with pytest.raises(ConfigError, match="has method config"):
        attach_full(backbone(tiny_bert), name="stack", members=members)


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ([{"name": "a", "method": "lora"}, {"name": "a", "method": "ia3"}], "repeated: \\['a'\\]"),
        ([{"name": "a", "method": {"name": "stack", "members": [{"name": "b", "method": "lora"}]}}], "itself be a"),
        ([{"name": "a", "method": "lora", "trainable": False}], "frozen .* no 'adapter'"),
        ([{"name": "a", "method": {"name": "lora", "rank": 2}}], "method.members.method.rank' is not allowed"),
        ([{"name": "a b", "method": "lora"}], "members"),
        ([{"name": "a", "adapter": "/no/such/folder"}], "does not exist"),
        ([], "at least 1"),
    ],
)
def test_config_errors(members: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config({"method": {"name": "stack", "members": members}})


def test_build_and_attach_errors(tiny_bert: Path) -> None:
    two_inputs = [{"name": "a", "method": "prompt"}, {"name": "b", "method": "prefix"}]
    with pytest.raises(ConfigError, match="at most one may"):
        build_method(validate_config({"method": {"name": "stack", "members": two_inputs}}).method)
    two_bitfits = [{"name": "a", "method": "bitfit"}, {"name": "b", "method": "bitfit"}]
    with pytest.raises(ConfigError, match="members 'a' and 'b' both own"):
        attach_full(backbone(tiny_bert), name="stack", members=two_bitfits)


def test_learning_rate_and_declarations() -> None:
    members = [{"name": "a", "method": "lora"}, {"name": "b", "method": "bitfit"}, {"name": "c", "method": "head"}]
    stack = build_method(validate_config({"method": {"name": "stack", "members": members}}).method)
    assert stack.default_learning_rate == 2e-3  # the smallest of the trainable members' (lora's; bitfit 4e-3)
    assert "llama" in stack.unsupported_model_types  # bitfit's


def test_a_stack_is_not_mergeable(stack_run: tuple[Run, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="method 'stack' cannot be merged"):
        merge_to_hf(stack_run[0].result.adapter_dir, tmp_path / "merged")


def test_prediction_uses_both_members(stack_run: tuple[Run, Path]) -> None:
    """Zeroing the frozen member's output changes the logits: it is applied, not just stored."""
    run, _ = stack_run
    predictor = Predictor(run.model, load_adapter(run.result.adapter_dir).config)
    before = predictor.logits(TEXTS)
    frozen = run.model.method.frozen_parameters(run.model.backbone)
    saved = {n: p.detach().clone() for n, p in frozen.items()}
    with torch.no_grad():
        for name, param in frozen.items():
            if ".up." in name:
                param.zero_()
        after = predictor.logits(TEXTS)
        for name, param in frozen.items():
            param.copy_(saved[name])
    assert not all(torch.allclose(a, b) for a, b in zip(before, after, strict=True))
