"""README.zh-CN.md must stay in step with README.md.

The Chinese README is a translation: its prose is free, but its skeleton is not. Both files must have the same
headings (level by level, in order), the same fenced code blocks (language tag and content, byte for byte), and the
same tables (rows and columns; cells that hold only code or numbers unchanged, and every other cell keeping the
same backtick-quoted code), and each must link to the other. When README.md changes, these tests name the first
place where the translation no longer follows it.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EN = ROOT / "README.md"
ZH = ROOT / "README.zh-CN.md"

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
HEADING = re.compile(r"^(?P<hashes>#{1,6})\s+(?P<text>.*?)\s*#*\s*$")
CELL_SPLIT = re.compile(r"(?<!\\)\|")
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
NUMBER = re.compile(r"\d[\d.,]*(?:e[-+]?\d+)?x?")
LETTER = re.compile(r"[^\W\d_]")
ANCHOR_LINK = re.compile(r"\]\(#(?P<anchor>[^)\s]+)\)")


@dataclass(frozen=True)
class Heading:
    line: int
    level: int
    text: str

    def __str__(self) -> str:
        return f"{'#' * self.level} {self.text}"


@dataclass(frozen=True)
class CodeBlock:
    line: int
    lang: str
    body: str


@dataclass
class Table:
    line: int
    rows: list[list[str]] = field(default_factory=list)


@dataclass
class Readme:
    """The parts of a README that the translation must keep: headings, fenced code blocks, tables."""

    path: Path
    headings: list[Heading] = field(default_factory=list)
    blocks: list[CodeBlock] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    #: The other lines (prose, lists, HTML comments), as (index of the heading above them, line); -1 before the first.
    prose: list[tuple[int, str]] = field(default_factory=list)

    def where(self, line: int) -> str:
        """``README.md:12 (under '## Configuration')`` for a line number."""
        above = [h for h in self.headings if h.line <= line]
        under = f" (under '{above[-1]}')" if above else ""
        return f"{self.path.name}:{line}{under}"


def split_row(line: str) -> list[str]:
    """Cells of a pipe-table row; ``\\|`` is a literal pipe, not a cell border."""
    inner = line.strip().removeprefix("|").removesuffix("|")
    return [cell.strip() for cell in CELL_SPLIT.split(inner)]


def closes(line: str, fence: str) -> bool:
    """Whether ``line`` closes a block opened by ``fence`` (same character, at least as long, nothing after)."""
    stripped = line.strip()
    return len(stripped) >= len(fence) and set(stripped) == {fence[0]}


@cache
def parse(path: Path) -> Readme:
    """Headings, fenced code blocks (dedented by their fence's indent) and tables of a markdown file."""
    readme = Readme(path)
    fence = None  # (indent, fence, info, first line number, body lines) while inside a code block
    table = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if fence is not None:
            indent, marker, info, start, body = fence
            if closes(line, marker):
                readme.blocks.append(CodeBlock(start, info.split()[0] if info.split() else "", "\n".join(body)))
                fence = None
            else:
                body.append(line[min(indent, len(line) - len(line.lstrip(" "))) :])
            continue
        if line.lstrip().startswith("|"):
            if table is None:
                table = Table(number)
                readme.tables.append(table)
            table.rows.append(split_row(line))
            continue
        table = None
        if match := FENCE.match(line):
            fence = (len(match["indent"]), match["fence"], match["info"].strip(), number, [])
        elif match := HEADING.match(line):
            readme.headings.append(Heading(number, len(match["hashes"]), match["text"]))
        else:
            readme.prose.append((len(readme.headings) - 1, line))
    assert fence is None, f"{path.name}:{fence[3]}: code block never closed"
    return readme


def code_spans(text: str) -> list[str]:
    """The backtick-quoted pieces of some markdown, a line break inside one read as a space (as rendered)."""
    return [" ".join(match.group(2).split()) for match in CODE_SPAN.finditer(text)]


def is_fixed(cell: str) -> bool:
    """Whether a cell holds nothing to translate: only code spans, numbers and punctuation (or nothing)."""
    rest = NUMBER.sub("", CODE_SPAN.sub("", cell))
    return LETTER.search(rest) is None


def slug(text: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(readme: Readme) -> set[str]:
    """Every heading anchor of a README, with GitHub's ``-1``, ``-2`` suffixes for repeated headings."""
    seen: Counter[str] = Counter()
    result = set()
    for heading in readme.headings:
        base = slug(heading.text)
        result.add(f"{base}-{seen[base]}" if seen[base] else base)
        seen[base] += 1
    return result


@pytest.fixture(scope="module")
def en() -> Readme:
    return parse(EN)


@pytest.fixture(scope="module")
def zh() -> Readme:
    assert ZH.is_file(), f"{ZH.name} is missing: README.md's Chinese translation lives there"
    return parse(ZH)


def test_readmes_link_to_each_other() -> None:
    link = re.compile(r"\[[^\]]+\]\((?P<target>[^)]+)\)")
    en_top = EN.read_text(encoding="utf-8").splitlines()[:3]
    zh_top = ZH.read_text(encoding="utf-8").splitlines()[:3]
    assert any(m["target"] == ZH.name for line in en_top for m in link.finditer(line)), (
        f"README.md should link to {ZH.name} in its first lines (right after the title), e.g. "
        f"'中文说明: [{ZH.name}]({ZH.name})'"
    )
    assert any(m["target"] == EN.name for line in zh_top for m in link.finditer(line)), (
        f"{ZH.name} should link back to README.md in its first line, e.g. 'English: [README.md](README.md)'"
    )


def first_unmatched(en: Readme, en_items: list, zh: Readme, zh_items: list) -> str:
    """Where the first heading or block without a counterpart is, in whichever README has more of them."""
    common = min(len(en_items), len(zh_items))
    readme, items = (en, en_items) if len(en_items) > common else (zh, zh_items)
    return readme.where(items[common].line)


def test_same_heading_levels(en: Readme, zh: Readme) -> None:
    for index, (left, right) in enumerate(zip(en.headings, zh.headings, strict=False), start=1):
        assert left.level == right.level, (
            f"heading {index} differs in level: README.md:{left.line} '{left}' (level {left.level}) vs "
            f"{ZH.name}:{right.line} '{right}' (level {right.level}); translate README.md's headings in order"
        )
    assert len(en.headings) == len(zh.headings), (
        f"README.md has {len(en.headings)} headings, {ZH.name} {len(zh.headings)}; the first one without a "
        f"counterpart is at {first_unmatched(en, en.headings, zh, zh.headings)}"
    )


def describe_block_difference(index: int, left: CodeBlock, right: CodeBlock, en: Readme, zh: Readme) -> str:
    where = f"code block {index}: {en.where(left.line)} vs {zh.where(right.line)}"
    if left.lang != right.lang:
        return f"{where}: language tag '{left.lang}' vs '{right.lang}'"
    diff = difflib.unified_diff(
        left.body.splitlines(), right.body.splitlines(), en.path.name, zh.path.name, n=0, lineterm=""
    )
    return f"{where}: content differs (code is never translated; copy it from README.md):\n" + "\n".join(diff)


def test_same_code_blocks(en: Readme, zh: Readme) -> None:
    for index, (left, right) in enumerate(zip(en.blocks, zh.blocks, strict=False), start=1):
        assert (left.lang, left.body) == (right.lang, right.body), describe_block_difference(index, left, right, en, zh)
    assert len(en.blocks) == len(zh.blocks), (
        f"README.md has {len(en.blocks)} fenced code blocks, {ZH.name} {len(zh.blocks)}; the first one without "
        f"a counterpart is at {first_unmatched(en, en.blocks, zh, zh.blocks)}"
    )


def cell_problem(left: str, right: str) -> str | None:
    """Why a translated cell does not match its English cell, or None when it does."""
    if is_fixed(left) or is_fixed(right):
        return None if left == right else f"holds only code or numbers, so it must be identical: {left!r} vs {right!r}"
    missing = Counter(code_spans(left)) - Counter(code_spans(right))
    added = Counter(code_spans(right)) - Counter(code_spans(left))
    if missing or added:
        return (
            f"keeps different backtick-quoted code: missing {sorted(missing)}, added {sorted(added)} "
            f"({left!r} vs {right!r})"
        )
    return None


def table_problem(left: Table, right: Table) -> str | None:
    """The first difference between two tables (a row's columns or cells, then the number of rows), or None."""
    counts = f"{len(left.rows)} rows vs {len(right.rows)}; " if len(left.rows) != len(right.rows) else ""
    for row, (en_cells, zh_cells) in enumerate(zip(left.rows, right.rows, strict=False), start=1):
        if len(en_cells) != len(zh_cells):
            return f"{counts}row {row}: {len(en_cells)} columns vs {len(zh_cells)}"
        for column, (en_cell, zh_cell) in enumerate(zip(en_cells, zh_cells, strict=True), start=1):
            if problem := cell_problem(en_cell, zh_cell):
                return f"{counts}row {row}, column {column} {problem}"
    if counts:
        longer, name = (left, EN.name) if len(left.rows) > len(right.rows) else (right, ZH.name)
        extra = longer.rows[min(len(left.rows), len(right.rows))]
        return f"{counts}the first row without a counterpart is {name}'s {' | '.join(extra)!r}"
    return None


def test_same_tables(en: Readme, zh: Readme) -> None:
    for index, (left, right) in enumerate(zip(en.tables, zh.tables, strict=False), start=1):
        problem = table_problem(left, right)
        assert problem is None, f"table {index} ({en.where(left.line)} vs {zh.where(right.line)}): {problem}"
    assert len(en.tables) == len(zh.tables), (
        f"README.md has {len(en.tables)} tables, {ZH.name} {len(zh.tables)}; tables are translated, not dropped"
    )


def section_code(readme: Readme) -> list[Counter[str]]:
    """Per heading, the backtick-quoted code in its prose (code blocks and tables are compared on their own)."""
    text = ["" for _ in readme.headings]
    for index, line in readme.prose:
        if index >= 0:
            text[index] += line + "\n"
    return [Counter(code_spans(section)) for section in text]


def test_same_inline_code_per_section(en: Readme, zh: Readme) -> None:
    """Prose is translated, but the commands, keys and file names quoted in it stay: section by section."""
    pairs = zip(en.headings, zh.headings, section_code(en), section_code(zh), strict=False)
    for left, right, en_code, zh_code in pairs:
        missing, added = sorted(en_code - zh_code), sorted(zh_code - en_code)
        assert not missing and not added, (
            f"section README.md:{left.line} '{left}' / {ZH.name}:{right.line} '{right}': the translation lacks "
            f"{missing} and adds {added} (backtick-quoted code in the prose must match README.md's)"
        )


@pytest.mark.parametrize("path", [EN, ZH], ids=lambda path: path.name)
def test_anchor_links_resolve(path: Path) -> None:
    readme = parse(path)
    known = anchors(readme)
    text = path.read_text(encoding="utf-8")
    for number, line in enumerate(text.splitlines(), start=1):
        for match in ANCHOR_LINK.finditer(line):
            assert match["anchor"] in known, (
                f"{readme.where(number)}: link to '#{match['anchor']}' matches no heading (anchors: {sorted(known)})"
            )


def test_parser_sees_the_structure(tmp_path: Path) -> None:
    """The checks above compare something: a small README with one of each part parses as expected."""
    sample = tmp_path / "README.md"
    sample.write_text(
        "# title\n\n## Usage\n\n```bash\n# a comment, not a heading\nrun it\n```\n\n"
        "1. step\n\n   ```yaml\n   key: value\n   ```\n\n"
        "| key | meaning |\n|---|---|\n| `a\\|b` | see [Usage](#usage) |\n\n### Deeper\n",
        encoding="utf-8",
    )
    readme = parse(sample)
    assert [(h.level, h.text) for h in readme.headings] == [(1, "title"), (2, "Usage"), (3, "Deeper")]
    assert [(b.lang, b.body) for b in readme.blocks] == [
        ("bash", "# a comment, not a heading\nrun it"),
        ("yaml", "key: value"),
    ]
    assert readme.tables[0].rows == [["key", "meaning"], ["---", "---"], [r"`a\|b`", "see [Usage](#usage)"]]
    assert anchors(readme) == {"title", "usage", "deeper"}
    assert is_fixed("`csv`, `tsv`") and is_fixed("198.5 (**1.30x**)") and is_fixed("–") and is_fixed("1e-2")
    assert not is_fixed("1e-3 (1e-2 without MLP)") and not is_fixed("1e-3（不用 MLP 时为 1e-2）")
    assert cell_problem("`x` is on", "`x` 打开") is None
    assert "missing ['x']" in cell_problem("`x` is on", "x 打开")
    assert slug("训练并使用 NER 适配器") == "训练并使用-ner-适配器"
    assert slug("Decoders: instruction tuning") == "decoders-instruction-tuning"
