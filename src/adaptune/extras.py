"""Optional parts of adaptune and the pyproject extra that installs each, for one-line "install this" errors.

A plain install (``scripts/setup.sh``) has the ``hf`` extra but not ``server``, ``gguf`` or ``onnx``; a command that
reaches a missing optional module fails with :class:`MissingExtraError` naming the extra and the command that
installs it, instead of a ``ModuleNotFoundError`` traceback.
"""

from __future__ import annotations

import re

from adaptune.errors import AdaptuneError

#: Top-level module -> the extra (``[project.optional-dependencies]`` in pyproject.toml) that installs it. uvicorn's
#: speed-ups (httptools, uvloop) are not listed: uvicorn runs without them.
EXTRAS: dict[str, str] = {
    "fastapi": "server",
    "starlette": "server",
    "uvicorn": "server",
    "gguf": "gguf",
    "datasets": "hf",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "optuna": "tune",
}
#: Extra -> the setup script call that installs it along with the rest.
SETUP_FLAGS: dict[str, str] = {
    "server": "scripts/setup.sh --test",
    "gguf": "scripts/setup.sh --test",
    "onnx": "scripts/setup.sh --test",
    "tune": "scripts/setup.sh --test",
    "hf": "scripts/setup.sh",
}
#: Libraries (transformers' GGUF loader) raise a bare ImportError whose message names the package.
_NAMED = re.compile(r"\b(" + "|".join(map(re.escape, EXTRAS)) + r")\b")


class MissingExtraError(AdaptuneError):
    """A feature needs an optional module that is not installed; the message says which extra installs it."""

    def __init__(self, feature: str, module: str, reason: str = "") -> None:
        self.feature, self.module, self.extra = feature, module, EXTRAS[module]
        super().__init__(
            f"{feature} needs the {self.extra} extra ({reason or f'{module} is not installed'}): "
            f".venv/bin/pip install -c requirements/lock.txt -e '.[{self.extra}]' (or {SETUP_FLAGS[self.extra]})"
        )


def missing_module(err: ImportError) -> str | None:
    """The optional module (a key of :data:`EXTRAS`) whose absence caused ``err``, or None for any other import
    error (a broken install, a bug), which should propagate as it is."""
    if err.name is not None:
        top = err.name.split(".")[0]
        return top if top in EXTRAS else None
    match = _NAMED.search(str(err))
    return match.group(1) if match else None


def as_missing_extra(err: ImportError, feature: str) -> MissingExtraError | None:
    """``err`` as a :class:`MissingExtraError` for ``feature`` (e.g. ``"adaptune serve"``), or None."""
    module = missing_module(err)
    if module is None:
        return None
    reason = "" if isinstance(err, ModuleNotFoundError) else " ".join(str(err).split())
    return MissingExtraError(feature, module, reason)
