"""Registries for methods and tasks: a method or task registers itself; nothing central enumerates them.

A *method* (``head``, ``bottleneck``, later ``lora`` ...) changes the frozen backbone: it injects small trainable
modules, or unfreezes a few parameters. A *task* (``seq_cls``, ``token_cls`` ...) owns the head, the batching of
its examples, the loss, the decoding of outputs and the metrics. The two never ask about each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from adaptune.errors import ConfigError

if TYPE_CHECKING:
    from adaptune.methods.base import Method
    from adaptune.tasks.base import Task

T = TypeVar("T")


@dataclass(frozen=True)
class Registration:
    """One registered method or task: its name, its pydantic config class and a factory."""

    name: str
    config_cls: type[BaseModel]
    factory: Callable[..., Any]
    summary: str


_METHODS: dict[str, Registration] = {}
_TASKS: dict[str, Registration] = {}


def _register(table: dict[str, Registration], kind: str, name: str, config_cls: type[BaseModel]) -> Callable[[T], T]:
    def decorate(factory: T) -> T:
        if name in table:
            raise ValueError(f"{kind} '{name}' is registered twice")
        doc = (getattr(factory, "__doc__", None) or "").strip().splitlines()
        table[name] = Registration(name, config_cls, factory, doc[0] if doc else "")  # type: ignore[arg-type]
        return factory

    return decorate


def register_method(name: str, config_cls: type[BaseModel]) -> Callable[[T], T]:
    """Class decorator: make a :class:`~adaptune.methods.base.Method` available as ``method.name: <name>``."""
    return _register(_METHODS, "method", name, config_cls)


def register_task(name: str, config_cls: type[BaseModel]) -> Callable[[T], T]:
    """Class decorator: make a :class:`~adaptune.tasks.base.Task` available as ``task.name: <name>``."""
    return _register(_TASKS, "task", name, config_cls)


def _load_builtins() -> None:
    # Importing the packages runs their @register_* decorators.
    import adaptune.methods
    import adaptune.tasks  # noqa: F401


def _lookup(table: dict[str, Registration], kind: str, name: str) -> Registration:
    _load_builtins()
    if name not in table:
        allowed = ", ".join(sorted(table))
        raise ConfigError(f"config key '{kind}.name' = {name!r} is not a known {kind}; allowed: {allowed}")
    return table[name]


def method_registration(name: str) -> Registration:
    """The registration of method ``name``; a :class:`ConfigError` listing the known ones if there is none."""
    return _lookup(_METHODS, "method", name)


def task_registration(name: str) -> Registration:
    """The registration of task ``name``; a :class:`ConfigError` listing the known ones if there is none."""
    return _lookup(_TASKS, "task", name)


def method_names() -> list[str]:
    """Names of all registered methods, sorted."""
    _load_builtins()
    return sorted(_METHODS)


def task_names() -> list[str]:
    """Names of all registered tasks, sorted."""
    _load_builtins()
    return sorted(_TASKS)


def build_method(config: BaseModel) -> Method:
    """Instantiate the method that ``config`` (a registered method config) describes."""
    return method_registration(config.name).factory(config)  # type: ignore[attr-defined,no-any-return]


def build_task(config: BaseModel) -> Task:
    """Instantiate the task that ``config`` (a registered task config) describes."""
    return task_registration(config.name).factory(config)  # type: ignore[attr-defined,no-any-return]


def methods_with(capability: type) -> list[str]:
    """Names of the registered methods whose class declares ``capability`` (a runtime-checkable Protocol of
    methods only, e.g. :class:`~adaptune.methods.base.Mergeable`), sorted: for messages that list methods."""
    _load_builtins()
    return sorted(
        name for name, reg in _METHODS.items() if isinstance(reg.factory, type) and issubclass(reg.factory, capability)
    )
