"""Conversations for the causal LM task: reading them, rendering them with the model's chat template, and
tokenising them with a mask of the tokens the model is trained to produce.

Three spellings of a training record are read, one per JSON object (a ``.json`` array or ``.jsonl`` lines):

* Alpaca: ``{"instruction": ..., "input": ..., "output": ...}`` (``input`` may be empty; an optional
  ``system``) becomes ``[user: instruction + "\\n\\n" + input, assistant: output]``;
* ShareGPT: ``{"conversations": [{"from": "human", "value": ...}, {"from": "gpt", "value": ...}, ...]}``
  (``from`` is ``system``, ``human``/``user`` or ``gpt``/``assistant``/``model``);
* OpenAI: ``{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}, ...]}``.

Rendering uses the tokenizer's own chat template (``tokenizer.chat_template``), or :data:`FALLBACK_TEMPLATE` when
it has none::

    ### System:\\n{system}\\n\\n### User:\\n{user}\\n\\n### Assistant:\\n{assistant}{eos}\\n\\n

Masking. Every assistant turn is located as a character span of the rendered conversation: it starts where
``render(messages[:i], add_generation_prompt=True)`` ends and ends where ``render(messages[:i+1])`` ends, less
trailing whitespace, so the end-of-turn token (``<|im_end|>``, ``</s>`` ...) is inside it. The text is tokenised
piece by piece at these boundaries (the prompt exactly as generation will tokenise it), and only tokens inside
assistant spans carry labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from transformers import PreTrainedTokenizerBase

from adaptune.data.formats.source import Row, check_utf8
from adaptune.errors import DataError

#: The template used when a tokenizer has none (plain text, role headers, EOS after each assistant turn).
FALLBACK_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}### System:\n{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}### User:\n{{ m['content'] }}\n\n"
    "{% else %}### Assistant:\n{{ m['content'] }}{{ eos_token or '' }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)

_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
}


@dataclass(frozen=True)
class Message:
    """One turn: ``role`` is ``system``, ``user`` or ``assistant``."""

    role: str
    content: str

    def as_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class ChatExample:
    """A conversation; the assistant turns are what the model learns to write.

    Attributes:
        messages: the turns in order.
        source: ``"path:line"`` where it was read, for error messages.
    """

    messages: tuple[Message, ...]
    source: str = ""

    @property
    def prompt(self) -> tuple[Message, ...]:
        """The turns before the last assistant turn (all turns when there is none): what generation starts from."""
        last = self.last_assistant()
        return self.messages if last is None else self.messages[:last]

    @property
    def reference(self) -> str:
        """The last assistant turn's text ("" when there is none)."""
        last = self.last_assistant()
        return "" if last is None else self.messages[last].content

    def last_assistant(self) -> int | None:
        return next((i for i in range(len(self.messages) - 1, -1, -1) if self.messages[i].role == "assistant"), None)


def _text(value: Any, where: Row, field: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        raise where.location.error("needs a non-empty string" if not allow_empty else "needs a string", field=field)
    return check_utf8(value, where.location, field)


def _turns(items: Any, row: Row, field: str, role_key: str, text_key: str) -> tuple[Message, ...]:
    if not isinstance(items, list) or not items:
        raise row.location.error("needs a non-empty list of turns", field=field)
    turns = []
    for index, item in enumerate(items):
        where = f"{field}[{index}]"
        if not isinstance(item, Mapping):
            raise row.location.error("each turn must be an object", field=where)
        role = _ROLES.get(str(item.get(role_key, "")).lower())
        if role is None:
            allowed = ", ".join(sorted(_ROLES))
            raise row.location.error(
                f"unknown role {item.get(role_key)!r} (allowed: {allowed})", field=f"{where}.{role_key}"
            )
        turns.append(Message(role, _text(item.get(text_key), row, f"{where}.{text_key}", allow_empty=True)))
    return tuple(turns)


def chat_from_row(row: Row) -> ChatExample:
    """One record in any of the three spellings -> a :class:`ChatExample`; a :class:`DataError` naming the file,
    line and field otherwise."""
    values = row.values
    if "messages" in values:
        messages = _turns(values["messages"], row, "messages", "role", "content")
    elif "conversations" in values:
        messages = _turns(values["conversations"], row, "conversations", "from", "value")
    elif "instruction" in values:
        instruction = _text(values["instruction"], row, "instruction")
        extra = values.get("input") or ""
        user = f"{instruction}\n\n{_text(extra, row, 'input', allow_empty=True)}" if str(extra).strip() else instruction
        system = values.get("system")
        head = (Message("system", _text(system, row, "system")),) if system else ()
        output = values.get("output")
        tail = (Message("assistant", _text(output, row, "output", allow_empty=True)),) if output is not None else ()
        messages = (*head, Message("user", user), *tail)
    else:
        raise row.location.error(
            "needs 'messages' (OpenAI), 'conversations' (ShareGPT) or 'instruction'/'input'/'output' (Alpaca)"
        )
    return ChatExample(messages, row.location.source)


def render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], template: str, *, prompt: bool) -> str:
    """The conversation as text (``prompt=True`` adds the template's generation prompt)."""
    if not messages:
        return ""
    return str(
        tokenizer.apply_chat_template(
            [m.as_dict() for m in messages], chat_template=template, tokenize=False, add_generation_prompt=prompt
        )
    )


