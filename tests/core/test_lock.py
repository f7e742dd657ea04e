"""requirements/lock.txt against pyproject.toml and the environment: every declared dependency is locked at an
exact version inside its declared range, and what is installed is what is locked."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements" / "lock.txt"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def read_lock(text: str) -> dict[str, Version]:
    """Name (canonical) -> locked version; every line that is not a comment must be ``name==version``."""
    pins: dict[str, Version] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        if match is None:
            raise ValueError(f"lock line {number}: {line!r} is not an exact pin (name==version)")
        pins[canonicalize_name(match[1])] = Version(match[2])
    return pins


def declared(pyproject: str) -> list[Requirement]:
    """Every requirement of pyproject.toml (dependencies and all extras) whose marker holds on this platform."""
    project = tomllib.loads(pyproject)["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    for extra in project.get("optional-dependencies", {}).values():
        requirements += [Requirement(r) for r in extra]
    return [r for r in requirements if r.marker is None or r.marker.evaluate()]


def disagreements(pyproject: str, lock: str) -> list[str]:
    """What is wrong between the two files: a declared package not locked, or locked outside its range."""
    pins = read_lock(lock)
    problems = []
    for requirement in declared(pyproject):
        pinned = pins.get(canonicalize_name(requirement.name))
        if pinned is None:
            problems.append(f"{requirement.name} is declared ({requirement}) but not in the lock")
        elif not requirement.specifier.contains(pinned, prereleases=True):
            problems.append(f"{requirement.name}=={pinned} is locked, outside the declared '{requirement}'")
    return problems


def test_the_lock_lies_inside_the_declared_ranges() -> None:
    assert disagreements((ROOT / "pyproject.toml").read_text(), LOCK.read_text()) == []


def test_a_locked_version_outside_the_range_is_caught() -> None:
    pyproject = '[project]\ndependencies = ["transformers>=5.23,<5.25", "torch>=2.4"]\n'
    assert disagreements(pyproject, "transformers==5.24.0\ntorch==2.13.0\n") == []
    assert disagreements(pyproject, "transformers==5.25.0\ntorch==2.13.0\n") == [
        "transformers==5.25.0 is locked, outside the declared 'transformers<5.25,>=5.23'"
    ]
    assert disagreements(pyproject, "# only torch\ntorch==2.13.0\n") == [
        "transformers is declared (transformers<5.25,>=5.23) but not in the lock"
    ]
    with pytest.raises(ValueError, match="lock line 2: 'torch>=2.4' is not an exact pin"):
        read_lock("transformers==5.24.0\ntorch>=2.4\n")


def test_the_installed_versions_are_the_locked_ones() -> None:
    """What scripts/setup.sh installed is exactly the lock (torch's local ``+cpu`` label aside)."""
    wrong = []
    for name, pinned in read_lock(LOCK.read_text()).items():
        try:
            installed = Version(version(name))
        except PackageNotFoundError:
            continue  # setup.sh without --test installs a subset
        if Version(installed.public) != pinned:
            wrong.append(f"{name} {installed} installed, {pinned} locked")
    assert wrong == []
    for name in ("torch", "transformers", "tokenizers", "safetensors"):
        assert canonicalize_name(name) in read_lock(LOCK.read_text()), f"{name} must be locked"
