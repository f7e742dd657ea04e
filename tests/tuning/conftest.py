"""Fixtures of the search tests: a tiny classification data set and YAML configs with a ``search:`` block, both
written in the test's own folder, trained on the tiny random BERT."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

POSITIVE = ["great film", "loved it", "wonderful acting", "a real joy", "superb story", "brilliant fun"]
NEGATIVE = ["terrible film", "hated it", "awful acting", "a real bore", "dull story", "boring mess"]


def _rows(count: int, offset: int) -> list[dict[str, str]]:
    rows = []
    for i in range(count):
        words = POSITIVE if i % 2 else NEGATIVE
        rows.append({"text": f"{words[(i // 2) % len(words)]} {offset + i}", "label": "pos" if i % 2 else "neg"})
    return rows


@pytest.fixture()
def tiny_data(tmp_path: Path) -> Path:
    """``train.jsonl`` (16 examples) and ``dev.jsonl`` (8) of two labels in ``tmp_path/data``."""
    folder = tmp_path / "data"
    folder.mkdir()
    for name, count, offset in (("train", 16, 0), ("dev", 8, 100)):
        lines = "".join(json.dumps(row) + "\n" for row in _rows(count, offset))
        (folder / f"{name}.jsonl").write_text(lines, encoding="utf-8")
    return folder


WriteConfig = Callable[..., Path]


@pytest.fixture()
def write_config(tiny_bert: Path, tiny_data: Path, tmp_path: Path) -> WriteConfig:
    """``write_config(space, name="search", **sections)``: a YAML next to the data (whose paths it gives relative
    to itself, as users write them) with ``search: {space: space, ...}``; ``sections`` replace or extend the
    defaults (bottleneck with reduction factor 8, two epochs of two steps, no progress bar): data and training
    keys are added to the defaults, other sections replace theirs."""

    def write(
        space: dict[str, Any] | None, name: str = "search", search: dict[str, Any] | None = None, **sections: Any
    ) -> Path:
        tree: dict[str, Any] = {
            "model": {"name_or_path": str(tiny_bert), "pooling": "mean"},
            "method": {"name": "bottleneck", "reduction_factor": 8},
            "data": {"train": "train.jsonl", "dev": "dev.jsonl", "batch_size": 8, "eval_batch_size": 8},
            "training": {"epochs": 2, "progress": False, "output_dir": str(tmp_path / "unused")},
        }
        for key, value in sections.items():  # data and training keys are added; other sections replaced
            tree[key] = {**tree[key], **value} if key in ("data", "training") else value
        if space is not None:
            tree["search"] = {"space": space, **(search or {})}
        path = tiny_data / f"{name}.yaml"
        path.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
        return path

    return write
