"""Style is part of the suite (so ``.ci/run`` checks it): ``ruff check`` (lint, import order, complexity) and
``ruff format --check`` are clean on the package, the tests, the benchmarks and the scripts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["src", "tests", "benchmarks", "scripts", "examples"]


def ruff() -> str:
    """The ruff of this environment (the ``test`` extra installs it beside the interpreter)."""
    found = Path(sys.executable).with_name("ruff")
    path = str(found) if found.is_file() else shutil.which("ruff")
    assert path, "ruff is not installed: it comes with the test extra (scripts/setup.sh --test)"
    return path


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff_is_clean(command: list[str]) -> None:
    done = subprocess.run([ruff(), *command, *PATHS], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"ruff {' '.join(command)} found problems:\n{done.stdout[-4000:]}{done.stderr[-2000:]}"
