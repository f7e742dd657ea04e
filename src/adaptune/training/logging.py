"""Metrics log (JSONL, one record per log or evaluation), the live progress bar and the run's console lines."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from adaptune.errors import OutputError, os_error_message
from adaptune.io import atomic_write_text


class MetricsLog:
    """Append-only JSONL of training records; on resume, records after the resumed step are dropped."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        if resume_step is not None and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by the crash
                if record.get("step", 0) <= resume_step:
                    self.records.append(record)
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in self.records))  # a kill keeps the old log

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        try:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as err:
            raise OutputError(os_error_message(err, "write", self.path)) from None


def say(console: Console, text: str, style: str | None = None) -> None:
    """Print one line as written: no rich markup (``[UNK]`` stays), and, when the output is not a terminal (a
    pipe, a log file), never wrapped, so a figure is never split from its name at rich's default 80 columns."""
    console.print(text, style=style, markup=False, highlight=False, soft_wrap=not console.is_terminal)


def warn_before_training(notes: Sequence[str]) -> None:
    """Print what was found while reading the data (unknown-token share, truncation) before the first step, on
    stderr; the notes are kept in the run's ``results.json`` as well."""
    console = Console(stderr=True)
    for note in notes:
        say(console, f"warning: {note}", style="yellow")


def tell_before_training(lines: Sequence[str]) -> None:
    """Print what the run decided (its precision, with the figures it was decided on) before the first step, on
    stderr; kept in the run's ``results.json`` notes as well."""
    console = Console(stderr=True)
    for line in lines:
        say(console, line)


class ProgressBar:
    """A rich progress bar with loss, tokens/s and ETA; prints plain lines when not on a terminal."""

    def __init__(self, total: int, start: int, enabled: bool) -> None:
        self.console = Console(stderr=True)
        self.live = enabled and sys.stderr.isatty()
        self.enabled = enabled
        self.total = total
        self.last_print = 0.0
        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[speed]} tok/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.live,
        )
        self.task = self.progress.add_task("train", total=total, completed=start, loss="-", speed="-")

    def __enter__(self) -> ProgressBar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def update(self, step: int, loss: float, tokens_per_s: float) -> None:
        self.progress.update(self.task, completed=step, loss=f"{loss:.4f}", speed=f"{tokens_per_s:,.0f}")
        if self.enabled and not self.live and time.monotonic() - self.last_print > 30:
            self.last_print = time.monotonic()
            say(self.console, f"step {step}/{self.total}  loss {loss:.4f}  {tokens_per_s:,.0f} tok/s")

    def message(self, text: str, style: str | None = None) -> None:
        if self.enabled:
            say(self.console, text, style)
