"""Helpers shared by the ``adaptune`` CLI modules: the error console, the one-line failure, reading inputs, and the
``--device`` / ``--precision`` / ``--quantize`` options of predict, eval and serve."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

err_console = Console(stderr=True)

DEVICE_HELP = "Where to run: auto (CUDA when torch sees one), cpu, cuda or cuda:N."


class Precision(StrEnum):
    """``--precision`` of predict, eval and serve (:func:`adaptune.hardware.choose_precision`)."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


PRECISION_HELP = (
    "auto: bf16 autocast where it is faster (a GPU with bf16, a CPU whose bf16 matmuls measure >= 1.3x fp32), "
    "else fp32; or fp32, bf16."
)


class Quantize(StrEnum):
    """``--quantize`` of predict, eval and serve (:mod:`adaptune.quantize`)."""

    int8 = "int8"


QUANTIZE_HELP = "int8: the base model's linear layers on int8 weights (CPU only; adapter and head stay float)."


def fail(err: Exception) -> None:
    """Print ``err`` as one red line on stderr and exit with status 2."""
    err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(2)


def input_name(source: str) -> str:
    """How messages name an input ``source``: the file, or ``<stdin>`` for ``-``."""
    return "<stdin>" if source == "-" else source


def _read_source(source: str) -> str:
    """The text of ``source`` (a file, or ``-`` for stdin) decoded as UTF-8, without a byte-order mark."""
    from adaptune.errors import DataError

    name = input_name(source)
    try:
        stdin = getattr(sys.stdin, "buffer", None)
        if source != "-":
            data = Path(source).read_bytes()
        elif stdin is not None:
            data = stdin.read()
        else:
            return str(sys.stdin.read()).removeprefix("\ufeff")
    except OSError as err:
        raise DataError(f"cannot read the file: {err.strerror}", file=name) from None
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"not UTF-8 (byte 0x{data[err.start]:02x})", file=name, line=line) from None


def _strings(value: object, field: str) -> list[tuple[str, str]]:
    """Every string in a decoded JSON value with the field it is at (``text``, ``tokens[2]``)."""
    if isinstance(value, str):
        return [(value, field)]
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in _strings(item, f"{field}.{key}" if field else key)]
    if isinstance(value, list):
        return [found for index, item in enumerate(value) for found in _strings(item, f"{field}[{index}]")]
    return []


def read_inputs(source: str) -> list[str | dict[str, object]]:
    """Lines of ``source`` (a file, or ``-`` for stdin): JSON objects where a line starts with ``{``, else the
    text; one input per line, so outputs line up with the input's lines. Unreadable input (not UTF-8, a blank
    line, a line that is not JSON, text no tokenizer can take) is a DataError naming the file (``<stdin>``)
    and the line."""
    from adaptune.data.formats.source import Location, check_utf8, split_lines
    from adaptune.errors import DataError

    name = input_name(source)
    lines = split_lines(_read_source(source))
    if lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start another
    items: list[str | dict[str, object]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise DataError(
                "blank line: every line is one input and gives one output line; remove it", file=name, line=number
            )
        if not line.lstrip().startswith("{"):
            items.append(check_utf8(line, Location(name, number)))
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"not valid JSON: {err.msg} at column {err.colno}", file=name, line=number) from None
        except (ValueError, RecursionError) as err:  # e.g. an integer too long to convert
            raise DataError(f"not valid JSON: {err or 'nested too deeply'}", file=name, line=number) from None
        for text, field in _strings(item, ""):
            check_utf8(text, Location(name, number), field or None)
        items.append(item)
    return items
