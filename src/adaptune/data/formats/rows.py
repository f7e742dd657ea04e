"""Turning named rows (from csv, tsv, jsonl, json or hf) into examples, checking each value on the way.

Labels are normalised to strings: integers become their digits, a list is a multi-label cell, and a string
is split on ``label_separator`` when one is given. :func:`check_label_kinds` then rejects a column that mixes
numeric labels with named ones. Token rows hold a list of tokens and a list of tags, or follow the CLUENER
layout (``{"text": ..., "label": {TYPE: {MENTION: [[start, end_inclusive], ...]}}}``), which is converted to
character-level BIO tags.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adaptune.data.formats.source import Location, Row, check_utf8, describe
from adaptune.data.records import TextExample, TokenExample, token_example_from_words

_LOG = logging.getLogger(__name__)
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")


@dataclass(frozen=True)
class TextColumns:
    """Which fields of a row hold the text, the optional second text and the label.

    ``label_name``, when set, is the field holding the human-readable name of the ``label`` id (CLUE's
    ``label_desc``, see :mod:`adaptune.data.formats.layouts`); the label is then read from it.
    """

    text: str
    text_pair: str | None
    label: str | None
    label_separator: str | None
    require_labels: bool
    label_name: str | None = None

    @property
    def label_field(self) -> str | None:
        """The field the label is read from: ``label_name`` when set, else ``label``."""
        return self.label_name if self.label_name is not None and self.label is not None else self.label

    def required(self) -> list[str]:
        """The fields every row must have: the text, the second text if any, and the label when required."""
        names = [name for name in (self.text, self.text_pair) if name is not None]
        if self.label_field is not None and self.require_labels:
            names.append(self.label_field)
        return names


def _field(row: Row, name: str) -> Any:
    """The value of field ``name``; a :class:`DataError` listing the fields present when it is absent."""
    if name not in row.values:
        present = ", ".join(map(str, row.values)) or "none"
        raise row.location.error(f"no field '{name}'; fields present: {present}", field=name)
    return row.values[name]


def _text(row: Row, name: str) -> str:
    """Field ``name`` as non-empty text, stripped of surrounding whitespace."""
    value = _field(row, name)
    if not isinstance(value, str):
        raise row.location.error(f"expected text, found {describe(value)}", field=name)
    if not value.strip():
        raise row.location.error("empty text", field=name)
    return check_utf8(value.strip(), row.location, name)


def _scalar_label(value: Any, location: Location, name: str) -> str:
    """One label as a string: text is stripped, an integer (or integral float) becomes its digits."""
    if isinstance(value, str):
        return check_utf8(value.strip(), location, name, "the label")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    message = f"a label must be text or an integer, found {describe(value)} ({value!r})"
    raise location.error(message, field=name)


def _label_strings(value: Any, location: Location, name: str, separator: str | None = None) -> tuple[str, ...]:
    """Normalise a label cell to a tuple of label strings.

    ``None`` is no label, a list holds several, and a string is split on ``separator`` when one is given.
    Empty parts are dropped, so an empty cell gives ``()``, and a label given twice in one cell counts once.
    """
    if value is None:
        return ()
    if isinstance(value, list):
        labels = [_scalar_label(item, location, name) for item in value]
    elif isinstance(value, str) and separator:
        labels = [part.strip() for part in value.split(separator)]
    else:
        labels = [_scalar_label(value, location, name)]
    return tuple(dict.fromkeys(label for label in labels if label))


def text_example_from_row(row: Row, columns: TextColumns) -> TextExample:
    """Build a :class:`TextExample` from one row.

    Raises:
        DataError: when a configured field is missing, the text is empty or not text, or the label is empty
            (or missing) while ``columns.require_labels`` is set.
    """
    text = _text(row, columns.text)
    pair = _text(row, columns.text_pair) if columns.text_pair is not None else None
    labels: tuple[str, ...] = ()
    field = columns.label_field
    if field is not None and (columns.require_labels or field in row.values):
        labels = _label_strings(_field(row, field), row.location, field, columns.label_separator)
        if not labels and columns.require_labels:
            raise row.location.error("empty label", field=field)
    return TextExample(text=text, labels=labels, text_pair=pair, source=row.location.source)


def _string_list(row: Row, name: str) -> list[str]:
    """Field ``name`` as a list of strings; integers (e.g. tag ids) become their digits."""
    value = _field(row, name)
    if not isinstance(value, list):
        raise row.location.error(f"expected a list, found {describe(value)}", field=name)
    return [
        check_utf8(item, row.location, name, f"item {index}")
        if isinstance(item, str)
        else _scalar_label(item, row.location, name)
        for index, item in enumerate(value)
    ]


def _listed_token_example(row: Row, tokens_field: str, tags_field: str, require_labels: bool) -> TokenExample:
    """A token example from a row with a list of tokens and (optionally) a list of tags."""
    tokens = _string_list(row, tokens_field)
    if not tokens:
        raise row.location.error("no tokens", field=tokens_field)
    for index, token in enumerate(tokens):
        if not token.strip():
            raise row.location.error(f"token {index} is empty or only whitespace", field=tokens_field)
    tags: list[str] = []
    if require_labels or tags_field in row.values:
        tags = _string_list(row, tags_field)
    if (tags or require_labels) and len(tags) != len(tokens):
        message = f"{len(tags)} tags for {len(tokens)} tokens (from field '{tokens_field}')"
        raise row.location.error(message, field=tags_field)
    return token_example_from_words(tokens, tags, " ", row.location.source)


def _span(raw: Any, mention: str, text: str, location: Location) -> tuple[int, int]:
    """Check one CLUENER span ``[start, end_inclusive]`` against the text; returns it as a tuple."""
    valid = isinstance(raw, list) and len(raw) == 2 and all(type(bound) is int for bound in raw)
    if not valid or not 0 <= raw[0] <= raw[1] < len(text):
        message = f"span {raw!r} of '{mention}' is not [start, end] inside the text"
        raise location.error(message, field="label")
    start, end = raw
    if text[start : end + 1] != mention:
        covered = text[start : end + 1]
        message = f"span [{start}, {end}] covers '{covered}', not '{mention}' (end is inclusive)"
        raise location.error(message, field="label")
    return start, end


def _cluener_spans(text: str, label: Mapping[str, Any], location: Location) -> list[tuple[int, int, str]]:
    """Every ``(start, end_inclusive, type)`` in a CLUENER label ``{TYPE: {MENTION: [[s, e], ...]}}``."""
    found: list[tuple[int, int, str]] = []
    for entity_type, mentions in label.items():
        check_utf8(entity_type, location, "label", f"entity type {entity_type!r}")
        if not isinstance(mentions, dict):
            raise location.error(f"'{entity_type}' should map mentions to spans", field="label")
        for mention, spans in mentions.items():
            check_utf8(mention, location, "label", f"the mention {mention!r}")
            if not isinstance(spans, list):
                raise location.error(f"the spans of '{mention}' should be a list", field="label")
            found.extend((*_span(raw, mention, text, location), entity_type) for raw in spans)
    return found


def _cluener_tags(text: str, label: Mapping[str, Any], location: Location) -> list[str]:
    """Character-level BIO tags for a CLUENER label object.

    Flat tags cannot nest entities, so of overlapping spans the outer (earlier, then longer) one is kept and
    the others are dropped with a logged warning. CLUENER's train.json has one such line (1507: two company
    names inside a book title, which is kept).
    """
    tags = ["O"] * len(text)
    for start, end, entity_type in sorted(_cluener_spans(text, label, location), key=lambda s: (s[0], -s[1])):
        if any(tag != "O" for tag in tags[start : end + 1]):
            _LOG.warning(
                "%s: dropped %s span [%d, %d], which overlaps another entity",
                location.source,
                entity_type,
                start,
                end,
            )
            continue
        tags[start : end + 1] = [f"B-{entity_type}"] + [f"I-{entity_type}"] * (end - start)
    return tags


def _character_token_example(row: Row, require_labels: bool) -> TokenExample:
    """A character-level example from a CLUENER-style row; whitespace characters are not tokens."""
    text = _field(row, "text")
    if not isinstance(text, str) or not text.strip():
        raise row.location.error("expected non-empty text", field="text")
    check_utf8(text, row.location, "text")
    label = row.values.get("label")
    if label is None and require_labels:
        present = ", ".join(map(str, row.values))
        raise row.location.error(f"no object of entity spans; fields present: {present}", field="label")
    tags = _cluener_tags(text, label, row.location) if label is not None else []
    keep = [index for index, char in enumerate(text) if not char.isspace()]
    return TokenExample(
        tokens=tuple(text[index] for index in keep),
        tags=tuple(tags[index] for index in keep) if tags else (),
        text=text,
        offsets=tuple((index, index + 1) for index in keep),
        source=row.location.source,
    )


def token_example_from_row(row: Row, tokens_field: str, tags_field: str, require_labels: bool) -> TokenExample:
    """Build a :class:`TokenExample` from a row with token and tag lists, or from a CLUENER-style row.

    A row without ``tokens_field`` but with ``text`` and a ``label`` object (or no ``label`` at all) is read
    character by character, CLUENER-style, with the label's spans turned into BIO tags.

    Raises:
        DataError: on a missing field, a list that is not a list of strings, a token list and tag list of
            different lengths (naming ``tags_field``), or a CLUENER span that does not match its mention.
    """
    label = row.values.get("label")
    if tokens_field not in row.values and "text" in row.values and (label is None or isinstance(label, dict)):
        return _character_token_example(row, require_labels)
    return _listed_token_example(row, tokens_field, tags_field, require_labels)


def check_label_kinds(items: Iterable[tuple[Location, Sequence[str]]], field: str) -> None:
    """Reject labels that mix numbers (``"0"``, ``"1"``) with names (``"positive"``).

    Raises:
        DataError: at the first label whose kind differs from the first label read, naming both.
    """
    first: tuple[bool, str, Location] | None = None
    for location, labels in items:
        for label in labels:
            numeric = _NUMBER.fullmatch(label) is not None
            if first is None:
                first = (numeric, label, location)
            elif numeric != first[0]:
                message = (
                    f"the labels mix numbers and names: '{label}' here, but '{first[1]}' at line "
                    f"{first[2].line}; use one kind for the whole column"
                )
                raise location.error(message, field=field)


def check_label_spellings(items: Iterable[tuple[Location, Sequence[str]]], field: str) -> None:
    """Reject label names that differ only in case or Unicode width (``"Refund"``, ``"refund"``, ``"ｒｅｆｕｎｄ"``).

    Such names would train as separate classes, which is almost never meant. Surrounding whitespace is already
    stripped by the readers, so ``"refund "`` and ``"refund"`` are the same label.

    Raises:
        DataError: at the first label whose folded form (NFKC, case-folded) matches a differently spelt earlier
            one, naming both and the line of the earlier one.
    """
    seen: dict[str, tuple[str, Location]] = {}
    for location, labels in items:
        for label in labels:
            first, where = seen.setdefault(unicodedata.normalize("NFKC", label).casefold(), (label, location))
            if first != label:
                message = (
                    f"label '{label}' differs from '{first}' (line {where.line}) only in case or width, so the two "
                    "would train as separate classes; spell them the same way"
                )
                raise location.error(message, field=field)
