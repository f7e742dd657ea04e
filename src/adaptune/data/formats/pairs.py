"""Query/item pairs for ranking (``text_pair_rank``): the example type and how a row becomes one.

A row is either a *query row* (``query`` and, when labelled, the ``positive`` item it belongs with; optionally a
hard ``negative`` and the ``seen`` items to leave out of its ranking) or, in dev/test files, a *corpus row* (an
``item`` and no query) that adds an item to the corpus every query is ranked against. Column names are the task's
(``task.query_column`` ...). Items are identified by their text: the same text is the same item.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from adaptune.data.formats.source import Row, check_utf8, describe
from adaptune.errors import DataError


@dataclass(frozen=True)
class PairColumns:
    """Which fields of a row hold the query, its positive and negative items, the seen items, a corpus item."""

    query: str = "query"
    positive: str = "positive"
    negative: str = "negative"
    item: str = "item"
    seen: str = "seen"


@dataclass(frozen=True)
class PairExample:
    """A query with the items that go with it, or a corpus item alone.

    Attributes:
        query: the query text; None for a corpus row.
        positive: the item the query belongs with (None when unlabelled).
        negative: an optional hard negative item.
        candidates: items to score against the query (prediction), or a corpus row's one item.
        seen: items never offered to this query in evaluation (a user's already seen items).
        source: ``"file:line"`` of the row.
    """

    query: str | None
    positive: str | None = None
    negative: str | None = None
    candidates: tuple[str, ...] = ()
    seen: tuple[str, ...] = ()
    source: str = ""

    def items(self) -> list[str]:
        """The item texts of this example in row order: positive, negative, then the candidates."""
        return [t for t in (self.positive, self.negative) if t is not None] + list(self.candidates)

    @property
    def labelled(self) -> bool:
        """A query with its positive: a training pair, and a query that evaluation ranks."""
        return self.query is not None and self.positive is not None


def optional_text(row: Row, name: str) -> str | None:
    """Field ``name`` as stripped text; None when absent, null or an empty cell."""
    value = row.values.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise row.location.error(f"expected text, found {describe(value)}", field=name)
    if not value.strip():
        raise row.location.error("blank text", field=name)
    return check_utf8(value.strip(), row.location, name)


def text_list(row: Row, name: str) -> tuple[str, ...]:
    """Field ``name`` as a list of texts: a JSON list, or (in a csv/tsv cell) a JSON array as text; () when
    absent."""
    value = row.values.get(name)
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise row.location.error("expected a list of texts (in a csv/tsv cell: a JSON array)", field=name) from None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise row.location.error(f"expected a list of texts, found {describe(value)}", field=name)
    return tuple(check_utf8(v.strip(), row.location, name) for v in value if v.strip())


def example_from_row(row: Row, columns: PairColumns, *, require_positive: bool) -> PairExample:
    """A :class:`PairExample` from one row; a :class:`~adaptune.errors.DataError` naming file, line and field for
    a row that is neither a query row nor a corpus row, or a query row without its positive when one is needed."""
    query = optional_text(row, columns.query)
    item = optional_text(row, columns.item)
    source = row.location.source
    if query is None:
        if item is None:
            present = ", ".join(map(str, row.values)) or "none"
            raise row.location.error(
                f"needs a '{columns.query}' (a query row) or an '{columns.item}' (a corpus item row); fields "
                f"present: {present}",
                field=columns.query,
            )
        return PairExample(query=None, candidates=(item,), source=source)
    if item is not None:
        raise row.location.error(
            f"a row is a query row ('{columns.query}') or a corpus item row ('{columns.item}'), not both",
            field=columns.item,
        )
    positive = optional_text(row, columns.positive)
    if positive is None and require_positive:
        raise row.location.error("a query row needs the item it goes with", field=columns.positive)
    return PairExample(
        query=query,
        positive=positive,
        negative=optional_text(row, columns.negative),
        seen=text_list(row, columns.seen),
        source=source,
    )


def parse_pair_input(item: str | dict[str, Any], query_field: str) -> PairExample:
    """A prediction input: a text (or ``{"text": ...}`` / ``{query_field: ...}``) to embed, optionally with
    ``"items"``: texts to score against it."""
    if isinstance(item, str):
        if not item.strip():
            raise DataError("needs a non-empty string", field="text")
        return PairExample(query=check_utf8(item.strip(), field="text"))
    key = next((k for k in ("text", query_field) if k in item), "text")
    text = item.get(key)
    if not isinstance(text, str) or not text.strip():
        raise DataError("needs a non-empty string: the text to embed, or the query to rank the items for", field=key)
    items = item.get("items", [])
    if not isinstance(items, list) or not all(isinstance(t, str) and t.strip() for t in items):
        raise DataError("needs a list of non-empty strings (the items to score), or leave the field out", field="items")
    candidates = tuple(check_utf8(t.strip(), field="items") for t in items)
    return PairExample(query=check_utf8(text.strip(), field=key), candidates=candidates)
