"""causal_lm data: the three record spellings, chat templates, response-only labels, truncation, holdout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from lm_tools import write_alpaca
from transformers import AutoTokenizer

from adaptune.config import DataConfig
from adaptune.data.chat import FALLBACK_TEMPLATE, ChatExample, Message, stop_token_ids, template_for
from adaptune.errors import DataError
from adaptune.tasks.causal_lm import IGNORE, CausalLM, CausalLMConfig

SHAREGPT = {
    "conversations": [
        {"from": "system", "value": "be brief"},
        {"from": "human", "value": "hello there"},
        {"from": "gpt", "value": "hi friend"},
        {"from": "human", "value": "what is two plus two"},
        {"from": "gpt", "value": "four"},
    ]
}
OPENAI = {
    "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": "hi friend"},
        {"role": "user", "content": "what is two plus two"},
        {"role": "assistant", "content": "four"},
    ]
}


def _task(**kw: object) -> CausalLM:
    return CausalLM(CausalLMConfig(**kw))


def _trained_text(tokenizer: object, ids: list[int], target: list[int]) -> str:
    """The tokens that carry a label (targets are next tokens: label t is token t + 1)."""
    picked = [t for t in target if t != IGNORE]
    return tokenizer.decode(picked, skip_special_tokens=False)  # type: ignore[attr-defined]


def test_sharegpt_and_openai_spellings_read_the_same(tmp_path: Path) -> None:
    path = tmp_path / "chats.jsonl"
    path.write_text(json.dumps(SHAREGPT) + "\n" + json.dumps(OPENAI) + "\n", encoding="utf-8")
    a, b = _task().read(str(path), DataConfig(), split="train")
    assert a.messages == b.messages
    assert [m.role for m in a.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert a.reference == "four" and a.prompt[-1] == Message("user", "what is two plus two")
    assert a.source.endswith("chats.jsonl:1") and b.source.endswith("chats.jsonl:2")


def test_alpaca_json_with_and_without_input(tmp_path: Path) -> None:
    rows = [
        {"instruction": "add", "input": "2 and 3", "output": "5"},
        {"instruction": "say hi", "input": "", "output": "hi"},
    ]
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(rows, indent=4), encoding="utf-8")
    first, second = _task().read(str(path), DataConfig(), split="train")
    assert first.messages == (Message("user", "add\n\n2 and 3"), Message("assistant", "5"))
    assert second.messages == (Message("user", "say hi"), Message("assistant", "hi"))


@pytest.mark.parametrize(
    ("record", "field"),
    [
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
        ({"conversations": "not a list"}, "conversations"),
        ({"instruction": "", "output": "x"}, "instruction"),
        ({"text": "nothing we know"}, None),
    ],
)
def test_bad_records_name_line_and_field(tmp_path: Path, record: dict, field: str | None) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(OPENAI) + "\n" + json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        _task().read(str(path), DataConfig(), split="train")
    assert info.value.line == 2 and info.value.field == field


def test_loss_only_on_assistant_turns_with_end_of_turn(tiny_lm: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    example = _task().parse_input(OPENAI)  # parse_input drops the last turn: a prompt
    assert example.messages[-1].role == "user"
    full = ChatExample(tuple(Message(m["role"], m["content"]) for m in OPENAI["messages"]))
    enc = _task().encode(full, tokenizer, [], 256)
    assert len(enc.target) == len(enc.input_ids)
    # both assistant turns, each with its <|im_end|>; nothing of the system/user turns or the role headers
    assert _trained_text(tokenizer, enc.input_ids, enc.target) == "hi friend <|im_end|> four <|im_end|>"
    # the sequence is exactly the template's rendering
    rendered = tokenizer.apply_chat_template([m.as_dict() for m in full.messages], tokenize=False)
    assert enc.input_ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]


def test_fallback_template_when_the_tokenizer_has_none(tiny_lm_plain: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_plain)
    assert template_for(tokenizer) == FALLBACK_TEMPLATE
    full = ChatExample((Message("user", "hello"), Message("assistant", "hi there")))
    enc = _task().encode(full, tokenizer, [], 256)
    assert _trained_text(tokenizer, enc.input_ids, enc.target) == "hi there <|im_end|>"
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tokenizer, FALLBACK_TEMPLATE)


def test_truncation_is_reported_in_examples_and_tokens(tiny_lm: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    task = _task()
    long = ChatExample((Message("user", "word " * 40), Message("assistant", "reply")))
    short = ChatExample((Message("user", "hi"), Message("assistant", "reply")))
    encoded = [task.encode(ex, tokenizer, [], 24) for ex in (long, short)]
    assert len(encoded[0]) == 24 and encoded[0].truncated and not encoded[1].truncated
    full_length = len(task.encode(long, tokenizer, [], 256))
    assert encoded[0].dropped_tokens == full_length - 24
    note = task.truncation_note("train", encoded, 24)
    assert note == (
        f"train: 1 of 2 examples truncated to 24 tokens ({full_length - 24} tokens dropped); "
        "1 example(s) kept no response token and add nothing to the loss"
    )
    assert task.truncation_note("train", encoded[1:], 24) is None


def test_holdout_splits_one_file(tmp_path: Path) -> None:
    path = write_alpaca(tmp_path / "a.json", 10)
    data = DataConfig(train=str(path), dev=str(path))
    task = _task(holdout=3)
    train, dev = task.read(str(path), data, split="train"), task.read(str(path), data, split="dev")
    everything = _task().read(str(path), data, split="train")
    assert train == everything[:7] and dev == everything[7:]
