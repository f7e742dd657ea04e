"""Rows for people to review: read a data file's records with their text and line number, and write chosen or
flagged records back out with the columns a tool adds (``score``, ``rank`` ...), for ``adaptune select`` and
``adaptune audit``.

Reading goes through :func:`adaptune.data.readers.read_table_rows` (csv, tsv, jsonl, json, a saved ``datasets``
folder), so a file reads here as it does for training, errors naming file, line and field. Writing picks the
format from the output's extension: ``.csv``, ``.tsv``/``.tab`` (no quoting, as the reader reads SST-2) or
``.jsonl``/``.ndjson``; every record keeps its original fields, in their order, then the added ones.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptune.data.formats.layouts import resolve_columns
from adaptune.data.formats.rows import TextColumns, text_example_from_row
from adaptune.data.readers import read_table_rows
from adaptune.errors import ConfigError, DataError
from adaptune.io import atomic_write_text

__all__ = ["OUTPUT_FORMATS", "SourceRow", "output_format", "read_rows", "with_columns", "write_rows"]

#: Output extension -> format.
OUTPUT_FORMATS: dict[str, str] = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass(frozen=True)
class SourceRow:
    """One record of a data file: where it is, its original fields and its text (stripped)."""

    #: The file it came from.
    file: str
    #: Its 1-based line in the file (csv/tsv: the line the record starts on; json: its position; hf: its row).
    line: int
    #: The record's fields as read, in file order.
    values: Mapping[str, Any]
    #: The text field's value, stripped of surrounding whitespace.
    text: str


def read_rows(
    path: str | Path,
    *,
    text_column: str = "text",
    format: str = "auto",
    column_names: list[str] | None = None,
    hf_split: str | None = None,
) -> list[SourceRow]:
    """Every record of ``path`` with its text, in file order.

    ``text_column`` falls back to ``sentence`` / ``text_a`` as training does
    (:func:`~adaptune.data.formats.layouts.resolve_columns`) when the file has no ``text`` field.

    Raises:
        DataError: for a file that cannot be read, and for a record without the text field or with an empty text
            (naming file, line and field).
    """
    rows = read_table_rows(path, format=format, column_names=column_names, hf_split=hf_split, task="text")
    asked = TextColumns(text_column, None, None, None, False)
    columns = resolve_columns(list(rows[0].values), asked, str(path), rows[0].location.line)
    return [
        SourceRow(str(path), row.location.line, dict(row.values), text_example_from_row(row, columns).text)
        for row in rows
    ]


def with_columns(row: SourceRow, added: Mapping[str, Any]) -> dict[str, Any]:
    """``row``'s original fields followed by ``added``; a field the file already has is refused, not overwritten.

    Raises:
        DataError: naming the row's file, line and the clashing field.
    """
    clash = next((name for name in added if name in row.values), None)
    if clash is not None:
        raise DataError(
            f"the record already has a field '{clash}', which the output adds; rename that column",
            file=row.file,
            line=row.line,
            field=clash,
        )
    return {**row.values, **added}


def output_format(path: str | Path) -> str:
    """The format an output path's extension asks for (:data:`OUTPUT_FORMATS`).

    Raises:
        ConfigError: for another extension.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        known = ", ".join(OUTPUT_FORMATS)
        raise ConfigError(f"output file {path}: cannot tell the format from '{suffix}'; use one of {known}")
    return OUTPUT_FORMATS[suffix]


def _cell(value: Any) -> str:
    """A value as one csv/tsv cell: text as is, numbers as written, anything else as JSON."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    return json.dumps(value, ensure_ascii=False)


def _table(path: Path, records: Sequence[Mapping[str, Any]], delimiter: str) -> str:
    """Records as csv (standard quoting) or tsv (no quoting: a tab or line break in a value is refused)."""
    names = list(dict.fromkeys(name for record in records for name in record))
    buffer = io.StringIO()
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    writer = csv.writer(buffer, delimiter=delimiter, quoting=quoting, lineterminator="\n", escapechar=None)
    writer.writerow(names)
    for number, record in enumerate(records, start=1):
        cells = [_cell(record.get(name)) for name in names]
        if delimiter == "\t":
            bad = next((n for n, c in zip(names, cells, strict=True) if "\t" in c or "\n" in c or "\r" in c), None)
            if bad is not None:
                raise ConfigError(
                    f"output file {path}: record {number}, field '{bad}' holds a tab or a line break, which a tsv "
                    "file cannot hold unquoted; write .csv or .jsonl instead"
                )
        writer.writerow(cells)
    return buffer.getvalue()


def write_rows(path: str | Path, records: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``records`` to ``path`` atomically, as csv, tsv or JSON Lines by its extension; the path written.

    Raises:
        ConfigError: for an unknown extension, or a tsv value holding a tab or a line break.
        OutputError: when the file cannot be written (names the path).
    """
    path = Path(path)
    found = output_format(path)
    if found == "jsonl":
        text = "".join(json.dumps(dict(record), ensure_ascii=False) + "\n" for record in records)
    else:
        text = _table(path, records, "," if found == "csv" else "\t")
    atomic_write_text(path, text)
    return path
