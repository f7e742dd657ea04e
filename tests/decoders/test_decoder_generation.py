"""Generation: greedy equals a cache-free argmax loop, stop strings, max tokens, batching, requests decoded
together, streaming, merging, prefix and prompt tuning, sampling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lm_tools import adapted, naive_greedy, randomise_adapter

from adaptune.data.chat import Message, prompt_ids, stop_token_ids, template_for
from adaptune.errors import ConfigError
from adaptune.generation import (
    GenerationConfig,
    _Row,
    generate,
    generate_requests,
    penalise_repeats,
    shared_settings,
    stream,
)

PROMPTS = ["hello there , how are you", "tell me about the weather today in the city", "one"]
GREEDY = GenerationConfig(max_new_tokens=12)


def _ids(model: object, text: str) -> list[int]:
    tokenizer = model.info.tokenizer  # type: ignore[attr-defined]
    return prompt_ids(tokenizer, [Message("user", text)], template_for(tokenizer))


def _tokens(model: object, text: str) -> list[int]:
    return model.info.tokenizer(text, add_special_tokens=False)["input_ids"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "method",
    [
        {"name": "lora", "r": 4},
        {"name": "prefix", "num_virtual_tokens": 3, "prefix_hidden": 16},
        {"name": "prompt", "num_virtual_tokens": 3},
    ],
    ids=["lora", "prefix", "prompt"],
)
def test_greedy_equals_naive_argmax_loop(tiny_lm: Path, method: dict) -> None:
    model = adapted(tiny_lm, method)
    randomise_adapter(model)
    config = GenerationConfig(max_new_tokens=12, stop=[])
    for text in PROMPTS:
        out = generate(model, [text], config)[0]
        expected = naive_greedy(model, _ids(model, text), out.completion_tokens)
        stops = stop_token_ids(model.info.tokenizer, template_for(model.info.tokenizer))
        shown = [t for t in expected if t not in stops]
        assert out.text == model.info.tokenizer.decode(shown, skip_special_tokens=True)
        assert out.prompt_tokens == len(_ids(model, text)) and out.completion_tokens >= 1


def test_max_new_tokens_and_length_reason(tiny_lm: Path) -> None:
    model = adapted(tiny_lm)
    out = generate(model, PROMPTS, GenerationConfig(max_new_tokens=3))
    for item in out:
        assert item.completion_tokens <= 3
        assert item.finish_reason == ("length" if item.completion_tokens == 3 else "stop")


def test_stop_string_cuts_before_it(tiny_lm: Path) -> None:
    model = adapted(tiny_lm)
    full = generate(model, [PROMPTS[1]], GREEDY)[0]
    words = full.text.split()
    assert len(words) >= 3, full.text
    stop = words[2]
    cut = generate(model, [PROMPTS[1]], GREEDY.model_copy(update={"stop": [stop]}))[0]
    assert cut.text == full.text[: full.text.find(stop)] and cut.finish_reason == "stop"
    assert cut.completion_tokens < full.completion_tokens


def test_end_of_turn_token_stops_and_is_not_shown(tiny_lm: Path) -> None:
    model = adapted(tiny_lm)
    tokenizer = model.info.tokenizer
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    row = _Row(tokenizer, [], stop_token_ids(tokenizer, template_for(tokenizer)), max_new=10)
    for token in [*_tokens(model, "fine thanks"), end, *_tokens(model, "more")]:
        row.add(token)
    assert (row.text, row.finish, row.generated) == ("fine thanks", "stop", 3)


def test_batch_with_left_padding_equals_one_by_one(tiny_lm: Path) -> None:
    model = adapted(tiny_lm, {"name": "prefix", "num_virtual_tokens": 3, "prefix_hidden": 16})
    randomise_adapter(model)
    together = generate(model, PROMPTS, GREEDY)
    alone = [generate(model, [p], GREEDY)[0] for p in PROMPTS]
    assert len({len(_ids(model, p)) for p in PROMPTS}) == 3  # the batch really is padded
    assert together == alone


def test_streaming_concatenates_to_the_generated_text(tiny_lm: Path) -> None:
    model = adapted(tiny_lm)
    for config in (GREEDY, GREEDY.model_copy(update={"stop": ["the", "zzz"]})):
        for text in PROMPTS:
            pieces = list(stream(model, text, config))
            assert "".join(pieces) == generate(model, [text], config)[0].text
            assert all(pieces)


def test_merged_and_unmerged_lora_generate_the_same(tiny_lm: Path) -> None:
    model = adapted(tiny_lm, {"name": "lora", "r": 4, "roles": ["query", "value", "ffn_out"]})
    randomise_adapter(model, scale=0.3)
    before = generate(model, PROMPTS, GREEDY)
    model.method.merge(model.backbone)  # type: ignore[attr-defined]
    assert generate(model, PROMPTS, GREEDY) == before
    model.method.unmerge(model.backbone)  # type: ignore[attr-defined]
    assert generate(model, PROMPTS, GREEDY) == before


def test_raw_text_prompts_skip_the_template(tiny_lm: Path) -> None:
    model = adapted(tiny_lm)
    raw = generate(model, ["the weather"], GREEDY, chat=False)[0]
    assert raw.prompt_tokens == len(model.info.tokenizer("the weather")["input_ids"])
    messages = generate(model, [[{"role": "user", "content": "the weather"}]], GREEDY)[0]
    assert messages == generate(model, ["the weather"], GREEDY)[0]


def test_sampling_is_seeded_and_top_k_one_is_greedy(tiny_lm: Path) -> None:
    model = adapted(tiny_lm)
    sample = GenerationConfig(max_new_tokens=10, do_sample=True, temperature=1.5, top_p=0.9, seed=3)
    assert generate(model, PROMPTS, sample) == generate(model, PROMPTS, sample)
    greedy_like = GenerationConfig(max_new_tokens=10, do_sample=True, top_k=1, seed=5)
    assert generate(model, PROMPTS, greedy_like) == generate(model, PROMPTS, GenerationConfig(max_new_tokens=10))
    texts = {generate(model, [PROMPTS[0]], sample.model_copy(update={"seed": s}))[0].text for s in range(6)}
    assert len(texts) > 1


def test_top_p_keeps_the_smallest_set_with_that_mass() -> None:
    from adaptune.generation import _pick

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    config = GenerationConfig(do_sample=True, top_p=0.7, seed=0)
    gen = torch.Generator().manual_seed(0)
    seen = {int(_pick(logits, config, gen)) for _ in range(300)}
    assert seen == {0, 1}


def test_repetition_penalty_scales_seen_logits_by_sign() -> None:
    logits = torch.tensor([[2.0, -2.0, 3.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = penalise_repeats(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -4.0, 3.0, -1.0]]


def test_repetition_penalty_decodes_as_transformers_does(tiny_lm: Path) -> None:
    """Greedy decoding with a repetition penalty gives transformers' tokens (prompt tokens penalised too); the
    adapter is freshly initialised LoRA, so the adapted model is the base."""
    from transformers import AutoModelForCausalLM

    model = adapted(tiny_lm)
    reference = AutoModelForCausalLM.from_pretrained(tiny_lm).eval()
    tokenizer = model.info.tokenizer
    stops = stop_token_ids(tokenizer, template_for(tokenizer))
    penalised = GenerationConfig(max_new_tokens=12, repetition_penalty=1.8)
    changed = 0
    echo = generate(model, [PROMPTS[0]], GREEDY)[0].text  # a prompt made of what greedy decoding would say
    for text in [*PROMPTS, echo]:
        ids = _ids(model, text)
        with torch.no_grad():
            full = reference.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False,
                repetition_penalty=1.8,
                max_new_tokens=12,
                eos_token_id=sorted(stops),
                pad_token_id=tokenizer.pad_token_id,
            )[0, len(ids) :].tolist()
        ours = generate(model, [text], penalised)[0]
        shown = [t for t in full if t not in stops]
        assert ours.text == tokenizer.decode(shown, skip_special_tokens=True)
        assert ours.completion_tokens == len(full)
        changed += ours.text != generate(model, [text], GREEDY)[0].text
    assert changed >= 1  # the penalty did change what greedy decoding picks


def test_repetition_penalty_reaches_the_cli_and_the_server_fields() -> None:
    from adaptune.cli_generate import _generation_config
    from adaptune.server.openai import decoding
    from adaptune.server.schemas import SamplingFields

    assert _generation_config(5, False, 1.0, 1.0, 0, None, None, 1.3).repetition_penalty == 1.3
    assert decoding(SamplingFields(repetition_penalty=1.2), 5).repetition_penalty == 1.2
    with pytest.raises(ValueError):
        GenerationConfig(repetition_penalty=0)


def test_a_short_position_table_keeps_the_prompt_and_shortens_the_reply(tiny_lm: Path) -> None:
    """The tiny model has 256 positions: the default 256 new tokens used to cut every prompt to its last token."""
    model = adapted(tiny_lm)
    limit = model.info.max_positions
    assert limit == 256
    out = generate(model, [PROMPTS[1]], GenerationConfig(max_new_tokens=256))[0]
    assert out.prompt_tokens == len(_ids(model, PROMPTS[1]))
    assert out.completion_tokens <= limit - out.prompt_tokens
    short = generate(model, [PROMPTS[1]], GenerationConfig(max_new_tokens=4))[0]
    assert short.prompt_tokens == out.prompt_tokens
    long_text = " ".join(["weather"] * 300)  # longer than the table: cut to half of it, the reply gets the rest
    cut = generate(model, [long_text], GenerationConfig(max_new_tokens=256))[0]
    assert cut.prompt_tokens == limit // 2 and cut.completion_tokens <= limit - limit // 2
    assert generate(model, [long_text], GenerationConfig(max_new_tokens=10))[0].prompt_tokens == limit - 10


@pytest.mark.parametrize(
    "method",
    [{"name": "lora", "r": 4}, {"name": "prefix", "num_virtual_tokens": 3, "prefix_hidden": 16}],
    ids=["lora", "prefix"],
)
def test_requests_decoded_together_get_what_they_get_alone(tiny_lm: Path, method: dict) -> None:
    """Each request keeps its own max_new_tokens and stop strings (and budget) in a shared batch."""
    model = adapted(tiny_lm, method)
    randomise_adapter(model)
    full = generate(model, [PROMPTS[1]], GREEDY)[0]
    words = full.text.split()
    assert len(words) >= 3, full.text
    requests = [
        ([PROMPTS[0], PROMPTS[2]], GenerationConfig(max_new_tokens=3)),
        ([PROMPTS[1]], GenerationConfig(max_new_tokens=12, stop=[words[2]])),  # ends early on its stop string
        ([PROMPTS[2]], GenerationConfig(max_new_tokens=9, stop=["zzz"])),
        ([], GenerationConfig(max_new_tokens=5)),
        ([PROMPTS[1], PROMPTS[0]], GenerationConfig(max_new_tokens=300)),  # the position table's budget
    ]
    together = generate_requests(model, requests)
    alone = [generate(model, prompts, config) for prompts, config in requests]
    assert together == alone
    assert [len(out) for out in together] == [2, 1, 1, 0, 2]
    assert together[1][0].finish_reason == "stop" and together[1][0].text == full.text[: full.text.find(words[2])]
    assert all(g.completion_tokens <= 3 for g in together[0])


def test_requests_together_with_raw_text_and_sampling(tiny_lm: Path) -> None:
    model = adapted(tiny_lm)
    requests = [(["the weather"], GenerationConfig(max_new_tokens=4)), (["one", "two"], GREEDY)]
    assert generate_requests(model, requests, chat=False) == [generate(model, p, c, chat=False) for p, c in requests]
    sample = GenerationConfig(max_new_tokens=6, do_sample=True, seed=4)
    one = generate_requests(model, [(PROMPTS, sample)])
    assert one == [generate(model, PROMPTS, sample)]
    assert generate_requests(model, []) == []


def test_requests_together_must_share_the_decoding_settings(tiny_lm: Path) -> None:
    model = adapted(tiny_lm)
    greedy = GenerationConfig(max_new_tokens=4)
    assert shared_settings(greedy) == shared_settings(greedy.model_copy(update={"temperature": 0.5, "seed": 3}))
    with pytest.raises(ConfigError, match="must share"):
        generate_requests(model, [(["a"], greedy), (["b"], greedy.model_copy(update={"repetition_penalty": 1.2}))])
    sampled = GenerationConfig(max_new_tokens=4, do_sample=True)
    with pytest.raises(ConfigError, match="must share"):
        generate_requests(model, [(["a"], sampled), (["b"], sampled.model_copy(update={"seed": 1}))])
