"""The README's configuration table stays equal to the run config's schema (:func:`adaptune.catalogue.config_schema`).

What is checked, in README.md's "Configuration" table and in its translation's ("配置" in README.zh-CN.md):

* Every key of the ``model``, ``data`` and ``training`` sections of the schema has a row, and its default there is
  the schema's.
* Every key a row names exists: ``model``/``data``/``training`` keys in their section, ``method``/``task`` keys in
  at least one registered method's or task's config. So a renamed or removed key cannot linger in the table.
* The ``method.name`` and ``task.name`` rows name every registered method and task in their meaning cell.

Not checked: the method- and task-specific keys (``method.r``, ``task.multi_label`` ...). The table summarises them
in the ``method.name``/``task.name`` rows and the Methods/Tasks sections, as before; the schema
(``adaptune config --schema``) lists them all. Nor is the wording of the meaning column.

How a row reads: the key cell holds backticked keys, the first with its section (``data.token_column``, or
``data.train/dev/test`` for several), the others bare keys of the same section (``tag_column``). The default cell
holds one entry per key, separated by `` / `` (a single entry applies to every key). An entry is a backticked
value (compared as the YAML it is: ``5`` matches 5.0, ``false`` matches False; strings literally), ``–`` for no
default (null), or words (``method's default``, ``each epoch``), allowed only where the schema default is null or
``auto``: a default that is resolved at run time and that the words describe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from adaptune.catalogue import config_schema, section_fields
from adaptune.registry import method_names, task_names

ROOT = Path(__file__).resolve().parents[2]
#: README file -> the heading of its configuration section.
READMES = {"README.md": "## Configuration", "README.zh-CN.md": "## 配置"}
CHECKED_SECTIONS = ("model", "data", "training")
SECTIONS = (*CHECKED_SECTIONS, "method", "task")
CODE = re.compile(r"`([^`]+)`")
NONE = {"–", "-"}
#: Schema defaults that words in the table may stand for (resolved at run time).
DESCRIBED = (None, "auto")


@dataclass(frozen=True)
class Row:
    """One table row: its line, the keys it names (``section.key``) and one default entry per key."""

    line: int
    keys: tuple[str, ...]
    defaults: tuple[str, ...]
    meaning: str


def parse_keys(cell: str, where: str) -> list[str]:
    """``\\`data.text_column\\` / \\`label_column\\``` -> ``["data.text_column", "data.label_column"]``."""
    spans = CODE.findall(cell)
    assert spans, f"{where}: the key cell {cell!r} holds no backticked key"
    section, _, first = spans[0].partition(".")
    assert section in SECTIONS and first, f"{where}: {spans[0]!r} should be section.key, section one of {SECTIONS}"
    names = first.split("/") + spans[1:]
    for name in names:
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", name), f"{where}: {name!r} is not a key name (in {cell!r})"
    return [f"{section}.{name}" for name in names]


@cache
def table_rows(readme: str) -> tuple[Row, ...]:
    """The rows of the first table under the README's configuration heading."""
    lines = (ROOT / readme).read_text(encoding="utf-8").splitlines()
    start = lines.index(READMES[readme])
    rows: list[Row] = []
    for number, line in enumerate(lines[start + 1 :], start=start + 2):
        if line.startswith("## "):
            break
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if set(cells[0]) <= set("-: ") or "`" not in cells[0]:  # separator and header rows
            continue
        where = f"{readme}:{number}"
        keys = parse_keys(cells[0], where)
        defaults = [part.strip() for part in cells[1].split(" / ")]
        if len(defaults) == 1:
            defaults *= len(keys)
        assert len(defaults) == len(keys), f"{where}: {len(keys)} keys {keys} but {len(defaults)} defaults {cells[1]!r}"
        rows.append(Row(number, tuple(keys), tuple(defaults), cells[2]))
    assert rows, f"{readme}: no table under {READMES[readme]!r}"
    return tuple(rows)


@cache
def schema_fields() -> dict[str, dict[str, Any]]:
    """``section.key`` -> its schema, for the model, data and training sections."""
    schema = config_schema()
    return {f"{s}.{key}": field for s in CHECKED_SECTIONS for key, field in section_fields(schema, s).items()}


