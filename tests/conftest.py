"""Fixtures shared by the whole test suite."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

#: What the matmul probe reports while the suite runs, unless a test says otherwise: bf16 at half the fp32 rate,
#: so ``precision: auto`` means fp32, as on a host without AMX (tests/test_precision.py forces the other way).
SLOW_BF16 = {"fp32": 100.0, "bf16": 50.0}


@pytest.fixture(scope="session", autouse=True)
def _pinned_matmul_probe() -> Iterator[None]:
    """Pin :func:`adaptune.hardware.matmul_probe` to :data:`SLOW_BF16` through ``ADAPTUNE_MATMUL_PROBE`` (which
    subprocesses inherit): no test measures the machine, and every run trains in fp32 as it did before
    ``training.precision`` had an ``auto``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADAPTUNE_MATMUL_PROBE", json.dumps(SLOW_BF16))
        yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real datasets in ``../shared/data`` next to the repository.

    Missing data fails the test when the ``CI`` environment variable is set and skips it otherwise.
    """
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        message = f"shared data not found at {path}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny random BERT (hidden 32, 2 layers) with a real WordPiece tokenizer."""
    from tiny import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def other_tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Same architecture as ``tiny_bert``, different random weights."""
    from tiny import make_tiny_bert

    return make_tiny_bert(tmp_path_factory.mktemp("other_tiny_bert"), seed=1)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny random GPT-2 (hidden 32, 2 layers): fused ``c_attn``, ``Conv1D`` weights."""
    from tiny import make_tiny_gpt2

    return make_tiny_gpt2(tmp_path_factory.mktemp("tiny_gpt2"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny random Llama (hidden 32, 2 layers, grouped-query attention with 1 key/value head)."""
    from tiny import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def bundled_data() -> Path:
    """The package's own demo data (bilingual intents and NER)."""
    return Path(__file__).resolve().parents[1] / "src" / "adaptune" / "resources" / "data"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under CI, optional test dependencies must be present: a skipped peft parity test would hide a failure."""
    import importlib.util

    if os.environ.get("CI") and importlib.util.find_spec("peft") is None:
        raise pytest.UsageError("peft (the 'test' extra) is not installed; CI must run the peft parity tests")
