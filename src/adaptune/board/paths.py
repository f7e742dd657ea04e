"""Which files the board may read: only those inside its data folder and its runs folder.

Every path a page sends (a data file, a local model folder) is resolved first, symlinks included, so neither
``..`` nor a link pointing outside the two folders gets through. Relative paths are relative to the data folder.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from adaptune.errors import AdaptuneError

#: An upload keeps its file name (so data errors name it) with anything but these characters replaced.
_UNSAFE = re.compile(r"[^\w.\-]+")


class PathRefused(AdaptuneError):
    """A path outside the board's data and runs folders (the HTTP answer is 403)."""


def inside(raw: str | Path, roots: Sequence[Path], *, base: Path) -> Path:
    """``raw`` resolved (symlinks followed, relative to ``base``) if it lies inside one of ``roots``; else a
    :class:`PathRefused` naming the path and the folders allowed."""
    path = Path(raw).expanduser()
    resolved = (path if path.is_absolute() else base / path).resolve()
    for root in roots:
        if resolved.is_relative_to(root.resolve()):
            return resolved
    allowed = ", ".join(str(root.resolve()) for root in roots)
    raise PathRefused(f"path {str(raw)!r} is outside the board's folders ({allowed}): copy or upload it there")


def looks_like_path(name: str) -> bool:
    """Whether a model name is meant as a local folder rather than a hub id (``org/name``)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).exists()


def upload_name(name: str) -> str:
    """A safe file name for an upload: its last path part, odd characters replaced, never empty or hidden."""
    base = _UNSAFE.sub("_", Path(name.replace("\\", "/")).name).lstrip(".")
    return base[:120] or "upload"
