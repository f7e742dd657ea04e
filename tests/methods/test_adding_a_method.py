"""Adding a method touches only its own module: a small method defined here, in a test, trains through
``adaptune.train``, round-trips through its adapter file, is served by the multi-adapter predictor beside
built-in adapters, and appears in the method listings, without a line changed anywhere else.

The example, ``ffn_scale``, learns one scale per channel of every feed-forward output,
``h -> s * h`` with ``s: (d,)`` initialised to ones (an output-only relative of IA3, Liu et al. 2022). It declares
no capability beyond the base :class:`~adaptune.methods.base.Method`, so it is neither mergeable nor served per
row: the predictor runs its rows on the adapter's own model, grouped.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pytest
import torch
from pydantic import Field
from torch import nn

import adaptune.registry as registry
from adaptune.catalogue import list_methods
from adaptune.config import MethodConfig
from adaptune.inference import Predictor
from adaptune.inference.multi import MultiPredictor
from adaptune.methods.base import AttachContext, Mergeable, Method
from adaptune.registry import method_names, methods_with, register_method
from adaptune.targets import select_targets
from method_checks import TEXTS, assert_only_owned_changed, assert_round_trip, train_tiny
from serving_kit import INTENTS, assert_same, make_adapter
from test_architecture import registered


class FFNScaleConfig(MethodConfig):
    """Configuration of the example method."""

    name: Literal["ffn_scale"] = Field("ffn_scale", description="Scale each feed-forward output channel.")


class ChannelScale(nn.Module):
    """``h (..., d) -> s * h`` with a learned ``s: (d,)`` (ones at init: the base model)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * self.scale


class FFNScale(Method):
    """ffn_scale: a learned per-channel scale after every feed-forward output (the example of a new method)."""

    default_learning_rate = 3e-2

    def attach(self, model: nn.Module, ctx: AttachContext) -> None:
        for _name, host in select_targets(model, ctx.anatomy, ctx.model_type, roles=["ffn_out"]):
            self.inject_after(host, "ffn_scale", ChannelScale(host.out_features))


@pytest.fixture
def ffn_scale() -> Iterator[str]:
    """The example method, registered for one test and then removed (the registry is process-wide)."""
    register_method("ffn_scale", FFNScaleConfig)(FFNScale)
    try:
        yield "ffn_scale"
    finally:
        registry._METHODS.pop("ffn_scale")


def test_a_new_method_trains_saves_and_serves(
    ffn_scale: str, tiny_bert: Path, bundled_data: Path, tmp_path: Path
) -> None:
    run = train_tiny(
        tmp_path / "run", tiny_bert, bundled_data, {"name": ffn_scale}, "training.max_steps=10", "model.pooling=mean"
    )
    owned = assert_only_owned_changed(run, tiny_bert)
    assert owned and all(name.endswith(".ffn_scale.scale") for name in owned)
    assert any(not torch.equal(p, torch.ones_like(p)) for p in owned.values()), "the scales did not train"
    assert_round_trip(run)  # saved, loaded onto a fresh base: identical logits

    folder = tmp_path / "adapters"
    shutil.copytree(run.result.adapter_dir, folder / "scaled")
    make_adapter(folder / "lora", tiny_bert, {"name": "lora", "r": 4}, "seq_cls", INTENTS, seed=1)
    multi = MultiPredictor(str(tiny_bert), folder)
    batching = {a["name"]: a["batching"] for a in multi.describe()["adapters"]}
    assert batching == {"scaled": "grouped", "lora": "per-row"}
    rows = [row for name in ("scaled", "lora") for row in multi.prepare(name, TEXTS)]
    answers = multi.run(rows[::2] + rows[1::2])  # the two adapters' rows interleaved in one run
    by_row = dict(zip(list(range(len(rows)))[::2] + list(range(len(rows)))[1::2], answers, strict=True))
    for k, name in enumerate(("scaled", "lora")):
        want = Predictor.load(folder / name, base=str(tiny_bert)).predict(TEXTS)
        for j, expected in enumerate(want):
            assert_same(by_row[k * len(TEXTS) + j], expected)


def test_a_new_method_is_listed_with_what_it_declares(ffn_scale: str) -> None:
    info = {m.name: m for m in list_methods()}[ffn_scale]  # what `adaptune methods` prints
    assert info.trains.startswith("ffn_scale: a learned per-channel scale") and info.default_learning_rate == 3e-2
    assert ffn_scale in method_names() and ffn_scale not in methods_with(Mergeable)
    assert ffn_scale in registered()  # the edges check (tests/test_architecture.py) covers it from now on
