"""IA3 on tiny BERT, GPT-2 and Llama: counts, where the scaling applies, merge, training, peft parity."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from adaptune.config import validate_config
from adaptune.errors import ConfigError
from adaptune.methods.base import AttachContext
from adaptune.methods.ia3 import IA3
from method_checks import (
    Run,
    assert_only_owned_changed,
    assert_round_trip,
    attach,
    backbone,
    copy_into_peft,
    hidden,
    peft_model,
    randomise,
    train_tiny,
)


@pytest.fixture(scope="module")
def ia3_run(tiny_bert: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return train_tiny(tmp_path_factory.mktemp("ia3"), tiny_bert, bundled_data, {"name": "ia3"})


def _ia3(**fields: object) -> IA3:
    method = validate_config({"method": {"name": "ia3", **fields}}).method
    return IA3(method)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model_name", "expected"),
    [
        ("tiny_bert", 2 * (32 + 32 + 64)),  # keys, values, FFN activations (intermediate 64)
        ("tiny_gpt2", 2 * (96 + 128)),  # the fused q|k|v output, FFN activations (4 x 32)
        ("tiny_llama", 2 * (16 + 16 + 64)),  # one key/value head of 16
    ],
)
def test_parameter_count_and_identity_at_init(model_name: str, expected: int, request: pytest.FixtureRequest) -> None:
    bb = backbone(request.getfixturevalue(model_name))
    before = hidden(bb.model)
    method = attach(bb, name="ia3")
    owned = method.owned_parameters(bb.model)
    assert sum(p.numel() for p in owned.values()) == expected
    assert all(torch.equal(p, torch.ones_like(p)) for p in owned.values())
    assert torch.equal(hidden(bb.model), before), "ones: the base model"
    randomise(owned)
    assert not torch.allclose(hidden(bb.model), before, atol=1e-4)
    method.detach(bb.model)
    assert torch.equal(hidden(bb.model), before)


def test_bert_targets_follow_the_paper(tiny_bert: Path) -> None:
    bb = backbone(tiny_bert)
    owned = attach(bb, name="ia3", layers=[0]).owned_parameters(bb.model)
    assert sorted(owned) == [
        "encoder.layer.0.attention.self.key.ia3.scale",
        "encoder.layer.0.attention.self.value.ia3.scale",
        "encoder.layer.0.output.dense.ia3_in.scale",
    ]


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(4, 6), nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))  # type: ignore[no-any-return]


def test_output_and_input_scaling_formulas() -> None:
    torch.manual_seed(0)
    toy, x = _Toy(), torch.randn(3, 4)
    method = _ia3(target_modules=["up", "down"], feedforward_modules=["down"])
    method.attach(toy, AttachContext("toy", None, 4, 1))
    owned = method.owned_parameters(toy)
    assert set(owned) == {"up.ia3.scale", "down.ia3_in.scale"}
    randomise(owned, std=0.5)
    l_up, l_down = owned["up.ia3.scale"].detach(), owned["down.ia3_in.scale"].detach()
    up = l_up * (x @ toy.up.weight.T + toy.up.bias)  # output scaling, bias included
    expected = (l_down * torch.relu(up)) @ toy.down.weight.T + toy.down.bias  # input scaling
    assert torch.allclose(toy(x), expected, atol=1e-6)


@pytest.mark.parametrize("model_name", ["tiny_bert", "tiny_gpt2", "tiny_llama"])
def test_merge_agrees_and_unmerge_restores(model_name: str, request: pytest.FixtureRequest) -> None:
    bb = backbone(request.getfixturevalue(model_name))
    base = {k: v.clone() for k, v in bb.model.state_dict().items()}
    method = attach(bb, name="ia3")
    assert isinstance(method, IA3)
    randomise(method.owned_parameters(bb.model), std=0.3)
    unmerged = hidden(bb.model)
    method.merge(bb.model)
    method.merge(bb.model)
    assert torch.allclose(hidden(bb.model), unmerged, atol=1e-5)
    method.unmerge(bb.model)
    assert torch.allclose(hidden(bb.model), unmerged, atol=1e-5)
    state = bb.model.state_dict()
    assert all(torch.allclose(state[k], v, atol=1e-6) for k, v in base.items())


def test_config_errors(tiny_bert: Path) -> None:
    bb = backbone(tiny_bert)
    with pytest.raises(ConfigError, match="feedforward_modules' needs 'method.target_modules"):
        _ia3(feedforward_modules=["output.dense"])
    with pytest.raises(ConfigError, match="outside method.target_modules"):
        _ia3(target_modules=["key"], feedforward_modules=["value"]).attach(
            bb.model, AttachContext(bb.model_type, bb.anatomy, 32, 2)
        )
    with pytest.raises(ConfigError, match="model type 'mystery'"):
        _ia3().attach(bb.model, AttachContext("mystery", None, 32, 2))


def test_training_changes_only_ia3_and_round_trips(ia3_run: Run, tiny_bert: Path) -> None:
    owned = assert_only_owned_changed(ia3_run, tiny_bert)
    assert all(not torch.equal(p, torch.ones_like(p)) for p in owned.values()), "every vector trained"
    assert_round_trip(ia3_run)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize(
    ("model_name", "targets", "feedforward", "fan_in_fan_out"),
    [
        # peft's BERT default also matches attention.output.dense; name the paper's modules explicitly
        ("tiny_bert", r".*\.(key|value)|.*layer\.\d+\.output\.dense", r".*layer\.\d+\.output\.dense", False),
        ("tiny_gpt2", ["c_attn", "mlp.c_proj"], ["mlp.c_proj"], True),
        ("tiny_llama", ["k_proj", "v_proj", "down_proj"], ["down_proj"], False),
    ],
)
def test_same_parameters_and_outputs_as_peft(
    model_name: str, targets: object, feedforward: object, fan_in_fan_out: bool, request: pytest.FixtureRequest
) -> None:
    peft = pytest.importorskip("peft")
    folder = request.getfixturevalue(model_name)
    config = peft.IA3Config(target_modules=targets, feedforward_modules=feedforward, fan_in_fan_out=fan_in_fan_out)
    reference = peft_model(folder, config)
    bb = backbone(folder)
    owned = attach(bb, name="ia3").owned_parameters(bb.model)
    assert sum(p.numel() for p in owned.values()) == reference.get_nb_trainable_parameters()[0]
    randomise(owned)
    copy_into_peft(owned, reference)
    assert torch.allclose(hidden(bb.model), hidden(reference), atol=1e-5)
