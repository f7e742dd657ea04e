"""Per-row adapter layers: a mixed batch through the shared base equals each adapter run alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from adaptune.backbone import Backbone, load_backbone
from adaptune.config import ModelConfig, validate_config
from adaptune.inference import build_model
from adaptune.methods.base import PerRowPart
from adaptune.methods.lora import LoRA, lora_weights
from adaptune.model import AdaptedModel
from adaptune.padding_free import packed_forward, packing_of
from adaptune.per_row import MultiAdapterLayers

IDS = torch.tensor(
    [
        [101, 2023, 2003, 1037, 3231, 102, 0, 0],
        [101, 7592, 2088, 2003, 2307, 2428, 1012, 102],
        [101, 2054, 2003, 2026, 2344, 102, 0, 0],
        [101, 3531, 102, 0, 0, 0, 0, 0],
        [101, 2061, 2172, 2005, 1996, 3185, 999, 102],
    ]
)
MASK = (IDS != 0).long()
METHODS: list[dict[str, Any]] = [
    {"name": "lora", "r": 4, "roles": ["query", "value"]},
    {"name": "lora", "r": 2, "alpha": 3.0, "use_rslora": True, "roles": ["key", "ffn_in", "ffn_out"]},
    {"name": "bottleneck", "reduction_factor": 4},
    {"name": "bottleneck", "placement": "houlsby", "reduction_factor": 8, "activation": "gelu", "residual": False},
    {"name": "lora", "r": 8, "layers": [1]},
]


def backbone(path: Path) -> Backbone:
    return load_backbone(ModelConfig(name_or_path=str(path), pooling="mean"))


def adapted(path: Path, method: dict[str, Any], seed: int) -> AdaptedModel:
    """An adapter of ``method`` on its own copy of the base, every adapter tensor moved off its init."""
    run = validate_config({"method": method, "task": {"name": "seq_cls"}})
    model = build_model(backbone(path), run.method, run.task, ["a", "b"]).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.adapter_parameters().values():
            param.add_(torch.randn(param.shape, generator=gen) * 0.3)
    return model


def harvest(model: AdaptedModel) -> list[PerRowPart]:
    """The modules the adapter's method serves per row (:class:`~adaptune.methods.base.PerRowBatched`)."""
    parts = model.method.per_row_parts(model.backbone)  # type: ignore[attr-defined]
    assert parts is not None
    return parts  # type: ignore[no-any-return]


def hidden(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def adapters(tiny_bert: Path) -> list[AdaptedModel]:
    return [adapted(tiny_bert, method, seed) for seed, method in enumerate(METHODS)]


@pytest.fixture
def shared(tiny_bert: Path, adapters: list[AdaptedModel]) -> tuple[torch.nn.Module, MultiAdapterLayers]:
    """A fresh base with every adapter registered under index 1..n."""
    base = backbone(tiny_bert).model
    layers = MultiAdapterLayers(base)
    for index, model in enumerate(adapters, start=1):
        layers.add(index, harvest(model))
    return base, layers


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "padding-free"])
@pytest.mark.parametrize("rows", [[1, 2, 3, 4, 5], [3, 1, 0, 5, 3], [4, 4, 4, 4, 4], [0, 2, 0, 2, 1]])
def test_mixed_batch_equals_each_adapter_alone(
    shared: tuple[torch.nn.Module, MultiAdapterLayers], adapters: list[AdaptedModel], rows: list[int], packed: bool
) -> None:
    base, layers = shared
    if packed:  # the real tokens as one row: every adapter's rows become token ranges
        packing = packing_of(MASK)
        with layers.select(torch.tensor(rows), packing), torch.no_grad():
            mixed = packed_forward(base, {"input_ids": IDS, "attention_mask": MASK}, packing)
    else:
        with layers.select(torch.tensor(rows)):
            mixed = hidden(base, IDS, MASK)
    plain = hidden(base, IDS, MASK)  # outside select: the base model, untouched
    for row, index in enumerate(rows):
        alone = hidden(adapters[index - 1].backbone, IDS, MASK) if index else plain
        valid = MASK[row].bool()
        torch.testing.assert_close(mixed[row][valid], alone[row][valid], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mixed[0][MASK[0].bool()], plain[0][MASK[0].bool()], atol=1e-3) or rows[0] == 0


def test_removed_adapter_falls_back_to_base_and_others_stay(
    shared: tuple[torch.nn.Module, MultiAdapterLayers], adapters: list[AdaptedModel]
) -> None:
    base, layers = shared
    plain = hidden(base, IDS, MASK)
    layers.remove(2)
    with layers.select(torch.tensor([2, 1, 3, 2, 5])):
        mixed = hidden(base, IDS, MASK)
    torch.testing.assert_close(mixed[0], plain[0], atol=1e-6, rtol=1e-6)  # index 2 is gone: base rows
    torch.testing.assert_close(mixed[1], hidden(adapters[0].backbone, IDS, MASK)[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed[2], hidden(adapters[2].backbone, IDS, MASK)[2], atol=1e-5, rtol=1e-5)
    layers.close()
    torch.testing.assert_close(hidden(base, IDS, MASK), plain)


def test_select_clears_state_even_on_error(shared: tuple[torch.nn.Module, MultiAdapterLayers]) -> None:
    base, layers = shared
    plain = hidden(base, IDS, MASK)
    with pytest.raises(RuntimeError), layers.select(torch.tensor([1, 2, 3, 4, 5])):
        raise RuntimeError("boom")
    torch.testing.assert_close(hidden(base, IDS, MASK), plain)
    assert all(layer.slots.local is None and not layer.active for layer in layers.kernels())


def test_dora_has_no_per_row_form(tiny_bert: Path) -> None:
    model = adapted(tiny_bert, {"name": "lora", "r": 2, "use_dora": True}, seed=0)
    assert model.method.per_row_parts(model.backbone) is None  # type: ignore[attr-defined]
    lora = next(m for m in model.backbone.modules() if isinstance(m, LoRA))
    with pytest.raises(ValueError, match="DoRA"):
        lora_weights(lora)
