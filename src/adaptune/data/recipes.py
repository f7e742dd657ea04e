"""Text-to-text recipes of the ``causal_lm`` task: translation, summarisation and multi-turn dialogue.

A recipe is data: the shape of its rows, the prompt that turns a row into an instruction, and the metrics its
field reports (:data:`RECIPES`). Training and evaluation stay the task's own: a row becomes an ordinary
:class:`~adaptune.data.chat.ChatExample` ``[user: prompt, assistant: target]``, so the loss covers the target only.

========================  =============================================  ====================================
recipe                    rows (``.jsonl``/``.json``/``.csv``/``.tsv``)  generation metrics
========================  =============================================  ====================================
``none``                  chat records (Alpaca, ShareGPT, OpenAI)        exact match, ROUGE-L, chrF, BLEU
``translation``           ``{"source": ..., "target": ...}``             BLEU, chrF
``summarisation``         ``{"document": ..., "summary": ...}``          ROUGE-1, ROUGE-2, ROUGE-L
``dialogue``              chat records, e.g. ShareGPT ``conversations``  ROUGE-L, BLEU, chrF (every reply)
========================  =============================================  ====================================

Fields of pair rows: ``data.text_column`` and ``data.label_column`` name them; with their defaults (``text``,
``label``) a file that has no such field reads the recipe's own names (``source``/``target``,
``document``/``summary``), settled once per file from its header or first row, as
:func:`~adaptune.data.formats.layouts.resolve_columns` does for classification files.

Prompts: ``task.prompt_template`` with ``{source}`` (the row's text) and, when given, ``{source_language}`` and
``{target_language}``; the defaults are :data:`TRANSLATION_PROMPT` (or :data:`TRANSLATION_PROMPT_TO` without a
source language) and :data:`SUMMARY_PROMPT`.

Dialogue: every assistant turn is trained (as for any chat record), and evaluation generates every assistant
turn from the gold history before it (:func:`reply_prompts`), not only the last one.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from adaptune.config import DataConfig
from adaptune.data.chat import ChatExample, Message
from adaptune.data.formats.delimited import read_delimited_rows
from adaptune.data.formats.jsonfile import json_kind, read_json_rows, read_jsonl_rows
from adaptune.data.formats.source import Row, check_utf8, describe, read_text_file
from adaptune.errors import ConfigError, DataError

TRANSLATION_PROMPT = "Translate from {source_language} to {target_language}:\n\n{source}"
TRANSLATION_PROMPT_TO = "Translate to {target_language}:\n\n{source}"
SUMMARY_PROMPT = "Summarize the following text:\n\n{source}"
#: The placeholders a prompt template may use.
PLACEHOLDERS = ("source", "source_language", "target_language")


@dataclass(frozen=True)
class Recipe:
    """One recipe: its row fields (source, target; None for chat records) and its default metrics."""

    name: str
    fields: tuple[str, str] | None
    metrics: tuple[str, ...]

    @property
    def pairs(self) -> bool:
        """Whether its rows are (source, target) pairs rather than chat records."""
        return self.fields is not None


RECIPES = {
    "none": Recipe("none", None, ("exact_match", "rouge_l", "chrf", "bleu")),
    "translation": Recipe("translation", ("source", "target"), ("bleu", "chrf")),
    "summarisation": Recipe("summarisation", ("document", "summary"), ("rouge_1", "rouge_2", "rouge_l")),
    "dialogue": Recipe("dialogue", None, ("rouge_l", "bleu", "chrf")),
}


@dataclass(frozen=True)
class PromptSpec:
    """How a pair row's text becomes the user message: the template and the languages it may name."""

    template: str
    source_language: str | None = None
    target_language: str | None = None

    def render(self, source: str) -> str:
        return self.template.format(
            source=source, source_language=self.source_language or "", target_language=self.target_language or ""
        )


