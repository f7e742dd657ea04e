"""LoRA, DoRA and rsLoRA on tiny BERT, GPT-2 (Conv1D, fused c_attn) and Llama: counts, formulas, merge, training."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from adaptune.config import validate_config
from adaptune.errors import ConfigError
from adaptune.methods.base import AttachContext
from adaptune.methods.linear import weight_out_in
from adaptune.methods.lora import LoRA, LoRAMethod
from adaptune.registry import method_registration
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
def lora_run(tiny_bert: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return train_tiny(tmp_path_factory.mktemp("lora"), tiny_bert, bundled_data, {"name": "lora", "r": 4})


@pytest.fixture(scope="module")
def dora_run(tiny_bert: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    method = {"name": "lora", "r": 4, "use_dora": "true", "roles": "[query, value, ffn_out]"}
    return train_tiny(tmp_path_factory.mktemp("dora"), tiny_bert, bundled_data, method)


def _expected(shapes: list[tuple[int, int]], r: int, dora: bool = False) -> int:
    """r (in + out) per adapted matrix, plus out magnitudes for DoRA."""
    return sum(r * (i + o) + (o if dora else 0) for i, o in shapes)


@pytest.mark.parametrize(
    ("fields", "per_layer"),
    [
        ({"r": 4}, [(32, 32), (32, 32)]),  # query, value
        ({"r": 2, "use_dora": True}, [(32, 32), (32, 32)]),
        ({"r": 4, "roles": ["attn_out", "ffn_in", "ffn_out"]}, [(32, 32), (32, 64), (64, 32)]),
        ({"r": 3, "target_modules": ["key"]}, [(32, 32)]),
    ],
)
def test_parameter_count_is_the_formula(tiny_bert: Path, fields: dict[str, object], per_layer: list) -> None:  # type: ignore[type-arg]
    bb = backbone(tiny_bert)
    method = attach(bb, name="lora", **fields)
    owned = method.owned_parameters(bb.model)
    expected = 2 * _expected(per_layer, int(fields["r"]), bool(fields.get("use_dora")))  # type: ignore[call-overload]
    assert sum(p.numel() for p in owned.values()) == expected
    assert all(".lora." in name for name in owned)


def test_defaults_and_learning_rate() -> None:
    registration = method_registration("lora")
    cfg = registration.config_cls.model_validate({"name": "lora"})
    assert (cfg.r, cfg.alpha, cfg.dropout, cfg.init) == (8, 16, 0.0, "kaiming")  # type: ignore[attr-defined]
    assert LoRAMethod.default_learning_rate == 2e-3  # swept (README 'Defaults, swept')
    assert all(f.description for f in registration.config_cls.model_fields.values())


def test_starts_as_the_identity_and_detaches(tiny_bert: Path) -> None:
    bb = backbone(tiny_bert)
    before = hidden(bb.model)
    base = {k: v.clone() for k, v in bb.model.state_dict().items()}
    method = attach(bb, name="lora", r=4, use_dora=True)
    assert all(torch.count_nonzero(p) == 0 for n, p in method.owned_parameters(bb.model).items() if "lora_b" in n)
    assert torch.allclose(hidden(bb.model), before, atol=1e-6), "B = 0 (and m = ||W0||): the base model"
    randomise(method.owned_parameters(bb.model))
    assert not torch.allclose(hidden(bb.model), before, atol=1e-3)
    method.detach(bb.model)
    assert torch.equal(hidden(bb.model), before)
    assert bb.model.state_dict().keys() == base.keys()


def test_rslora_and_plain_scaling() -> None:
    plain, rs = LoRA(6, 5, rank=4, alpha=8), LoRA(6, 5, rank=4, alpha=8, use_rslora=True)
    assert plain.scaling == 8 / 4 and rs.scaling == 8 / math.sqrt(4)
    torch.nn.init.normal_(rs.lora_b.weight)
    x = torch.randn(3, 6)
    expected = x @ (rs.lora_b.weight @ rs.lora_a.weight).T * (8 / 2)
    assert torch.allclose(rs(x), expected, atol=1e-5)
    assert torch.allclose(rs.delta_weight(), 4 * rs.lora_b.weight @ rs.lora_a.weight)


def test_dora_matches_the_formula() -> None:
    torch.manual_seed(0)
    host = torch.nn.Linear(6, 5)
    w0, b = host.weight.detach(), host.bias.detach()
    lora = LoRA(6, 5, rank=2, alpha=4, magnitude=torch.linalg.vector_norm(w0, dim=1))
    torch.nn.init.normal_(lora.lora_b.weight)
    with torch.no_grad():
        lora.magnitude.mul_(torch.rand(5) + 0.5)  # type: ignore[union-attr]
    x = torch.randn(3, 6)
    directed = w0 + 2 * lora.lora_b.weight @ lora.lora_a.weight  # s = alpha / r = 2
    w_dora = lora.magnitude.unsqueeze(1) * directed / directed.norm(dim=1, keepdim=True)  # type: ignore[union-attr]
    assert torch.allclose(lora.adapt(x, host(x), w0, b), x @ w_dora.T + b, atol=1e-5)


@pytest.mark.parametrize(
    ("model_name", "fields"),
    [
        ("tiny_bert", {"r": 4}),
        ("tiny_bert", {"r": 4, "use_dora": True, "use_rslora": True}),
        ("tiny_gpt2", {"r": 4, "use_dora": True}),
        ("tiny_llama", {"r": 2, "roles": ["query", "key", "value", "attn_out", "ffn_gate", "ffn_in", "ffn_out"]}),
    ],
)
def test_merge_agrees_and_unmerge_restores(
    model_name: str, fields: dict[str, object], request: pytest.FixtureRequest
) -> None:
    bb = backbone(request.getfixturevalue(model_name))
    base = {k: v.clone() for k, v in bb.model.state_dict().items()}
    method = attach(bb, name="lora", **fields)
    assert isinstance(method, LoRAMethod)
    randomise(method.owned_parameters(bb.model), std=0.2)
    unmerged = hidden(bb.model)
    method.merge(bb.model)
    method.merge(bb.model)  # a second call changes nothing
    assert torch.allclose(hidden(bb.model), unmerged, atol=1e-5)
    assert any(not torch.equal(bb.model.state_dict()[k], base[k]) for k in base), "the delta is in the weights"
    method.unmerge(bb.model)
    assert torch.allclose(hidden(bb.model), unmerged, atol=1e-5)
    state = bb.model.state_dict()
    assert all(torch.allclose(state[k], v, atol=1e-6) for k, v in base.items())


def test_gpt2_fused_attention_and_conv1d(tiny_gpt2: Path) -> None:
    bb = backbone(tiny_gpt2)
    method = attach(bb, name="lora", r=4)
    owned = method.owned_parameters(bb.model)
    assert sorted(owned) == [f"h.{i}.attn.c_attn.lora.lora_{ab}.weight" for i in (0, 1) for ab in "ab"]
    assert owned["h.0.attn.c_attn.lora.lora_a.weight"].shape == (4, 32)
    assert owned["h.0.attn.c_attn.lora.lora_b.weight"].shape == (96, 4)
    assert weight_out_in(bb.model.h[0].attn.c_attn).shape == (96, 32)


def test_llama_roles_with_grouped_query_attention(tiny_llama: Path) -> None:
    bb = backbone(tiny_llama)
    method = attach(bb, name="lora", r=2, roles=["key", "value", "ffn_gate"], layers=[-1])
    owned = method.owned_parameters(bb.model)
    hosts = sorted({name.split(".lora.")[0] for name in owned})
    assert hosts == ["layers.1.mlp.gate_proj", "layers.1.self_attn.k_proj", "layers.1.self_attn.v_proj"]
    assert owned["layers.1.self_attn.k_proj.lora.lora_b.weight"].shape == (16, 2), "1 key/value head of 16"


def test_config_errors(tiny_bert: Path) -> None:
    bb = backbone(tiny_bert)
    with pytest.raises(ConfigError, match="exclude each other"):
        attach(bb, name="lora", roles=["query"], target_modules=["key"])
    with pytest.raises(ConfigError, match="method.roles"):
        attach(bb, name="lora", roles=["attention"])
    with pytest.raises(ConfigError, match="not a linear layer"):
        attach(bb, name="lora", target_modules=["attention.output"])
    mystery = AttachContext("mystery", None, 32, 2)
    with pytest.raises(ConfigError, match="model type 'mystery'.*method.target_modules"):
        LoRAMethod(validate_config({"method": {"name": "lora"}}).method).attach(bb.model, mystery)  # type: ignore[arg-type]


def test_unknown_architecture_with_target_modules(tiny_bert: Path) -> None:
    bb = backbone(tiny_bert)
    method = LoRAMethod(validate_config({"method": {"name": "lora", "target_modules": ["query"]}}).method)  # type: ignore[arg-type]
    method.attach(bb.model, AttachContext("mystery", None, 32, 2))
    assert len(method.owned_parameters(bb.model)) == 4


@pytest.mark.parametrize("run_name", ["lora_run", "dora_run"])
def test_training_changes_only_lora_and_round_trips(
    run_name: str, tiny_bert: Path, request: pytest.FixtureRequest
) -> None:
    run: Run = request.getfixturevalue(run_name)
    owned = assert_only_owned_changed(run, tiny_bert)
    assert all(torch.count_nonzero(p) > 0 for n, p in owned.items() if "lora_b" in n), "B moved off zero"
    assert_round_trip(run)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize(
    ("model_name", "ours", "theirs"),
    [
        ("tiny_bert", {"r": 4, "alpha": 8}, {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]}),
        (
            "tiny_bert",
            {"r": 2, "use_dora": True, "roles": ["key", "ffn_in"]},
            {"r": 2, "lora_alpha": 16, "use_dora": True, "target_modules": ["key", "intermediate.dense"]},
        ),
        (
            "tiny_gpt2",
            {"r": 4, "use_dora": True, "use_rslora": True},
            {
                "r": 4,
                "lora_alpha": 16,
                "use_dora": True,
                "use_rslora": True,
                "target_modules": ["c_attn"],
                "fan_in_fan_out": True,
            },
        ),
        (
            "tiny_llama",
            {"r": 4, "roles": ["query", "value", "ffn_out"]},
            {"r": 4, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj", "down_proj"]},
        ),
    ],
)
def test_same_parameters_and_outputs_as_peft(
    model_name: str, ours: dict[str, object], theirs: dict[str, object], request: pytest.FixtureRequest
) -> None:
    peft = pytest.importorskip("peft")
    folder = request.getfixturevalue(model_name)
    reference = peft_model(folder, peft.LoraConfig(**theirs))
    bb = backbone(folder)
    owned = attach(bb, name="lora", **ours).owned_parameters(bb.model)
    assert sum(p.numel() for p in owned.values()) == reference.get_nb_trainable_parameters()[0]
    randomise(owned)
    copy_into_peft(owned, reference)
    assert torch.allclose(hidden(bb.model), hidden(reference), atol=1e-5)
