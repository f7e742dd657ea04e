"""The board's index of runs: one SQLite file in the runs folder, one row per run (its folder holds the rest).

The index survives a restart of the board; a run whose process is gone when the board starts again is marked
``interrupted`` (:meth:`adaptune.board.jobs.Jobs.recover`) and can be resumed from its checkpoint. Each call opens
its own connection, so the board's threads (the job watchers, the request handlers) never share one.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

INDEX_NAME = "board.sqlite"
#: running: a training process is at work; finished / failed: it ended (exit status 0 / not 0); stopped: the user
#: stopped it; interrupted: the board stopped or restarted while it ran. The last two resume from a checkpoint.
Status = Literal["running", "finished", "failed", "stopped", "interrupted"]
RESUMABLE: tuple[str, ...] = ("failed", "stopped", "interrupted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    folder TEXT NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    method TEXT NOT NULL,
    task TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    pid INTEGER,
    returncode INTEGER,
    message TEXT NOT NULL DEFAULT ''
)
"""


@dataclass
class RunRow:
    """One run of the index: its id (also its folder's name), folder, the YAML it trains with, status and what
    it trains; ``pid`` of its training process while it runs, ``message`` the error line of a failed run."""

    id: str
    folder: str
    config: str
    status: str
    model: str
    method: str
    task: str
    created: float
    updated: float
    pid: int | None = None
    returncode: int | None = None
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON, with whether it can be resumed."""
        return {**asdict(self), "resumable": self.status in RESUMABLE}


class RunsIndex:
    """The SQLite index at ``<runs>/board.sqlite``."""

    def __init__(self, runs_dir: Path) -> None:
        self.path = runs_dir / INDEX_NAME
        runs_dir.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=30)
        db.row_factory = sqlite3.Row
        try:
            with db:  # one transaction: committed, or rolled back on an error
                yield db
        finally:
            db.close()

    def add(self, row: RunRow) -> None:
        names = [f.name for f in fields(RunRow)]
        with self._connect() as db:
            db.execute(
                f"INSERT INTO runs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                [getattr(row, name) for name in names],
            )

    def get(self, run_id: str) -> RunRow | None:
        with self._connect() as db:
            found = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return RunRow(**dict(found)) if found is not None else None

    def all(self) -> list[RunRow]:
        """Every run, newest first."""
        with self._connect() as db:
            return [RunRow(**dict(row)) for row in db.execute("SELECT * FROM runs ORDER BY created DESC")]

    def update(self, run_id: str, **changes: Any) -> None:
        """Set some columns of a run (``status``, ``pid`` ...); ``updated`` is set to now."""
        changes["updated"] = time.time()
        assignments = ", ".join(f"{key} = ?" for key in changes)
        with self._connect() as db:
            db.execute(f"UPDATE runs SET {assignments} WHERE id = ?", [*changes.values(), run_id])
