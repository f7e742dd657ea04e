"""The edges of the core never name a method or a task: the server, the predictors and the training loop work
through declared capabilities (:mod:`adaptune.methods.base`, :mod:`adaptune.tasks.base`), so adding a method or a
task touches only its own module and its tests.

Checked in the source of ``src/adaptune/server/``, ``src/adaptune/inference*`` and ``src/adaptune/training/``:

* no import of a particular method or task module (``adaptune.methods.lora``, ``adaptune.tasks.seq_cls`` ...;
  the ``base`` modules, which declare the contracts, are allowed);
* no string equal to a registered method or task name used as a value to compare with or as a member of a
  collection literal (``name == "lora"``, ``{"lora", "bottleneck"}``, ``task in ("causal_lm",)``). Names in
  docstrings, comments and messages are prose, and JSON field names (``{"prompt": ...}``) are not names of
  methods: both are allowed.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from adaptune.registry import method_names, task_names

SRC = Path(__file__).resolve().parents[1] / "src" / "adaptune"
EDGES = ["server", "inference", "inference.py", "training"]
#: Modules that declare the contracts every method or task follows (not a particular one).
CONTRACTS = {"adaptune.methods", "adaptune.methods.base", "adaptune.tasks", "adaptune.tasks.base"}


def edge_files() -> list[Path]:
    files: list[Path] = []
    for edge in EDGES:
        path = SRC / edge
        if path.is_dir():
            files += sorted(path.rglob("*.py"))
        elif path.is_file():
            files.append(path)
    return files


def registered() -> set[str]:
    return set(method_names()) | set(task_names())


def specific_imports(tree: ast.AST) -> Iterator[str]:
    """Imported modules of particular methods or tasks."""
    for node in ast.walk(tree):
        modules: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
            if node.module in ("adaptune.methods", "adaptune.tasks"):
                modules += [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        for module in modules:
            parts = module.split(".")
            family = parts[:2] in (["adaptune", "methods"], ["adaptune", "tasks"])
            if family and len(parts) >= 3 and ".".join(parts[:3]) not in CONTRACTS:
                yield module


def named_values(tree: ast.AST, names: set[str]) -> Iterator[tuple[int, str]]:
    """(line, name) of registered names compared with or listed in collection literals."""
    for node in ast.walk(tree):
        candidates: list[ast.expr] = []
        if isinstance(node, ast.Compare):
            candidates = [node.left, *node.comparators]
        elif isinstance(node, ast.Set | ast.List | ast.Tuple):
            candidates = list(node.elts)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("frozenset", "set"):
            candidates = [e for arg in node.args if isinstance(arg, ast.Set | ast.List | ast.Tuple) for e in arg.elts]
        for expr in candidates:
            if isinstance(expr, ast.Constant) and isinstance(expr.value, str) and expr.value in names:
                yield expr.lineno, expr.value


def test_the_edges_exist() -> None:
    files = {p.relative_to(SRC).parts[0] for p in edge_files()}
    assert {"server", "training"} <= files and files & {"inference", "inference.py"}


@pytest.mark.parametrize("path", edge_files(), ids=lambda p: str(p.relative_to(SRC)))
def test_no_method_or_task_is_named(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imports = sorted(set(specific_imports(tree)))
    assert not imports, f"{path.relative_to(SRC)} imports particular methods or tasks: {imports}"
    found = sorted(set(named_values(tree, registered())))
    assert not found, f"{path.relative_to(SRC)} names methods or tasks (line, name): {found}"


def test_the_checker_catches_names() -> None:
    """The two rules find what they are meant to find."""
    code = (
        "from adaptune.methods.lora import LoRA\n"
        "from adaptune.tasks import causal_lm\n"
        "from adaptune.methods.base import Mergeable\n"
        "PER_ROW = frozenset({'lora', 'head'})\n"
        "if task == 'causal_lm': pass\n"
        "x = {'prompt': 1}\n"
        "message = f'method lora cannot {y}'\n"
    )
    tree = ast.parse(code)
    assert sorted(specific_imports(tree)) == ["adaptune.methods.lora", "adaptune.tasks.causal_lm"]
    assert sorted(set(named_values(tree, registered()))) == [(4, "head"), (4, "lora"), (5, "causal_lm")]
