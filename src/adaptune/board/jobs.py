"""Training runs as background jobs: each is a child process running ``python -m adaptune train <yaml>``.

A child process rather than a thread, because a run must be stoppable at any moment without leaving the board in
a half state: stopping is ``terminate()`` (SIGTERM), and the training loop's own checkpoints and ``--resume``
(:mod:`adaptune.training.checkpoint`) make a stopped or interrupted run continue where its last checkpoint was.
The child writes its console output to ``board.log`` in the run folder (the last ``error:`` line becomes the
message of a failed run); its metrics go to the run's ``metrics.jsonl`` as for any run, which the board streams.

When the board shuts down it terminates its children and marks them ``interrupted``; when it starts it marks
every run still recorded as running but whose process is gone as ``interrupted`` too, and keeps watching one
that is still alive (a board killed without its shutdown).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from adaptune.board.runs_index import RESUMABLE, RunRow, RunsIndex
from adaptune.errors import AdaptuneError

LOG_NAME = "board.log"


class JobError(AdaptuneError):
    """A run that cannot be started, stopped or resumed in its present state (HTTP 409)."""


def last_error_line(log: Path) -> str:
    """The message of a failed run: the last ``error:`` line of its log, else its last line."""
    try:
        lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [line for line in lines if line]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or [""])[-1][:2000]


def _alive(pid: int | None) -> bool:
    """Whether ``pid`` is a live ``adaptune train`` process (not a reused id of some other program)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"adaptune" in cmdline and b"train" in cmdline


class Jobs:
    """The board's training processes, and their status in the :class:`RunsIndex`."""

    def __init__(self, index: RunsIndex, *, poll_s: float = 1.0) -> None:
        self.index = index
        self.poll_s = poll_s
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._stopping: set[str] = set()
        self._closing = False
        self._lock = threading.Lock()

    def start(self, row: RunRow, *, resume: bool = False) -> None:
        """Start (or, with ``resume``, continue from its newest checkpoint) the training process of ``row``."""
        with self._lock:
            if row.id in self._procs or _alive(row.pid):
                raise JobError(f"run {row.id!r} is already running")
            if resume and row.status not in RESUMABLE:
                raise JobError(f"run {row.id!r} is {row.status}; only a failed, stopped or interrupted run resumes")
            folder = Path(row.folder)
            command = [sys.executable, "-m", "adaptune", "train", row.config, *(["--resume"] if resume else [])]
            with (folder / LOG_NAME).open("ab") as log:
                proc = subprocess.Popen(  # its own session: a Ctrl-C of the board reaches it through shutdown()
                    command, stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True, env=_env()
                )
            self._procs[row.id] = proc
            self.index.update(row.id, status="running", pid=proc.pid, returncode=None, message="")
        threading.Thread(target=self._watch, args=(row.id, proc), daemon=True, name=f"board-{row.id}").start()

    def _watch(self, run_id: str, proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        with self._lock:
            stopped = run_id in self._stopping
            self._stopping.discard(run_id)
            closing = self._closing
        row = self.index.get(run_id)
        if closing:
            status, message = "interrupted", "the board stopped while this run trained"
        elif stopped:
            status, message = "stopped", ""
        elif code == 0:
            status, message = "finished", ""
        else:
            status = "failed"
            message = last_error_line(Path(row.folder) / LOG_NAME) if row else ""
        self.index.update(run_id, status=status, pid=None, returncode=code, message=message)
        with self._lock:
            self._procs.pop(run_id, None)  # after the update: shutdown() waits for the status to be written

    def stop(self, run_id: str) -> None:
        """Stop a running run (SIGTERM); it becomes ``stopped`` and can be resumed from its last checkpoint."""
        with self._lock:
            proc = self._procs.get(run_id)
            if proc is None:
                row = self.index.get(run_id)
                if row is None or not _alive(row.pid):
                    raise JobError(f"run {run_id!r} is not running")
                os.kill(row.pid, 15)  # a run left by an earlier board: its watcher records the end
                self._stopping.add(run_id)
                return
            self._stopping.add(run_id)
            proc.terminate()

    def recover(self) -> None:
        """At start-up: runs recorded as running whose process is gone become ``interrupted``; one still alive
        (left by a board that was killed) is watched until it ends."""
        for row in self.index.all():
            if row.status != "running":
                continue
            if _alive(row.pid):
                threading.Thread(target=self._watch_pid, args=(row,), daemon=True).start()
            else:
                message = "the board stopped while this run trained"
                self.index.update(row.id, status="interrupted", pid=None, message=message)

    def _watch_pid(self, row: RunRow) -> None:
        while _alive(row.pid):
            time.sleep(self.poll_s)
        with self._lock:
            stopped = row.id in self._stopping
            self._stopping.discard(row.id)
        done = (Path(row.folder) / "results.json").is_file()
        status = "stopped" if stopped else "finished" if done else "interrupted"
        self.index.update(row.id, status=status, pid=None)

    def running(self, run_id: str) -> bool:
        with self._lock:
            return run_id in self._procs

    def shutdown(self, timeout_s: float = 30.0) -> None:
        """Terminate every child (they become ``interrupted``) and wait for their watchers to record it."""
        with self._lock:
            self._closing = True
            procs = list(self._procs.values())
        for proc in procs:
            proc.terminate()
        deadline = time.monotonic() + timeout_s
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
        while time.monotonic() < deadline:  # the watchers write the status after wait() returns
            with self._lock:
                if not self._procs:
                    break
            time.sleep(0.05)


def _env() -> dict[str, str]:
    """The child's environment: the board's, unbuffered, without a progress bar's terminal codes."""
    return {**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "dumb"}
