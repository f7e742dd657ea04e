"""What exists, generated from the registries and the config models: the methods and the run config's schema.

``adaptune methods`` and ``adaptune config --schema`` print these; nothing here keeps a list of its own, so a newly
registered method or task shows up without an edit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema
from rich.markup import escape
from rich.table import Table

from adaptune.config import MethodConfig, RunConfig, TaskConfig
from adaptune.errors import ConfigError
from adaptune.registry import build_method, method_names, method_registration, task_names, task_registration

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


@dataclass(frozen=True)
class MethodInfo:
    """One registered method as ``adaptune methods`` shows it.

    Attributes:
        name: the ``method.name`` value.
        trains: what it trains (the first line of the method class's docstring).
        default_learning_rate: the rate ``training.learning_rate: null`` takes with the method's default config;
            None when the method has no default config (a ``stack`` needs its members), so the rate depends on it.
        tasks: the tasks it serves: every registered task, since methods and tasks are orthogonal (a method never
            asks which task it serves, :class:`~adaptune.methods.base.Method`).
        unsupported_model_types: ``config.model_type`` values it refuses at attach (``Method.unsupported_model_types``).
        config: its default config (``method`` section), or None when it has none.
    """

    name: str
    trains: str
    default_learning_rate: float | None
    tasks: list[str]
    unsupported_model_types: list[str]
    config: dict[str, Any] | None

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


def method_info(name: str) -> MethodInfo:
    """The :class:`MethodInfo` of registered method ``name`` (a ConfigError listing the known ones if none)."""
    registration = method_registration(name)
    method_cls: Any = registration.factory
    try:
        config = registration.config_cls.model_validate({"name": name})
    except (ValidationError, ConfigError):
        config = None
    # An instance knows what its config implies (prefix without its MLP takes another rate); the class otherwise.
    method = build_method(config) if config is not None else method_cls
    return MethodInfo(
        name=name,
        trains=registration.summary,
        default_learning_rate=method.default_learning_rate if config is not None else None,
        tasks=task_names(),
        unsupported_model_types=sorted(method.unsupported_model_types),
        config=config.model_dump(mode="json") if config is not None else None,
    )


def list_methods() -> list[MethodInfo]:
    """Every registered method, sorted by name."""
    return [method_info(name) for name in method_names()]


def methods_table(infos: list[MethodInfo]) -> Table:
    """The console table of ``adaptune methods``: one row per method."""
    table = Table("method", "trains", "default LR", "tasks", "refuses (model_type)", highlight=False)
    for info in infos:
        rate = f"{info.default_learning_rate:g}" if info.default_learning_rate is not None else "from its config"
        refused = ", ".join(info.unsupported_model_types) or "-"
        table.add_row(info.name, escape(info.trains.replace("``", "")), rate, ", ".join(info.tasks), refused)
    return table


def config_schema() -> dict[str, Any]:
    """The JSON schema (draft 2020-12) of a run config, from the pydantic models.

    ``RunConfig.model_json_schema()`` alone knows only the base ``MethodConfig`` and ``TaskConfig`` (a ``name``);
    here those two definitions become ``anyOf`` the registered methods' and tasks' config models, so the schema
    names every method and task key, a stack member's ``method`` included. ``method`` and ``task`` carry their
    defaults (``bottleneck``, ``seq_cls``) like the other sections.
    """
    methods = [method_registration(name).config_cls for name in method_names()]
    tasks = [task_registration(name).config_cls for name in task_names()]
    models: list[type[BaseModel]] = [RunConfig, MethodConfig, TaskConfig, *methods, *tasks]
    refs, top = models_json_schema([(model, "validation") for model in models])
    defs: dict[str, Any] = top["$defs"]

    def ref(model: type[BaseModel]) -> dict[str, str]:
        return dict(refs[(model, "validation")])

    def def_name(model: type[BaseModel]) -> str:
        return ref(model)["$ref"].rsplit("/", 1)[-1]

    defs[def_name(MethodConfig)] = {
        "title": "MethodConfig",
        "description": "A registered method's config, chosen by 'name' (adaptune methods lists them).",
        "anyOf": [ref(model) for model in methods],
    }
    defs[def_name(TaskConfig)] = {
        "title": "TaskConfig",
        "description": "A registered task's config, chosen by 'name'.",
        "anyOf": [ref(model) for model in tasks],
    }
    root = defs.pop(def_name(RunConfig))
    defaults = RunConfig()
    for section in ("method", "task"):
        root["properties"][section]["default"] = getattr(defaults, section).model_dump(mode="json")
    head = {key: root.pop(key) for key in ("title", "description", "type") if key in root}
    return {"$schema": JSON_SCHEMA_DIALECT, **head, **root, "$defs": defs}


def dump(data: Any, fmt: Literal["json", "yaml"]) -> str:
    """``data`` as JSON (indented) or YAML (block style, keys in their order), ending in a newline."""
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000)


def section_fields(schema: dict[str, Any], section: str) -> dict[str, Any]:
    """The properties of one section (``model``, ``data``, ``training``) of :func:`config_schema`'s result:
    key -> its JSON schema, ``default`` included where it has one."""
    target = schema["properties"][section]["$ref"].rsplit("/", 1)[-1]
    return dict(schema["$defs"][target]["properties"])
