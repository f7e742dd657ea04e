"""Fixtures of the board tests: a board's data and runs folders with a tiny random BERT and a small labelled
data set inside them (the board only reads files there)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from board_kit import write_data


@pytest.fixture
def board_dirs(tmp_path: Path, tiny_bert: Path) -> tuple[Path, Path]:
    """(runs, data) folders of a fresh board; data holds ``tiny/`` (a model), ``train.jsonl``, ``dev.jsonl``."""
    runs, data = tmp_path / "runs", tmp_path / "data"
    write_data(data)
    shutil.copytree(tiny_bert, data / "tiny")
    return runs, data
