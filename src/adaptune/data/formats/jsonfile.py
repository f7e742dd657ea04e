"""JSON Lines files (one object per line) and JSON files (an array of objects), read into named rows.

A ``.json`` file may hold either; :func:`json_kind` tells them apart. Rows of a JSON array are located by
the line their item starts on, and the message names the item's index in the array.
"""

from __future__ import annotations

import json
import re
from typing import Any

from adaptune.data.formats.source import Location, Row, describe, split_lines
from adaptune.errors import DataError

_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _first_value(text: str) -> tuple[Any, int] | None:
    """The first JSON value in ``text`` and where it ends, or ``None`` when it does not parse."""
    try:
        return json.JSONDecoder().raw_decode(text, _WHITESPACE.match(text).end())
    except (ValueError, RecursionError):
        return None


def _single_document(stripped: str, end: int) -> bool:
    """Whether the value ending at ``end`` spans several lines and is all there is (a pretty-printed file)."""
    return not stripped[end:].strip() and "\n" in stripped[:end]


def json_kind(text: str) -> str:
    """``"json"`` when ``text`` is a single JSON document (an array, or one object), else ``"jsonl"``."""
    stripped = text.lstrip(" \t\n\r")
    if stripped.startswith("["):
        return "json"
    first = _first_value(stripped)
    # Text that does not parse is read as lines, so the error names the first bad line.
    return "json" if first is not None and _single_document(stripped, first[1]) else "jsonl"


def _as_object(value: Any, location: Location) -> dict[str, Any]:
    """``value`` if it is a JSON object, else a :class:`DataError` naming what it is."""
    if not isinstance(value, dict):
        raise location.error(f"expected a JSON object, found {describe(value)}")
    return value


def read_jsonl_rows(text: str, file: str) -> list[Row]:
    """Parse JSON Lines: one object per line, blank lines skipped.

    Raises:
        DataError: naming the line that is not valid JSON or not an object.
    """
    rows: list[Row] = []
    for number, line in enumerate(split_lines(text), start=1):
        if not line.strip():
            continue
        location = Location(file, number)
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise location.error(f"not valid JSON: {err.msg} at column {err.colno}") from None
        except (ValueError, RecursionError) as err:  # e.g. an integer too long to convert
            raise location.error(f"not valid JSON: {err or 'nested too deeply'}") from None
        rows.append(Row(location, _as_object(value, location)))
    return rows


def _skip(text: str, position: int) -> int:
    """The position of the next non-whitespace character at or after ``position``."""
    return _WHITESPACE.match(text, position).end()


def _parse_error(file: str, text: str, position: int, message: str) -> DataError:
    """A :class:`DataError` at the line holding ``position``."""
    return DataError(f"not valid JSON: {message}", file=file, line=text.count("\n", 0, position) + 1)


def _array_items(text: str, file: str) -> list[tuple[int, Any]]:
    """Decode a top-level JSON array item by item, returning ``(start position, value)`` pairs."""
    decoder = json.JSONDecoder()
    position = _skip(text, 0)
    items: list[tuple[int, Any]] = []
    if text[position : position + 1] != "[":
        return items
    position = _skip(text, position + 1)
    while text[position : position + 1] != "]" or items:
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            raise _parse_error(file, text, err.pos, err.msg) from None
        except (ValueError, RecursionError) as err:  # e.g. an integer too long to convert
            raise _parse_error(file, text, position, str(err) or "nested too deeply") from None
        items.append((position, value))
        position = _skip(text, end)
        separator = text[position : position + 1]
        if separator == "]":
            break
        if separator != ",":
            raise _parse_error(file, text, position, "expected ',' or ']' after an array item")
        position = _skip(text, position + 1)
    position = _skip(text, position + 1)
    if position < len(text):
        raise _parse_error(file, text, position, "extra data after the array")
    return items


def read_json_rows(text: str, file: str) -> list[Row]:
    """Parse a JSON file: an array of objects, or JSON Lines saved with a ``.json`` name.

    Raises:
        DataError: when the JSON is malformed, when the file holds a single object rather than an array, or
            naming the item that is not an object.
    """
    stripped = text.lstrip(" \t\n\r")
    if not stripped.startswith("["):
        first = _first_value(stripped)
        if first is not None and _single_document(stripped, first[1]) and isinstance(first[0], dict):
            keys = ", ".join(list(first[0])[:5])
            message = f"expected a JSON array of objects or JSON Lines, found one JSON object (keys: {keys})"
            raise DataError(message, file=file, line=1)
        return read_jsonl_rows(text, file)
    rows: list[Row] = []
    line, counted = 1, 0
    for index, (position, value) in enumerate(_array_items(text, file)):
        line += text.count("\n", counted, position)
        counted = position
        location = Location(file, line, note=f"array item {index}")
        rows.append(Row(location, _as_object(value, location)))
    return rows
