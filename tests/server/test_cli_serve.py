"""``adaptune serve`` end to end: the real command in a subprocess, called over loopback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner

from adaptune.cli import app
from serving_kit import assert_same, serving


def test_serve_command_serves_the_folder(
    adapters_dir: Path, tiny_bert: Path, offline: Callable[[str, list[Any]], list[dict[str, Any]]]
) -> None:
    extra = ["--api-key", "k", "--max-batch", "4", "--max-input-tokens", "30"]
    with serving([str(tiny_bert)], adapters_dir, *extra) as url:
        headers = {"Authorization": "Bearer k"}
        body = {"adapter": "intents-bottleneck", "inputs": ["where is my order?"]}
        got = httpx.post(f"{url}/v1/classify", json=body, headers=headers).json()["predictions"][0]
        assert_same(got, offline("intents-bottleneck", ["where is my order?"])[0])
        too_many = httpx.post(f"{url}/v1/classify", json={**body, "inputs": ["a"] * 5}, headers=headers)
        assert too_many.status_code == 400 and too_many.json()["error"]["limit"] == "max_batch"
        assert httpx.post(f"{url}/v1/classify", json=body).status_code == 401


def test_serve_refuses_a_missing_folder(tiny_bert: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["serve", "--base", str(tiny_bert), "--adapters", str(tmp_path / "none")])
    assert result.exit_code == 2 and "does not exist" in result.output
