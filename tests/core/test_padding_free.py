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


DECODER_MASKS = {
    "right": torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0]]),
    "left": torch.tensor([[0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1]]),
}


@pytest.mark.parametrize("per_example", [True, False])
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gpt2"])
def test_decoders_packed_equal_padded(
    arch: str, side: str, per_example: bool, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Causal attention, example by example or on the left-aligned layout, gives each real token what the padded
    pass gives it, for right and left padding, grouped-query (Llama) and absolute-position (GPT-2) decoders,
    values and gradients."""
    import adaptune.padding_free as padding_free

    monkeypatch.setattr(padding_free, "PER_EXAMPLE_ROWS", 16 if per_example else 0)
    decoder = load_backbone(ModelConfig(name_or_path=str(request.getfixturevalue(arch)))).model.eval()
    assert supports(decoder)
    mask = DECODER_MASKS[side]
    ids = torch.randint(5, 90, mask.shape, generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}
    weight = next(p for n, p in decoder.named_parameters() if n.endswith("weight") and p.dim() == 2 and ".0." in n)
    weight.requires_grad_(True)
    results = []
    for run in (lambda: decoder(**inputs).last_hidden_state, lambda: packed_forward(decoder, inputs)):
        decoder.zero_grad()
        hidden = run()
        (hidden * mask.unsqueeze(-1)).pow(2).sum().backward()
        assert weight.grad is not None
        results.append((hidden.detach()[mask.bool()], weight.grad.clone()))
    weight.requires_grad_(False)
    weight.grad = None
    torch.testing.assert_close(results[1][0], results[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], atol=1e-4, rtol=1e-4)


def test_packing_left_aligned_layout() -> None:
    """Causal attention sees each example from column 0, whatever the padding side."""
    mask = DECODER_MASKS["left"]
    packing = packing_of(mask)
    assert packing.width == 7
    x = torch.arange(21.0).view(3, 7, 1)
    left = packing.unpack_left(packing.pack(x))
    assert left[0, :4, 0].tolist() == [3.0, 4.0, 5.0, 6.0] and not left[0, 4:].any()
    assert left[2, :3, 0].tolist() == [18.0, 19.0, 20.0]
    assert torch.equal(packing.pack_left(left), packing.pack(x))


def test_what_cannot_be_packed_is_not_routed(encoder: torch.nn.Module) -> None:
    """Encoder-decoder models and a BERT configured as a decoder (cross-attention, cache) are refused."""
    from transformers import BertConfig, BertModel, T5Config, T5Model

    as_decoder = BertModel(
        BertConfig(
            vocab_size=64,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            is_decoder=True,
        )
    )
    t5 = T5Model(T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2))
    assert supports(encoder) and not supports(as_decoder) and not supports(t5)
