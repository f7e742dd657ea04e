"""The board's strings: one JSON catalogue per language with the same keys and placeholders, and every key the
page uses (in index.html, in board.js, and the ones it builds from statuses, error types and splits) present."""

from __future__ import annotations

import json
import re
import typing
from pathlib import Path

import pytest

from adaptune.board.app import STATUS
from adaptune.board.runs_index import Status
from adaptune.board.service import DATA_FILES

STATIC = Path(__file__).resolve().parents[2] / "src" / "adaptune" / "board" / "static"
LANGUAGES = ("en", "zh-CN")
PLACEHOLDER = re.compile(r"\{(\w+)\}")
CJK = re.compile(r"[\u4e00-\u9fff]")


def catalogue(lang: str) -> dict[str, str]:
    return json.loads((STATIC / "i18n" / f"{lang}.json").read_text(encoding="utf-8"))


def used_keys() -> set[str]:
    """Keys named in the page and its script, and those the script builds (``status.<status>`` ...)."""
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    script = (STATIC / "board.js").read_text(encoding="utf-8")
    keys = set(re.findall(r'data-i18n="([\w.]+)"', html))
    keys |= set(re.findall(r'\bt\("([\w.]+)"', script))
    keys |= {f"status.{status}" for status in typing.get_args(Status)}
    keys |= {f"error.{kind}" for _status, kind in STATUS.values()}
    keys |= {f"error.{kind}" for kind in ("limit_exceeded", "invalid_request", "file", "line", "field")}
    keys |= {f"data.{split}" for split in DATA_FILES}
    keys |= {f"report.{score}" for score in ("precision", "recall", "f1", "support")}
    return keys


def test_both_catalogues_have_the_same_keys_and_placeholders() -> None:
    english, chinese = catalogue("en"), catalogue("zh-CN")
    assert sorted(english) == sorted(chinese)
    for key, text in english.items():
        assert text.strip() and chinese[key].strip(), key
        assert sorted(PLACEHOLDER.findall(text)) == sorted(PLACEHOLDER.findall(chinese[key])), key


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_key_the_page_uses_is_there(lang: str) -> None:
    missing = used_keys() - set(catalogue(lang))
    assert not missing, f"{lang}.json lacks {sorted(missing)}"


def test_the_chinese_catalogue_is_chinese() -> None:
    """Nearly every string is translated (names such as F1 stay as they are)."""
    chinese = catalogue("zh-CN")
    untranslated = [key for key, text in chinese.items() if not CJK.search(text)]
    assert untranslated == ["report.f1"]
