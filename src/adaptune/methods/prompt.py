"""``prompt``: prompt tuning (Lester et al. 2021).

Lester, Al-Rfou and Constant, "The Power of Scale for Parameter-Efficient Prompt Tuning", EMNLP 2021. The frozen
model reads ``n`` trainable embeddings before the embedded input:

    inputs_embeds = [P ; E(x)]        P: (n, d),  E(x): (B, T, d)  ->  (B, n + T, d)
    attention_mask = [1_n ; m]        m: (B, T)                    ->  (B, n + T)

Only ``P`` (``n * d`` numbers) and the task head train. ``P`` is initialised from the model's own word
embeddings (``vocab``: rows of randomly sampled vocabulary tokens; ``text``: the tokens of ``init_text``, repeated
or cut to ``n``) or randomly at the scale of those embeddings; Lester et al. found vocabulary initialisation much
better than random for all but the largest models (their figure 3b).

Where the prompt goes. Before everything, [CLS]/BOS included, as in the paper and peft. The model drops the first
``n`` hidden states before the head (:class:`~adaptune.methods.base.InputPrep` ``n_virtual``), so the head sees
``(B, T, d)`` aligned with the batch: CLS pooling reads [CLS] (which attended to the prompt), mean and last-token
pooling and token tasks use the batch's own attention mask, left padding included.

Positions. Encoders number the ``n + T`` positions themselves: the prompt takes positions ``0..n-1`` and the text
starts at ``n`` (as in peft), so inputs must fit in the position table minus ``n``; longer ones raise a
:class:`~adaptune.errors.ConfigError` naming ``data.max_length``. Causal decoders get position ids counted from the
extended mask (see :mod:`adaptune.positions`): a left-padded row ``[P, pad, pad, x]`` numbers ``x`` from
``n`` just like ``[P, x]``, so batching does not change the outputs.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from transformers import PreTrainedTokenizerBase

from adaptune.config import MethodConfig
from adaptune.errors import ConfigError
from adaptune.methods.base import AttachContext, InputPrep, Method
from adaptune.positions import check_positions, position_limit, positions_from_mask
from adaptune.registry import register_method

#: Name of the prompt module on the backbone; its tensor is saved as ``adapter.prompt.weight``.
PROMPT_ATTR = "prompt"


class PromptConfig(MethodConfig):
    """Configuration of prompt tuning."""

    name: Literal["prompt"] = "prompt"
    num_virtual_tokens: int = Field(20, ge=1, le=1024, description="Length n of the trainable prompt.")
    init: Literal["random", "vocab", "text"] = Field(
        "vocab",
        description="'vocab': embeddings of n random vocabulary tokens; 'text': embeddings of the tokens of "
        "init_text, repeated or cut to n; 'random': normal noise at the scale of the word embeddings.",
    )
    init_text: str | None = Field(None, description="init='text': the text whose token embeddings start the prompt.")

    @model_validator(mode="after")
    def _text_init_needs_text(self) -> PromptConfig:
        if self.init == "text" and not (self.init_text and self.init_text.strip()):
            raise ConfigError("config key 'method.init_text' is required (a non-empty text) when method.init is 'text'")
        return self


class PromptEmbedding(nn.Module):
    """The trainable prompt ``P``: ``weight`` ``(n, d)``; ``forward(B)`` returns it for a batch, ``(B, n, d)``."""

    def __init__(self, num_virtual_tokens: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_virtual_tokens, dim))

    def forward(self, batch_size: int) -> torch.Tensor:
        """``(B, n, d)``: the same prompt for every example."""
        return self.weight.unsqueeze(0).expand(batch_size, -1, -1)


def init_random_(weight: torch.Tensor, words: nn.Embedding) -> None:
    """Normal noise with the standard deviation of the word embedding matrix (Lester et al. used uniform noise
    in [-0.5, 0.5], at the scale of T5's embeddings; matching the model's own scale generalises that)."""
    with torch.no_grad():
        weight.normal_(0.0, float(words.weight.float().std()))


def init_from_vocab_(weight: torch.Tensor, words: nn.Embedding, candidates: torch.Tensor) -> None:
    """Rows of the word embeddings of ``len(weight)`` tokens drawn from ``candidates`` (without replacement when
    there are enough). Lester et al. drew from the 5,000 most frequent tokens; a tokenizer does not say which
    those are, so every non-special token is a candidate."""
    n = weight.shape[0]
    if len(candidates) >= n:
        picked = candidates[torch.randperm(len(candidates))[:n]]
    else:
        picked = candidates[torch.randint(len(candidates), (n,))]
    with torch.no_grad():
        weight.copy_(words(picked.to(words.weight.device)).float())


def init_from_text_(weight: torch.Tensor, words: nn.Embedding, token_ids: list[int]) -> None:
    """The word embeddings of ``token_ids``, repeated and cut to ``len(weight)`` rows (as peft does)."""
    n = weight.shape[0]
    ids = (token_ids * math.ceil(n / len(token_ids)))[:n]
    with torch.no_grad():
        weight.copy_(words(torch.tensor(ids, device=words.weight.device)).float())


def vocabulary_candidates(vocab_rows: int, tokenizer: PreTrainedTokenizerBase | None) -> torch.Tensor:
    """Token ids a ``vocab`` initialisation may draw: every id the tokenizer produces that has an embedding row,
    except special tokens; every row when there is no tokenizer."""
    size = min(vocab_rows, len(tokenizer)) if tokenizer is not None else vocab_rows
    ids = torch.arange(size)
    if tokenizer is not None:
        special = torch.tensor(sorted(i for i in tokenizer.all_special_ids if i is not None), dtype=torch.long)
        ids = ids[~torch.isin(ids, special)]
    return ids


def text_token_ids(text: str, tokenizer: PreTrainedTokenizerBase | None) -> list[int]:
    """The tokens of ``text`` without special tokens; a :class:`ConfigError` when there are none."""
    if tokenizer is None:
        raise ConfigError("config key 'method.init' = 'text' needs the model's tokenizer, and none was given")
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise ConfigError(f"config key 'method.init_text' = {text!r} has no tokens")
    return ids


def word_embeddings(model: nn.Module) -> nn.Embedding:
    """The model's input word embeddings (``get_input_embeddings``), or a :class:`ConfigError`."""
    get = getattr(model, "get_input_embeddings", None)
    words = get() if callable(get) else None
    if not isinstance(words, nn.Embedding):
        raise ConfigError(f"{type(model).__name__} has no input word embeddings: prompt tuning cannot be attached")
    return words


