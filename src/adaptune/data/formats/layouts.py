"""Published text-classification layouts whose field names are not ``text`` and ``label``.

Two conventions are applied when the configured names are the defaults (``text_column="text"``,
``label_column="label"``). They are detected from the header of a csv/tsv file, or from the first row of a
jsonl/json file or saved dataset, and then hold for every row:

- **Text aliases.** Without a ``text`` field, the text is read from ``sentence`` (CLUE JSON Lines such as
  TNEWS and IFLYTEK; GLUE TSV such as SST-2) or from ``text_a`` (Baidu's ERNIE/LUGE TSV such as
  ChnSentiCorp). A file holding both is ambiguous and rejected. A file with ``text_a`` and ``text_b`` is a
  sentence-pair file, so it is rejected unless ``text_pair_column`` is set (or ``text_column`` names
  ``text_a`` explicitly, which reads ``text_a`` alone).
- **CLUE label names.** When ``label_desc`` (TNEWS) or ``label_des`` (IFLYTEK, and the CLUE README) sits beside
  ``label``, the label read is that human-readable name (``news_story``), not the numeric id (``"100"``), so
  the adapter's label names, reports and predictions read as words. :func:`check_label_names` then requires
  each id to go with one name, and each name with one id, throughout the file. To train on the ids instead,
  drop the name field from the file.

Any other layout is read by naming its fields (``text_column``, ``text_pair_column``, ``label_column``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable
from dataclasses import replace
from typing import Any

from adaptune.data.formats.rows import TextColumns
from adaptune.data.formats.source import Location, Row
from adaptune.errors import DataError

_LOG = logging.getLogger(__name__)

#: The default field names these conventions stand in for.
DEFAULT_TEXT = "text"
DEFAULT_LABEL = "label"
#: Fields read as the text when there is no ``text`` field, in the order they are looked for.
TEXT_ALIASES: tuple[str, ...] = ("sentence", "text_a")
#: Fields that hold the human-readable name of the ``label`` id, as the CLUE files spell them.
LABEL_NAME_FIELDS: tuple[str, ...] = ("label_desc", "label_des")


def _text_field(names: Collection[str], columns: TextColumns, file: str, line: int | None) -> str:
    """The field holding the text: ``columns.text``, or the one alias present when that is a missing ``text``."""
    if columns.text != DEFAULT_TEXT or DEFAULT_TEXT in names:
        return columns.text
    found = [alias for alias in TEXT_ALIASES if alias in names]
    if len(found) > 1:
        listed = " and ".join(f"'{alias}'" for alias in found)
        message = f"no field 'text', and both {listed} could hold the text; set text_column (data.text_column)"
        raise DataError(message, file=file, line=line, field=DEFAULT_TEXT)
    if not found:
        return columns.text  # reported later as a missing 'text', listing the fields present
    if found[0] == "text_a" and "text_b" in names and columns.text_pair is None:
        message = (
            "has text_a and text_b, a sentence-pair layout: set text_pair_column=text_b (data.text_pair_column), "
            "or text_column=text_a to read text_a alone"
        )
        raise DataError(message, file=file, line=line, field="text_b")
    return found[0]


def _label_name_field(names: Collection[str], columns: TextColumns) -> str | None:
    """The CLUE field naming the ``label`` id (``label_desc``/``label_des``), when the label is the default one."""
    if columns.label != DEFAULT_LABEL or DEFAULT_LABEL not in names:
        return None
    return next((name for name in LABEL_NAME_FIELDS if name in names), None)


def resolve_columns(names: Collection[str], columns: TextColumns, file: str, line: int | None) -> TextColumns:
    """Apply the conventions above to the field ``names`` of a file (its header, or its first row).

    Args:
        names: the fields the file has.
        columns: the fields asked for.
        file: the file name, for messages.
        line: the line the names were read from (the header or the first row), or ``None``.

    Returns:
        ``columns`` with ``text`` replaced by the alias in use and ``label_name`` set to the CLUE name field,
        if any; unchanged when no convention applies.

    Raises:
        DataError: for a file holding two text aliases, or ``text_a`` and ``text_b`` without a pair column.
    """
    text = _text_field(names, columns, file, line)
    label_name = _label_name_field(names, columns)
    if text != columns.text:
        _LOG.info("%s: no field 'text'; reading the text from '%s'", file, text)
    if label_name is not None:
        _LOG.info("%s: CLUE layout; labels are the names in '%s', not the ids in '%s'", file, label_name, columns.label)
    return replace(columns, text=text, label_name=label_name)


def _plain(value: Any) -> str:
    """A label id or name as text, for comparing and for messages."""
    return value.strip() if isinstance(value, str) else str(value)


def _check_pair(seen: dict[str, tuple[str, Location]], key: str, value: str, location: Location, field: str) -> None:
    """Remember that ``key`` goes with ``value``; a :class:`DataError` when it went with another before."""
    first, where = seen.setdefault(key, (value, location))
    if first != value:
        message = (
            f"'{key}' goes with '{value}' here but with '{first}' at line {where.line}; "
            "label ids and names must pair one to one"
        )
        raise location.error(message, field=field)


def check_label_names(rows: Iterable[Row], id_field: str, name_field: str) -> None:
    """Reject a CLUE file whose label ids and names do not pair one to one.

    Rows lacking either field are skipped (they are unlabelled, or already reported while reading).

    Raises:
        DataError: at the first row pairing an id with a second name (field ``name_field``) or a name with a
            second id (field ``id_field``), naming the line of the earlier pairing.
    """
    names_by_id: dict[str, tuple[str, Location]] = {}
    ids_by_name: dict[str, tuple[str, Location]] = {}
    for row in rows:
        if id_field not in row.values or name_field not in row.values:
            continue
        ident, name = _plain(row.values[id_field]), _plain(row.values[name_field])
        _check_pair(names_by_id, ident, name, row.location, name_field)
        _check_pair(ids_by_name, name, ident, row.location, id_field)
