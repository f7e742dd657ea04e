"""Checks shared by the method tests: attach on a tiny model, train a few steps through ``adaptune.train`` while
keeping the in-memory model (``TrainResult.model``), and compare with peft's implementation of the same config."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from adaptune import Predictor, load_config, train
from adaptune.api import TrainResult
from adaptune.backbone import Backbone, load_backbone
from adaptune.config import ModelConfig, validate_config
from adaptune.io import load_adapter
from adaptune.methods.base import AttachContext, Method
from adaptune.model import AdaptedModel
from adaptune.registry import build_method

HAS_PEFT = importlib.util.find_spec("peft") is not None
TEXTS = ["where is my order A1024-77?", "我想退款", "cancel it please", "hello there"]


def backbone(path: Path) -> Backbone:
    return load_backbone(ModelConfig(name_or_path=str(path), pooling="mean"))


def attach(bb: Backbone, **fields: Any) -> Method:
    """Build the method ``fields`` describe and attach it to ``bb``'s model."""
    method = build_method(validate_config({"method": fields}).method)
    method.attach(bb.model, AttachContext(bb.model_type, bb.anatomy, bb.hidden_size, bb.num_layers))
    return method


def hidden(model: nn.Module) -> torch.Tensor:
    """Last hidden states of a fixed 2 x 6 batch."""
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 7592, 2088, 2003, 2307, 102]])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state  # type: ignore[no-any-return]


def randomise(params: dict[str, nn.Parameter], std: float = 0.1, seed: int = 0) -> None:
    """Move every owned parameter away from its init, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in params.values():
            param.add_(torch.randn(param.shape, generator=gen) * std)


@dataclass
class Run:
    """A finished tiny training run and the model object it trained (``TrainResult.model``)."""

    result: TrainResult
    model: AdaptedModel


def train_tiny(tmp: Path, model_dir: Path, data: Path, method: dict[str, Any], *extra: str) -> Run:
    """``adaptune.train`` on 32 intents for 3 steps, keeping the trained :class:`AdaptedModel`."""
    overrides = [f"method.{key}={value}" for key, value in method.items()]
    cfg = load_config(
        None,
        [
            f"model.name_or_path={model_dir}",
            "model.pooling=mean",
            *overrides,
            f"data.train={data / 'intents' / 'train.jsonl'}",
            "data.max_train_examples=32",
            "data.batch_size=16",
            "data.max_length=32",
            "training.max_steps=3",
            "training.progress=false",
            f"training.output_dir={tmp}",
            *extra,
        ],
    )
    result = train(cfg)
    return Run(result, result.model)


def assert_only_owned_changed(run: Run, base_dir: Path) -> dict[str, nn.Parameter]:
    """Every backbone tensor that is not the method's equals the base; every tensor the method added is one the
    adapter file stores. Returns the owned (trained) parameters. Tensors are matched by identity, so a method's
    names need not be backbone names (a stack prefixes them with the member name); a stack's frozen members
    count as the method's here (they may hold loaded values)."""
    base = backbone(base_dir).model.state_dict()
    owned = run.model.adapter_parameters()
    stored = {id(p) for p in run.model.stored_parameters().values()}
    params = dict(run.model.backbone.named_parameters(remove_duplicate=False))
    state = run.model.backbone.state_dict()
    for name, tensor in base.items():
        if id(params.get(name)) not in stored:
            assert torch.equal(state[name], tensor), f"{name} is not the method's, yet it changed"
    added = {id(params[name]) for name in set(state) - set(base)}
    assert added <= stored, "every added tensor is stored in the adapter file"
    return owned


def assert_round_trip(run: Run, inputs: Sequence[Any] = TEXTS) -> None:
    """Saved then loaded onto a fresh base: exactly the trained model's logits on ``inputs``; the file holds the
    method's tensors (the trained ones and any frozen ones it keeps, as a stack does)."""
    adapter = load_adapter(run.result.adapter_dir)
    saved = {k[len("adapter.") :] for k in adapter.tensors if k.startswith("adapter.")}
    assert saved == set(run.model.stored_parameters())
    trained = Predictor(run.model, adapter.config).logits(inputs)
    loaded = Predictor.load(run.result.adapter_dir).logits(inputs)
    assert all(torch.equal(a, b) for a, b in zip(trained, loaded, strict=True))


def trainable_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def peft_model(base_dir: Path, peft_config: Any) -> nn.Module:
    """peft's model for ``peft_config`` on a fresh copy of the base (skips when peft is not installed)."""
    if not HAS_PEFT:
        pytest.skip("peft is not installed (test extra)")
    from peft import get_peft_model

    return get_peft_model(backbone(base_dir).model, peft_config).eval()  # type: ignore[no-any-return]


#: our parameter name suffix -> peft's (adapter name "default")
_PEFT_NAMES = {
    ".lora.lora_a.weight": ".lora_A.default.weight",
    ".lora.lora_b.weight": ".lora_B.default.weight",
    ".lora.magnitude": ".lora_magnitude_vector.default.weight",
    ".ia3_in.scale": ".ia3_l.default",
    ".ia3.scale": ".ia3_l.default",
}


def copy_into_peft(owned: dict[str, nn.Parameter], peft: nn.Module) -> None:
    """Give peft's adapter our values, tensor by tensor (peft stores IA3 vectors as (d, 1) or (1, d))."""
    theirs = {name: p for name, p in peft.named_parameters() if p.requires_grad}
    assert len(theirs) == len(owned)
    with torch.no_grad():
        for name, param in owned.items():
            for ours_suffix, peft_suffix in _PEFT_NAMES.items():
                if name.endswith(ours_suffix):
                    key = "base_model.model." + name[: -len(ours_suffix)] + peft_suffix
                    theirs[key].copy_(param.view_as(theirs[key]))
                    break
            else:
                raise AssertionError(f"no peft name for {name}")
