"""Error types that carry *where* a problem is, so users see a message, not a stack trace."""

from __future__ import annotations

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
