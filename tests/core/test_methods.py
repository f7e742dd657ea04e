"""Methods on a tiny BERT: what they attach, what they own, that they start as the identity and detach cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adaptune.backbone import load_backbone
from adaptune.config import ModelConfig, validate_config
from adaptune.errors import ConfigError
from adaptune.methods.base import AttachContext
from adaptune.methods.bottleneck import BottleneckAdapter
from adaptune.registry import build_method, method_names, task_names


def _ctx(backbone) -> AttachContext:  # type: ignore[no-untyped-def]
    return AttachContext(backbone.model_type, backbone.anatomy, backbone.hidden_size, backbone.num_layers)


def _method(**fields):  # type: ignore[no-untyped-def]
    return build_method(validate_config({"method": fields}).method)


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state


def test_registries_list_builtins() -> None:
    assert {"head", "bottleneck"} <= set(method_names())
    assert {"seq_cls", "token_cls"} <= set(task_names())


@pytest.mark.parametrize(("placement", "per_layer"), [("pfeiffer", 1), ("houlsby", 2)])
def test_bottleneck_placement_and_parameter_count(tiny_bert: Path, placement: str, per_layer: int) -> None:
    backbone = load_backbone(ModelConfig(name_or_path=str(tiny_bert)))
    before = _outputs(backbone.model)
    method = _method(name="bottleneck", placement=placement, reduction_factor=4)
    method.attach(backbone.model, _ctx(backbone))
    owned = method.owned_parameters(backbone.model)
    d, r = 32, 8  # hidden 32 / reduction 4
    assert sum(p.numel() for p in owned.values()) == per_layer * 2 * (d * r + r + r * d + d)
    assert all(".bottleneck." in name for name in owned)
    if placement == "houlsby":
        assert any("attention.output.dense.bottleneck" in n for n in owned)
    assert torch.equal(_outputs(backbone.model), before), "W_up = 0 at init: the adapter starts as the identity"
    method.detach(backbone.model)
    assert not any("bottleneck" in n for n, _ in backbone.model.named_parameters())


def test_bottleneck_changes_output_once_trained(tiny_bert: Path) -> None:
    backbone = load_backbone(ModelConfig(name_or_path=str(tiny_bert)))
    before = _outputs(backbone.model)
    method = _method(name="bottleneck")
    method.attach(backbone.model, _ctx(backbone))
    for module in backbone.model.modules():
        if isinstance(module, BottleneckAdapter):
            torch.nn.init.normal_(module.up.weight, std=0.1)
    assert not torch.allclose(_outputs(backbone.model), before)


def test_bottleneck_formula() -> None:
    adapter = BottleneckAdapter(6, 2, "relu")
    torch.nn.init.normal_(adapter.up.weight)
    h = torch.randn(3, 4, 6)
    delta = adapter.up(torch.relu(adapter.down(h)))
    assert torch.allclose(adapter(h), h + delta)
    adapter.residual = False
    assert torch.allclose(adapter(h), delta)


def test_bottleneck_selected_layers(tiny_bert: Path) -> None:
    backbone = load_backbone(ModelConfig(name_or_path=str(tiny_bert)))
    method = _method(name="bottleneck", layers=[-1])
    method.attach(backbone.model, _ctx(backbone))
    assert all(name.startswith("encoder.layer.1.") for name in method.owned_parameters(backbone.model))
    with pytest.raises(ConfigError, match="method.layers.*0..1"):
        _method(name="bottleneck", layers=[5]).attach(backbone.model, _ctx(backbone))


def test_unknown_architecture_needs_target_modules(tiny_bert: Path) -> None:
    backbone = load_backbone(ModelConfig(name_or_path=str(tiny_bert)))
    ctx = AttachContext("mystery", None, 32, 2)
    with pytest.raises(ConfigError, match="model type 'mystery'.*method.target_modules"):
        _method(name="bottleneck").attach(backbone.model, ctx)
    method = _method(name="bottleneck", target_modules=["output.dense"])
    method.attach(backbone.model, ctx)
    assert len({n.split(".bottleneck.")[0] for n in method.owned_parameters(backbone.model)}) == 4
    with pytest.raises(ConfigError, match="no module of the model matches"):
        _method(name="bottleneck", target_modules=["nope"]).attach(backbone.model, ctx)


def test_head_only_owns_nothing(tiny_bert: Path) -> None:
    backbone = load_backbone(ModelConfig(name_or_path=str(tiny_bert)))
    method = _method(name="head")
    method.attach(backbone.model, _ctx(backbone))
    assert method.owned_parameters(backbone.model) == {}


def test_pooling_is_read_from_sentence_transformers_config(tiny_bert: Path, tmp_path: Path) -> None:
    from adaptune.backbone import read_pooling

    assert read_pooling(str(tiny_bert), is_decoder=False) == "cls", "a plain BERT folder: CLS"
    assert read_pooling(str(tiny_bert), is_decoder=True) == "last"
    (tmp_path / "2_Pool").mkdir()
    (tmp_path / "modules.json").write_text('[{"path": "2_Pool", "type": "sentence_transformers.models.Pooling"}]')
    (tmp_path / "2_Pool" / "config.json").write_text('{"pooling_mode_max_tokens": true}')
    assert read_pooling(str(tmp_path), is_decoder=False) == "max"
