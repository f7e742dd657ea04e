"""Read training and evaluation data from files into :class:`TextExample` / :class:`TokenExample` lists.

Formats, chosen from the file name by :func:`detect_format` unless given:

========  ==================================================================================================
csv       comma-separated with a header row (or ``column_names``), standard quoting
tsv       tab-separated, no quoting (quote characters are text, as in SST-2)
jsonl     one JSON object per line
json      a JSON array of objects (JSON Lines saved as ``.json`` is recognised too)
conll     one token per line, whitespace-separated columns, blank lines between sentences (token tasks)
bmes      character-level ``CHAR TAG`` lines, the same layout as conll; the sentence text joins with ``""``
hf        a folder written by ``datasets``' ``save_to_disk``
========  ==================================================================================================

Text-classification files in common published layouts need no field names: CLUE JSON Lines (TNEWS:
``sentence`` with ``label`` ids and ``label_desc`` names, read as the names) and ERNIE/LUGE TSV
(ChnSentiCorp: ``label`` and ``text_a``); :mod:`adaptune.data.formats.layouts` gives the rules.

Every problem in a file is raised as :class:`~adaptune.errors.DataError` naming the file, the line (or row)
and the field. Tag schemes are not checked here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from adaptune.data.formats.conll import read_column_sentences
from adaptune.data.formats.delimited import read_delimited_header, read_delimited_rows
from adaptune.data.formats.hf import read_hf_rows
from adaptune.data.formats.jsonfile import json_kind, read_json_rows, read_jsonl_rows
from adaptune.data.formats.layouts import check_label_names, resolve_columns
from adaptune.data.formats.rows import (
    TextColumns,
    check_label_kinds,
    check_label_spellings,
    text_example_from_row,
    token_example_from_row,
)
from adaptune.data.formats.source import Location, Row, read_text_file
from adaptune.data.records import TextExample, TokenExample, token_example_from_words
from adaptune.errors import ConfigError, DataError

__all__ = ["FORMATS", "detect_format", "read_table_rows", "read_text_examples", "read_token_examples"]

#: Every format name a reader accepts, besides ``"auto"``.
FORMATS: tuple[str, ...] = ("csv", "tsv", "jsonl", "json", "conll", "bmes", "hf")
_TEXT_FORMATS = ("csv", "tsv", "jsonl", "json", "hf")
_TOKEN_FORMATS = ("conll", "bmes", "jsonl", "json", "hf")
_EXTENSIONS: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".conll": "conll",
    ".txt": "conll",
    ".iob": "conll",
    ".bio": "conll",
    ".bmes": "bmes",
    ".bioes": "bmes",
}


def _format_from_name(path: Path) -> str:
    """Find the format a path's name implies: ``"hf"`` for a folder, else by extension."""
    if path.is_dir():
        return "hf"
    suffix = path.suffix.lower()
    if suffix not in _EXTENSIONS:
        known = " ".join(sorted(_EXTENSIONS))
        message = f"cannot tell the format from the extension '{suffix}' (known: {known}); pass format="
        raise DataError(message, file=str(path))
    return _EXTENSIONS[suffix]


def detect_format(path: str | Path) -> str:
    """Tell the format of ``path`` from its name, reading the file only for ``.json``.

    A folder is ``"hf"``; ``.csv`` is ``"csv"``; ``.tsv``/``.tab`` ``"tsv"``; ``.jsonl``/``.ndjson``
    ``"jsonl"``; ``.conll``/``.txt``/``.iob``/``.bio`` ``"conll"``; ``.bmes``/``.bioes`` (so ``.char.bmes``)
    ``"bmes"``. A ``.json`` file is ``"json"`` when it holds a JSON array and ``"jsonl"`` when it holds
    JSON Lines.

    Raises:
        DataError: for an unknown extension, or a ``.json`` file that cannot be read.
    """
    path = Path(path)
    found = _format_from_name(path)
    if found == "json":
        return json_kind(read_text_file(path))
    return found


def _resolve_format(path: Path, format: str, allowed: Sequence[str], task: str) -> str:
    """Check a requested format (or detect it) and that it can hold examples for ``task``."""
    if format != "auto" and format not in FORMATS:
        raise ConfigError(f"format: '{format}' is not one of auto, {', '.join(FORMATS)}")
    found = _format_from_name(path) if format == "auto" else format
    if found not in allowed:
        readable = ", ".join(allowed)
        message = f"{found} files do not hold {task} examples; {task} reads {readable} (pass format=)"
        raise DataError(message, file=str(path))
    return found


