"""Decoders under the tasks: packing isolation for causal_lm, left/right padding for seq_cls and token_cls."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lm_tools import adapted, randomise_adapter

from adaptune.data.chat import ChatExample, Message
from adaptune.data.records import TextExample, token_example_from_words
from adaptune.errors import ConfigError
from adaptune.tasks.causal_lm import PackedEncoded

CHATS = [
    ChatExample((Message("user", "hello there"), Message("assistant", "hi , how can i help"))),
    ChatExample((Message("user", "what colour is the sky"), Message("assistant", "blue"))),
    ChatExample((Message("user", "count to three"), Message("assistant", "one two three"))),
]


def _encode(model: object, examples: list, max_length: int = 128) -> list:
    task, tokenizer = model.task, model.info.tokenizer  # type: ignore[attr-defined]
    return [task.encode(ex, tokenizer, [], max_length) for ex in examples]


def test_packed_rows_give_each_example_its_own_logits(tiny_lm: Path) -> None:
    model = adapted(tiny_lm, {"name": "lora", "r": 4}, {"name": "causal_lm", "pack": True})
    randomise_adapter(model)
    encoded = _encode(model, CHATS)
    pad = int(model.info.tokenizer.pad_token_id)
    alone = torch.cat([model(model.task.collate([e], pad)) for e in encoded])
    rows = model.task.training_examples(encoded, max_length=sum(map(len, encoded[:2])))
    assert [type(r) for r in rows] == [PackedEncoded, PackedEncoded] and rows[0].segments == [
        len(e) for e in encoded[:2]
    ]
    batch = model.task.collate(rows, pad, "left")  # packed rows are right-padded whatever the side
    assert batch["position_ids"][1].tolist()[: len(encoded[2])] == list(range(len(encoded[2])))
    packed = model(batch)
    assert packed.shape == alone.shape
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    # without the per-example positions (one long sequence) the second example sees the first: the check bites
    leaky = dict(batch)
    del leaky["position_ids"]
    assert not torch.allclose(model(leaky), alone, atol=1e-3)
    assert torch.isclose(model.task.loss(packed, batch), model.task.loss(alone, model.task.collate(encoded, pad)))


def test_packing_refuses_prefix_tuning(tiny_lm: Path) -> None:
    model = adapted(tiny_lm, {"name": "prefix", "num_virtual_tokens": 2}, {"name": "causal_lm", "pack": True})
    rows = model.task.training_examples(_encode(model, CHATS), max_length=128)
    with pytest.raises(ConfigError, match="task.pack"):
        model(model.task.collate(rows, 0))


TEXTS = ["a short one", "this sentence is quite a bit longer than the first one", "mid length text here"]


@pytest.mark.parametrize("method", ["lora", {"name": "prefix", "num_virtual_tokens": 2}, "prompt"])
@pytest.mark.parametrize("folder", ["tiny_lm", "tiny_gpt2"])
def test_seq_cls_last_token_pooling_is_padding_side_agnostic(
    folder: str, method: object, request: pytest.FixtureRequest
) -> None:
    model = adapted(request.getfixturevalue(folder), method, "seq_cls", labels=["neg", "pos"])  # type: ignore[arg-type]
    randomise_adapter(model, scale=0.1)
    assert model.info.pooling == "last" and model.info.is_decoder
    encoded = [model.task.encode(TextExample(t, ("pos",)), model.info.tokenizer, ["neg", "pos"], 64) for t in TEXTS]
    with torch.no_grad():
        right = model(model.task.collate(encoded, 0, "right"))
        left = model(model.task.collate(encoded, 0, "left"))
        alone = torch.cat([model(model.task.collate([e], 0)) for e in encoded])
    torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("folder", ["tiny_lm", "tiny_gpt2"])
def test_token_cls_on_a_decoder_is_padding_side_agnostic(folder: str, request: pytest.FixtureRequest) -> None:
    labels = ["O", "B-X", "I-X"]
    model = adapted(request.getfixturevalue(folder), "lora", "token_cls", labels=labels)
    examples = [token_example_from_words(t.split(), ["O"] * len(t.split())) for t in TEXTS]
    encoded = [model.task.encode(ex, model.info.tokenizer, labels, 64) for ex in examples]
    with torch.no_grad():
        right, left = (model(model.task.collate(encoded, 0, side)) for side in ("right", "left"))
    for row, item in enumerate(encoded):
        n = len(item)
        torch.testing.assert_close(left[row, -n:], right[row, :n], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("bf16", [False, True])
def test_chunked_lm_loss_equals_cross_entropy(bias: bool, bf16: bool) -> None:
    """The chunked loss (logits never stored, the gradient computed in the forward pass) gives F.cross_entropy's
    value and state gradients, chunk boundaries anywhere, under bf16 autocast too, scaled like any loss."""
    from adaptune.tasks.causal_lm import ChunkedLMLoss

    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=bias).requires_grad_(False)
    targets = torch.randint(0, 50, (11,), generator=gen)
    base = torch.randn(11, 16, generator=gen)
    results = []
    for rows in (None, 4, 11, 64):
        states = base.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if rows is None:
                loss = torch.nn.functional.cross_entropy(head(states).float(), targets)
            else:
                loss = ChunkedLMLoss.apply(states, head.weight, head.bias, targets, rows)
        (loss * 0.5).backward()  # gradient accumulation scales the loss
        assert states.grad is not None
        results.append((loss.detach(), states.grad))
    tol = {"atol": 2e-2, "rtol": 2e-2} if bf16 else {"atol": 1e-6, "rtol": 1e-5}
    for loss, grad in results[1:]:
        torch.testing.assert_close(loss, results[0][0], **tol)
        torch.testing.assert_close(grad, results[0][1], **tol)


def test_causal_lm_loss_and_decode_agree(tiny_lm: Path) -> None:
    """The training loss and the per-example NLL of evaluation are the same cross-entropy."""
    model = adapted(tiny_lm, {"name": "lora", "r": 4})
    randomise_adapter(model, 0.1)
    encoded = _encode(model, CHATS)
    batch = model.task.collate(encoded, int(model.info.tokenizer.pad_token_id))
    with torch.no_grad():
        states = model(batch)
        loss = model.task.loss(states, batch)
        decoded = model.task.decode(states, batch, encoded)
    total, tokens = sum(d[0] for d in decoded), sum(d[1] for d in decoded)
    assert states.shape == (int((batch["labels"] != -100).sum()), 32)
    assert loss.item() == pytest.approx(total / tokens, rel=1e-5)
