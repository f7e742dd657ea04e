"""Error types that carry *where* a problem is, so users see a message, not a stack trace."""

from __future__ import annotations

import errno
from pathlib import Path


class AdaptuneError(Exception):
    """Base class for every error adaptune raises on purpose (bad input, bad config, bad file)."""


class DataError(AdaptuneError, ValueError):
    """A problem in a data file, located by file, line (1-based) and field.

    ``str(err)`` reads ``"train.csv:12: field 'label': empty value"``; parts that are unknown are omitted.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        self.message = message
        where = self.file or ""
        if line is not None:
            where = f"{where}:{line}" if where else f"line {line}"
        prefix = f"{where}: " if where else ""
        if field is not None:
            prefix += f"field '{field}': "
        super().__init__(prefix + message)


class ConfigError(AdaptuneError, ValueError):
    """An invalid configuration: names the key, the value given and what is allowed."""


class AdapterFileError(AdaptuneError):
    """An adapter folder that is missing, corrupt, from a newer format, or for another base model."""


class OutputError(AdaptuneError):
    """A file or folder that cannot be written (disk full, read-only, not a folder): names the path."""


#: What to do about an OS error, by errno, after :func:`os_error_message`'s reason.
_OS_ERROR_HINTS = {
    errno.ENOSPC: ": free some space or choose another output folder",
    errno.EDQUOT: ": free some space or choose another output folder",
    errno.EROFS: ": choose a writable output folder",
    errno.EACCES: ": choose a folder you can write to",
    errno.EPERM: ": choose a folder you can write to",
}


def os_error_message(err: OSError, doing: str, path: str | Path) -> str:
    """One line for an OS error: what was being done, the path and the system's reason (disk full, read-only)."""
    reason = err.strerror or type(err).__name__
    return f"cannot {doing} {path}: {reason}{_OS_ERROR_HINTS.get(err.errno or 0, '')}"
