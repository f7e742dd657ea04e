"""Fixtures of the decoder tests: a tiny causal Llama folder and small conversation files."""

from __future__ import annotations

from pathlib import Path

import pytest
from lm_tools import make_tiny_causal_llama


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny random LlamaForCausalLM with a ChatML tokenizer (``<|im_end|>`` is the EOS)."""
    return make_tiny_causal_llama(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="session")
def tiny_lm_plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model with a tokenizer that has no chat template (the fallback template applies)."""
    return make_tiny_causal_llama(tmp_path_factory.mktemp("tiny_lm_plain"), template=None)
