"""Extractive question answering data, read into one :class:`QAExample` per question.

Two layouts, in the formats ``data.format`` names:

* **SQuAD v1.1 JSON** (``json``, or ``auto`` for a ``.json`` file holding one object with a ``data`` list), as
  SQuAD and CMRC 2018 publish it::

      {"data": [{"paragraphs": [{"context": ..., "qas": [{"id": ..., "question": ...,
                                  "answers": [{"text": ..., "answer_start": 12}]}]}]}]}

* **flat rows** (``jsonl``, a ``json`` array, or a ``datasets`` folder, ``hf``), one question per row, as
  Hugging Face's ``squad`` dataset holds them: ``{"id", "question", "context", "answers": {"text": [...],
  "answer_start": [...]}}``; ``answers`` may also be a list of ``{"text", "answer_start"}`` objects.

A question may be an empty string (CMRC 2018's trial file has two): it is read as it is; a missing question, or
one that is not a string, is an error. An answer's ``answer_start`` is a character offset into the context.
Where ``context[start:start+len(text)]`` is not the answer's text, the text is looked for near the given offset
(:func:`locate_answer`): CMRC 2018's dev file counts some offsets in UTF-16 code units (after a character outside
the BMP) and writes ``-1`` for some references. An answer found nowhere keeps ``start=None``: training skips it,
scoring (text-based, over all references, as the official scripts do) still uses it.

Problems are :class:`~adaptune.errors.DataError`\\ s naming the file, the line where it is cheap to find (the
question's line in a SQuAD file, the row's line otherwise) and the field, e.g.
``data[3].paragraphs[0].qas[2].answers[0].text``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from adaptune.data.formats.hf import read_hf_rows
from adaptune.data.formats.jsonfile import read_json_rows, read_jsonl_rows
from adaptune.data.formats.source import Location, Row, check_utf8, describe, read_text_file
from adaptune.errors import DataError

#: How far (characters) from the given offset an answer's text is looked for when the offset does not match.
SEARCH_RADIUS = 32
_EXTENSIONS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_READABLE = ("json", "jsonl", "hf")


@dataclass(frozen=True)
class Answer:
    """One reference answer.

    Attributes:
        text: the answer as written.
        start: character offset into the context with ``context[start:start + len(text)] == text``; None when the
            text is not found at or near the given offset (an unmatched answer: not trained on, still scored).
        given: ``answer_start`` as the file gives it.
    """

    text: str
    start: int | None
    given: int

    @property
    def recovered(self) -> bool:
        """The offset used is not the one given (found near it)."""
        return self.start is not None and self.start != self.given


@dataclass(frozen=True)
class QAExample:
    """One question about one passage.

    Attributes:
        id: the question's id (the file's, else its position, e.g. ``data[0].paragraphs[1].qas[2]``).
        question: the question text.
        context: the passage the answer is a span of.
        answers: the reference answers; empty when unlabelled.
        source: ``"path:line"`` where it was read (``"path"`` when the line is unknown), for messages.
    """

    id: str
    question: str
    context: str
    answers: tuple[Answer, ...] = ()
    source: str = ""


def _utf16_index(text: str, units: int) -> int | None:
    """The Python index of the character that starts at UTF-16 code unit ``units``; None past the end."""
    count = 0
    for index, char in enumerate(text):
        if count >= units:
            return index if count == units else None
        count += 2 if ord(char) > 0xFFFF else 1
    return len(text) if count == units else None


def locate_answer(context: str, text: str, given: int, radius: int = SEARCH_RADIUS) -> int | None:
    """Where ``text`` is in ``context``: at ``given`` when it matches there; else at ``given`` read as a UTF-16
    offset; else the occurrence nearest to ``given`` within ``radius`` characters; else, for a negative
    ``given`` (CMRC's ``-1``), the only occurrence in the context. None when none of these finds it."""
    if given >= 0 and context.startswith(text, given):
        return given
    if given >= 0:
        index = _utf16_index(context, given)
        if index is not None and context.startswith(text, index):
            return index
        low, high = max(0, given - radius), min(len(context), given + radius + len(text))
        found = [i for i in range(low, high) if context.startswith(text, i)]
        if found:
            return min(found, key=lambda i: (abs(i - given), i))
        return None
    first = context.find(text)
    return first if first >= 0 and context.find(text, first + 1) < 0 else None


class _LineFinder:
    """Lines of strings found in order in a file's text (each search starts where the last one matched), so
    locating every question of a SQuAD file costs one pass over it."""

    def __init__(self, text: str) -> None:
        self.text, self.position, self.line = text, 0, 1

    def find(self, value: str) -> int | None:
        """The line of the next occurrence of ``value`` as a JSON string (escaped either way); None if absent."""
        hits = [
            hit
            for needle in {json.dumps(value, ensure_ascii=False), json.dumps(value)}
            if (hit := self.text.find(needle, self.position)) >= 0
        ]
        if not hits:
            return None
        hit = min(hits)
        self.line += self.text.count("\n", self.position, hit)
        self.position = hit
        return self.line


class _Where(Protocol):
    """Where a record is: makes a :class:`DataError` there (a row's :class:`Location`, or a :class:`_Place`)."""

    def error(self, message: str, field: str | None = None) -> DataError: ...


@dataclass(frozen=True)
class _Place:
    """A question in a SQuAD file: the file and, when found, the line."""

    file: str
    line: int | None

    @property
    def source(self) -> str:
        return f"{self.file}:{self.line}" if self.line is not None else self.file

    def error(self, message: str, field: str | None = None) -> DataError:
        return DataError(message, file=self.file, line=self.line, field=field)


def _text(value: Any, where: _Where, field: str, *, allow_empty: bool = False) -> str:
    """A string field (non-empty unless ``allow_empty``), checked for UTF-8."""
    if not isinstance(value, str) or not (allow_empty or value.strip()):
        shown = "missing" if value is None else f"found {describe(value)}"
        raise where.error(f"needs a non-empty string ({shown})", field=field)
    if isinstance(where, Location):
        return check_utf8(value, where, field)
    try:
        return check_utf8(value, None, field)
    except DataError as err:
        raise where.error(err.message, field=field) from None


def _offset(value: Any, where: _Where, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise where.error(f"needs an integer character offset, found {describe(value)}", field=field)
    return value


def _answer_pairs(value: Any, where: _Where, field: str) -> Iterator[tuple[Any, Any, str, str]]:
    """``(text, answer_start, field of the text, field of the offset)`` of each answer, in either layout."""
    if isinstance(value, dict):  # {"text": [...], "answer_start": [...]} (HF's squad)
        texts, starts = value.get("text"), value.get("answer_start")
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            message = "needs lists 'text' and 'answer_start' of the same length (or a list of answer objects)"
            raise where.error(message, field=field)
        for index, (text, start) in enumerate(zip(texts, starts, strict=True)):
            yield text, start, f"{field}.text[{index}]", f"{field}.answer_start[{index}]"
        return
    if not isinstance(value, list):
        raise where.error(f"needs a list of answers, found {describe(value)}", field=field)
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            message = f"needs an object with text and answer_start, found {describe(item)}"
            raise where.error(message, field=f"{field}[{index}]")
        yield item.get("text"), item.get("answer_start"), f"{field}[{index}].text", f"{field}[{index}].answer_start"


def _answers(value: Any, context: str, where: _Where, field: str, require: bool) -> tuple[Answer, ...]:
    """The answers of one question; at least one when ``require``."""
    if value is None and not require:
        return ()
    out = []
    for text, start, text_field, start_field in _answer_pairs([] if value is None else value, where, field):
        answer = _text(text, where, text_field)
        given = _offset(start, where, start_field)
        out.append(Answer(answer, locate_answer(context, answer, given), given))
    if require and not out:
        message = "has no answers (SQuAD 2.0 unanswerable questions are not supported; give at least one answer)"
        raise where.error(message, field=field)
    return tuple(out)


def _question_id(value: Any, fallback: str, where: _Where, field: str) -> str:
    if value is None:
        return fallback
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise where.error(f"needs a string (or integer) id, found {describe(value)}", field=field)
    return str(value)


def _squad_examples(document: dict[str, Any], text: str, file: str, require: bool) -> list[QAExample]:
    """The questions of a parsed SQuAD v1.1 document; ``text`` is the file's text, to find lines in."""
    whole = _Place(file, None)
    if not isinstance(document.get("data"), list):
        raise whole.error(f"needs a list of articles, found {describe(document.get('data'))}", field="data")
    lines, out = _LineFinder(text), []
    for i, article in enumerate(document["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise whole.error(f"needs a list, found {describe(paragraphs)}", field=f"data[{i}].paragraphs")
        for j, paragraph in enumerate(paragraphs):
            where = f"data[{i}].paragraphs[{j}]"
            if not isinstance(paragraph, dict):
                raise whole.error(f"needs an object, found {describe(paragraph)}", field=where)
            context = _text(paragraph.get("context"), whole, f"{where}.context")
            qas = paragraph.get("qas")
            if not isinstance(qas, list):
                raise whole.error(f"needs a list of questions, found {describe(qas)}", field=f"{where}.qas")
            for k, qa in enumerate(qas):
                out.append(_squad_question(qa, context, lines, file, f"{where}.qas[{k}]", require))
    return out


def _squad_question(qa: Any, context: str, lines: _LineFinder, file: str, where: str, require: bool) -> QAExample:
    """One question of a SQuAD paragraph, located at the line of its question string."""
    if not isinstance(qa, dict):
        raise DataError(f"needs an object, found {describe(qa)}", file=file, field=where)
    question = qa.get("question")
    place = _Place(file, lines.find(question) if isinstance(question, str) else None)
    text = _text(question, place, f"{where}.question", allow_empty=True)
    answers = _answers(qa.get("answers"), context, place, f"{where}.answers", require)
    qid = _question_id(qa.get("id"), where, place, f"{where}.id")
    return QAExample(qid, text, context, answers, place.source)


def _row_example(row: Row, require: bool, index: int) -> QAExample:
    """One flat row: ``question``, ``context``, ``answers`` and an optional ``id``."""
    location, values = row.location, row.values
    context = _text(values.get("context"), location, "context")
    question = _text(values.get("question"), location, "question", allow_empty=True)
    answers = _answers(values.get("answers"), context, location, "answers", require)
    qid = _question_id(values.get("id"), f"row {index}", location, "id")
    return QAExample(qid, question, context, answers, location.source)


def _format_of(path: Path, format: str) -> str:
    """The layout to read: ``json``, ``jsonl`` or ``hf`` (from the name when ``format`` is ``auto``)."""
    if format == "auto":
        if path.is_dir():
            return "hf"
        found = _EXTENSIONS.get(path.suffix.lower())
        if found is None:
            raise DataError(
                f"cannot tell the format from the extension '{path.suffix}'; extractive_qa reads SQuAD .json, "
                ".jsonl or a datasets folder (pass data.format=json, jsonl or hf)",
                file=str(path),
            )
        return found
    if format not in _READABLE:
        raise DataError(
            f"{format} files do not hold question answering examples; extractive_qa reads {', '.join(_READABLE)}",
            file=str(path),
        )
    return format


def _squad_document(text: str, file: str) -> dict[str, Any] | None:
    """The parsed document when a JSON file's text is one object with a ``data`` key (SQuAD); None for an array
    or JSON Lines (read as rows).

    Raises:
        DataError: a single JSON document that does not parse, at the line the parser stopped.
    """
    stripped = text.lstrip(" \t\n\r")
    if not stripped.startswith("{"):
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        first = stripped.split("\n", 1)[0]
        try:
            json.loads(first)
            return None  # the first line is a whole object: JSON Lines, whose reader names the bad line
        except ValueError:
            raise DataError(f"not valid JSON: {err.msg} at column {err.colno}", file=file, line=err.lineno) from None
    return value if isinstance(value, dict) and "data" in value else None


def read_qa_examples(
    path: str | Path, *, format: str = "auto", hf_split: str | None = None, require_labels: bool = True
) -> list[QAExample]:
    """Read question answering examples from a SQuAD v1.1 JSON file or from flat rows (jsonl, json, hf).

    Args:
        path: the file, or the folder for ``format="hf"``.
        format: ``auto`` (from the name and, for ``.json``, the content), ``json``, ``jsonl`` or ``hf``.
        hf_split: the split of a saved ``DatasetDict``.
        require_labels: every question needs at least one answer; when false, missing answers give ``()``.

    Returns:
        One :class:`QAExample` per question, in file order.

    Raises:
        DataError: naming file, line and field: JSON that does not parse, a missing or empty question or context,
            answers that are not a list of ``{"text", "answer_start"}`` (or HF's lists), a question without
            answers, an empty file, a format other than json, jsonl and hf.
    """
    path = Path(path)
    found, file = _format_of(path, format), str(path)
    if found == "hf":
        rows = read_hf_rows(path, hf_split)
    else:
        text = read_text_file(path)
        document = _squad_document(text, file) if found == "json" else None
        if document is not None:
            examples = _squad_examples(document, text, file, require_labels)
            if not examples:
                raise DataError("no questions found", file=file, field="data")
            return examples
        rows = read_jsonl_rows(text, file) if found == "jsonl" else read_json_rows(text, file)
    examples = [_row_example(row, require_labels, index) for index, row in enumerate(rows)]
    if not examples:
        raise DataError("no questions found", file=file)
    return examples
