"""``fusion`` (AdapterFusion) on the tiny BERT: a bottleneck and a LoRA member (both on the FFN output), trained
alone through ``adaptune.train``, then fused: the loss falls, only the fusion's tensors and the head move, the
members keep their trained tensors, the adapter file is self-contained (save -> load exact, no member folder
needed), and ``Predictor.load``, ``adaptune predict`` and the multi-adapter predictor serve it unchanged. At uniform
attention and ``W_V = I`` the fused model is the mean of the members, computed here by hand from their files.

The shared method x task matrix (``tests/methods/test_matrix.py``) cannot build a fusion from a static config (its
members are trained adapters of each cell's own base), so it leaves ``fusion`` to this file
(``OUTSIDE_MATRIX`` there) and the checks the matrix makes are made here.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from adaptune import Predictor, load_config
from adaptune.cli import app
from adaptune.config import DataConfig, validate_config
from adaptune.errors import ConfigError
from adaptune.inference.multi import MultiPredictor
from adaptune.io import load_adapter
from adaptune.methods.base import Mergeable
from adaptune.methods.fusion import Fusion, FusionConfig, FusionPoint
from adaptune.registry import method_names, methods_with
from method_checks import TEXTS, Run, assert_only_owned_changed, assert_round_trip, backbone, hidden, train_tiny
from serving_kit import assert_same
from virtual_checks import attach_full, initial_state

BOTTLENECK = {"name": "bottleneck", "reduction_factor": 4}
LORA = {"name": "lora", "r": 4, "alpha": 8, "roles": "[ffn_out]"}  # on the bottleneck's host: the two are fused
STEPS, EXAMPLES, LEARNING_RATE = 40, 48, 3e-2
OWNED = (".fusion.query.weight", ".fusion.query.bias", ".fusion.key.weight", ".fusion.value.weight")


def _member(tmp: Path, base: Path, data: Path, method: dict[str, Any], *extra: str) -> Path:
    """A member adapter trained alone (3 steps at a high rate, so that it is far from its init)."""
    return train_tiny(tmp, base, data, method, "training.learning_rate=0.05", *extra).result.adapter_dir


@pytest.fixture(scope="module")
def members(tiny_bert: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """name -> folder: a bottleneck trained on NER, a LoRA (on ffn_out) trained on intents."""
    ner = ("task.name=token_cls", f"data.train={bundled_data / 'ner' / 'train.conll'}")
    return {
        "bn": _member(tmp_path_factory.mktemp("bn"), tiny_bert, bundled_data, BOTTLENECK, *ner),
        "lo": _member(tmp_path_factory.mktemp("lo"), tiny_bert, bundled_data, LORA),
    }


def _members(folders: dict[str, Path], **extra: Path) -> list[dict[str, str]]:
    return [{"name": name, "adapter": str(path)} for name, path in {**folders, **extra}.items()]


@dataclass
class Fused:
    """The fusion run, its initial trainable state and its loss on the training examples before and after."""

    run: Run
    initial: dict[str, torch.Tensor]
    loss_before: float
    loss_after: float
    copies: dict[str, Path]


def _loss(run: Run, examples: list[Any]) -> float:
    predictor = Predictor(run.model, load_adapter(run.result.adapter_dir).config)
    return predictor.evaluate_examples(examples)[0].headline["loss"]


@pytest.fixture(scope="module")
def fused(
    members: dict[str, Path], tiny_bert: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Fused:
    """A fusion of copies of the members, trained on intents; the copies are deleted once it is measured, so that
    every check below runs without the member folders."""
    copies = {name: tmp_path_factory.mktemp(f"copy_{name}") / "adapter" for name in members}
    for name, path in members.items():
        shutil.copytree(path, copies[name])
    method = {"name": "fusion", "members": json.dumps(_members(copies))}
    run = train_tiny(
        tmp_path_factory.mktemp("fusion"), tiny_bert, bundled_data, method,
        f"data.max_train_examples={EXAMPLES}", f"training.max_steps={STEPS}", f"training.learning_rate={LEARNING_RATE}",
    )  # fmt: skip
    examples = run.model.task.read(str(bundled_data / "intents" / "train.jsonl"), DataConfig(), split="train")
    initial = initial_state(run, tiny_bert)
    trained = {k: v.clone() for k, v in run.model.trainable_state().items()}
    after = _loss(run, examples[:EXAMPLES])
    run.model.load_trainable_state(initial)
    before = _loss(run, examples[:EXAMPLES])
    run.model.load_trainable_state(trained)
    for path in copies.values():
        shutil.rmtree(path)
    return Fused(run, initial, before, after, copies)


def test_the_loss_falls(fused: Fused) -> None:
    assert fused.loss_after < 0.9 * fused.loss_before, (fused.loss_before, fused.loss_after)


def test_only_the_fusion_and_the_head_train(fused: Fused, tiny_bert: Path) -> None:
    run = fused.run
    owned = assert_only_owned_changed(run, tiny_bert)
    assert len(owned) == 2 * len(OWNED) and all(name.endswith(OWNED) for name in owned)  # one point per block
    assert all(param.requires_grad for param in owned.values())
    after = run.model.trainable_state()
    for key, tensor in after.items():
        if key.startswith("head.") or key.removeprefix("adapter.") in owned:
            assert not torch.equal(tensor, fused.initial[key]), f"{key} did not train"
        else:
            assert torch.equal(tensor, fused.initial[key]), f"{key} is a member's, yet it changed"
    head = sum(p.numel() for p in run.model.head.parameters())
    assert run.result.trainable_params == sum(p.numel() for p in owned.values()) + head


def test_members_keep_their_trained_tensors(fused: Fused, members: dict[str, Path]) -> None:
    frozen = fused.run.model.method.frozen_parameters(fused.run.model.backbone)
    for name, folder in members.items():
        theirs = {k.removeprefix("adapter."): v for k, v in load_adapter(folder).tensors.items() if k[:8] == "adapter."}
        ours = {k.removeprefix(f"{name}."): p for k, p in frozen.items() if k.startswith(f"{name}.")}
        assert ours.keys() == theirs.keys() and len(ours) in (4, 8)  # lora: 2 blocks x (A, B); bottleneck: x 4
        for key, param in ours.items():
            assert torch.equal(param, theirs[key]) and not param.requires_grad, key
    assert any(torch.count_nonzero(p) for k, p in frozen.items() if k.endswith("lora_b.weight")), "a trained LoRA"


def test_the_file_is_self_contained(fused: Fused, members: dict[str, Path]) -> None:
    adapter = load_adapter(fused.run.result.adapter_dir)
    assert "adapter.bn.encoder.layer.0.output.dense.bottleneck.up.weight" in adapter.tensors
    assert "adapter.lo.encoder.layer.1.output.dense.lora.lora_b.weight" in adapter.tensors
    assert "adapter.encoder.layer.1.output.dense.fusion.value.weight" in adapter.tensors
    for member in adapter.config["method"]["members"]:
        name = member["name"]
        assert member["adapter"] is None and member["method"]["name"] in ("bottleneck", "lora")
        sha = load_adapter(members[name]).config["weights"]["sha256"]  # the copies had the same bytes
        assert member["source"] == {"path": str(fused.copies[name].resolve()), "sha256": sha}
    assert not any(path.exists() for path in fused.copies.values())
    assert_round_trip(fused.run)  # Predictor.load without the member folders: the same logits, bit for bit


def test_predict_and_the_multi_adapter_predictor_serve_it(
    fused: Fused, members: dict[str, Path], tiny_bert: Path, tmp_path: Path
) -> None:
    adapter_dir = fused.run.result.adapter_dir
    want = Predictor.load(adapter_dir).predict(TEXTS)
    assert [row["label"] for row in want] and all(row["label"] in fused.run.model.labels for row in want)
    result = CliRunner().invoke(app, ["predict", str(adapter_dir), "-"], input="\n".join(TEXTS) + "\n")
    assert result.exit_code == 0, result.output
    for line, expected in zip(result.output.strip().splitlines(), want, strict=True):
        assert_same(json.loads(line), expected)
    folder = tmp_path / "adapters"
    shutil.copytree(adapter_dir, folder / "fused")
    shutil.copytree(members["lo"], folder / "lo")
    multi = MultiPredictor(str(tiny_bert), folder)
    assert {a["name"]: a["batching"] for a in multi.describe()["adapters"]} == {"fused": "grouped", "lo": "per-row"}
    answers = multi.run(multi.prepare("fused", TEXTS) + multi.prepare("lo", TEXTS))
    for got, expected in zip(answers, want, strict=False):
        assert isinstance(got, dict)
        assert_same(got, expected)


def _points(model: nn.Module) -> dict[str, FusionPoint]:
    points = {name: module for name, module in model.named_modules() if isinstance(module, FusionPoint)}
    assert sorted(points) == [f"encoder.layer.{i}.output.dense.fusion" for i in (0, 1)]
    return points


def _reference_mean(base: Path, members: dict[str, Path]) -> torch.Tensor:
    """Hidden states with ``y + (delta_bn + delta_lo) / 2`` at each FFN output, from the members' raw tensors:
    ``delta_bn = W_up relu(W_down y + b_down) + b_up``, ``delta_lo = (alpha / r) B A x``."""
    bb = backbone(base)
    bn, lo = (load_adapter(members[name]).tensors for name in ("bn", "lo"))
    for i, layer in enumerate(bb.model.encoder.layer):
        at = f"adapter.encoder.layer.{i}.output.dense"

        def mean(_m: nn.Module, args: tuple[torch.Tensor, ...], y: torch.Tensor, at: str = at) -> torch.Tensor:
            down = torch.relu(y @ bn[f"{at}.bottleneck.down.weight"].T + bn[f"{at}.bottleneck.down.bias"])
            delta_bn = down @ bn[f"{at}.bottleneck.up.weight"].T + bn[f"{at}.bottleneck.up.bias"]
            delta_lo = 8 / 4 * args[0] @ lo[f"{at}.lora.lora_a.weight"].T @ lo[f"{at}.lora.lora_b.weight"].T
            return y + (delta_bn + delta_lo) / 2

        layer.output.dense.register_forward_hook(mean)
    bb.model.eval()
    return hidden(bb.model)


def test_uniform_attention_and_identity_values_give_the_members_mean(members: dict[str, Path], tiny_bert: Path) -> None:
    bb = backbone(tiny_bert)
    method = attach_full(bb, name="fusion", members=_members(members))
    assert isinstance(method, Fusion)
    bb.model.eval()
    points = _points(bb.model)
    seen: list[torch.Tensor] = []
    for name, point in points.items():  # at the init: attention near uniform
        host = bb.model.get_submodule(name.removesuffix(".fusion"))

        def probe(host: nn.Module, args: tuple[torch.Tensor, ...], y: torch.Tensor, point: FusionPoint = point) -> None:
            plain = nn.functional.linear(args[0], host.weight, host.bias)
            seen.append(point.attention(plain, point.deltas(args[0], plain, host)))

        handle = host.register_forward_hook(probe)
        hidden(bb.model)
        handle.remove()
    assert len(seen) == 2 and all((probs - 0.5).abs().max() < 0.1 for probs in seen), seen
    with torch.no_grad():
        for point in points.values():
            point.key.weight.zero_()  # every score 0: s_i = 1/N exactly
            point.value.weight.zero_()  # W_V = I
    torch.testing.assert_close(hidden(bb.model), _reference_mean(tiny_bert, members), atol=1e-5, rtol=0)
    method.detach(bb.model)
    assert not any("fusion" in name or "lora" in name or "bottleneck" in name for name, _ in bb.model.named_modules())


def test_layers_choose_the_fused_blocks(members: dict[str, Path], tiny_bert: Path) -> None:
    bb = backbone(tiny_bert)
    method = attach_full(bb, name="fusion", members=_members(members), layers=[-1])
    owned, frozen = method.owned_parameters(bb.model), method.frozen_parameters(bb.model)
    assert len(owned) == len(OWNED) and all(name.startswith("encoder.layer.1.") for name in owned)
    assert len(frozen) == 6 and all(".encoder.layer.1." in name for name in frozen)
    with pytest.raises(ConfigError, match=r"'method.layers' = \[2\]: the model has layers 0..1"):
        attach_full(backbone(tiny_bert), name="fusion", members=_members(members), layers=[2])


def test_member_paths_are_relative_to_the_yaml_file(members: dict[str, Path], tmp_path: Path) -> None:
    config = tmp_path / "configs" / "fusion.yaml"
    config.parent.mkdir()
    entries = [{"name": n, "adapter": os.path.relpath(p, config.parent)} for n, p in members.items()]
    assert all(e["adapter"].startswith("..") for e in entries)
    config.write_text(yaml.safe_dump({"method": {"name": "fusion", "members": entries}}), encoding="utf-8")
    loaded = load_config(config).method
    assert isinstance(loaded, FusionConfig)
    assert [m.adapter for m in loaded.members] == [str(p.resolve()) for p in members.values()]
    assert [m.method.name for m in loaded.members] == ["bottleneck", "lora"]  # read from the folders


def test_fusion_is_registered_and_not_mergeable() -> None:
    assert "fusion" in method_names() and "fusion" not in methods_with(Mergeable)


# -- refusals ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_base_member(other_tiny_bert: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _member(tmp_path_factory.mktemp("other"), other_tiny_bert, bundled_data, BOTTLENECK)


def test_a_member_of_another_base_is_refused(
    members: dict[str, Path], other_base_member: Path, tiny_bert: Path
) -> None:
    bb = backbone(tiny_bert)
    names = set(bb.model.state_dict())
    with pytest.raises(ConfigError, match="fusion member 'other': adapter .* was trained on base model .*not on th"):
        attach_full(bb, name="fusion", members=_members(members, other=other_base_member))
    assert set(bb.model.state_dict()) == names and not bb.model._forward_hooks  # the refused attach left nothing


def test_a_member_that_is_a_fusion_is_refused(fused: Fused, members: dict[str, Path]) -> None:
    nested = _members(members, nested=fused.run.result.adapter_dir)
    with pytest.raises(ConfigError, match="fusion member 'nested' is itself a fusion"):
        validate_config({"method": {"name": "fusion", "members": nested}})


def test_a_member_that_changes_the_inputs_is_refused(
    members: dict[str, Path], tiny_bert: Path, bundled_data: Path, tmp_path: Path
) -> None:
    prompt = _member(tmp_path, tiny_bert, bundled_data, {"name": "prompt", "num_virtual_tokens": 4})
    with pytest.raises(ConfigError, match="fusion member 'p' is a 'prompt' adapter, which changes the inputs"):
        validate_config({"method": {"name": "fusion", "members": _members(members, p=prompt)}})


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ({"method": {"name": "prefix", "num_virtual_tokens": 4}}, "'x' is a 'prefix' adapter, which changes the inp"),
        ({"method": {"name": "stack", "members": [{"name": "a", "method": "lora"}]}}, "'x' is itself a stack"),
        ({"method": {"name": "ia3"}}, "'x' is a 'ia3' adapter; a fusion weighs bottleneck and lora adapters only"),
        ({"adapter": None, "method": "lora"}, "fusion member 'x' has no 'adapter' folder"),
        ({"name": "bn"}, "member names must differ; repeated: \\['bn'\\]"),
        ({"adapter": "/nonexistent/adapter"}, "'method.members.adapter' = '/nonexistent/adapter'.*does not exist"),
    ],
    ids=["prefix", "stack", "ia3", "no-adapter", "same-name", "no-folder"],
)
def test_bad_members_are_refused_by_the_config(members: dict[str, Path], member: dict[str, Any], message: str) -> None:
    entry = {"name": "x", "adapter": str(members["bn"]), **member}
    with pytest.raises(ConfigError, match=message):
        validate_config({"method": {"name": "fusion", "members": [*_members(members), entry]}})


def test_one_member_is_refused(members: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="method.members.*at least 2"):
        validate_config({"method": {"name": "fusion", "members": _members({"bn": members["bn"]})}})


def test_members_that_share_no_module_are_refused(
    members: dict[str, Path], tiny_bert: Path, bundled_data: Path, tmp_path: Path
) -> None:
    qv = _member(tmp_path, tiny_bert, bundled_data, {"name": "lora", "r": 4})  # query and value: not the FFN output
    with pytest.raises(ConfigError, match="fusion members share no adapted module .*'qv' adapts"):
        attach_full(backbone(tiny_bert), name="fusion", members=_members({"bn": members["bn"]}, qv=qv))