@register_method("prompt", PromptConfig)
class PromptTuning(Method):
    """Prompt tuning: ``n`` trainable input embeddings before the text (Lester et al. 2021)."""

    # Lester et al. used 0.3 with Adafactor, whose steps scale with the parameters' RMS: about 0.3 * 0.056 = 1.7e-2
    # for MiniLM's word embeddings; peft's prompt-tuning examples use 3e-2 with AdamW. Not yet swept.
    default_learning_rate = 3e-2
    changes_inputs = True
    config: PromptConfig

    def __init__(self, config: PromptConfig) -> None:
        super().__init__(config)
        self._prompt: PromptEmbedding | None = None
        self._is_decoder = False
        self._limit: int | None = None

    def attach(self, model: nn.Module, ctx: AttachContext) -> None:
        """Add the prompt ``(n, d)`` (``d`` = the word embedding width) as ``model.prompt``, initialised."""
        cfg = self.config
        words = word_embeddings(model)
        prompt = PromptEmbedding(cfg.num_virtual_tokens, words.embedding_dim).to(words.weight.device)
        if cfg.init == "random":
            init_random_(prompt.weight, words)
        elif cfg.init == "vocab":
            init_from_vocab_(prompt.weight, words, vocabulary_candidates(words.num_embeddings, ctx.tokenizer))
        else:
            init_from_text_(prompt.weight, words, text_token_ids(cfg.init_text or "", ctx.tokenizer))
        self.add_input_module(model, PROMPT_ATTR, prompt)
        self._prompt, self._is_decoder, self._limit = prompt, ctx.is_decoder, position_limit(model)

    def detach(self, model: nn.Module) -> None:
        super().detach(model)
        self._prompt = None

    def prepare_inputs(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> InputPrep:
        """``input_ids`` ``(B, T)`` -> ``inputs_embeds`` ``(B, n + T, d)`` with the prompt in front; the attention
        mask (and ``token_type_ids``, with zeros) grow by ``n`` at the front; decoders get position ids."""
        if self._prompt is None:
            raise RuntimeError("prompt tuning is not attached to a model")
        n = self.config.num_virtual_tokens
        out = dict(inputs)
        embeds = out.pop("inputs_embeds", None)
        if embeds is None:
            embeds = word_embeddings(model)(out.pop("input_ids"))
        out.pop("input_ids", None)
        batch, length = embeds.shape[:2]
        check_positions(self._limit, length, n, "prompt")
        mask = out.get("attention_mask")
        if mask is None:
            mask = torch.ones(batch, length, dtype=torch.long, device=embeds.device)
        out["inputs_embeds"] = torch.cat([self._prompt(batch).to(embeds.dtype), embeds], dim=1)
        out["attention_mask"] = torch.cat([mask.new_ones(batch, n), mask], dim=1)
        types = out.get("token_type_ids")
        if types is not None:
            out["token_type_ids"] = torch.cat([types.new_zeros(batch, n), types], dim=1)
        if self._is_decoder:
            out["position_ids"] = positions_from_mask(out["attention_mask"])
        return InputPrep(out, n)
