"""From a YAML with a ``search:`` block to one run config per trial.

:func:`read_search` loads the YAML (and ``--set`` overrides) as ``adaptune train`` does, validates the block
(:class:`~adaptune.tuning.space.SearchConfig`), checks that every searched key is a key of the run config's schema
and that every value of its range passes the config's own validation, before any trial runs; each error names the
YAML file and the key. :func:`sample` draws a trial's values and :func:`trial_config` applies them with
:func:`adaptune.config.apply_override`, the function behind ``--set``.

Conditional keys. ``method`` is a section whose keys depend on ``method.name`` (each registered method brings its
own config class). When ``method.name`` is searched, a trial first draws the method, then only the ``method.*``
keys of that method's config (``method.r`` for lora, ``method.reduction_factor`` for bottleneck); the keys of the
YAML's own ``method:`` section that the drawn method does not have are dropped for that trial.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from adaptune.config import RunConfig, apply_override, load_config, parse_override_value, validate_config
from adaptune.errors import ConfigError
from adaptune.registry import build_task, method_registration
from adaptune.tuning.space import SearchConfig, SuggestingTrial

SECTIONS = ("model", "method", "task", "data", "training")
#: Keys a search may not vary, and why.
FIXED = {
    "training.output_dir": "each trial writes to <study-dir>/trial-<n>",
    "training.metric": "the trials are compared on one metric (set search.metric instead)",
    "data.dev": "the trials are compared on the dev split",
    "task.name": "the trials are compared on one task",
}
METHOD_NAME = "method.name"


@dataclass(frozen=True)
class SearchSetup:
    """A validated search: the base config, what the YAML sets, the search block and the metric it optimises."""

    #: The YAML file.
    path: Path
    #: The config as ``adaptune train`` would run it (YAML and ``--set``).
    base: RunConfig
    #: The keys the YAML and ``--set`` set (data paths resolved), without the search block: each trial's start.
    tree: dict[str, Any]
    search: SearchConfig
    #: The dev metric compared across trials (``search.metric``; ``auto``: the run's selection metric).
    metric: str
    #: ``maximize`` or ``minimize``.
    direction: str

    @property
    def name(self) -> str:
        """The study's name: the YAML file's name without its suffix."""
        return self.path.stem

    def fingerprint(self) -> str:
        """A short hash of the base config and the searched space: a study resumes only with the same ones."""
        search = self.search.model_dump(mode="json", include={"metric", "direction", "space"})
        data = json.dumps({"config": self.base.fingerprint(), "search": search}, sort_keys=True)
        return hashlib.sha256(data.encode()).hexdigest()[:16]


def read_search(path: str | Path, overrides: Sequence[str] = ()) -> SearchSetup:
    """Load ``path`` with ``overrides`` and check its ``search:`` block (see the module docstring)."""
    path = Path(path)
    base = load_config(path, list(overrides))
    where = f"{path}{' with --set overrides' if overrides else ''}"
    if base.search is None:
        raise ConfigError(f"{where}: no 'search:' block; add one that names the keys to search (search.space)")
    search = _parse_search(base.search, where)
    if base.data.dev is None:
        raise ConfigError(f"{where}: a search needs a dev split to compare the trials on: set data.dev")
    for assignment in overrides:
        key = assignment.split("=", 1)[0].strip()
        if key in search.space:
            raise ConfigError(f"{where}: --set {key} fixes a key that search.space searches; drop one of them")
    tree = base.model_dump(mode="json", exclude_unset=True)
    _check_space(base, tree, search, where)
    metric = search.metric
    if metric == "auto":
        metric = base.training.metric if base.training.metric != "auto" else build_task(base.task).default_metric
    direction = search.direction
    if direction == "auto":
        direction = "minimize" if metric.endswith("loss") or metric == "perplexity" else "maximize"
    return SearchSetup(path, base, tree, search, metric, direction)


def _parse_search(block: dict[str, Any], where: str) -> SearchConfig:
    try:
        return SearchConfig.model_validate(block)
    except ValidationError as err:
        lines = []
        for item in err.errors():
            key = ".".join(("search", *(str(part) for part in item["loc"])))
            given = item.get("input")
            shown = "" if isinstance(given, dict) or item["type"] == "missing" else f" = {given!r}"
            lines.append(f"config key '{key}'{shown}: {item['msg'].removeprefix('Value error, ')}")
        raise ConfigError(f"{where}: " + "\n".join(lines)) from None


def method_keys(name: str) -> set[str]:
    """The keys of method ``name``'s config (``r``, ``alpha`` ... for lora)."""
    return set(method_registration(name).config_cls.model_fields)


def _searched_methods(base: RunConfig, search: SearchConfig, where: str) -> list[str]:
    """The methods trials can use: ``method.name``'s choices when it is searched, else the config's method."""
    spec = search.space.get(METHOD_NAME)
    if spec is None:
        return [base.method.name]
    if spec.choices is None:
        raise ConfigError(f"{where}: search.space.{METHOD_NAME} needs choices (method names), not a range")
    for choice in spec.choices:
        if not isinstance(choice, str):
            raise ConfigError(f"{where}: search.space.{METHOD_NAME}: {choice!r} is not a method name")
        try:
            method_registration(choice)
        except ConfigError as err:
            raise ConfigError(f"{where}: search.space.{METHOD_NAME}: {err}") from None
    return [str(choice) for choice in spec.choices]


