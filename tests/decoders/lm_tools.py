"""A tiny random causal Llama with a ChatML tokenizer, and helpers the decoder tests share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from adaptune.backbone import load_backbone
from adaptune.config import ModelConfig, validate_config
from adaptune.inference import build_model
from adaptune.model import AdaptedModel
from tiny import minilm_dir

#: ChatML without a default system prompt (SmolLM2's template adds one).
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_tiny_causal_llama(folder: Path, seed: int = 0, *, template: str | None = CHATML) -> Path:
    """A random 2-layer Llama for causal LM (hidden 32, untied LM head, embeddings at a trained model's scale)
    with MiniLM's WordPiece vocabulary plus ``<|im_start|>``/``<|im_end|>`` (the EOS) and a ChatML template."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = template
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        words = model.model.embed_tokens.weight
        words.mul_(1.0 / words.std())
        model.lm_head.weight.mul_(5.0)  # peakier next-token distributions: fewer near-ties in greedy tests
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def adapted(
    folder: Path,
    method: dict[str, Any] | str = "lora",
    task: dict[str, Any] | str = "causal_lm",
    labels: list[str] | None = None,
) -> AdaptedModel:
    """An :class:`AdaptedModel` of ``folder`` with ``method``, ``task`` and ``labels``, in eval mode, seeded."""
    torch.manual_seed(0)
    run = validate_config({"model": {"name_or_path": str(folder)}, "method": method, "task": task})
    backbone = load_backbone(ModelConfig(name_or_path=str(folder)))
    return build_model(backbone, run.method, run.task, labels or []).eval()


def randomise_adapter(model: AdaptedModel, scale: float = 0.5) -> None:
    """Give every adapter tensor random values (a trained adapter, not the identity at init)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.adapter_parameters().values():
            param.add_(torch.randn(param.shape, generator=gen) * scale)


def naive_greedy(model: AdaptedModel, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding without a KV cache: the whole sequence through the model (and its input hook) each step."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
            prep = model.method.prepare_inputs(model.backbone, inputs)
            hidden = model.backbone(**prep.inputs).last_hidden_state[:, -1]
            assert model.lm_head is not None
            ids.append(int(model.lm_head(hidden).argmax(-1)))
    return ids[len(prompt) :]


def write_alpaca(path: Path, n: int, offset: int = 0) -> Path:
    """``n`` Alpaca rows of a learnable pattern: echo a colour word after a fixed instruction."""
    colours = ["red", "green", "blue", "yellow", "black", "white"]
    rows = [
        {
            "instruction": "repeat the colour twice",
            "input": colours[(i + offset) % len(colours)],
            "output": f"{colours[(i + offset) % len(colours)]} {colours[(i + offset) % len(colours)]}",
        }
        for i in range(n)
    ]
    path.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return path
