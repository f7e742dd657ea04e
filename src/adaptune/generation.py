"""Text generation with an adapted decoder: greedy or sampled decoding over the model's KV cache.

``generate(model, prompts, config)`` decodes a batch (left-padded, one forward per new token with the key/value
cache); ``generate_requests(model, [(prompts, config), ...])`` decodes several requests in that one batch, each
with its own ``max_new_tokens`` and ``stop`` strings (the other settings shared: :func:`shared_settings`);
``stream(model, prompt, config)`` yields the text of one prompt as it grows. All run the same loop:

1. prefill: the prompts ``(B, T)`` go through the method's input hook (``Method.prepare_inputs``), so prompt
   tuning's virtual tokens ``(B, n + T, d)`` and prefix tuning's key/value prefixes (a cache of length ``n``)
   are in place, with position ids counted from the attention mask (left padding does not shift them);
2. step: the last position's hidden state ``(B, d)`` -> the frozen LM head -> logits ``(B, V)`` (the repetition
   penalty on the tokens the row has had) -> next token ``(B,)`` (argmax, or a sample after temperature, top-k and
   top-p); the token goes in alone ``(B, 1)`` with the cache, the mask grows by one column and each unfinished
   row's position by one (a finished row is still fed, its tokens ignored, its position kept: a request of a
   merged batch never runs past its own share of the position table).

LoRA and the other weight methods act through their hooks, merged or not. A row finishes at an end-of-turn
token (``finish_reason="stop"``, the token not shown), at a stop string (cut before it, ``"stop"``), or after
``max_new_tokens`` or as many as the position table leaves (``"length"``).

Prompts: a list of ``{"role", "content"}`` messages is rendered with the chat template and its generation
prompt; a string is one user message (``chat=True``, the default) or raw text continued as is (``chat=False``).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from adaptune.config import GenerationConfig
from adaptune.data.chat import Message, prompt_ids, stop_token_ids
from adaptune.errors import ConfigError
from adaptune.positions import positions_from_mask
from adaptune.tasks.base import chat_template

if TYPE_CHECKING:  # only for annotations: generation never needs the model module, so tasks may import it
    from adaptune.model import AdaptedModel

Prompt = str | Sequence[Mapping[str, str]]


#: One request of :func:`generate_requests`: its prompts and its decoding options.
Request = tuple[Sequence[Prompt], GenerationConfig]


@dataclass
class Generation:
    """One prompt's result: the text, token counts, and why it ended (``stop`` or ``length``)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: Literal["stop", "length"]


