"""The board's run form, generated from the config schema so that its fields, defaults and help never drift.

Each field comes from a pydantic model's JSON schema (:func:`pydantic.BaseModel.model_json_schema`): its type, the
allowed values of a ``Literal``, bounds, default and the ``Field(description=...)`` help text. The only list kept
here is which keys of the ``model``, ``data`` and ``training`` sections the form shows (:data:`KEY_FIELDS`); every
registered method and task brings all its scalar keys, from its own config class, with no list at all.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from adaptune.backbone import PACKAGED_MODELS
from adaptune.catalogue import method_info
from adaptune.config import DataConfig, ModelConfig, TrainingConfig
from adaptune.registry import method_names, method_registration, task_names, task_registration

#: The key hyper-parameters the form shows, per section (the rest keep their defaults; a downloaded YAML can set
#: any key). Types, defaults and help come from the schema.
KEY_FIELDS: dict[str, tuple[type[BaseModel], tuple[str, ...]]] = {
    "model": (ModelConfig, ("pooling",)),
    "data": (
        DataConfig,
        ("format", "text_column", "label_column", "max_length", "batch_size", "max_train_examples"),
    ),
    "training": (
        TrainingConfig,
        (
            "epochs",
            "max_steps",
            "learning_rate",
            "scheduler",
            "warmup_ratio",
            "weight_decay",
            "eval_every",
            "log_every",
            "early_stopping_patience",
            "seed",
        ),
    ),
}
_SCALARS = ("string", "integer", "number", "boolean")


def field_spec(key: str, schema: dict[str, Any]) -> dict[str, Any] | None:
    """One form field from a property's JSON schema: ``{key, type, enum, nullable, default, help, minimum ...}``;
    None for a key the form cannot edit (a list, a nested section)."""
    options = schema.get("anyOf", [schema])
    kinds = [option for option in options if option.get("type") != "null"]
    if len(kinds) != 1 or kinds[0].get("type") not in _SCALARS:
        return None
    kind = kinds[0]
    spec: dict[str, Any] = {
        "key": key,
        "type": "enum" if "enum" in kind else kind["type"],
        "nullable": len(options) > len(kinds),
        "default": schema.get("default"),
        "help": schema.get("description", ""),
    }
    if "enum" in kind:
        spec["enum"] = list(kind["enum"])
    for bound in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if bound in kind:
            spec[bound] = kind[bound]
    return spec


def model_fields(model: type[BaseModel], keys: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """The editable fields of a config class (``keys`` of them, in that order, or all but ``name``)."""
    properties = model.model_json_schema()["properties"]
    chosen = keys if keys is not None else tuple(key for key in properties if key != "name")
    specs = [field_spec(key, properties[key]) for key in chosen]
    return [spec for spec in specs if spec is not None]


def _methods() -> dict[str, dict[str, Any]]:
    """Every registered method that a form can configure (one whose default config is valid: not a stack or a
    fusion, which need member adapters): what it trains, its default learning rate and its keys."""
    out = {}
    for name in method_names():
        info = method_info(name)
        if info.config is None:
            continue
        out[name] = {
            "trains": info.trains,
            "default_learning_rate": info.default_learning_rate,
            "fields": model_fields(method_registration(name).config_cls),
        }
    return out


def form() -> dict[str, Any]:
    """Everything the page needs to draw the run form."""
    return {
        "packaged_models": sorted(PACKAGED_MODELS),
        "default_model": ModelConfig().name_or_path,
        "sections": {section: model_fields(model, keys) for section, (model, keys) in KEY_FIELDS.items()},
        "methods": _methods(),
        "default_method": "bottleneck",
        "tasks": {name: {"fields": model_fields(task_registration(name).config_cls)} for name in task_names()},
        "default_task": "seq_cls",
    }
