"""CSV and TSV files, read with the standard :mod:`csv` module into named rows.

CSV files use ordinary quoting. TSV files are read with ``csv.QUOTE_NONE`` because real ones (SST-2, GLUE)
hold unbalanced quote characters inside sentences. Every cell is stripped of surrounding whitespace (SST-2
puts a space before each tab). Blank lines are skipped.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence

from adaptune.data.formats.source import Location, Row
from adaptune.errors import DataError


def _records(text: str, file: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(first line, stripped cells)`` of each non-blank record, raising csv errors as DataError."""
    tsv = delimiter == "\t"
    quoting = csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataError(f"malformed {'TSV' if tsv else 'CSV'}: {err}", file=file, line=start) from None
        if len(cells) > 1 or (cells and cells[0].strip()):
            yield start, [cell.strip() for cell in cells]


def _check_header(names: Sequence[str], file: str, line: int | None) -> None:
    """Reject a column name given twice; unnamed columns (such as a pandas index) are allowed."""
    seen: set[str] = set()
    for name in names:
        if name and name in seen:
            raise DataError(f"column '{name}' appears twice in the header", file=file, line=line)
        seen.add(name)


def _check_required(names: Sequence[str], required: Sequence[str], file: str, line: int | None) -> None:
    """Reject a table that lacks a column the caller needs, listing the columns it has."""
    for name in required:
        if name not in names:
            hint = "; if the file has no header row, pass column_names" if line is not None else ""
            present = ", ".join(column if len(column) <= 40 else column[:37] + "..." for column in names)
            message = f"no column '{name}'; columns present: {present}{hint}"
            raise DataError(message, file=file, line=line, field=name)


def read_delimited_header(text: str, file: str, *, delimiter: str) -> tuple[int, list[str]]:
    """The line and the stripped column names of the header: the first non-blank record.

    Raises:
        DataError: on malformed quoting in the header, or a file without any record.
    """
    first = next(_records(text, file, delimiter), None)
    if first is None:
        raise DataError("file is empty", file=file)
    return first


def read_delimited_rows(
    text: str,
    file: str,
    *,
    delimiter: str,
    column_names: Sequence[str] | None = None,
    required: Sequence[str] = (),
) -> list[Row]:
    r"""Parse CSV (``delimiter=","``) or TSV (``"\t"``) text into rows keyed by column name.

    Args:
        text: the decoded file.
        file: the file name, for error messages.
        delimiter: ``","`` or ``"\t"``.
        column_names: names for a file without a header row; ``None`` reads them from the first row.
        required: columns that must be present.

    Returns:
        One :class:`Row` per data record, keyed by column name.

    Raises:
        DataError: on malformed quoting, a duplicate or missing column name (listing those present), or a row
            whose number of fields differs from the number of columns.
    """
    records = _records(text, file, delimiter)
    if column_names is None:
        first = next(records, None)
        if first is None:
            raise DataError("file is empty", file=file)
        header_line, names = first
        _check_header(names, file, header_line)
    else:
        names = [name.strip() for name in column_names]
        _check_header(names, file, None)
        header_line = 0
    _check_required(names, required, file, header_line or None)
    kind = "tab" if delimiter == "\t" else "comma"
    rows: list[Row] = []
    for line, cells in records:
        if len(cells) != len(names):
            origin = f"the header (line {header_line})" if header_line else "column_names"
            raise DataError(
                f"expected {len(names)} {kind}-separated fields as in {origin}, found {len(cells)}",
                file=file,
                line=line,
            )
        rows.append(Row(Location(file, line), dict(zip(names, cells, strict=True))))
    return rows
