"""Chinese labels in PNG plots: real glyphs from a CJK fallback font, no missing-glyph warnings.

``scripts/setup.sh`` installs a CJK font, so under ``CI`` a missing one fails these tests; elsewhere they skip.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pytest
from matplotlib import font_manager
from matplotlib.image import imread

from adaptune.evaluation import plots
from adaptune.evaluation.plots import plot_confusion_matrix, plot_training_curves

LABELS = ["退款", "查询订单", "投诉"]
MATRIX = [[12, 2, 1], [3, 20, 0], [0, 1, 9]]
GLYPH_TROUBLE = re.compile(r"[Gg]lyph .* missing from font|does not support|findfont: Font family .* not found")


@pytest.fixture
def cjk_font() -> str:
    """The CJK font the plots fall back to; fail under CI (setup installs one), skip elsewhere."""
    font = plots.cjk_font()
    if font is None:
        message = f"no CJK font installed (tried {', '.join(plots.CJK_FONTS)}); run scripts/setup.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return font


def glyph_trouble(record: list[warnings.WarningMessage], caplog: pytest.LogCaptureFixture) -> list[str]:
    """Missing-glyph / unsupported-font messages matplotlib raised as warnings or logged."""
    messages = [str(w.message) for w in record] + [r.getMessage() for r in caplog.records]
    return [m for m in messages if GLYPH_TROUBLE.search(m)]


def test_chinese_confusion_matrix_without_glyph_warnings(
    cjk_font: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = plot_confusion_matrix(MATRIX, LABELS, tmp_path / "cm.png", title="客服意图 confusion (测试集)")
        plot_training_curves([{"step": 1, "train_loss": 1.0}], tmp_path / "curves.png", "准确率")
    assert glyph_trouble(record, caplog) == []
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chinese_labels_are_real_glyphs_not_boxes(cjk_font: str, tmp_path: Path) -> None:
    # A missing glyph is drawn as the same box whatever the character: two labels that differ
    # only in their (Chinese) text must then give pixel-identical images.
    images = [
        imread(plot_confusion_matrix([[1]], [label], tmp_path / f"{i}.png", title="t"))
        for i, label in enumerate("退投")
    ]
    assert images[0].shape == images[1].shape
    assert not np.array_equal(images[0], images[1])


def test_latin_text_keeps_its_font_and_cjk_falls_back(cjk_font: str) -> None:
    families = plots.font_families()
    assert families == [*mpl.rcParams["font.family"], cjk_font]
    latin, fallback = (font_manager.findfont(font_manager.FontProperties(family=[f])) for f in families[-2:])
    assert Path(latin).name == Path(font_manager.findfont(font_manager.FontProperties())).name  # unchanged
    assert latin != fallback


def test_cjk_font_found_when_matplotlib_cache_predates_it(cjk_font: str, monkeypatch: pytest.MonkeyPatch) -> None:
    manager = font_manager.fontManager
    files = {os.path.realpath(e.fname) for e in manager.ttflist if e.name == cjk_font}
    if not files & {os.path.realpath(p) for p in font_manager.findSystemFonts()}:
        pytest.skip(f"{cjk_font} is not a system font file")
    monkeypatch.setattr(manager, "ttflist", [e for e in manager.ttflist if os.path.realpath(e.fname) not in files])
    plots.cjk_font.cache_clear()
    try:
        assert plots.cjk_font() == cjk_font
    finally:
        plots.cjk_font.cache_clear()
        manager._findfont_cached.cache_clear()