def template_for(tokenizer: PreTrainedTokenizerBase, override: str | None = None) -> str:
    """``override``, else the tokenizer's chat template, else :data:`FALLBACK_TEMPLATE`."""
    own = getattr(tokenizer, "chat_template", None)
    return override or (own if isinstance(own, str) and own else FALLBACK_TEMPLATE)


def response_spans(
    tokenizer: PreTrainedTokenizerBase, example: ChatExample, template: str
) -> tuple[str, list[tuple[int, int]]]:
    """``(rendered text, [(start, end) character span of each assistant turn, end-of-turn token included])``."""
    full = render(tokenizer, example.messages, template, prompt=False)
    spans = []
    for i, message in enumerate(example.messages):
        if message.role != "assistant":
            continue
        before = render(tokenizer, example.messages[:i], template, prompt=True)
        through = render(tokenizer, example.messages[: i + 1], template, prompt=False)
        if not (full.startswith(through) and through.startswith(before)):
            raise DataError(
                "the chat template does not render this conversation turn by turn (an earlier turn renders "
                "differently once later turns follow); set task.chat_template to a template that does",
                file=example.source or None,
            )
        spans.append((len(before), len(through.rstrip())))
    return full, spans


def tokenize_conversation(
    tokenizer: PreTrainedTokenizerBase, example: ChatExample, template: str
) -> tuple[list[int], list[bool]]:
    """``(token ids, trained flags)``, both ``(T,)``: flags are True on the assistant turns' tokens."""
    full, spans = response_spans(tokenizer, example, template)
    ids: list[int] = []
    trained: list[bool] = []
    cursor = 0
    for start, end in [*spans, (len(full), len(full))]:
        for piece, flag in ((full[cursor:start], False), (full[start:end], True)):
            if piece:
                piece_ids = list(tokenizer(piece, add_special_tokens=False)["input_ids"])
                ids += piece_ids
                trained += [flag] * len(piece_ids)
        cursor = end
    return ids, trained


def prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], template: str) -> list[int]:
    """Token ids of a conversation followed by the generation prompt (``<|im_start|>assistant\\n`` ...)."""
    text = render(tokenizer, messages, template, prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@lru_cache(maxsize=16)
def _end_of_turn(tokenizer: PreTrainedTokenizerBase, template: str) -> int | None:
    marker = "adaptuneprobe"
    text = render(tokenizer, (Message("user", "x"), Message("assistant", marker)), template, prompt=False)
    after = text[text.rfind(marker) + len(marker) :]
    ids = list(tokenizer(after, add_special_tokens=False)["input_ids"]) if after.strip() else []
    return ids[0] if ids and ids[0] in set(tokenizer.all_special_ids) else None


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, template: str) -> set[int]:
    """Tokens that end an assistant turn: the tokenizer's EOS and the special token the template puts right
    after an assistant message (ChatML's ``<|im_end|>``)."""
    found = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    end = _end_of_turn(tokenizer, template)
    return found | ({end} if end is not None else set())