def _rows(path: Path, found: str, hf_split: str | None) -> list[Row]:
    """Read a jsonl, json or hf source into rows."""
    if found == "hf":
        return read_hf_rows(path, hf_split)
    text, file = read_text_file(path), str(path)
    return read_jsonl_rows(text, file) if found == "jsonl" else read_json_rows(text, file)


def _text_rows(
    path: Path, found: str, hf_split: str | None, column_names: Sequence[str] | None, columns: TextColumns
) -> tuple[list[Row], TextColumns]:
    """Read a text-classification source into rows, and settle which fields hold the text and the label.

    The field names are resolved by :func:`~adaptune.data.formats.layouts.resolve_columns` against the
    header (or ``column_names``) of a csv/tsv file, or against the first row of any other source.
    """
    file = str(path)
    if found not in ("csv", "tsv"):
        rows = _rows(path, found, hf_split)
        if rows:
            columns = resolve_columns(list(rows[0].values), columns, file, rows[0].location.line)
        return rows, columns
    text = read_text_file(path)
    delimiter = "," if found == "csv" else "\t"
    if column_names is None:
        line, names = read_delimited_header(text, file, delimiter=delimiter)
        columns = resolve_columns(names, columns, file, line)
    else:
        columns = resolve_columns([name.strip() for name in column_names], columns, file, None)
    rows = read_delimited_rows(text, file, delimiter=delimiter, column_names=column_names, required=columns.required())
    return rows, columns


def read_table_rows(
    path: str | Path,
    *,
    format: str = "auto",
    column_names: list[str] | None = None,
    hf_split: str | None = None,
    required: Sequence[str] = (),
    task: str = "these",
) -> list[Row]:
    """The records of a csv, tsv, jsonl, json file or saved ``datasets`` folder as rows, for tasks whose examples
    are built from named fields (relation classification); ``required``: columns a csv/tsv file must have."""
    path = Path(path)
    found = _resolve_format(path, format, _TEXT_FORMATS, task)
    if column_names is not None and found not in ("csv", "tsv"):
        raise ConfigError(f"column_names: only csv and tsv files take column names, not {found}")
    if found not in ("csv", "tsv"):
        rows = _rows(path, found, hf_split)
    else:
        delimiter = "," if found == "csv" else "\t"
        rows = read_delimited_rows(
            read_text_file(path), str(path), delimiter=delimiter, column_names=column_names, required=required
        )
    if not rows:
        raise DataError("no examples found", file=str(path))
    return rows


def read_text_examples(
    path: str | Path,
    *,
    format: str = "auto",
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str | None = "label",
    label_separator: str | None = None,
    column_names: list[str] | None = None,
    hf_split: str | None = None,
    require_labels: bool = True,
) -> list[TextExample]:
    """Read sequence-classification examples from a csv, tsv, jsonl, json file or a saved ``datasets`` folder.

    Args:
        path: the file, or the folder for ``format="hf"``.
        format: one of :data:`FORMATS` that holds text examples, or ``"auto"`` to use :func:`detect_format`.
        text_column: the field holding the text (stripped of surrounding whitespace). The default ``"text"``
            falls back to ``sentence`` (CLUE, GLUE) or ``text_a`` (ERNIE/LUGE TSV) when the file has no
            ``text`` field; see :mod:`adaptune.data.formats.layouts`.
        text_pair_column: the field holding the second text of a sentence-pair task, if any.
        label_column: the field holding the label; ``None`` reads unlabelled examples. With the default
            ``"label"``, a CLUE file's ``label_desc`` (or ``label_des``) name is read instead of the id, so
            TNEWS gives ``news_story`` rather than ``"100"``.
        label_separator: splits a label cell into several labels (multi-label), e.g. ``"|"``. JSON lists
            are always read as several labels.
        column_names: the column names of a csv/tsv file without a header row.
        hf_split: the split to read from a saved ``DatasetDict``; may be left out when it has only one.
        require_labels: when false, a missing label column or an empty label cell gives ``labels == ()``.

    Returns:
        One :class:`TextExample` per row, in file order. Integer labels stay as their digits (``"0"``);
        ``ClassLabel`` values of a saved dataset become their names.

    Raises:
        DataError: for any problem in the data, naming file, line and field: a malformed row, a missing
            column (listing those present), an empty text or label, labels mixing numbers and names, label
            names differing only in case or width, CLUE ids and names that do not pair one to one, a file
            that is not UTF-8 or is empty.
        ConfigError: for an unknown ``format``, or ``column_names`` with a format other than csv/tsv.
    """
    path = Path(path)
    found = _resolve_format(path, format, _TEXT_FORMATS, "text classification")
    if column_names is not None and found not in ("csv", "tsv"):
        raise ConfigError(f"column_names: only csv and tsv files take column names, not {found}")
    asked = TextColumns(text_column, text_pair_column, label_column, label_separator, require_labels)
    rows, columns = _text_rows(path, found, hf_split, column_names, asked)
    examples = [text_example_from_row(row, columns) for row in rows]
    if not examples:
        raise DataError("no examples found", file=str(path))
    if columns.label_field is not None:
        labelled = list(zip((row.location for row in rows), (example.labels for example in examples), strict=True))
        check_label_kinds(labelled, columns.label_field)
        check_label_spellings(labelled, columns.label_field)
    if columns.label is not None and columns.label_name is not None:
        check_label_names(rows, columns.label, columns.label_name)
    return examples


