"""Fixtures of the server tests: four tiny adapters (plus a grouped one and a refused one) on a tiny BERT, two
causal_lm adapters on a tiny Llama, and a real uvicorn server on a free loopback port in a background thread."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adaptune.inference import Predictor
from adaptune.server.app import create_app
from adaptune.server.engine import MultiAdapterEngine
from decoders.lm_tools import make_tiny_causal_llama
from serving_kit import API_KEY, FOREIGN, GROUPED, INTENTS, SETTINGS, make_adapter, make_four, running_server


@pytest.fixture(scope="session")
def adapters_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path, other_tiny_bert: Path) -> Path:
    """The four adapters of ``serving_kit.FOUR_ADAPTERS``, a prompt-tuning one, and one for another base."""
    folder = tmp_path_factory.mktemp("adapters")
    make_four(folder, tiny_bert)
    make_adapter(folder / GROUPED, tiny_bert, {"name": "prompt", "num_virtual_tokens": 4}, "seq_cls", INTENTS, seed=7)
    make_adapter(folder / FOREIGN, other_tiny_bert, {"name": "lora", "r": 2}, "seq_cls", INTENTS, seed=8)
    return folder


@pytest.fixture(scope="module")
def llama_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny causal Llama and a folder with a LoRA and a prompt-tuning causal_lm adapter on it."""
    root = tmp_path_factory.mktemp("gen")
    base = make_tiny_causal_llama(root / "llama")
    folder = root / "adapters"
    make_adapter(folder / "chat-lora", base, {"name": "lora", "r": 4}, "causal_lm", [], seed=1, pooling="last")
    prompt = {"name": "prompt", "num_virtual_tokens": 3}
    make_adapter(folder / "chat-prompt", base, prompt, "causal_lm", [], seed=2, pooling="last")
    return base, folder


@pytest.fixture(scope="session")
def offline(adapters_dir: Path, tiny_bert: Path) -> Callable[[str, list[Any]], list[dict[str, Any]]]:
    """``offline(adapter, inputs)``: what ``Predictor.load(adapter).predict(inputs)`` answers (predictors cached)."""
    predictors: dict[str, Predictor] = {}

    def predict(name: str, inputs: list[Any]) -> list[dict[str, Any]]:
        if name not in predictors:
            predictors[name] = Predictor.load(adapters_dir / name, base=str(tiny_bert))
        return predictors[name].predict(inputs)

    return predict


@pytest.fixture(scope="module")
def engine(adapters_dir: Path, tiny_bert: Path) -> MultiAdapterEngine:
    """An engine over ``adapters_dir`` (one per test module: some modules load and unload adapters)."""
    return MultiAdapterEngine(str(tiny_bert), adapters_dir, max_input_tokens=SETTINGS.max_input_tokens)


@pytest.fixture(scope="module")
def base_url(engine: MultiAdapterEngine) -> Iterator[str]:
    """URL of a real server over :func:`engine` with :data:`SETTINGS` (API key required)."""
    with running_server(create_app(engine, SETTINGS)) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    """An HTTP client of the shared server that sends the API key."""
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as http:
        yield http


@pytest.fixture
def private_dir(adapters_dir: Path, tmp_path: Path) -> Path:
    """A copy of the adapters folder that a test may change."""
    return Path(shutil.copytree(adapters_dir, tmp_path / "adapters"))
