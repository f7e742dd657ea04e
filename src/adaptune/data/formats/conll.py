"""CoNLL-style column files: one token per line, blank lines between sentences.

Columns are separated by spaces or tabs (only ASCII ones: a token may be any other character, such as an
ideographic space). ``-DOCSTART-`` lines are skipped. The same parser reads character-level BMES files
(``CHAR TAG`` per line). Every line of a file must have as many columns as the first token line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from adaptune.data.formats.source import Location, split_lines
from adaptune.errors import DataError

_COLUMN_SEPARATOR = re.compile(r"[ \t]+")
_DOCSTART = "-DOCSTART-"


@dataclass(frozen=True)
class Sentence:
    """One sentence of a column file: where it starts, its tokens, and its tags (empty when unlabelled)."""

    location: Location
    tokens: tuple[str, ...]
    tags: tuple[str, ...]


@dataclass(frozen=True)
class _Columns:
    """Which column holds the token and which the tag, and how many columns the file has."""

    token: int
    tag: int
    width: int
    tag_name: str

    @property
    def has_tags(self) -> bool:
        """Whether the tag column is a column of its own, not the token column."""
        return self.token % self.width != self.tag % self.width


def _columns(fields: list[str], token_column: int, tag_column: int, location: Location) -> _Columns:
    """Check the chosen columns against the first token line, which sets the file's column count."""
    width = len(fields)
    for index, kind in ((token_column, "token"), (tag_column, "tag")):
        if not -width <= index < width:
            message = f"the line has {width} column(s), so there is no column {index}"
            raise location.error(message, field=f"{kind} column {index}")
    return _Columns(token_column, tag_column, width, f"tag column {tag_column}")


def _append(sentences: list[Sentence], start: Location | None, tokens: list[str], tags: list[str]) -> None:
    """Close the current sentence, if it has any tokens."""
    if start is not None and tokens:
        sentences.append(Sentence(start, tuple(tokens), tuple(tags)))


def read_column_sentences(
    text: str, file: str, *, token_column: int = 0, tag_column: int = -1, require_labels: bool = True
) -> list[Sentence]:
    """Parse a CoNLL or BMES file into sentences.

    Args:
        text: the decoded file.
        file: the file name, for error messages.
        token_column: index of the token column (negative counts from the end).
        tag_column: index of the tag column; ``-1`` is the last column.
        require_labels: when true, a file whose only column is the token column is an error; when false it
            is read as unlabelled text.

    Raises:
        DataError: naming the line whose column count differs from the first token line's, or which lacks
            the chosen token or tag column.
    """
    sentences: list[Sentence] = []
    columns: _Columns | None = None
    start: Location | None = None
    tokens: list[str] = []
    tags: list[str] = []
    for number, line in enumerate(split_lines(text), start=1):
        fields = _COLUMN_SEPARATOR.split(line.strip(" \t"))
        if fields == [""] or fields[0] == _DOCSTART:
            _append(sentences, start, tokens, tags)
            start, tokens, tags = None, [], []
            continue
        location = Location(file, number)
        if columns is None:
            columns = _columns(fields, token_column, tag_column, location)
            if not columns.has_tags and require_labels:
                raise location.error(
                    f"the line has {columns.width} column(s) and no tag column apart from the token",
                    field=columns.tag_name,
                )
        if len(fields) != columns.width:
            raise location.error(
                f"expected {columns.width} columns as on the first token line, found {len(fields)}",
                field=columns.tag_name if len(fields) < columns.width else None,
            )
        start = start or location
        tokens.append(fields[columns.token])
        if columns.has_tags:
            tags.append(fields[columns.tag])
    _append(sentences, start, tokens, tags)
    if not sentences:
        raise DataError("no sentences found", file=file)
    return sentences
