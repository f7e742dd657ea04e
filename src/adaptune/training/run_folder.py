"""One run per output folder.

:func:`claim_output_folder` is what a training run does before it writes anything:

- the folder is created (an ``output_dir`` that is a file, or a folder that cannot be created or written, is an
  :class:`OutputFolderError` naming the path, not a traceback);
- it takes the folder's lock, ``.adaptune.lock``: an exclusive ``flock`` held for the whole run, with the holder's
  PID, host and start time in the file. A second run into the folder is refused naming that PID; a lock left by
  a killed run is not held by anyone (the kernel drops a dead process's locks), so the next run takes it over
  and says whose it was;
- a fresh run (no ``resume``) into a folder that holds a run, finished or not, is refused unless ``overwrite``,
  which removes that run's checkpoints, metrics log, results and adapter first;
- half-written temporary files of atomic writes (``.NAME.XXXX.tmp``) left by a kill are removed.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from adaptune.errors import OutputError, os_error_message

LOCK_NAME = ".adaptune.lock"
#: What a run leaves in its folder that tells a later run that the folder is taken (and what ``overwrite``
#: removes, with the start-of-run evaluation that a resumed run reuses).
RUN_MARKERS = ("results.json", "checkpoints/latest.json", "adapter/adapter_config.json", "metrics.jsonl")
RUN_ARTEFACTS = ("checkpoints", "adapter", "metrics.jsonl", "results.json", "results_at_start.json")
#: Folders of a run where atomic writes put their temporary files.
TEMP_FOLDERS = (".", "adapter", "checkpoints", "checkpoints/step-*")


class OutputFolderError(OutputError):
    """An output folder that cannot be used: taken by another run, holding a run, not a folder, not writable."""


@dataclass
class ClaimedFolder:
    """A claimed output folder; ``notes`` says what was taken over or removed on the way."""

    path: Path
    notes: list[str] = field(default_factory=list)


def _holder(lock: Path) -> dict[str, object]:
    try:
        holder = json.loads(lock.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe_holder(holder: dict[str, object]) -> str:
    parts = [f"PID {holder.get('pid', '?')}"]
    if holder.get("host"):
        parts.append(f"on {holder['host']}")
    if holder.get("started"):
        parts.append(f"started {holder['started']}")
    return " ".join(parts)


def _take_lock(folder: Path) -> tuple[int, dict[str, object]]:
    """Open and ``flock`` the folder's lock file; the descriptor and the previous holder's record (a stale one
    left by a killed run, or {})."""
    lock = folder / LOCK_NAME
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise OutputFolderError(os_error_message(err, "write in the output folder", folder)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputFolderError(
                f"output folder {folder} is in use by another run ({_describe_holder(_holder(lock))}; lock file "
                f"{lock}): wait for it to end, or choose another training.output_dir"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file that its holder unlinked between our open and our lock
            return fd, _holder(lock)
        os.close(fd)


def _write_holder(fd: int, folder: Path) -> None:
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    data = (json.dumps(record) + "\n").encode("utf-8")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError as err:
        raise OutputFolderError(os_error_message(err, "write the lock file in", folder)) from None


def remove_temp_files(folder: Path) -> list[Path]:
    """Remove the temporary files of atomic writes (``.NAME.XXXX.tmp``) in the run's folders; what was removed.
    Only safe while holding the folder's lock (no other adaptune run writes there)."""
    removed = []
    for pattern in TEMP_FOLDERS:
        for sub in folder.glob(pattern) if "*" in pattern else [folder / pattern]:
            if not sub.is_dir():
                continue
            for stale in sub.glob(".*.tmp"):
                if stale.is_file():
                    stale.unlink(missing_ok=True)
                    removed.append(stale)
    return removed


def _existing_run(folder: Path) -> str | None:
    """What in ``folder`` shows that a run went there (None when nothing does)."""
    if (folder / "results.json").is_file():
        return "a finished run (results.json, adapter/)"
    if (folder / "checkpoints" / "latest.json").is_file():
        return "the checkpoints of an unfinished run (pass --resume to continue it)"
    found = [m for m in RUN_MARKERS if (folder / m).exists()]
    return f"an earlier run ({', '.join(found)})" if found else None


def _remove_run(folder: Path) -> list[str]:
    removed = []
    for name in RUN_ARTEFACTS:
        path = folder / name
        try:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
            else:
                continue
        except OSError as err:
            raise OutputFolderError(os_error_message(err, "remove", path)) from None
        removed.append(name)
    return removed


@contextmanager
def claim_output_folder(path: str | Path, *, resume: bool, overwrite: bool) -> Iterator[ClaimedFolder]:
    """Create and lock ``path`` for one run, for the duration of the ``with`` block (see the module docstring)."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"training.output_dir {folder} is a file, not a folder: choose another path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputFolderError(os_error_message(err, "create the output folder", folder)) from None
    fd, previous = _take_lock(folder)
    try:
        claimed = ClaimedFolder(folder)
        if previous.get("pid"):
            holder = _describe_holder(previous)
            claimed.notes.append(f"took over the lock of an earlier run that is no longer running ({holder})")
        _write_holder(fd, folder)
        removed = remove_temp_files(folder)
        if removed:
            claimed.notes.append(f"removed {len(removed)} half-written temporary file(s) of an interrupted run")
        existing = None if resume else _existing_run(folder)
        if existing and not overwrite:
            raise OutputFolderError(
                f"output folder {folder} holds {existing}: pass --overwrite (overwrite=True) to replace it, or "
                "choose another training.output_dir"
            )
        if existing:
            claimed.notes.append(f"replaced the earlier run in {folder} ({', '.join(_remove_run(folder))})")
        yield claimed
    finally:
        try:
            (folder / LOCK_NAME).unlink(missing_ok=True)  # under the lock: a waiting run re-checks the inode
        finally:
            os.close(fd)
