"""What every format parser shares: decoding a file as UTF-8, where a record is, and one parsed row."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptune.errors import DataError

_BOM = "\ufeff"
# A lone surrogate: what a JSON escape \ud800-\udfff without its pair (or a byte Python decoded with
# surrogateescape) leaves in a str; UTF-8 cannot encode it, so tokenizers fail on it.
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Location:
    """Where a record is: a file, a 1-based line (or row) number, and an optional note like ``"row 3"``."""

    file: str
    line: int
    note: str = ""

    @property
    def source(self) -> str:
        """``"path:line"``, as stored in the examples' ``source`` attribute."""
        return f"{self.file}:{self.line}"

    def error(self, message: str, field: str | None = None) -> DataError:
        """A :class:`DataError` at this location; the note, if any, is added to the message."""
        if self.note:
            message = f"{message} ({self.note})"
        return DataError(message, file=self.file, line=self.line, field=field)


@dataclass(frozen=True)
class Row:
    """One record of a table-like file (csv, tsv, jsonl, json, hf): its location and its named values."""

    location: Location
    values: Mapping[str, Any] = field(default_factory=dict)


def describe(value: Any) -> str:
    """Name the type of a decoded value in JSON terms, for messages: ``"a list"``, ``"null"``, ..."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


def check_utf8(text: str, location: Location | None = None, field: str | None = None, what: str = "the text") -> str:
    """Return ``text`` if UTF-8 can encode it: the check every reader (and predict's input) makes on each
    text-carrying value where it enters.

    Raises:
        DataError: at ``location`` naming ``field`` when ``text`` holds a lone surrogate (a JSON
            ``\\ud800``-style escape without its pair), which no tokenizer can take.
    """
    found = _SURROGATE.search(text)
    if found is None:
        return text
    message = (
        f"{what} holds a lone surrogate (U+{ord(found.group()):04X} at character {found.start() + 1}), so it is "
        "not UTF-8 encodable; a JSON \\uD800-\\uDFFF escape needs its pair (or write the character itself)"
    )
    raise location.error(message, field=field) if location is not None else DataError(message, field=field)


def read_text_file(path: str | Path) -> str:
    """Read ``path`` as UTF-8 text, without a leading byte-order mark.

    Raises:
        DataError: when the file is missing, is a directory, is not valid UTF-8 or holds NUL bytes (naming
            the line of the first bad byte), or holds nothing but whitespace.
    """
    file = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError("no such file", file=file) from None
    except IsADirectoryError:
        message = "is a directory, not a file (for a saved datasets folder use format='hf')"
        raise DataError(message, file=file) from None
    except OSError as err:
        raise DataError(f"cannot read the file: {err.strerror}", file=file) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(
            f"the file is not UTF-8 (byte 0x{data[err.start]:02x} at column {column}); "
            "re-encode it as UTF-8, e.g. `iconv -f latin1 -t utf-8 in > out`",
            file=file,
            line=line,
        ) from None
    if "\x00" in text:
        line = data.count(b"\n", 0, data.index(b"\x00")) + 1
        message = "the file holds NUL bytes, so it is binary or UTF-16, not UTF-8 text; re-encode it as UTF-8"
        raise DataError(message, file=file, line=line)
    text = text.removeprefix(_BOM)
    if not text.strip():
        raise DataError("file is empty", file=file)
    return text


def split_lines(text: str) -> list[str]:
    r"""Split on ``"\n"`` only (not where :meth:`str.splitlines` also breaks) and drop a trailing ``"\r"``."""
    return [line.removesuffix("\r") for line in text.split("\n")]
