"""The board's state, without HTTP: its folders, the runs index, the training jobs and the loaded predictors,
and what the routes do with them (start a run from a form, read a run's metrics log as it grows)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adaptune.board.jobs import Jobs
from adaptune.board.paths import inside, looks_like_path, upload_name
from adaptune.board.reports import BOARD_CONFIG
from adaptune.board.runs_index import RunRow, RunsIndex
from adaptune.board.tryout import Predictors
from adaptune.config import DEFAULT_MODEL, validate_config
from adaptune.errors import ConfigError, DataError

SECTIONS = ("model", "method", "task", "data", "training")
DATA_FILES = ("train", "dev", "test")
_RUN_ID = re.compile(r"[^\w.-]+")


@dataclass
class BoardSettings:
    """The folders and limits of one board (the ``adaptune board`` options).

    Attributes:
        runs_dir: where runs are written (one folder each) and the index (``board.sqlite``) is kept.
        data_dir: where uploads go (``uploads/``); data files and local model folders must lie in one of the two.
        max_upload_bytes: the largest upload (bytes); a larger one is refused with a 413.
        poll_s: how often a live event stream looks for new lines in a run's metrics log.
    """

    runs_dir: Path
    data_dir: Path
    max_upload_bytes: int = 200 * 1024 * 1024
    poll_s: float = 0.5
    roots: list[Path] = field(init=False)

    def __post_init__(self) -> None:
        self.runs_dir, self.data_dir = Path(self.runs_dir).resolve(), Path(self.data_dir).resolve()
        self.roots = [self.data_dir, self.runs_dir]


class UnknownRun(ConfigError):
    """No run of that id in the index (HTTP 404)."""


class Board:
    """One board: :class:`BoardSettings`, the :class:`RunsIndex`, the :class:`Jobs` and the :class:`Predictors`."""

    def __init__(self, settings: BoardSettings) -> None:
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.index = RunsIndex(settings.runs_dir)
        self.jobs = Jobs(self.index)
        self.predictors = Predictors()

    def row(self, run_id: str) -> RunRow:
        row = self.index.get(run_id)
        if row is None:
            raise UnknownRun(f"no run {run_id!r} on this board")
        return row

    def folder(self, run_id: str) -> Path:
        return Path(self.row(run_id).folder)

    def data_path(self, raw: str) -> Path:
        """A data file the page names, inside the board's folders and existing."""
        path = inside(raw, self.settings.roots, base=self.settings.data_dir)
        if not path.is_file() and not path.is_dir():
            raise DataError("no such file", file=path)
        return path

    def upload_target(self, name: str) -> Path:
        """Where an upload of file ``name`` is stored: ``<data>/uploads/<name>``, numbered if that is taken."""
        folder = self.settings.data_dir / "uploads"
        folder.mkdir(parents=True, exist_ok=True)
        safe = upload_name(name)
        target, number = folder / safe, 1
        while target.exists():
            number += 1
            target = folder / f"{Path(safe).stem}-{number}{Path(safe).suffix}"
        return target

    def _new_id(self, name: str) -> str:
        base = _RUN_ID.sub("-", name).strip("-.")[:48] or time.strftime("run-%Y%m%d-%H%M%S")
        run_id, number = base, 1
        while self.index.get(run_id) is not None or (self.settings.runs_dir / run_id).exists():
            number += 1
            run_id = f"{base}-{number}"
        return run_id

    def _tree(self, body: dict[str, Any], folder: Path) -> dict[str, Any]:
        """The run config of a form: its sections, paths checked and resolved, the output folder set."""
        tree = {section: dict(body.get(section) or {}) for section in SECTIONS}
        model = str(tree["model"].get("name_or_path") or DEFAULT_MODEL)
        if looks_like_path(model):
            model = str(inside(model, self.settings.roots, base=self.settings.data_dir))
        tree["model"]["name_or_path"] = model
        if not tree["data"].get("train"):
            raise ConfigError("config key 'data.train' is missing: choose or upload a training file")
        for key in DATA_FILES:
            if tree["data"].get(key):
                tree["data"][key] = str(self.data_path(str(tree["data"][key])))
        tree["training"]["output_dir"] = str(folder)
        return tree

    def create_run(self, body: dict[str, Any]) -> RunRow:
        """Validate a form's config (a :class:`ConfigError` before anything is written), write its YAML into a new
        run folder, index the run and start training it."""
        run_id = self._new_id(str(body.get("name") or ""))
        folder = self.settings.runs_dir / run_id
        tree = self._tree(body, folder)
        cfg = validate_config(tree)
        folder.mkdir(parents=True)
        config = folder / BOARD_CONFIG
        config.write_text(yaml.safe_dump(tree, sort_keys=False, allow_unicode=True), encoding="utf-8")
        now = time.time()
        what = (cfg.model.name_or_path, cfg.method.name, cfg.task.name)
        row = RunRow(run_id, str(folder), str(config), "running", *what, created=now, updated=now)
        self.index.add(row)
        self.jobs.start(row)
        return self.row(run_id)

    def resume(self, run_id: str) -> RunRow:
        """Continue a stopped, failed or interrupted run from its newest checkpoint (``adaptune train --resume``)."""
        row = self.row(run_id)
        self.predictors.forget(Path(row.folder) / "adapter")
        self.jobs.start(row, resume=True)
        return self.row(run_id)


class MetricsTail:
    """Reads a run's ``metrics.jsonl`` as it grows: complete new lines since the last read. A log rewritten by a
    resumed run (a new file, shorter) starts over, and :attr:`reset` says so."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.inode, self.reset = path, 0, 0, False

    def read(self) -> list[dict[str, Any]]:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return []
        self.reset = (stat.st_ino != self.inode and self.inode != 0) or stat.st_size < self.offset
        if self.reset:
            self.offset = 0
        self.inode = stat.st_ino
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        records = []
        for line in complete.decode("utf-8", errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records
