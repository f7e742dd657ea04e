"""``adaptune serve`` end to end: the real command in a subprocess, called over loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from adaptune.cli import app
from serving_kit import assert_same


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_command_serves_the_folder(
    adapters_dir: Path, tiny_bert: Path, offline: Callable[[str, list[Any]], list[dict[str, Any]]]
) -> None:
    port = free_port()
    command = [sys.executable, "-m", "adaptune.cli", "serve", "--base", str(tiny_bert), "--adapters", str(adapters_dir)]
    command += ["--port", str(port), "--api-key", "k", "--max-batch", "4", "--max-input-tokens", "30"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "adaptune serve did not come up"
            time.sleep(0.2)
        headers = {"Authorization": "Bearer k"}
        body = {"adapter": "intents-bottleneck", "inputs": ["where is my order?"]}
        got = httpx.post(f"{url}/v1/classify", json=body, headers=headers).json()["predictions"][0]
        assert_same(got, offline("intents-bottleneck", ["where is my order?"])[0])
        too_many = httpx.post(f"{url}/v1/classify", json={**body, "inputs": ["a"] * 5}, headers=headers)
        assert too_many.status_code == 400 and too_many.json()["error"]["limit"] == "max_batch"
        assert httpx.post(f"{url}/v1/classify", json=body).status_code == 401
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_serve_refuses_a_missing_folder(tiny_bert: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["serve", "--base", str(tiny_bert), "--adapters", str(tmp_path / "none")])
    assert result.exit_code == 2 and "does not exist" in result.output
