"""Helpers of the board tests (tests/board/): the data, the JSON that starts a run, waiting for a run."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

INTENTS = Path(__file__).resolve().parents[1] / "src" / "adaptune" / "resources" / "data" / "intents"


def write_data(folder: Path, train_rows: int = 40, dev_rows: int = 16) -> None:
    """``train.jsonl`` and ``dev.jsonl``: the first rows of the bundled bilingual intents."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train_rows), ("dev", dev_rows)):
        lines = (INTENTS / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()[:rows]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_body(name: str, model: Path | str, **training: Any) -> dict[str, Any]:
    """The JSON the page posts to start a run: LoRA on the tiny model, the intents data, ``training`` keys."""
    return {
        "name": name,
        "model": {"name_or_path": str(model), "pooling": "mean"},
        "method": {"name": "lora", "r": 4},
        "task": {"name": "seq_cls"},
        "data": {"train": "train.jsonl", "dev": "dev.jsonl", "max_length": 32, "batch_size": 8},
        "training": {"log_every": 1, "num_threads": 1, **training},
    }


def wait_for(check: Callable[[], Any], timeout: float = 120.0, what: str = "the condition") -> Any:
    """Poll ``check`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def latest_checkpoint_step(folder: Path) -> int:
    """The step of a run folder's newest checkpoint (0 when there is none)."""
    try:
        return int(json.loads((folder / "checkpoints" / "latest.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return 0
