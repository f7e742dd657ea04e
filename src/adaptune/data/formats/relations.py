"""Relation-classification examples: a sentence with two marked entities and the directed relation between them.

Two ways to mark the entities, in any of the table formats (csv, tsv, jsonl, json, hf) and in SemEval's own:

* **inline markup** in the text, as SemEval-2010 Task 8 writes it:
  ``"The <e1>author</e1> of the <e2>book</e2> ..."`` (exactly one ``<e1>..</e1>`` and one ``<e2>..</e2>``,
  in either order, neither inside the other);
* **character spans** (JSON formats): ``{"text": ..., "e1": [start, end], "e2": [start, end], "label": ...}``
  with ``end`` exclusive (also ``{"start": s, "end": e}`` objects).

The SemEval-2010 Task 8 release files (``TRAIN_FILE.TXT``, ``TEST_FILE_FULL.TXT``) are read as they are:
``ID<TAB>"sentence"``, the label line, the ``Comment:`` line (ignored, as the task says) and a blank line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptune.data.formats.source import Location, Row, check_utf8, describe, read_text_file
from adaptune.errors import DataError

#: The inline entity markup: tag name -> (open, close).
MARKUP = {"e1": ("<e1>", "</e1>"), "e2": ("<e2>", "</e2>")}
_TAG = re.compile(r"</?e[12]>")
_SEMEVAL_HEAD = re.compile(r'^(\d+)\t"(.*)"\s*$')


@dataclass(frozen=True)
class RelationExample:
    """One relation example.

    Attributes:
        text: the sentence without markup.
        e1: ``(start, end)`` character span of the first entity in ``text`` (``end`` exclusive).
        e2: the second entity's span; the relation is directed, e.g. ``Cause-Effect(e1,e2)``.
        label: the relation name, ``""`` when unlabelled.
        source: ``"path:line"`` where it was read, for error messages.
    """

    text: str
    e1: tuple[int, int]
    e2: tuple[int, int]
    label: str = ""
    source: str = ""

    def entity(self, which: str) -> str:
        """The text of entity ``"e1"`` or ``"e2"``."""
        start, end = self.e1 if which == "e1" else self.e2
        return self.text[start:end]


def parse_markup(
    marked: str, where: Location | None = None, field: str = "text"
) -> tuple[str, tuple[int, int], tuple[int, int]]:
    """Strip ``<e1>..</e1>`` and ``<e2>..</e2>`` from ``marked``: ``(text, e1 span, e2 span)``.

    Raises:
        DataError: at ``where`` naming ``field`` when a tag is missing, repeated, out of order or nested.
    """
    found: dict[str, int] = {}
    plain: list[str] = []
    length, last = 0, 0
    for match in _TAG.finditer(marked):
        plain.append(marked[last : match.start()])
        length += match.start() - last
        last = match.end()
        tag = match.group()
        if tag in found:
            raise _error(f"the tag {tag} occurs twice", where, field)
        found[tag] = length
    plain.append(marked[last:])
    spans = []
    for open_tag, close_tag in MARKUP.values():
        if open_tag not in found or close_tag not in found:
            missing = open_tag if open_tag not in found else close_tag
            raise _error(
                f"needs both entities marked as <e1>..</e1> and <e2>..</e2>; {missing} is missing", where, field
            )
        if found[close_tag] <= found[open_tag]:
            raise _error(f"{close_tag} must come after {open_tag} with the entity between them", where, field)
        spans.append((found[open_tag], found[close_tag]))
    text = "".join(plain)
    return text, *check_spans(text, spans[0], spans[1], where, field)


def check_spans(
    text: str, e1: tuple[int, int], e2: tuple[int, int], where: Location | None = None, field: str = "e1"
) -> tuple[tuple[int, int], tuple[int, int]]:
    """The two spans if each is a non-empty range inside ``text`` and they do not overlap; else a DataError."""
    for name, (start, end) in (("e1", e1), ("e2", e2)):
        if not 0 <= start < end <= len(text):
            raise _error(
                f"{name} span [{start}, {end}) is not a non-empty range of the text (length {len(text)})", where, field
            )
        if not text[start:end].strip():
            raise _error(f"{name} is blank", where, field)
    if e1[0] < e2[1] and e2[0] < e1[1]:
        raise _error(f"the entities overlap: e1 {list(e1)}, e2 {list(e2)}", where, field)
    return e1, e2


def _error(message: str, where: Location | None, field: str) -> DataError:
    return where.error(message, field) if where is not None else DataError(message, field=field)


def _span(value: Any, where: Location, field: str) -> tuple[int, int]:
    """``[start, end]`` or ``{"start", "end"}`` -> ``(start, end)``."""
    if isinstance(value, dict):
        value = [value.get("start"), value.get("end")]
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise where.error(f"needs a character span [start, end] (end exclusive), got {describe(value)}", field)
    return int(value[0]), int(value[1])


def example_from_fields(
    values: dict[str, Any] | Any,
    where: Location,
    *,
    text_field: str,
    label_field: str | None,
    require_label: bool,
) -> RelationExample:
    """A :class:`RelationExample` from one record: inline markup in ``text_field``, or spans ``e1`` and ``e2``."""
    text = values.get(text_field)
    if not isinstance(text, str) or not text.strip():
        raise where.error(f"needs a non-empty string, got {describe(text)}", text_field)
    check_utf8(text, where, text_field)
    if "e1" in values or "e2" in values:
        e1, e2 = _span(values.get("e1"), where, "e1"), _span(values.get("e2"), where, "e2")
        e1, e2 = check_spans(text, e1, e2, where, "e1")
    else:
        text, e1, e2 = parse_markup(text, where, text_field)
    label = ""
    if label_field is not None:
        raw = values.get(label_field)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            if require_label:
                raise where.error("needs a relation label", label_field)
        elif not isinstance(raw, str | int) or isinstance(raw, bool):
            raise where.error(f"needs a relation name, got {describe(raw)}", label_field)
        else:
            label = str(raw).strip()
    return RelationExample(text, e1, e2, label, where.source)


def example_from_row(row: Row, *, text_field: str, label_field: str | None, require_label: bool) -> RelationExample:
    """A :class:`RelationExample` from a table row (see :func:`example_from_fields`)."""
    return example_from_fields(
        dict(row.values), row.location, text_field=text_field, label_field=label_field, require_label=require_label
    )


def is_semeval_file(path: Path) -> bool:
    """Whether ``path`` looks like a SemEval-2010 Task 8 release file (its first line is ``ID<TAB>"..."``)."""
    if path.is_dir() or path.suffix.lower() != ".txt":
        return False
    with path.open(encoding="utf-8", errors="replace") as handle:
        first = handle.readline()
    return _SEMEVAL_HEAD.match(first.rstrip("\r\n")) is not None


def read_semeval(path: str | Path, *, require_labels: bool = True) -> list[RelationExample]:
    """Read a SemEval-2010 Task 8 file (CRLF or LF): blocks of ``ID<TAB>"sentence"``, label, ``Comment:``, blank.

    Raises:
        DataError: naming the file and line for a block that does not have this shape or whose markup is wrong.
    """
    file = str(path)
    lines = read_text_file(Path(path)).splitlines()
    examples: list[RelationExample] = []
    index = 0
    while index < len(lines):
        if not lines[index].strip():
            index += 1
            continue
        where = Location(file, index + 1)
        head = _SEMEVAL_HEAD.match(lines[index])
        if head is None:
            raise where.error('needs a line ID<TAB>"sentence" (SemEval-2010 Task 8 layout)', "sentence")
        text, e1, e2 = parse_markup(head.group(2), where, "sentence")
        label = lines[index + 1].strip() if index + 1 < len(lines) else ""
        if label.lower().startswith("comment:"):
            label = ""
        if not label and require_labels:
            raise Location(file, index + 2).error("needs the relation label on the line after the sentence", "label")
        examples.append(RelationExample(text, e1, e2, label, where.source))
        index += 2
        while index < len(lines) and lines[index].strip() and not _SEMEVAL_HEAD.match(lines[index]):
            index += 1  # the Comment: line
    if not examples:
        raise DataError("no examples found", file=file)
    return examples