def _has_path(model: type[BaseModel] | None, parts: Sequence[str]) -> bool:
    """Whether ``parts`` name a field of ``model``, through nested config models."""
    for part in parts:
        if model is None or part not in model.model_fields:
            return False
        annotation = model.model_fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return True


def _key_problem(key: str, base: RunConfig, methods: list[str]) -> str | None:
    """Why ``key`` cannot be searched (not a config key, fixed), or None."""
    parts = key.split(".")
    if len(parts) < 2 or parts[0] not in SECTIONS:
        return f"'{key}' is not a config key: keys are section.key, section one of {', '.join(SECTIONS)}"
    if key in FIXED:
        return f"'{key}' cannot be searched: {FIXED[key]}"
    section = parts[0]
    if section == "method":
        models: list[type[BaseModel]] = [method_registration(name).config_cls for name in methods]
        owner = f"method {' or '.join(repr(name) for name in methods)}"
    else:
        models = [type(getattr(base, section))]
        owner = f"the {section} section"
    if any(_has_path(model, parts[1:]) for model in models):
        return None
    allowed = sorted({field for model in models for field in model.model_fields})
    hint = difflib.get_close_matches(parts[-1], allowed, n=1)
    message = f"'{key}' is not a config key of {owner}"
    if hint:
        message += f"; did you mean '{section}.{hint[0]}'?"
    return message + f" (its keys: {', '.join(allowed)})"


def _check_space(base: RunConfig, tree: dict[str, Any], search: SearchConfig, where: str) -> None:
    """Every key is a config key and every end of its range (every choice) makes a valid config."""
    methods = _searched_methods(base, search, where)
    for key, spec in search.space.items():
        problem = _key_problem(key, base, methods)
        if problem is not None:
            raise ConfigError(f"{where}: search.space: {problem}")
        for value in spec.candidates():
            params = {key: value}
            if key.startswith("method.") and key != METHOD_NAME and METHOD_NAME in search.space:
                path = key.split(".")[1:]
                owner = next(name for name in methods if _has_path(method_registration(name).config_cls, path))
                params = {METHOD_NAME: owner, key: value}
            try:
                build_config(tree, params)
            except ConfigError as err:
                raise ConfigError(f"{where}: search.space.{key}: {value!r} is not a valid value: {err}") from None


def sample(trial: SuggestingTrial, search: SearchConfig) -> dict[str, Any]:
    """Draw one trial's values, ``method.name`` first: then only the ``method.*`` keys of the drawn method."""
    params: dict[str, Any] = {}
    allowed: set[str] | None = None
    if METHOD_NAME in search.space:
        params[METHOD_NAME] = search.space[METHOD_NAME].suggest(trial, METHOD_NAME)
        allowed = method_keys(params[METHOD_NAME])
    for key, spec in search.space.items():
        other_method = allowed is not None and key.startswith("method.") and key.split(".")[1] not in allowed
        if key == METHOD_NAME or other_method:
            continue
        params[key] = spec.suggest(trial, key)
    return params


def override_text(value: Any) -> str:
    """``value`` as the YAML text of a ``--set`` override that reads back as ``value`` (``1e-05`` is
    ``1.0e-05``: YAML wants the dot; ``'true'`` stays a string)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20).strip().removesuffix("...").strip()
    if parse_override_value(text) != value:
        raise ConfigError(f"search value {value!r} cannot be written as a --set override")
    return text


def build_config(tree: dict[str, Any], params: dict[str, Any], output_dir: str | Path | None = None) -> RunConfig:
    """The run config of ``tree`` with ``params`` (dotted key -> value) applied as ``--set`` overrides; a drawn
    ``method.name`` drops the ``method`` keys its config does not have."""
    tree = copy.deepcopy(tree)
    for key, value in params.items():
        apply_override(tree, f"{key}={override_text(value)}")
    if METHOD_NAME in params:
        allowed = method_keys(params[METHOD_NAME])
        tree["method"] = {key: value for key, value in tree["method"].items() if key in allowed}
    if output_dir is not None:
        tree.setdefault("training", {})["output_dir"] = str(output_dir)
    return validate_config(tree)


def trial_config(setup: SearchSetup, params: dict[str, Any], output_dir: str | Path) -> RunConfig:
    """One trial's run config, writing to ``output_dir``."""
    return build_config(setup.tree, params, output_dir)


def config_yaml(cfg: RunConfig, header: str = "") -> str:
    """``cfg`` as a YAML file that ``adaptune train`` reads (every key, no search block), after ``header``
    comment lines."""
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    return comments + yaml.safe_dump(cfg.model_dump(mode="json"), allow_unicode=True, sort_keys=False)
