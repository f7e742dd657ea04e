"""The speed switches change how the frozen base runs, never the result: same loss and gradients as the plain
path (tiny random BERT, dropout off so that both paths draw the same numbers), adapter weights stay fp32."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from adaptune.backbone import load_backbone
from adaptune.config import TrainingConfig, validate_config
from adaptune.errors import ConfigError
from adaptune.model import AdaptedModel
from adaptune.padding_free import worth_packing
from adaptune.registry import build_method, build_task
from adaptune.tasks.base import Encoded
from adaptune.training.fast import FastPath, cast_frozen_to_bf16, frozen_depth

TEXTS = ["where is my parcel?", "I want a refund now", "the app crashes on login", "thanks, that helped", "hi"]


def build(tiny_bert: Path, method: dict[str, Any]) -> AdaptedModel:
    """A tiny BERT with ``method`` attached, a two-label head, every dropout off."""
    cfg = validate_config(
        {
            "model": {"name_or_path": str(tiny_bert), "pooling": "mean"},
            "method": method,
            "task": {"name": "seq_cls", "head_dropout": 0.0},
        }
    )
    torch.manual_seed(0)
    model = AdaptedModel(load_backbone(cfg.model), build_method(cfg.method), build_task(cfg.task), ["a", "b"])
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    with torch.no_grad():  # a non-zero update, so that gradients reach every adapter tensor
        for param in model.adapter_parameters().values():
            param.add_(0.05 * torch.randn_like(param))
    model.mark_trainable()
    return model.train()


def batch_of(model: AdaptedModel) -> tuple[dict[str, torch.Tensor], list[int]]:
    tokenizer = model.info.tokenizer
    encoded = [Encoded(list(tokenizer(t)["input_ids"]), target=i % 2) for i, t in enumerate(TEXTS)]
    return model.task.collate(encoded, int(tokenizer.pad_token_id)), list(range(len(TEXTS)))


def loss_and_grads(model: AdaptedModel, fast: FastPath) -> tuple[float, dict[str, torch.Tensor]]:
    batch, indices = batch_of(model)
    fast.train_mode()
    model.zero_grad(set_to_none=True)
    loss = model.task.loss(fast.forward(batch, indices), batch)
    loss.backward()
    named = {**model.adapter_parameters(), **{f"head.{k}": v for k, v in model.head.named_parameters()}}
    return float(loss.detach()), {k: p.grad.clone() for k, p in named.items() if p.grad is not None}


@pytest.mark.parametrize(
    ("method", "depth"),
    [
        ({"name": "head"}, 2),
        ({"name": "lora", "layers": [-1]}, 1),
        ({"name": "bottleneck", "layers": [1]}, 1),
        ({"name": "lora"}, 0),
        ({"name": "bitfit"}, 0),
        ({"name": "prefix", "num_virtual_tokens": 2}, 0),
    ],
)
def test_frozen_depth_counts_bottom_blocks_without_trained_tensors(
    tiny_bert: Path, method: dict[str, Any], depth: int
) -> None:
    assert frozen_depth(build(tiny_bert, method)) == depth


@pytest.mark.parametrize("method", [{"name": "head"}, {"name": "lora", "layers": [-1]}, {"name": "bottleneck"}])
def test_no_grad_prefix_gives_the_plain_loss_and_gradients(
    tiny_bert: Path, tmp_path: Path, method: dict[str, Any]
) -> None:
    model = build(tiny_bert, method)
    lengths = [8] * len(TEXTS)
    plain = loss_and_grads(model, FastPath(model, TrainingConfig(), lengths, tmp_path, "right"))
    fast = FastPath(model, TrainingConfig(frozen_prefix_no_grad=True), lengths, tmp_path, "right")
    grad_modes: list[bool] = []
    hook = model.backbone.embeddings.register_forward_hook(lambda *_: grad_modes.append(torch.is_grad_enabled()))
    quick = loss_and_grads(model, fast)
    hook.remove()
    assert grad_modes == [frozen_depth(model) == 0], "the embeddings run without autograd below a frozen block"
    assert quick[0] == pytest.approx(plain[0], abs=1e-6)
    assert quick[1].keys() == plain[1].keys() and plain[1]
    for name, grad in plain[1].items():
        torch.testing.assert_close(quick[1][name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_frozen_prefix_runs_in_eval_mode_and_the_trained_blocks_in_train_mode(tiny_bert: Path, tmp_path: Path) -> None:
    model = build(tiny_bert, {"name": "lora", "layers": [-1]})
    FastPath(model, TrainingConfig(frozen_prefix_no_grad=True), [4], tmp_path, "right").train_mode()
    blocks = model.backbone.encoder.layer
    assert not model.backbone.embeddings.training and not blocks[0].training
    assert blocks[1].training and model.head.training


def test_bf16_base_keeps_adapter_and_head_fp32_and_the_loss_close(tiny_bert: Path, tmp_path: Path) -> None:
    model = build(tiny_bert, {"name": "lora"})
    batch, indices = batch_of(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = float(model.task.loss(model(batch), batch).detach())
    fast = FastPath(model, TrainingConfig(bf16=True, bf16_base=True), [8] * len(TEXTS), tmp_path, "right")
    trained = {id(p) for p in model.trainable()}
    frozen = [p for p in model.backbone.parameters() if id(p) not in trained]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert all(p.dtype == torch.float32 for p in model.trainable())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.task.loss(fast.forward(batch, indices), batch)
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.adapter_parameters().values())
    assert float(loss) == pytest.approx(reference, abs=0.05)
    assert cast_frozen_to_bf16(model) == 0, "nothing left to cast"


def test_bf16_autocast_alone_keeps_every_weight_fp32(tiny_bert: Path) -> None:
    model = build(tiny_bert, {"name": "bottleneck"})
    batch, _ = batch_of(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(batch)
    model.task.loss(logits, batch).backward()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.grad.dtype == torch.float32 for p in model.trainable() if p.grad is not None)


def test_switch_validation(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bf16_base"):
        validate_config({"training": {"bf16_base": True}})
    model = build(tiny_bert, {"name": "lora"})
    with pytest.raises(ConfigError, match="activation_cache"):
        FastPath(model, TrainingConfig(activation_cache="memory"), [4], tmp_path, "right")


def test_compiled_backbone_gives_the_eager_loss_and_gradients(tiny_bert: Path, tmp_path: Path) -> None:
    model = build(tiny_bert, {"name": "lora"})
    lengths = [8] * len(TEXTS)
    eager = loss_and_grads(model, FastPath(model, TrainingConfig(), lengths, tmp_path, "right"))
    compiled = loss_and_grads(model, FastPath(model, TrainingConfig(compile=True), lengths, tmp_path, "right"))
    assert compiled[0] == pytest.approx(eager[0], abs=1e-5)
    for name, grad in eager[1].items():
        torch.testing.assert_close(compiled[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)
    assert set(model.trainable_state()) == {f"adapter.{k}" for k in model.stored_parameters()} | {
        f"head.{k}" for k in model.head.state_dict()
    }, "parameter names unchanged"
    with pytest.raises(ConfigError, match="compile"):
        validate_config({"training": {"compile": True, "activation_cache": "memory"}})


@pytest.mark.parametrize(
    "method",
    [{"name": "lora"}, {"name": "bottleneck"}, {"name": "ia3"}, {"name": "bitfit"}, {"name": "lora", "layers": [-1]}],
)
@pytest.mark.parametrize("task", ["seq_cls", "token_cls"])
def test_padding_free_gives_the_padded_loss_and_gradients(
    tiny_bert: Path, tmp_path: Path, method: dict[str, Any], task: str
) -> None:
    model = build(tiny_bert, method)
    if task == "token_cls":  # token logits at the real tokens: padding-free must put every token back in place
        model.task = build_task(validate_config({"task": {"name": task, "head_dropout": 0.0}}).task)
        model.head = model.task.build_head(model.info.hidden_size, 3, model.info.pooling)
        model.mark_trainable()
    tokenizer = model.info.tokenizer
    encoded = []
    for i, text in enumerate(TEXTS):
        ids = list(tokenizer(text)["input_ids"])
        encoded.append(Encoded(ids, target=i % 2 if task == "seq_cls" else [(i + k) % 3 for k in range(len(ids))]))
    batch = model.task.collate(encoded, int(tokenizer.pad_token_id))
    assert worth_packing(batch["attention_mask"]), "the batch carries enough padding to be packed"

    def run(fast: FastPath) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = model.task.loss(fast.forward(batch, list(range(len(TEXTS)))), batch)
        loss.backward()
        named = {**model.adapter_parameters(), **{f"head.{k}": v for k, v in model.head.named_parameters()}}
        return float(loss.detach()), {k: p.grad.clone() for k, p in named.items() if p.grad is not None}

    lengths = [len(e.input_ids) for e in encoded]
    padded = run(FastPath(model, TrainingConfig(), lengths, tmp_path, "right"))
    packed = run(FastPath(model, TrainingConfig(padding_free=True), lengths, tmp_path, "right"))
    assert model.padding_free
    assert packed[0] == pytest.approx(padded[0], abs=1e-5)
    assert packed[1].keys() == padded[1].keys() and padded[1]
    for name, grad in padded[1].items():
        torch.testing.assert_close(packed[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_padding_free_refuses_what_it_cannot_pack(tiny_bert: Path, tmp_path: Path) -> None:
    model = build(tiny_bert, {"name": "prompt", "num_virtual_tokens": 2})
    with pytest.raises(ConfigError, match="padding_free"):
        FastPath(model, TrainingConfig(padding_free=True), [4], tmp_path, "right")
    with pytest.raises(ConfigError, match="padding_free"):
        validate_config({"training": {"padding_free": True, "activation_cache": "memory"}})


@pytest.mark.parametrize("padding_free", [False, True])
def test_activation_checkpointing_gives_the_stored_loss_and_gradients(
    tiny_bert: Path, tmp_path: Path, padding_free: bool
) -> None:
    """Recomputed blocks give the loss and gradients of stored activations; with padding_free the recompute sees
    the packing its forward saw (else it would attend across the packed examples)."""
    model = build(tiny_bert, {"name": "lora", "roles": ["query", "value", "ffn_out"]})
    model.eval()  # no dropout: both runs compute the same function
    with torch.no_grad():
        for param in model.adapter_parameters().values():
            param.add_(0.1 * torch.randn_like(param))
    tokenizer = model.info.tokenizer
    encoded = [Encoded(list(tokenizer(text)["input_ids"]), target=i % 2) for i, text in enumerate(TEXTS)]
    batch = model.task.collate(encoded, int(tokenizer.pad_token_id))
    lengths = [len(e.input_ids) for e in encoded]

    def run(cfg: TrainingConfig) -> tuple[float, dict[str, torch.Tensor]]:
        fast = FastPath(model, cfg, lengths, tmp_path, "right")
        model.zero_grad(set_to_none=True)
        loss = model.task.loss(fast.forward(batch, list(range(len(TEXTS)))), batch)
        loss.backward()
        return float(loss.detach()), {k: p.grad.clone() for k, p in model.adapter_parameters().items()}

    stored = run(TrainingConfig(padding_free=padding_free))
    recomputed = run(TrainingConfig(padding_free=padding_free, activation_checkpointing=1))
    layers = model.backbone.encoder.layer
    assert all(layer.gradient_checkpointing for layer in layers)
    model.backbone.train()  # checkpointing runs in training mode only: check that it did recompute
    model.backbone.apply(lambda m: m.eval() if isinstance(m, torch.nn.Dropout) else None)
    calls: list[int] = []
    handle = layers[0].attention.register_forward_hook(lambda *_: calls.append(1))
    recomputed = run(TrainingConfig(padding_free=padding_free, activation_checkpointing=1))
    handle.remove()
    assert len(calls) == 2, "block 0 ran in the forward and again in the backward"
    assert recomputed[0] == pytest.approx(stored[0], abs=1e-6)
    for name, grad in stored[1].items():
        torch.testing.assert_close(recomputed[1][name], grad, atol=1e-5, rtol=1e-4, msg=name)
    with pytest.raises(ConfigError, match="activation_checkpointing"):
        validate_config({"training": {"activation_checkpointing": 1, "activation_cache": "memory"}})
