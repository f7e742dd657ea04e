"""A command that needs a missing optional part ends with one line naming the extra to install; help texts keep
their brackets.

The missing modules are simulated: ``sys.modules[name] = None`` makes ``import name`` raise ModuleNotFoundError,
as on an install made with ``scripts/setup.sh`` alone (no ``server`` or ``gguf`` extra).
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest
import typer
from rich.text import Text
from typer.testing import CliRunner

from adaptune.cli import app
from adaptune.extras import EXTRAS, as_missing_extra, missing_module

runner = CliRunner()


def hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``modules`` unimportable, and forget adaptune's modules that imported them, for this test."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)
    for name in ("adaptune.server.app", "adaptune.server.openai", "adaptune.data.formats.hf"):
        monkeypatch.delitem(sys.modules, name, raising=False)


def one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


def test_serve_without_fastapi(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    hide(monkeypatch, "fastapi")
    result = runner.invoke(app, ["serve", "--base", str(tmp_path), "--adapters", str(tmp_path)])
    assert result.exit_code == 2, result.output
    line = one_line(result.output)
    assert "adaptune serve needs the server extra (fastapi is not installed)" in line
    assert "pip install -c requirements/lock.txt -e '.[server]'" in line and "scripts/setup.sh --test" in line


def test_serve_without_uvicorn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    hide(monkeypatch, "uvicorn")
    result = runner.invoke(app, ["serve", "--base", str(tmp_path), "--adapters", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "needs the server extra (uvicorn is not installed)" in one_line(result.output)


def test_train_on_a_datasets_folder_without_datasets(
    monkeypatch: pytest.MonkeyPatch, tiny_bert: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "saved"
    folder.mkdir()
    hide(monkeypatch, "datasets")
    overrides = [f"model.name_or_path={tiny_bert}", f"data.train={folder}", f"training.output_dir={tmp_path / 'run'}"]
    result = runner.invoke(app, ["train", "intents", *(arg for o in overrides for arg in ("--set", o))])
    assert result.exit_code == 2, result.output
    line = one_line(result.output)
    assert "adaptune train needs the hf extra (datasets is not installed)" in line and "(or scripts/setup.sh)" in line


def test_transformers_gguf_import_error_names_the_extra() -> None:
    err = ImportError("Please install torch and gguf>=0.10.0 to load a GGUF checkpoint in PyTorch.")
    missing = as_missing_extra(err, "adaptune predict")
    assert missing is not None and missing.extra == "gguf"
    assert str(missing).startswith("adaptune predict needs the gguf extra (Please install torch and gguf>=0.10.0")


def test_other_import_errors_are_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    assert missing_module(ModuleNotFoundError("No module named 'nope'", name="nope")) is None
    assert missing_module(ModuleNotFoundError("...", name="fastapi.responses")) == "fastapi"
    declared = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    assert set(EXTRAS.values()) <= set(declared["optional-dependencies"])  # every extra named is one pip knows

    def broken() -> None:
        raise ModuleNotFoundError("No module named 'nope'", name="nope")

    monkeypatch.setattr("adaptune.catalogue.list_methods", broken)
    result = runner.invoke(app, ["methods"])
    assert isinstance(result.exception, ModuleNotFoundError)


def help_texts() -> list[tuple[str, str]]:
    """(where, text) for every command's help and every parameter's help."""
    group = typer.main.get_command(app)
    texts = []
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        texts.append((name, command.help or ""))
        texts += [(f"{name} {param.name}", getattr(param, "help", None) or "") for param in command.params]
    return texts


@pytest.mark.parametrize(("where", "text"), help_texts(), ids=lambda value: value.split("\n")[0][:30])
def test_help_text_survives_rich_markup(where: str, text: str) -> None:
    """Typer renders help as rich markup, where '[server]' is a tag and vanishes; literal brackets need '\\['."""
    assert Text.from_markup(text).plain == text.replace("\\[", "["), f"{where}: markup eats part of {text!r}"


def test_serve_help_shows_the_extra() -> None:
    result = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "needs the server extra" in result.output and "'.[server]'" in result.output
    assert "needs )" not in result.output