def _column_file_examples(
    path: Path, found: str, token_column: int, tag_column: int, require_labels: bool
) -> list[tuple[Location, TokenExample]]:
    """Read a conll or bmes file into ``(location, example)`` pairs; bmes text joins characters with ``""``."""
    sentences = read_column_sentences(
        read_text_file(path),
        str(path),
        token_column=token_column,
        tag_column=tag_column,
        require_labels=require_labels,
    )
    joiner = "" if found == "bmes" else " "
    return [
        (
            sentence.location,
            replace(
                token_example_from_words(sentence.tokens, sentence.tags, joiner, sentence.location.source),
                line_per_token=True,  # a column file: one token per line, in order
            ),
        )
        for sentence in sentences
    ]


def read_token_examples(
    path: str | Path,
    *,
    format: str = "auto",
    token_column: int = 0,
    tag_column: int = -1,
    hf_split: str | None = None,
    tokens_field: str = "tokens",
    tags_field: str = "tags",
    require_labels: bool = True,
) -> list[TokenExample]:
    """Read token-classification examples from a conll, bmes, jsonl, json file or a saved ``datasets`` folder.

    Args:
        path: the file, or the folder for ``format="hf"``.
        format: one of :data:`FORMATS` that holds token examples, or ``"auto"`` to use :func:`detect_format`.
        token_column: for conll/bmes, the index of the token column (negative counts from the end).
        tag_column: for conll/bmes, the index of the tag column; the default ``-1`` is the last one.
        hf_split: the split to read from a saved ``DatasetDict``; may be left out when it has only one.
        tokens_field: for jsonl/json/hf, the field holding the list of tokens.
        tags_field: for jsonl/json/hf, the field holding the list of tags (strings, or ``ClassLabel`` ids).
        require_labels: when false, sentences without tags give ``tags == ()``.

    JSON rows without ``tokens_field`` but with ``text`` and a ``label`` object in the CLUENER layout
    (``{TYPE: {MENTION: [[start, end_inclusive], ...]}}``) are read character by character with BIO tags.

    Returns:
        One :class:`TokenExample` per sentence, in file order. For conll the text joins tokens with
        ``" "``, for bmes with ``""``; offsets point into that text. Tags are returned as read: no scheme is
        checked here.

    Raises:
        DataError: for any problem in the data, naming file, line and field: a line with too few columns
            (field ``"tag column N"``), token and tag lists of different lengths, tags mixing numbers and
            names, a file that is not UTF-8 or is empty.
        ConfigError: for an unknown ``format``.
    """
    path = Path(path)
    found = _resolve_format(path, format, _TOKEN_FORMATS, "token classification")
    if found in ("conll", "bmes"):
        pairs = _column_file_examples(path, found, token_column, tag_column, require_labels)
        tag_field = f"tag column {tag_column}"
    else:
        rows = _rows(path, found, hf_split)
        pairs = [(row.location, token_example_from_row(row, tokens_field, tags_field, require_labels)) for row in rows]
        tag_field = tags_field
    if not pairs:
        raise DataError("no examples found", file=str(path))
    check_label_kinds(((location, example.tags) for location, example in pairs), tag_field)
    return [example for _, example in pairs]
