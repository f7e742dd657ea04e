"""Padding-free forward passes: the real tokens packed into one row give the padded pass's hidden states and
gradients, and only encoders that can take it are routed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adaptune.backbone import load_backbone
from adaptune.config import ModelConfig
from adaptune.padding_free import IMPLEMENTATION, current, packed_forward, packing_of, supports

IDS = torch.tensor(
    [[101, 2023, 2003, 102, 0, 0, 0], [101, 7592, 2088, 2003, 2307, 2428, 102], [101, 3531, 102, 0, 0, 0, 0]]
)
MASK = (IDS != 0).long()
TYPES = torch.tensor([[0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0, 0]])


@pytest.fixture(scope="module")
def encoder(tiny_bert: Path) -> torch.nn.Module:
    return load_backbone(ModelConfig(name_or_path=str(tiny_bert))).model


def test_packing_of_mask() -> None:
    packing = packing_of(MASK)
    assert packing.shape == (3, 7) and packing.tokens == int(MASK.sum())
    assert packing.row_starts == [0, 4, 11, 14]
    x = torch.arange(21.0).view(3, 7, 1)
    back = packing.unpack(packing.pack(x))
    assert torch.equal(back[MASK.bool()], x[MASK.bool()]) and not back[~MASK.bool()].any()


def test_packed_forward_equals_padded_forward(encoder: torch.nn.Module) -> None:
    encoder.eval()
    inputs = {"input_ids": IDS, "attention_mask": MASK, "token_type_ids": TYPES}
    with torch.no_grad():
        padded = encoder(**inputs).last_hidden_state
        packed = packed_forward(encoder, inputs)
    valid = MASK.bool()
    torch.testing.assert_close(packed[valid], padded[valid], atol=1e-5, rtol=1e-5)
    assert not packed[~valid].any()  # padded positions are zero, not garbage
    assert encoder.config._attn_implementation != IMPLEMENTATION and current() is None  # nothing left behind


def test_packed_forward_gradients_match(encoder: torch.nn.Module) -> None:
    """Training can use it: the same loss gives the same weight gradients."""
    encoder.eval()  # no dropout, so both passes compute the same function
    weight = encoder.encoder.layer[0].attention.self.query.weight
    weight.requires_grad_(True)  # load_backbone freezes the base
    grads = []
    for run in (lambda b: encoder(**b).last_hidden_state, lambda b: packed_forward(encoder, b)):
        encoder.zero_grad()
        hidden = run({"input_ids": IDS, "attention_mask": MASK})
        (hidden * MASK.unsqueeze(-1)).pow(2).sum().backward()
        assert weight.grad is not None
        grads.append(weight.grad.clone())
    weight.requires_grad_(False)
    weight.grad = None
    torch.testing.assert_close(grads[1], grads[0], atol=1e-4, rtol=1e-4)


def test_plain_sdpa_outside_a_packed_pass(encoder: torch.nn.Module) -> None:
    """The registered implementation is plain SDPA for any other caller (e.g. another thread mid-pass)."""
    encoder.eval()
    with torch.no_grad():
        want = encoder(input_ids=IDS, attention_mask=MASK).last_hidden_state
        previous = encoder.config._attn_implementation
        encoder.config._attn_implementation = IMPLEMENTATION
        try:
            got = encoder(input_ids=IDS, attention_mask=MASK).last_hidden_state
        finally:
            encoder.config._attn_implementation = previous
    valid = MASK.bool()
    torch.testing.assert_close(got[valid], want[valid])


def test_decoders_are_not_routed(encoder: torch.nn.Module, tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaModel

    llama = LlamaModel(
        LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    )
    assert supports(encoder) and not supports(llama)