@cache
def registered_keys() -> dict[str, set[str]]:
    """``method`` / ``task`` -> every key of any registered method's / task's config."""
    schema = config_schema()
    out: dict[str, set[str]] = {}
    for section in ("method", "task"):
        refs = schema["$defs"][schema["properties"][section]["$ref"].rsplit("/", 1)[-1]]["anyOf"]
        out[section] = {key for ref in refs for key in schema["$defs"][ref["$ref"].rsplit("/", 1)[-1]]["properties"]}
    return out


def section_default(key: str) -> tuple[bool, Any]:
    """(whether the schema gives ``key`` a default, that default); method/task keys from their sections' defaults."""
    section, name = key.split(".", 1)
    if section in CHECKED_SECTIONS:
        field = schema_fields()[key]
        return "default" in field, field.get("default")
    default = config_schema()["properties"][section]["default"]
    return name in default, default.get(name)


def default_problem(entry: str, default: Any) -> str | None:
    """Why a table entry does not state ``default``, or None when it does."""
    if entry in NONE:
        return None if default is None else f"'–' says no default, the schema's is {default!r}"
    match = CODE.fullmatch(entry)
    if match is None:
        if default in DESCRIBED:
            return None
        return f"words ({entry!r}) stand only for a null or 'auto' default; write the schema's `{default}`"
    code = match.group(1)
    if isinstance(default, str):
        return None if code == default else f"`{code}` vs the schema's {default!r}"
    if isinstance(default, bool):
        return None if code == str(default).lower() else f"`{code}` vs the schema's {str(default).lower()}"
    value = yaml.safe_load(code)
    same = value == default and not isinstance(value, bool)
    return None if same else f"`{code}` vs the schema's {default!r}"


@pytest.mark.parametrize("readme", READMES)
def test_every_schema_key_has_a_row(readme: str) -> None:
    listed = {key for row in table_rows(readme) for key in row.keys}
    missing = [key for key in schema_fields() if key not in listed]
    assert not missing, f"{readme}'s configuration table lacks {missing} (adaptune config --schema has them)"


@pytest.mark.parametrize("readme", READMES)
def test_every_row_names_real_keys_with_their_defaults(readme: str) -> None:
    for row in table_rows(readme):
        for key, entry in zip(row.keys, row.defaults, strict=True):
            where = f"{readme}:{row.line} `{key}`"
            section, name = key.split(".", 1)
            if section in CHECKED_SECTIONS:
                assert key in schema_fields(), f"{where}: no such key in the schema's '{section}' section"
            else:
                assert name in registered_keys()[section], f"{where}: no registered {section} config has '{name}'"
            has_default, default = section_default(key)
            if has_default:
                problem = default_problem(entry, default)
                assert problem is None, f"{where}: default {problem}"


@pytest.mark.parametrize("readme", READMES)
def test_name_rows_list_every_registered_method_and_task(readme: str) -> None:
    by_key = {key: row for row in table_rows(readme) for key in row.keys}
    for section, names in (("method", method_names()), ("task", task_names())):
        row = by_key.get(f"{section}.name")
        assert row is not None, f"{readme}: the configuration table has no `{section}.name` row"
        listed = set(CODE.findall(row.meaning))
        missing = [name for name in names if name not in listed]
        assert not missing, f"{readme}:{row.line}: `{section}.name` does not name the registered {missing}"


def test_parser_reads_rows_and_defaults() -> None:
    """The checks compare something: rows split into keys and defaults as the docstring says."""
    rows = {row.keys: row.defaults for row in table_rows("README.md")}
    assert rows[("data.train", "data.dev", "data.test")] == ("–", "–", "–")
    assert rows[("data.token_column", "data.tag_column")] == ("`0`", "`-1`")
    assert default_problem("`5`", 5.0) is None and default_problem("`off`", "off") is None
    assert default_problem("`false`", False) is None and default_problem("`0`", False) is not None
    assert default_problem("each epoch", None) is None and default_problem("task's", "auto") is None
    assert default_problem("–", 32) is not None and default_problem("`16`", 32) is not None
    assert default_problem("many", 32) is not None