@dataclass
class _Row:
    """One prompt's decoding state: generated ids and text, with stop strings and end-of-turn tokens applied."""

    tokenizer: Any
    stops: list[str]
    stop_ids: set[int]
    max_new: int
    ids: list[int] = field(default_factory=list)
    generated: int = 0
    text: str = ""
    finish: Literal["stop", "length"] | None = None
    shown: int = 0

    def add(self, token: int) -> None:
        """Take the next generated token (ignored once finished)."""
        if self.finish is not None:
            return
        self.generated += 1
        if token in self.stop_ids:
            self.finish = "stop"
            return
        self.ids.append(token)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        cut = min((i for i in (self.text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.finish = self.text[:cut], "stop"
        elif self.generated >= self.max_new:
            self.finish = "length"

    def delta(self) -> str:
        """Text not yet shown that can no longer change: an incomplete UTF-8 character (``\\ufffd``) at the end,
        or an ending that may be the start of a stop string, is held back until the row finishes."""
        safe = self.text
        if self.finish is None:
            safe = safe.rstrip("\ufffd")
            held = max((k for s in self.stops for k in range(1, len(s)) if safe.endswith(s[:k])), default=0)
            safe = safe[: len(safe) - held]
        out = safe[self.shown :] if len(safe) > self.shown else ""
        self.shown = max(self.shown, len(safe))
        return out


def _as_messages(prompt: Prompt, chat: bool) -> tuple[Message, ...] | str:
    if isinstance(prompt, str):
        return (Message("user", prompt),) if chat else prompt
    return tuple(Message(str(m["role"]), str(m["content"])) for m in prompt)


def _encode_prompts(
    model: AdaptedModel, prompts: Sequence[Prompt], config: GenerationConfig, chat: bool
) -> list[list[int]]:
    """Token ids of every prompt. With a position table of ``limit`` entries a prompt is cut from the left to
    ``max(limit - max_new_tokens, limit // 2)`` tokens: it keeps room for max_new_tokens where the table has it,
    and at least half the table where it has not (:func:`_budget` then lowers the number of new tokens)."""
    rows = []
    for ids in _prompt_ids(model, prompts, chat):
        if not ids:
            raise ConfigError("an empty prompt cannot be continued")
        limit = model.info.max_positions
        if limit is not None:
            if limit < 2:
                raise ConfigError(f"{model.info.name} has {limit} position(s): no room for a prompt and a reply")
            ids = ids[-max(limit - config.max_new_tokens, limit // 2) :]
        rows.append(ids)
    return rows


def _prompt_ids(model: AdaptedModel, prompts: Sequence[Prompt], chat: bool) -> list[list[int]]:
    """Token ids of every prompt as rendered (chat template and generation prompt, or raw text), uncut."""
    tokenizer, template = model.info.tokenizer, _template(model)
    rows = []
    for prompt in prompts:
        messages = _as_messages(prompt, chat)
        if isinstance(messages, str):
            rows.append(list(tokenizer(messages, add_special_tokens=True)["input_ids"]))
        else:
            rows.append(prompt_ids(tokenizer, messages, template))
    return rows


def prompt_tokens(model: AdaptedModel, prompts: Sequence[Prompt], *, chat: bool = True) -> list[int]:
    """How many tokens each prompt has as :func:`generate` renders it, before any cut to the position table
    (what a server checks against its input limit)."""
    return [len(ids) for ids in _prompt_ids(model, prompts, chat)]


def _budget(model: AdaptedModel, ids: list[list[int]], config: GenerationConfig) -> int:
    """New tokens per prompt: max_new_tokens, or fewer where the longest prompt leaves less of the position table
    (those rows end with finish_reason ``length``)."""
    limit = model.info.max_positions
    return config.max_new_tokens if limit is None else min(config.max_new_tokens, limit - max(map(len, ids), default=0))


def _template(model: AdaptedModel) -> str:
    return chat_template(model.task, model.info.tokenizer)


def penalise_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """``logits (B, V)`` with the entries where ``seen (B, V)`` is True made less likely: positive ones divided by
    ``penalty``, negative ones multiplied by it (CTRL's repetition penalty, as transformers applies it)."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def _pick(logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Next token ``(B,)`` from logits ``(B, V)``."""
    if not config.do_sample:
        return logits.argmax(-1)
    logits = logits.float() / config.temperature
    if config.top_k > 0:
        kth = torch.topk(logits, min(config.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if config.top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(ordered, dim=-1)
        drop = probs.cumsum(-1) - probs >= config.top_p  # mass before the token already reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(1)


def shared_settings(config: GenerationConfig) -> tuple[Any, ...]:
    """The decoding settings that requests of one batch must share (all but max_new_tokens and stop); greedy
    decoding ignores the sampler's, so any two greedy requests with the same repetition penalty agree."""
    if not config.do_sample:
        return (False, config.repetition_penalty)
    return (True, config.temperature, config.top_p, config.top_k, config.repetition_penalty, config.seed)


def cache_argument(backbone: torch.nn.Module) -> str:
    """The name under which ``backbone``'s forward takes a key/value cache: ``cache`` since transformers 5.24
    (which still accepts ``past_key_values``, with a deprecation warning), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(backbone.forward).parameters else "past_key_values"


def output_cache(out: Any) -> Any:
    """The key/value cache a forward pass returned (``out.cache``, or ``out.past_key_values`` before 5.24)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _steps(
    model: AdaptedModel, rows: list[list[int]], config: GenerationConfig, states: Sequence[_Row]
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row ``(B,)``, forever (the caller stops); left padding, KV cache. A row whose
    state has finished keeps its position (its tokens are ignored)."""
    lm_head = model.lm_head
    if lm_head is None:
        raise ConfigError(f"{model.info.name} has no LM head (a bare base model or an encoder): it cannot generate")
    device = next(model.backbone.parameters()).device
    width, pad = max(map(len, rows)), int(model.info.tokenizer.pad_token_id or 0)
    ids = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, device=device)
        mask[i, width - len(row) :] = 1
    inputs = dict(model.method.prepare_inputs(model.backbone, {"input_ids": ids, "attention_mask": mask}).inputs)
    mask = inputs["attention_mask"]
    inputs.setdefault("position_ids", positions_from_mask(mask))
    position = inputs["position_ids"][:, -1:]
    generator = torch.Generator(device=device).manual_seed(config.seed) if config.seed is not None else None
    seen = None  # (B, V): the tokens each row has had so far, for the repetition penalty
    if config.repetition_penalty != 1.0:
        seen = torch.zeros(len(rows), lm_head.weight.shape[0], dtype=torch.bool, device=device)
        for i, row in enumerate(rows):
            seen[i, torch.tensor(row, dtype=torch.long, device=device)] = True
    out = model.backbone(**inputs, use_cache=True)
    cache_name = cache_argument(model.backbone)
    while True:
        hidden = out.last_hidden_state[:, -1]
        logits = lm_head(hidden.to(lm_head.weight.dtype))
        if seen is not None:
            logits = penalise_repeats(logits.float(), seen, config.repetition_penalty)
        token = _pick(logits, config, generator)
        if seen is not None:
            seen[torch.arange(len(rows), device=device), token] = True
        yield token
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        running = [state.finish is None for state in states]
        position = position + (torch.tensor(running, device=device)[:, None] if not all(running) else 1)
        out = model.backbone(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=position,
            use_cache=True,
            **{cache_name: output_cache(out)},
        )


def _rows(model: AdaptedModel, config: GenerationConfig, ids: list[list[int]]) -> list[_Row]:
    tokenizer = model.info.tokenizer
    stop_ids, budget = stop_token_ids(tokenizer, _template(model)), _budget(model, ids, config)
    return [_Row(tokenizer, list(config.stop), stop_ids, budget) for _ in ids]


def _run(model: AdaptedModel, rows: list[_Row], ids: list[list[int]], config: GenerationConfig) -> Iterator[None]:
    """Drive :func:`_steps` until every row has finished; yields after each step (for streaming)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for tokens in _steps(model, ids, config, rows):
                for row, token in zip(rows, tokens.tolist(), strict=True):
                    row.add(int(token))
                yield
                if all(row.finish is not None for row in rows):
                    return
    finally:
        model.train(was_training)


def generate_requests(model: AdaptedModel, requests: Sequence[Request], *, chat: bool = True) -> list[list[Generation]]:
    """Decode the prompts of several requests in one batch; one result list per request, in order.

    Each request keeps its own ``max_new_tokens`` and ``stop`` strings, and gets exactly what :func:`generate`
    gives it alone (its prompts cut and its budget set by its own config: :func:`_encode_prompts`,
    :func:`_budget`); the other settings must be the same for all (:func:`shared_settings`, else
    :class:`~adaptune.errors.ConfigError`). Sampled rows share one generator, so a seeded sampled request's
    text depends on what it is batched with: run such requests alone.
    """
    if not requests:
        return []
    shared = shared_settings(requests[0][1])
    if any(shared_settings(config) != shared for _, config in requests[1:]):
        raise ConfigError(
            "requests decoded together must share do_sample, temperature, top_p, top_k, repetition_penalty and seed"
        )
    ids: list[list[int]] = []
    rows: list[_Row] = []
    for prompts, config in requests:
        own = _encode_prompts(model, prompts, config, chat)
        ids += own
        rows += _rows(model, config, own)
    if rows:
        for _ in _run(model, rows, ids, requests[0][1]):
            pass
    results = [
        Generation(row.text, len(prompt), row.generated, row.finish or "length")
        for row, prompt in zip(rows, ids, strict=True)
    ]
    out: list[list[Generation]] = []
    start = 0
    for prompts, _ in requests:
        out.append(results[start : start + len(prompts)])
        start += len(prompts)
    return out


def generate(
    model: AdaptedModel, prompts: Sequence[Prompt], config: GenerationConfig | None = None, *, chat: bool = True
) -> list[Generation]:
    """Generate for a batch of prompts (left-padded together); results in prompt order."""
    return generate_requests(model, [(prompts, config or GenerationConfig())], chat=chat)[0]


def stream(
    model: AdaptedModel, prompt: Prompt, config: GenerationConfig | None = None, *, chat: bool = True
) -> Iterator[str]:
    """Yield the generated text of one prompt in pieces (deltas); joined, they equal :func:`generate`'s text."""
    config = config or GenerationConfig()
    ids = _encode_prompts(model, [prompt], config, chat)
    rows = _rows(model, config, ids)
    for _ in _run(model, rows, ids, config):
        piece = rows[0].delta()
        if piece:
            yield piece
