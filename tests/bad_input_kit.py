"""Shared helpers of the bad-input catalogue (``tests/reliability/test_bad_inputs*.py``): files written byte for
byte, a short training config, and the two ways a refusal must look (a :class:`DataError` naming file, line and
field; a CLI exit 2 with one ``error:`` line and no traceback)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from adaptune.cli import app
from adaptune.config import RunConfig, load_config
from adaptune.errors import DataError

runner = CliRunner()


def write(folder: Path, name: str, content: str | bytes) -> Path:
    """``content`` as the file ``folder/name`` (text as UTF-8, bytes as they are)."""
    path = folder / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def jsonl(folder: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    """``rows`` as a JSON-lines file."""
    return write(folder, name, "".join(json.dumps(row) + "\n" for row in rows))


def short_config(model: Path, out: Path, *overrides: str) -> RunConfig:
    """A two-step bottleneck run on ``model`` into ``out``; data and task come from ``overrides``."""
    return load_config(
        None,
        [
            f"model.name_or_path={model}",
            "method.name=bottleneck",
            "method.reduction_factor=4",
            "data.batch_size=8",
            "training.max_steps=2",
            "training.progress=false",
            f"training.output_dir={out}",
            *overrides,
        ],
    )


def data_error(call: Callable[..., Any], *args: Any, **kwargs: Any) -> DataError:
    """The :class:`DataError` that ``call(*args, **kwargs)`` must raise."""
    with pytest.raises(DataError) as info:
        call(*args, **kwargs)
    return info.value


def cli_error(args: list[str], **kwargs: Any) -> str:
    """Run the CLI, which must exit with 2 and a message, not a traceback; return its output on one line."""
    result = runner.invoke(app, args, **kwargs)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "error:" in result.output
    return result.output.replace("\n", "")
