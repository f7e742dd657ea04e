"""Helpers for the smoke tests of ``examples/``: run a script as a user would, serve adapters over loopback."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import httpx

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(bases: Sequence[str], adapters: Path, *extra: str) -> Iterator[str]:
    """``adaptune serve`` in a subprocess on a free loopback port; yields its URL once /health answers."""
    port = free_port()
    command = [sys.executable, "-m", "adaptune.cli", "serve", "--adapters", str(adapters), "--port", str(port)]
    for base in bases:
        command += ["--base", base]
    process = subprocess.Popen([*command, *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "adaptune serve did not come up"
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
