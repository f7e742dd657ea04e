"""The data preview: a file read by the task's own reader (so a bad row fails with the same file, line and field
as ``adaptune train`` would give), its first rows and how often each label occurs."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path
from typing import Any

from adaptune.config import validate_config
from adaptune.registry import build_task

#: Example fields the preview leaves out: where the row was read, offsets, reader flags.
_HIDDEN = ("source", "offsets", "line_per_token")
_CELL_CHARS = 300


def _cell(value: Any) -> Any:
    """A preview cell: long strings shortened, tuples as lists, nested examples as plain data."""
    if isinstance(value, str):
        return value if len(value) <= _CELL_CHARS else value[:_CELL_CHARS] + "…"
    if isinstance(value, list | tuple):
        return [_cell(item) for item in value[:64]]
    if isinstance(value, dict):
        return {key: _cell(item) for key, item in value.items()}
    return value


def row_view(example: Any) -> dict[str, Any]:
    """One example as the preview table shows it (its dataclass fields, less :data:`_HIDDEN`)."""
    fields = dataclasses.asdict(example) if dataclasses.is_dataclass(example) else {"example": str(example)}
    return {key: _cell(value) for key, value in fields.items() if key not in _HIDDEN}


def preview(path: Path, task: dict[str, Any], data: dict[str, Any], *, rows: int = 5) -> dict[str, Any]:
    """Read ``path`` as training data of ``task`` with the ``data`` options; its first ``rows`` examples and the
    label counts (tags, for token tasks). A bad file raises the reader's :class:`~adaptune.errors.DataError`, a
    bad option the config's :class:`~adaptune.errors.ConfigError`."""
    cfg = validate_config({"task": task, "data": data})
    reader = build_task(cfg.task)
    examples = reader.read(str(path), cfg.data, split="train")
    counts = Counter(label for example in examples for label in reader.gold(example))
    return {
        "path": str(path),
        "examples": len(examples),
        "rows": [row_view(example) for example in examples[:rows]],
        "labels": [{"label": label, "count": count} for label, count in counts.most_common()],
    }