def placeholders(template: str) -> set[str]:
    """The ``{names}`` a format string uses; a :class:`ConfigError` when it does not parse."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise ConfigError(f"config key 'task.prompt_template' = {template!r} is not a format string: {err}") from None


def prompt_spec(
    recipe: str, template: str | None, source_language: str | None, target_language: str | None
) -> PromptSpec | None:
    """The prompt of a pair recipe (None for the others), checked: a :class:`ConfigError` naming the key when
    the template lacks ``{source}``, uses an unknown placeholder or a language that is not given, or when a
    template or a language is given to a recipe without pair rows."""
    if not RECIPES[recipe].pairs:
        given = [k for k, v in (("prompt_template", template), ("target_language", target_language)) if v]
        given += ["source_language"] if source_language else []
        if given:
            keys = ", ".join(f"task.{k}" for k in given)
            raise ConfigError(f"{keys}: only for task.recipe translation or summarisation, not '{recipe}'")
        return None
    if template is None and recipe == "translation":
        if target_language is None:
            raise ConfigError(
                "config key 'task.target_language' is required by task.recipe = 'translation' (the default prompt "
                "names it), or give task.prompt_template with {source}"
            )
        template = TRANSLATION_PROMPT if source_language else TRANSLATION_PROMPT_TO
    template = template or SUMMARY_PROMPT
    used = placeholders(template)
    unknown = sorted(used - set(PLACEHOLDERS))
    if "source" not in used or unknown:
        problem = f"unknown placeholder {{{unknown[0]}}}" if unknown else "no {source} placeholder"
        allowed = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
        raise ConfigError(f"config key 'task.prompt_template' = {template!r}: {problem} (allowed: {allowed})")
    for key, value in (("source_language", source_language), ("target_language", target_language)):
        if key in used and not value:
            raise ConfigError(f"config key 'task.{key}' is required: task.prompt_template uses {{{key}}}")
    return PromptSpec(template, source_language, target_language)


def read_rows(path: str, data: DataConfig) -> list[Row]:
    """The rows of a ``.jsonl``/``.json``/``.csv``/``.tsv`` file (``data.format`` or its extension)."""
    file = Path(path)
    fmt = data.format if data.format != "auto" else _format_of(file)
    if fmt not in ("json", "jsonl", "csv", "tsv"):
        raise DataError(f"text-to-text recipes read JSON, JSON Lines, CSV or TSV files, not {fmt}", file=path)
    text = read_text_file(file)
    if fmt in ("csv", "tsv"):
        delimiter = "," if fmt == "csv" else "\t"
        return read_delimited_rows(text, path, delimiter=delimiter, column_names=data.column_names)
    return read_json_rows(text, path) if json_kind(text) == "json" else read_jsonl_rows(text, path)


def _format_of(file: Path) -> str:
    suffix = file.suffix.lower()
    return {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(suffix, "json")


def pair_fields(names: Sequence[str], recipe: Recipe, data: DataConfig) -> tuple[str, str]:
    """The (source, target) fields of a file whose first row (or header) has ``names``: ``data.text_column`` and
    ``data.label_column``, except that a default one (``text``, ``label``) the file lacks reads the recipe's."""
    assert recipe.fields is not None
    own_source, own_target = recipe.fields
    source = own_source if data.text_column == "text" and "text" not in names else data.text_column
    target = own_target if data.label_column == "label" and "label" not in names else data.label_column
    return source, target


def _cell(row: Row, name: str, *, required: bool) -> str | None:
    """The non-empty text of field ``name`` (None when absent and not ``required``); a :class:`DataError` naming
    the file, line and field otherwise."""
    if name not in row.values:
        if not required:
            return None
        present = ", ".join(map(str, row.values)) or "none"
        raise row.location.error(f"no field '{name}'; fields present: {present}", field=name)
    value = row.values[name]
    if not isinstance(value, str):
        raise row.location.error(f"needs a string, found {describe(value)}", field=name)
    if not value.strip():
        raise row.location.error("needs a non-empty string", field=name)
    return check_utf8(value.strip(), row.location, name)


def pair_example(row: Row, fields: tuple[str, str], prompt: PromptSpec, *, require_target: bool) -> ChatExample:
    """``[user: prompt(source), assistant: target]`` (no assistant turn when the target is absent and not
    required)."""
    source = _cell(row, fields[0], required=True)
    assert source is not None
    target = _cell(row, fields[1], required=require_target)
    reply = (Message("assistant", target),) if target is not None else ()
    return ChatExample((Message("user", prompt.render(source)), *reply), row.location.source)


def read_pair_examples(
    path: str, data: DataConfig, recipe: Recipe, prompt: PromptSpec, *, require_labels: bool = True
) -> list[ChatExample]:
    """A translation or summarisation file as instruction records, one per row, in file order.

    Raises:
        DataError: naming the file, line and field for a missing, empty or non-string source or target, and
            for any problem the format's reader finds; or for a file without rows.
    """
    rows = read_rows(path, data)
    if not rows:
        raise DataError("no examples found", file=path)
    fields = pair_fields(list(rows[0].values), recipe, data)
    return [pair_example(row, fields, prompt, require_target=require_labels) for row in rows]


def reply_prompts(example: ChatExample) -> list[tuple[tuple[Message, ...], str]]:
    """``(history, reference)`` for every assistant turn of a conversation: what dialogue evaluation generates
    from (the gold turns before the reply) and scores against (the reply)."""
    return [(example.messages[:i], m.content) for i, m in enumerate(example.messages) if m.role == "assistant"]
