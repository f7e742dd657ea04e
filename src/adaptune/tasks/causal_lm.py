"""``causal_lm``: supervised fine-tuning of a decoder on conversations (instruction tuning).

Data: Alpaca, ShareGPT or OpenAI-message records (:mod:`adaptune.data.chat`), rendered with the model's chat
template. Loss: next-token cross-entropy on the assistant turns only (their end-of-turn token included),

    L = - (1 / N) sum_{t in R} log p(x_{t+1} | x_{<=t})       R: positions whose next token is a response token

and the frozen LM head runs only on those ``N`` positions: ``(N, d) -> (N, V)`` instead of ``(B, T, V)``, a
chunk of rows at a time (:class:`ChunkedLMLoss`), which also computes the states' gradient from each chunk's
logits, so the ``(N, V)`` logits are never stored. The head's output for labelled batches is those
states; :meth:`CausalLM.loss` and :meth:`CausalLM.decode` apply the LM head.

Packing (``pack: true``): training examples are concatenated into rows of at most ``max_length`` tokens; each
keeps its own position ids (0, 1, ... from its first token) and the model gets no 2-D mask, so transformers
builds a block-diagonal causal mask from the position ids: no token attends to another example (tested against
the examples run one by one). Targets are shifted inside each example, so no example predicts the next one's
first token. Evaluation batches are never packed.

Evaluation: held-out loss (token-weighted) and perplexity ``exp(loss)``; with ``eval_generate: N`` the final
evaluation (and the one at the start, ``training.eval_at_start``, and ``adaptune eval``) also generates for the
first ``N`` examples and scores them with the recipe's metrics (``recipe: none``: exact match, ROUGE-L, chrF and
BLEU; :mod:`adaptune.evaluation.generation`), writing ``generations_<split>.jsonl`` (prompt, reference,
generation).

Recipes (``recipe``, :mod:`adaptune.data.recipes`): ``translation`` and ``summarisation`` read (source, target)
rows and turn each into ``[user: prompt_template(source), assistant: target]``; ``dialogue`` scores every
assistant turn of a conversation given the gold turns before it. Each names the metrics of its field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from transformers import PreTrainedTokenizerBase

from adaptune.config import DataConfig, GenerationConfig, TaskConfig
from adaptune.data.chat import ChatExample, Message, chat_from_row, prompt_ids, template_for, tokenize_conversation
from adaptune.data.formats.jsonfile import json_kind, read_json_rows, read_jsonl_rows
from adaptune.data.formats.source import Location, Row, read_text_file
from adaptune.data.recipes import RECIPES, PromptSpec, prompt_spec, read_pair_examples, reply_prompts
from adaptune.errors import ConfigError, DataError
from adaptune.generation import generate
from adaptune.registry import register_task
from adaptune.tasks.base import Encoded, EvalOutput, PredictContext, Task
from adaptune.tasks.pooling import pool

IGNORE = -100


class CausalLMConfig(TaskConfig):
    """Supervised fine-tuning settings."""

    name: Literal["causal_lm"] = "causal_lm"
    pack: bool = Field(False, description="Pack training examples into rows of max_length (isolated attention).")
    holdout: int = Field(
        0,
        ge=0,
        description="When data.dev is the same file as data.train: its last N rows are the dev set and are left "
        "out of training (for data without a split, such as Alpaca).",
    )
    eval_generate: int = Field(
        0,
        ge=0,
        description="Final evaluation (and training.eval_at_start, adaptune eval): generate for the first N examples "
        "(recipe dialogue: the first N assistant turns) and score them with the recipe's metrics.",
    )
    generation: GenerationConfig = Field(
        default_factory=lambda: GenerationConfig(max_new_tokens=128),
        description="Decoding options of eval_generate.",
    )
    chat_template: str | None = Field(
        None, description="A Jinja chat template to use instead of the tokenizer's own (or the plain fallback)."
    )
    recipe: Literal["none", "translation", "summarisation", "dialogue"] = Field(
        "none",
        description="Text-to-text recipe (adaptune.data.recipes): 'translation' reads source/target rows and "
        "'summarisation' document/summary rows (JSONL, JSON, CSV or TSV; data.text_column/label_column name other "
        "fields) as instruction records; 'dialogue' reads chat records (ShareGPT ...) and scores every assistant "
        "turn given the gold history; each sets the metrics of eval_generate. 'none': chat records as they are.",
    )
    source_language: str | None = Field(
        None, description="Translation: the source language named in the default prompt (e.g. 'English')."
    )
    target_language: str | None = Field(
        None, description="Translation: the target language named in the default prompt (required without a template)."
    )
    prompt_template: str | None = Field(
        None,
        description="Translation/summarisation: the user message made from a row, with {source} (the row's text) "
        "and optionally {source_language}/{target_language}; None: the recipe's default prompt.",
    )
    metrics: list[Literal["exact_match", "rouge_1", "rouge_2", "rouge_l", "bleu", "chrf"]] | None = Field(
        None,
        min_length=1,
        description="Generation metrics of eval_generate; None: the recipe's (translation: bleu, chrf; "
        "summarisation: rouge_1, rouge_2, rouge_l; dialogue: rouge_l, bleu, chrf; none: exact_match, rouge_l, "
        "chrf, bleu).",
    )

    @model_validator(mode="after")
    def _recipe_prompt(self) -> CausalLMConfig:
        prompt_spec(self.recipe, self.prompt_template, self.source_language, self.target_language)
        return self

    @property
    def generation_metrics(self) -> tuple[str, ...]:
        """The metrics eval_generate reports: ``metrics``, else the recipe's."""
        return tuple(self.metrics) if self.metrics else RECIPES[self.recipe].metrics


