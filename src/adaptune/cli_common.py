"""Helpers shared by the ``adaptune`` CLI modules: the error console, the one-line failure, reading inputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

err_console = Console(stderr=True)


def fail(err: Exception) -> None:
    """Print ``err`` as one red line on stderr and exit with status 2."""
    err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)


def read_inputs(source: str) -> list[str | dict[str, object]]:
    """Lines of ``source`` (a file, or ``-`` for stdin): JSON objects where a line starts with ``{``, else the
    text; blank lines skipped; unreadable input is a DataError naming the file and line."""
    from adaptune.errors import DataError

    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as err:
        raise DataError(f"cannot read the file: {err.strerror}", file=source) from None
    except UnicodeDecodeError as err:
        line = err.object.count(b"\n", 0, err.start) + 1
        raise DataError(f"not UTF-8 (byte 0x{err.object[err.start]:02x})", file=source, line=line) from None
    items: list[str | dict[str, object]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if line.lstrip().startswith("{"):
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(f"not valid JSON: {err.msg}", file=source, line=number) from None
        else:
            items.append(line)
    return items
