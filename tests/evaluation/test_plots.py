"""PNG plots: valid files, many classes, Chinese labels, training curves, atomic writes."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from adaptune.evaluation import plots
from adaptune.evaluation.plots import plot_confusion_matrix, plot_training_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000
    assert data[:8] == PNG_MAGIC
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG IHDR chunk."""
    data = path.read_bytes()
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_confusion_matrix_png(tmp_path: Path) -> None:
    out = plot_confusion_matrix([[5, 1, 0], [2, 7, 1], [0, 0, 0]], ["a", "b", "c"], tmp_path / "cm.png", title="t")
    assert out == tmp_path / "cm.png"
    assert_png(out)


def test_confusion_matrix_counts_and_nested_folder(tmp_path: Path) -> None:
    out = plot_confusion_matrix(np.eye(4) * 3, list("wxyz"), tmp_path / "a" / "b" / "cm.png", normalise=False)
    assert_png(out)


def test_confusion_matrix_80_chinese_classes_without_warnings(tmp_path: Path) -> None:
    labels = [f"类别{i}" for i in range(80)]
    matrix = np.random.default_rng(0).integers(0, 20, (80, 80)) + np.eye(80, dtype=int) * 200
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # glyph-missing warnings must not escape
        out = plot_confusion_matrix(matrix, labels, tmp_path / "cm80.png", title="意图 (80 类)")
    assert_png(out)
    small = plot_confusion_matrix(matrix[:5, :5], labels[:5], tmp_path / "small" / "cm5.png")
    assert image_size(out)[0] > 2 * image_size(small)[0]  # the figure grows with the class count


def test_cjk_font_is_an_installed_font_or_none() -> None:
    font = plots.cjk_font()
    assert font is None or font in plots.CJK_FONTS


def test_confusion_matrix_rejects_mismatched_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"shape \(2, 3\), expected \(2, 2\)"):
        plot_confusion_matrix([[1, 2, 3], [4, 5, 6]], ["a", "b"], tmp_path / "bad.png")
    assert not list(tmp_path.iterdir())


RECORDS = [{"step": 10 * i, "epoch": i / 10, "train_loss": 2.0 / (i + 1)} for i in range(20)] + [
    {
        "step": 50 * i,
        "epoch": i / 2,
        "eval_loss": 1.5 / (i + 1),
        "eval_f1": 1 - 1 / (i + 2),
        "eval_runtime": 1.0,
    }
    for i in range(1, 5)
]


@pytest.mark.parametrize("metric", [None, "f1", "eval_f1", "accuracy"])
def test_training_curves_png(tmp_path: Path, metric: str | None) -> None:
    assert_png(plot_training_curves(RECORDS, tmp_path / "curves.png", metric))


def test_training_curves_with_no_records(tmp_path: Path) -> None:
    assert_png(plot_training_curves([], tmp_path / "empty.png", None))


def test_metric_choice() -> None:
    assert plots._pick_metric(RECORDS, None) == "eval_f1"  # not eval_loss, not eval_runtime
    assert plots._pick_metric(RECORDS, "accuracy") == "eval_accuracy"
    assert plots._pick_metric([{"step": 1, "train_loss": 1.0}], None) is None


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "cm.png"
    target.write_bytes(b"old")

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        plot_confusion_matrix([[1]], ["a"], target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["cm.png"]
