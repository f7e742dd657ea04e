"""``training.fast_dropout``: the masks have torch's distribution (keep 1 - p, kept values scaled), autograd
multiplies by the same mask, eval is untouched, a seed fixes the masks, the spelled-out attention agrees with
SDPA, and a tiny BERT trains with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from adaptune import fast_dropout as fd
from adaptune import load_config, train
from adaptune.backbone import load_backbone
from adaptune.config import TrainingConfig, validate_config
from adaptune.errors import ConfigError
from adaptune.model import AdaptedModel
from adaptune.registry import build_method, build_task
from adaptune.tasks.base import Encoded
from adaptune.training.fast import FastPath

TEXTS = ["where is my parcel?", "I want a refund now", "the app crashes on login", "thanks, that helped", "hi"]


def sigmas(rate: float, p_keep: float, n: int) -> float:
    """How many standard deviations of a Binomial(n, p_keep) mean ``rate`` lies from ``p_keep``."""
    return abs(rate - p_keep) / (p_keep * (1 - p_keep) / n) ** 0.5


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_is_one_minus_p_in_every_lane(p: float) -> None:
    torch.manual_seed(0)
    n = 1 << 22
    mask = fd.keep_mask((n,), p)
    assert mask.dtype == torch.bool and mask.shape == (n,)
    p_keep = 1 - fd.threshold(p) / 65536
    assert abs(p_keep - (1 - p)) <= 0.5 / 65536, "p rounded to the nearest multiple of 1/65536"
    assert sigmas(float(mask.float().mean()), p_keep, n) < 5
    for lane in range(4):  # the top lane of each word too: random_() without bounds would leave its sign bit at 0
        assert sigmas(float(mask[lane::4].float().mean()), p_keep, n // 4) < 5, lane


def test_random_words_use_all_64_bits() -> None:
    torch.manual_seed(0)
    words = torch.empty(1 << 16, dtype=torch.int64).random_(-(1 << 63), None)
    bits = torch.stack([(words >> k) & 1 for k in range(64)]).float().mean(dim=1)
    assert float((bits - 0.5).abs().max()) < 0.02, "each bit is 1 about half of the time, the sign bit included"


def test_kept_values_are_scaled_and_dropped_ones_are_zero() -> None:
    x = torch.randn(333, 97)  # not a multiple of 4 elements
    torch.manual_seed(1)
    mask = fd.keep_mask(x.shape, 0.1)
    torch.manual_seed(1)
    y = fd.fast_dropout(x, 0.1)
    scale = 65536 / (65536 - fd.threshold(0.1))
    assert scale == pytest.approx(1 / 0.9, rel=1e-4)
    torch.testing.assert_close(y, torch.where(mask, x * scale, torch.zeros(())), rtol=0, atol=0)
    assert y.dtype == x.dtype and fd.fast_dropout(x.bfloat16(), 0.1).dtype == torch.bfloat16


def test_gradient_is_mask_times_scale_times_upstream_and_only_a_bool_mask_is_saved() -> None:
    x = torch.randn(64, 48, requires_grad=True)
    upstream = torch.randn(64, 48)
    saved: list[torch.dtype] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.dtype)
        return t

    torch.manual_seed(2)
    mask = fd.keep_mask(x.shape, 0.25)
    torch.manual_seed(2)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fd.fast_dropout(x, 0.25)
    y.backward(upstream)
    assert saved == [torch.bool], "autograd keeps the boolean mask, no float copy"
    assert x.grad is not None
    torch.testing.assert_close(x.grad, upstream * mask * (65536 / (65536 - fd.threshold(0.25))), rtol=0, atol=0)


def test_eval_mode_p_zero_and_tiny_p_are_the_identity_and_p_one_drops_everything() -> None:
    x = torch.randn(8, 16)
    layer = fd.FastDropout(0.1).eval()
    assert layer(x) is x and fd.fast_dropout(x, 0.1, training=False) is x and fd.fast_dropout(x, 0.0) is x
    assert fd.fast_dropout(x, 1e-6) is x, "p below 2**-17 rounds to 0"
    assert not fd.fast_dropout(x, 1.0).any()


def test_the_seed_fixes_the_masks() -> None:
    x = torch.ones(1000)
    torch.manual_seed(7)
    first = fd.fast_dropout(x, 0.3)
    torch.manual_seed(7)
    again = fd.fast_dropout(x, 0.3)
    torch.manual_seed(8)
    other = fd.fast_dropout(x, 0.3)
    assert torch.equal(first, again) and not torch.equal(first, other)


def attention_inputs(mask_kind: str, groups: int = 1) -> tuple[nn.Module, tuple[torch.Tensor, ...], Any]:
    torch.manual_seed(0)
    batch, heads, length, dim = 3, 4, 6, 8
    module = nn.Module()
    module.is_causal = mask_kind == "causal"  # type: ignore[assignment]
    module.num_key_value_groups = groups  # type: ignore[assignment]
    q = torch.randn(batch, heads, length, dim)
    k, v = torch.randn(2, batch, heads // groups, length, dim)
    keep = torch.ones(batch, length, dtype=torch.bool)
    keep[0, 4:] = False
    keep[2, 1:] = False
    masks = {
        "none": None,
        "causal": None,
        "bool": keep[:, None, None, :].expand(batch, 1, length, length),
        "float": torch.zeros(batch, 1, length, length).masked_fill(~keep[:, None, None, :], -1e9),
    }
    return module, (q, k, v), masks[mask_kind]


@pytest.mark.parametrize(("mask_kind", "groups"), [("none", 1), ("bool", 1), ("float", 1), ("causal", 1), ("bool", 2)])
def test_spelled_out_attention_gives_sdpa_output(mask_kind: str, groups: int) -> None:
    module, (q, k, v), mask = attention_inputs(mask_kind, groups)
    reference, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=0.0, scaling=0.3)
    # a dropout below 2**-17 takes the spelled-out path and drops nothing
    spelled, weights = fd._attention(module, q, k, v, mask, dropout=1e-6, scaling=0.3)
    assert weights is None and spelled.shape == (3, 6, 4, 8), "(B, L, H, d) like SDPA"
    torch.testing.assert_close(spelled, reference, atol=1e-5, rtol=1e-5)
    plain, _ = fd._attention(module, q, k, v, mask, dropout=0.0, scaling=0.3)
    assert torch.equal(plain, reference), "no dropout: SDPA itself"


def test_attention_dropout_uses_the_fast_mask_on_the_probabilities() -> None:
    module, (q, k, v), mask = attention_inputs("bool")
    torch.manual_seed(5)
    out, _ = fd._attention(module, q, k, v, mask, dropout=0.2, scaling=0.3)
    torch.manual_seed(5)
    keep = fd.keep_mask((3, 4, 6, 6), 0.2)
    probs = (q @ k.transpose(2, 3) * 0.3).masked_fill(~mask, torch.finfo(q.dtype).min).softmax(-1)
    expected = (probs * keep * (65536 / (65536 - fd.threshold(0.2)))) @ v
    torch.testing.assert_close(out, expected.transpose(1, 2), atol=1e-5, rtol=1e-5)


def build(tiny_bert: Path) -> AdaptedModel:
    """A tiny BERT (dropout 0.1 everywhere, as configured) with LoRA and a two-label head, in train mode."""
    cfg = validate_config(
        {"model": {"name_or_path": str(tiny_bert), "pooling": "mean"}, "method": {"name": "lora"}, "task": {}}
    )
    torch.manual_seed(0)
    model = AdaptedModel(load_backbone(cfg.model), build_method(cfg.method), build_task(cfg.task), ["a", "b"])
    model.mark_trainable()
    return model.train()


def batch_of(model: AdaptedModel) -> dict[str, torch.Tensor]:
    tokenizer = model.info.tokenizer
    encoded = [Encoded(list(tokenizer(t)["input_ids"]), target=i % 2) for i, t in enumerate(TEXTS)]
    return model.task.collate(encoded, int(tokenizer.pad_token_id))  # padded: the attention mask matters


def test_enable_swaps_every_dropout_keeps_eval_outputs_and_remove_undoes_it(tiny_bert: Path) -> None:
    model = build(tiny_bert)
    batch = batch_of(model)
    config = model.backbone.config
    assert config._attn_implementation == "sdpa"
    dropouts = [name for name, m in model.named_modules() if type(m) is nn.Dropout]
    model.eval()
    with torch.no_grad():
        before = model(batch)
    enabled = fd.enable(model.train())
    assert enabled.attention and config._attn_implementation == fd.IMPLEMENTATION
    assert [name for name, m in model.named_modules() if isinstance(m, fd.FastDropout)] == dropouts
    assert any(".lora" in name for name in dropouts) and any("attention" in name for name in dropouts)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(batch), before), "eval mode: the same modules and SDPA"
    enabled.remove()
    assert config._attn_implementation == "sdpa"
    assert [name for name, m in model.named_modules() if type(m) is nn.Dropout] == dropouts


def test_bert_attention_path_gives_the_plain_output_without_dropping(tiny_bert: Path) -> None:
    model = build(tiny_bert)
    batch = batch_of(model)
    model.eval()
    with torch.no_grad():
        plain = model(batch)
    enabled = fd.enable(model.train())
    calls: list[float] = []
    spelled = fd._attention

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["dropout"])
        return spelled(*args, **kwargs)

    from transformers import AttentionInterface

    AttentionInterface.register(fd.IMPLEMENTATION, spy)
    try:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 1e-6  # train mode with dropout "on" (the spelled-out attention) that drops nothing
        with torch.no_grad():
            out = model(batch)
    finally:
        AttentionInterface.register(fd.IMPLEMENTATION, spelled)
        enabled.remove()
    assert calls == [1e-6] * model.info.num_layers
    torch.testing.assert_close(out, plain, atol=1e-5, rtol=1e-4)


def test_fast_path_switch_trains_and_restores(tiny_bert: Path, tmp_path: Path) -> None:
    model = build(tiny_bert)
    fast = FastPath(model, TrainingConfig(fast_dropout=True, frozen_prefix_no_grad=True), [8] * 5, tmp_path, "right")
    assert any(isinstance(m, fd.FastDropout) for m in model.modules())
    batch = batch_of(model)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.trainable(), lr=1e-2)
    losses = []
    for _ in range(30):
        fast.train_mode()
        loss = model.task.loss(fast.forward(batch, list(range(5))), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    fast.close()
    assert not any(isinstance(m, fd.FastDropout) for m in model.modules())
    assert model.backbone.config._attn_implementation == "sdpa"


def test_bf16_autocast_step_with_the_switch(tiny_bert: Path, tmp_path: Path) -> None:
    model = build(tiny_bert)
    fast = FastPath(model, TrainingConfig(bf16=True, fast_dropout=True), [8] * 5, tmp_path, "right")
    batch = batch_of(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.task.loss(fast.forward(batch, list(range(5))), batch)
    loss.backward()
    grads = [p.grad for p in model.adapter_parameters().values()]
    assert torch.isfinite(loss) and all(g is not None and torch.isfinite(g).all() for g in grads)
    fast.close()


def train_losses(tiny_bert: Path, data: Path, out: Path) -> list[float]:
    config = load_config(
        None,
        [
            f"model.name_or_path={tiny_bert}",
            "model.pooling=mean",
            f"data.train={data / 'train.jsonl'}",
            f"data.dev={data / 'dev.jsonl'}",
            "data.max_train_examples=64",
            "data.max_eval_examples=16",
            "data.batch_size=8",
            "training.max_steps=6",
            "training.log_every=1",
            "training.fast_dropout=true",
            "training.progress=false",
            f"training.output_dir={out}",
        ],
    )
    train(config)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["train_loss"] for line in lines if "train_loss" in line]


def test_training_runs_with_the_switch_are_reproducible(tiny_bert: Path, bundled_data: Path, tmp_path: Path) -> None:
    first = train_losses(tiny_bert, bundled_data / "intents", tmp_path / "a")
    again = train_losses(tiny_bert, bundled_data / "intents", tmp_path / "b")
    assert len(first) == 6 and all(np.isfinite(first))
    assert first == again, "training.seed fixes the fast masks too"


def test_config_validation() -> None:
    for other in ({"padding_free": True}, {"compile": True}):
        with pytest.raises(ConfigError, match="training.fast_dropout"):
            validate_config({"training": {"fast_dropout": True, **other}})
    cfg = validate_config({"training": {"fast_dropout": True, "bf16": True, "bf16_base": True}})
    assert cfg.training.fast_dropout is True and TrainingConfig().fast_dropout == "auto"
    for other in ({"padding_free": True}, {"compile": True}):  # auto steps aside for them
        assert validate_config({"training": other}).training.fast_dropout == "auto"


def test_auto_turns_fast_dropout_on_for_cpu_training_only(tiny_bert: Path, tmp_path: Path) -> None:
    """``auto``: on for a model on the CPU, off beside padding_free or compile; true / false as asked."""
    from adaptune.training.fast import uses_fast_dropout

    model = build(tiny_bert)
    assert uses_fast_dropout(TrainingConfig(), model)
    assert not uses_fast_dropout(TrainingConfig(padding_free=True), model)
    assert not uses_fast_dropout(TrainingConfig(compile=True), model)
    assert not uses_fast_dropout(TrainingConfig(fast_dropout=False), model)
    fast = FastPath(model, TrainingConfig(), [8] * 5, tmp_path, "right")
    assert any(isinstance(m, fd.FastDropout) for m in model.modules()), "auto patches dropout on the CPU"
    fast.close()
    with torch.device("meta"):
        on_meta = nn.Linear(2, 2)
    assert not uses_fast_dropout(TrainingConfig(), on_meta), "off a CPU, auto keeps torch's dropout"