@dataclass
class PackedEncoded(Encoded):
    """Several examples in one row; ``segments`` are their lengths, in order."""

    segments: list[int] = field(default_factory=list)


#: Rows of logits computed at once by :class:`ChunkedLMLoss`: about 2**24 logits (64 MB in fp32) per chunk.
CHUNK_LOGITS = 2**24


def _chunk_rows(vocab: int) -> int:
    return max(1, CHUNK_LOGITS // max(1, vocab))


def _logits(states: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """fp32 logits ``(n, V)`` of states ``(n, d)`` under the LM head's weight ``(V, d)``."""
    out = F.linear(states.to(weight.dtype), weight, bias)
    return out.float()


class ChunkedLMLoss(torch.autograd.Function):
    """Mean cross-entropy of next tokens ``targets (N,)`` given states ``(N, d)`` under a frozen LM head (weight
    ``(V, d)``, optional bias), ``rows`` states at a time, never holding more than one chunk of logits.

    The loss is a scalar, so its gradient with respect to the states is known up to the incoming factor as soon
    as a chunk's logits are: ``(softmax - onehot(target)) / N @ W``. The forward pass computes it right there and
    saves it ``(N, d)``; the backward pass only scales it. The logits are computed once, and neither they nor
    the ``(N, V)`` log-probabilities are stored. Only the states get a gradient (the LM head is frozen)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        states: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        rows: int,
    ) -> torch.Tensor:
        n = states.shape[0]
        total = torch.zeros((), dtype=torch.float32, device=states.device)
        grad = torch.empty_like(states) if ctx.needs_input_grad[0] else None
        for start in range(0, n, rows):
            end = min(n, start + rows)
            logits = _logits(states[start:end], weight, bias)
            lse = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, targets[start:end, None])[:, 0]
            total += (lse - picked).sum()
            if grad is not None:
                probs = logits.sub_(lse[:, None]).exp_()
                probs[torch.arange(end - start, device=probs.device), targets[start:end]] -= 1.0
                probs.div_(n)
                grad[start:end] = (probs.to(weight.dtype) @ weight).to(states.dtype)
        ctx.save_for_backward(grad)
        return total / n

    @staticmethod
    def backward(ctx: Any, incoming: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad * incoming.to(grad.dtype), None, None, None, None


def lm_loss(states: torch.Tensor, lm_head: nn.Module, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``states (N, d)`` under the frozen ``lm_head``, chunked
    (:class:`ChunkedLMLoss`)."""
    weight, bias = lm_head.weight, getattr(lm_head, "bias", None)
    if weight.requires_grad or (bias is not None and bias.requires_grad):  # a trained head: plain autograd
        return F.cross_entropy(lm_head(states.to(weight.dtype)).float(), targets)
    return ChunkedLMLoss.apply(states, weight, bias, targets, _chunk_rows(weight.shape[0]))  # type: ignore[no-any-return]


@torch.no_grad()
def lm_token_nll(states: torch.Tensor, lm_head: nn.Module, targets: torch.Tensor) -> torch.Tensor:
    """Per-position negative log-likelihood ``(N,)`` of ``targets`` given ``states (N, d)``, chunked."""
    weight, bias = lm_head.weight, getattr(lm_head, "bias", None)
    rows = _chunk_rows(weight.shape[0])
    parts = [
        F.cross_entropy(_logits(states[i : i + rows], weight, bias), targets[i : i + rows], reduction="none")
        for i in range(0, states.shape[0], rows)
    ]
    return torch.cat(parts) if parts else states.new_zeros(0, dtype=torch.float32)


class CausalLMHead(nn.Module):
    """The positions that are scored, and the frozen LM head for unlabelled batches.

    ``forward(hidden (B, T, d), batch)``: with ``labels`` ``(B, T)``, the hidden states ``(N, d)`` of the ``N``
    positions whose label is not -100 (row-major order), which :meth:`CausalLM.loss` and
    :meth:`CausalLM.decode` turn into the loss chunk by chunk; without labels, the logits ``(B, V)`` of each
    row's last real token. The LM head is held outside the module tree: it has no trainable or saved tensors.
    """

    def __init__(self, lm_head: nn.Module) -> None:
        super().__init__()
        self._frozen = (lm_head,)

    def forward(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "labels" in batch:
            return hidden[batch["labels"] != IGNORE]
        lm_head = self._frozen[0]
        states = pool(hidden, batch["attention_mask"], "last")
        return lm_head(states.to(lm_head.weight.dtype))  # type: ignore[no-any-return]


def _next_token_targets(ids: list[int], trained: list[bool]) -> list[int]:
    """``target[t] = ids[t + 1]`` where token ``t + 1`` is trained, else -100 (the last position too)."""
    return [ids[t + 1] if trained[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]


@register_task("causal_lm", CausalLMConfig)
class CausalLM(Task[ChatExample]):
    """Instruction tuning / chat fine-tuning of a decoder: loss on the assistant's tokens only."""

    config: CausalLMConfig
    default_metric = "loss"
    label_field = "output"
    kind = "generate"

    def __init__(self, config: CausalLMConfig) -> None:
        super().__init__(config)
        self._lm_head: nn.Module | None = None
        self._template: str | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None

    # -- data -------------------------------------------------------------------------------------------
    def read(self, path: str, data: DataConfig, *, split: str, require_labels: bool = True) -> list[ChatExample]:
        examples = self._read_file(path, data, require_labels)
        held = self.config.holdout
        if held and data.train and data.dev and Path(data.train).resolve() == Path(data.dev).resolve():
            if held >= len(examples):
                raise ConfigError(f"task.holdout = {held} leaves no training rows in {path} ({len(examples)} rows)")
            same_file = Path(path).resolve() == Path(data.train).resolve()
            if same_file and split == "train":
                examples = examples[:-held]
            elif same_file and split == "dev":
                examples = examples[-held:]
        if require_labels:
            for ex in examples:
                if ex.last_assistant() is None:
                    raise DataError("has no assistant turn to learn", file=ex.source or path, field=self.label_field)
        return examples

    def _read_file(self, path: str, data: DataConfig, require_labels: bool) -> list[ChatExample]:
        """Chat records, or a recipe's pair rows as instruction records (:mod:`adaptune.data.recipes`)."""
        recipe, prompt = RECIPES[self.config.recipe], self.pair_prompt
        if prompt is not None:
            return read_pair_examples(path, data, recipe, prompt, require_labels=require_labels)
        file = Path(path)
        fmt = data.format if data.format != "auto" else ("jsonl" if file.suffix in (".jsonl", ".ndjson") else "json")
        if fmt not in ("json", "jsonl"):
            raise DataError(f"causal_lm reads JSON or JSON Lines files, not {fmt}", file=path)
        text = read_text_file(file)
        rows = read_json_rows(text, path) if json_kind(text) == "json" else read_jsonl_rows(text, path)
        return [chat_from_row(row) for row in rows]

    @property
    def pair_prompt(self) -> PromptSpec | None:
        """The prompt that turns a pair row into the user message (translation, summarisation); else None."""
        cfg = self.config
        return prompt_spec(cfg.recipe, cfg.prompt_template, cfg.source_language, cfg.target_language)

    def parse_input(self, item: str | dict[str, Any]) -> ChatExample:
        if isinstance(item, str):
            if not item.strip():
                raise DataError("needs a non-empty prompt", field="prompt")
            return ChatExample((Message("user", item),))
        if isinstance(item.get("prompt"), str):
            return self.parse_input(item["prompt"])
        prompt = self.pair_prompt
        if prompt is not None and isinstance(item.get("source"), str) and item["source"].strip():
            return self.parse_input(prompt.render(item["source"].strip()))  # a recipe's row text: its prompt
        return self.without_labels(chat_from_row(Row(Location("<input>", 1), item)))

    def label_names(self, examples: Sequence[ChatExample]) -> list[str]:
        return []

    def gold(self, example: ChatExample) -> Sequence[str]:
        return ()

    def without_labels(self, example: ChatExample) -> ChatExample:
        return replace(example, messages=example.prompt)

    def encode(
        self, example: ChatExample, tokenizer: PreTrainedTokenizerBase, labels: Sequence[str], max_length: int
    ) -> Encoded:
        template = self.template(tokenizer)
        if example.last_assistant() is None:  # a prompt: what generation starts from
            ids = prompt_ids(tokenizer, example.messages, template)
            return Encoded(
                ids[-max_length:], truncated=len(ids) > max_length, dropped_tokens=max(0, len(ids) - max_length)
            )
        ids, trained = tokenize_conversation(tokenizer, example, template)
        dropped = max(0, len(ids) - max_length)
        ids, trained = ids[:max_length], trained[:max_length]
        return Encoded(ids, target=_next_token_targets(ids, trained), truncated=dropped > 0, dropped_tokens=dropped)

    def template(self, tokenizer: PreTrainedTokenizerBase) -> str:
        """The chat template of ``task.chat_template``, else the tokenizer's (:class:`ChatTemplated`)."""
        return template_for(tokenizer, self.config.chat_template)

    def predict(self, ctx: PredictContext, examples: Sequence[ChatExample]) -> list[dict[str, Any]]:
        """Generate a reply to each prompt with ``task.generation`` (greedy by default)."""
        prompts = [[m.as_dict() for m in ex.messages] for ex in examples]
        outputs = ctx.generate(prompts, self.config.generation) if prompts else []
        return [{"messages": p, **asdict(g)} for p, g in zip(prompts, outputs, strict=True)]

    def truncation_note(self, split: str, encoded: Sequence[Encoded], max_length: int) -> str | None:
        note = super().truncation_note(split, encoded, max_length)
        lost = sum(1 for e in encoded if e.target is not None and all(t == IGNORE for t in e.target))
        if lost:
            note = (note or split) + f"; {lost} example(s) kept no response token and add nothing to the loss"
        return note

    def training_examples(self, encoded: list[Encoded], max_length: int) -> list[Encoded]:
        """With ``pack``: consecutive examples joined into rows of at most ``max_length`` tokens."""
        if not self.config.pack:
            return encoded
        rows: list[PackedEncoded] = []
        for item in encoded:
            if not rows or len(rows[-1]) + len(item) > max_length:
                rows.append(PackedEncoded([], target=[], segments=[]))
            row = rows[-1]
            row.input_ids += item.input_ids
            row.target += item.target
            row.segments.append(len(item))
        return list(rows)

    # -- model ------------------------------------------------------------------------------------------
    def bind(self, backbone: Any) -> None:
        if backbone.lm_head is None:
            raise ConfigError(
                f"task 'causal_lm' needs a language model with an LM head; {backbone.name} has none "
                "(an encoder, or a checkpoint saved without its head)"
            )
        self._lm_head, self._tokenizer = backbone.lm_head, backbone.tokenizer

    def build_head(self, hidden_size: int, num_labels: int, pooling: str) -> nn.Module:
        assert self._lm_head is not None, "bind() comes first"
        return CausalLMHead(self._lm_head)

    def collate(self, encoded: Sequence[Encoded], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Pad ids and targets (-100) to the longest row; packed rows get per-example ``position_ids`` (padding
        at a row's end is a block of its own) and are right-padded whatever ``padding_side`` says."""
        packed = any(isinstance(e, PackedEncoded) for e in encoded)
        side = "right" if packed else padding_side
        batch = super().collate([replace(e, target=None) for e in encoded], pad_id, side)
        width = batch["input_ids"].shape[1]
        if all(e.target is not None for e in encoded):
            labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
            for row, item in enumerate(encoded):
                span = slice(width - len(item), width) if side == "left" else slice(0, len(item))
                labels[row, span] = torch.tensor(item.target, dtype=torch.long)
            batch["labels"] = labels
        if not packed:
            return batch
        positions = torch.zeros_like(batch["input_ids"])
        for row, item in enumerate(encoded):
            lengths = [*getattr(item, "segments", [len(item)]), positions.shape[1] - len(item)]
            positions[row] = torch.cat([torch.arange(n) for n in lengths if n])
        batch["position_ids"] = positions
        return batch

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``logits``: the head's output for a labelled batch, the scored positions' states ``(N, d)``."""
        labels = batch["labels"][batch["labels"] != IGNORE]
        if labels.numel() == 0:
            return logits.sum() * 0.0
        assert self._lm_head is not None, "bind() comes first"
        return lm_loss(logits, self._lm_head, labels)

    def decode(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], encoded: Sequence[Encoded]) -> list[Any]:
        """Per example ``(summed negative log-likelihood, scored tokens)`` (``logits``: the scored positions'
        states); unlabelled: the next token's id (``logits``: ``(B, V)``)."""
        if "labels" not in batch:
            return [(int(i), None) for i in logits.argmax(-1)]
        keep = batch["labels"] != IGNORE
        assert self._lm_head is not None, "bind() comes first"
        nll = lm_token_nll(logits, self._lm_head, batch["labels"][keep])
        counts = keep.sum(1).tolist()
        return [(float(part.sum()), int(n)) for part, n in zip(nll.split(counts), counts, strict=True)]

    # -- evaluation -------------------------------------------------------------------------------------
    def evaluate(
        self, examples: Sequence[ChatExample], predictions: Sequence[Any], labels: Sequence[str]
    ) -> EvalOutput:
        total = sum(p[0] for p in predictions)
        tokens = sum(p[1] or 0 for p in predictions)
        loss = total / tokens if tokens else float("nan")
        report = {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "tokens": tokens, "examples": len(examples)}
        return EvalOutput(report=report, headline={"loss": loss, "perplexity": report["perplexity"]})

    def to_output(self, example: ChatExample, prediction: Any, labels: Sequence[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"messages": [m.as_dict() for m in example.prompt], "reference": example.reference}
        total, tokens = prediction
        if tokens:
            out["loss"] = total / tokens
        return out

    def extra_evaluation(
        self, model: Any, examples: Sequence[ChatExample], folder: Any, split: str
    ) -> dict[str, float]:
        """With ``eval_generate: N``: generate for the first N examples (recipe ``dialogue``: the first N assistant
        turns, each from the gold history before it), score them with the recipe's metrics, and write the
        samples file ``generations_<split>.jsonl`` into ``folder`` (none when ``folder`` is None)."""
        from adaptune.evaluation.generation import generation_scores
        from adaptune.io import atomic_write_text

        labelled = [ex for ex in examples if ex.last_assistant() is not None]
        if self.config.recipe == "dialogue":
            chosen = [pair for ex in labelled for pair in reply_prompts(ex)][: self.config.eval_generate]
        else:
            chosen = [(ex.prompt, ex.reference) for ex in labelled][: self.config.eval_generate]
        if not chosen:
            return {}
        prompts = [[m.as_dict() for m in history] for history, _ in chosen]
        outputs = generate(model, prompts, self.config.generation)
        references = [reference for _, reference in chosen]
        if folder is not None:
            lines = [
                json.dumps(
                    {"prompt": p, "reference": r, "generation": g.text, "finish_reason": g.finish_reason},
                    ensure_ascii=False,
                )
                for p, r, g in zip(prompts, references, outputs, strict=True)
            ]
            Path(folder).mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(folder) / f"generations_{split}.jsonl", "\n".join(lines) + "\n")
        return generation_scores(references, [g.text for g in outputs], self.config.generation_metrics)
