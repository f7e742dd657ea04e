"""Helpers for the smoke tests of ``examples/``: run a script as a user would (serving over loopback is
:func:`serving_kit.serving`)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def load_script(path: Path) -> ModuleType:
    """An example script imported as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def run(args: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` from the repository root; fails the test with the output when it fails."""
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done
