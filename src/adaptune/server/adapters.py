"""Adapters as the server holds them: safe names, the adapter folder, and one loaded adapter (:class:`Entry`).

Every adapter is built on a *structural copy* of the shared base model: a new module tree whose parameters and
buffers are the base's own tensors (no weights are copied), so the method can attach its modules and hooks without
touching the model other adapters use. Then:

* ``lora`` (plain, not DoRA), ``bottleneck`` and ``head`` adapters are served **per row**: their LoRA and
  bottleneck modules are handed to :class:`~adaptune.server.batched.MultiAdapterLayers` on the shared base, and the
  copy is dropped. Rows of any mix of these adapters run in one forward pass.
* every other method (``prefix``, ``prompt``, ``ia3``, ``bitfit``, ``stack``, DoRA) keeps its copy with the method
  attached, a private :class:`~adaptune.model.AdaptedModel`; the engine runs its rows as a group (one forward per
  such adapter per micro-batch). Tensors the method overwrites in the base (BitFit's biases) are private clones.
* generation adapters (``causal_lm``) always keep their private model: generation is grouped per adapter.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from adaptune.backbone import Backbone
from adaptune.config import validate_config
from adaptune.errors import AdapterFileError, ConfigError
from adaptune.inference import load_adapter_state
from adaptune.io import CONFIG_FILE, AdapterFile, BaseMismatch, check_base, load_adapter, read_adapter_config
from adaptune.methods.bottleneck import BottleneckAdapter
from adaptune.methods.lora import LoRA
from adaptune.model import AdaptedModel
from adaptune.registry import build_method, build_task

#: Allowed adapter names: a folder name directly inside the adapters folder, nothing that walks out of it.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
#: Methods whose modules the shared base can apply per row.
PER_ROW_METHODS = frozenset({"lora", "bottleneck", "head"})
#: Tasks served by ``/v1/generate`` and the OpenAI endpoints rather than by the forward batcher.
GENERATION_TASKS = frozenset({"causal_lm"})


class AdapterNameError(ValueError):
    """An adapter name that could reach outside the adapters folder (``/``, ``..``, ``\\``, absolute paths)."""


class AdapterRefused(ValueError):
    """An adapter folder the server cannot serve on its base (another base model, unknown method ...)."""


def check_name(name: str) -> str:
    """Return ``name`` if it is a plain folder name (letters, digits, ``._-``; no ``/``, ``\\``, ``..``)."""
    if not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise AdapterNameError(
            f"adapter name {name!r} is not allowed: use letters, digits, '.', '_' and '-' (no '/', '\\\\', '..' "
            "or absolute paths); adapters load only from the server's adapters folder"
        )
    return name


def adapter_path(folder: Path, name: str) -> Path:
    """The folder of adapter ``name`` inside ``folder``; refused if it resolves outside (e.g. a symlink)."""
    check_name(name)
    root = folder.resolve()
    path = (root / name).resolve()
    if path.parent != root:
        raise AdapterNameError(f"adapter {name!r} resolves outside the adapters folder; refused")
    return path


def discover(folder: Path) -> list[str]:
    """Names of the sub-folders of ``folder`` that hold an ``adapter_config.json``, sorted."""
    return sorted(p.name for p in folder.iterdir() if (p / CONFIG_FILE).is_file())


def structural_copy(model: nn.Module, private: frozenset[int] = frozenset()) -> nn.Module:
    """A new module tree sharing every parameter and buffer of ``model`` except those whose ``id`` is in
    ``private`` (deep-copied). Hooks on ``model`` are copied too, so copy from a hook-free template."""
    memo: dict[int, Any] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in private:
            memo[id(tensor)] = tensor
    return copy.deepcopy(model, memo)


@dataclass
class Entry:
    """One loaded adapter: its description, task, labels and head, and how the engine runs it.

    ``index`` (>= 1) is its slot in the shared per-row layers (``model`` is then None: its LoRA and bottleneck
    modules live in the shared layers); 0 when it runs on its private ``model``.
    """

    name: str
    path: Path
    config: dict[str, Any]
    task: Any
    head: nn.Module
    labels: list[str]
    model: AdaptedModel | None = None
    index: int = 0
    loras: dict[str, LoRA] = field(default_factory=dict)
    bottlenecks: dict[str, BottleneckAdapter] = field(default_factory=dict)

    @property
    def task_name(self) -> str:
        return str(self.config["task"]["name"])

    @property
    def method_name(self) -> str:
        return str(self.config["method"]["name"])

    @property
    def max_length(self) -> int:
        return int(self.config["max_length"])

    @property
    def per_row(self) -> bool:
        return self.model is None

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/adapters`` shows."""
        return {
            "name": self.name,
            "method": self.method_name,
            "task": self.task_name,
            "labels": self.labels,
            "max_length": self.max_length,
            "batching": "per-row" if self.per_row else "grouped",
        }


def read_compatible(path: Path, base_fingerprint: str) -> dict[str, Any]:
    """The adapter's config if it was trained on the base with ``base_fingerprint``; else :class:`AdapterRefused`."""
    try:
        config = read_adapter_config(path)
    except AdapterFileError as err:
        raise AdapterRefused(str(err)) from None
    try:
        check_base(
            config, base_fingerprint, where="the adapter", this="this server's base", advice="serve it on its base"
        )
    except BaseMismatch as err:
        raise AdapterRefused(str(err)) from None
    return config


def build_entry(name: str, path: Path, template: Backbone, base_fingerprint: str) -> Entry:
    """Load adapter ``name`` from ``path`` onto a structural copy of ``template`` (see the module docstring)."""
    read_compatible(path, base_fingerprint)
    try:
        adapter = load_adapter(path)
        model = _build_model(adapter, template)
    except (AdapterFileError, ConfigError, KeyError, ValueError) as err:
        raise AdapterRefused(str(err)) from None
    model.eval()
    entry = Entry(name, path, adapter.config, model.task, model.head, list(model.labels), model)
    if _per_row_ok(adapter.config, model):
        entry.loras, entry.bottlenecks = harvest(model)
        entry.model = None  # drop the private module tree: the shared layers hold what it added
    return entry


def _build_model(adapter: AdapterFile, template: Backbone) -> AdaptedModel:
    """The adapter's :class:`AdaptedModel` on a copy of ``template`` that shares the base tensors it never writes."""
    desc = adapter.config
    run = validate_config({"method": desc["method"], "task": desc["task"]})
    shared = {id(t) for t in [*template.model.parameters(), *template.model.buffers()]}
    model = _assemble(adapter, template, run, frozenset())
    written = frozenset(id(p) for p in model.stored_parameters().values()) & shared
    if written:  # e.g. BitFit trains the base's own biases: give this adapter private copies of them
        model = _assemble(adapter, template, run, written)
    load_adapter_state(model, adapter)
    return model


def _assemble(adapter: AdapterFile, template: Backbone, run: Any, private: frozenset[int]) -> AdaptedModel:
    """Method and task on a structural copy of ``template``; generation adapters get their own tokenizer too
    (a fast tokenizer must not be used by two threads at once, and generation runs on its own thread)."""
    tokenizer = template.tokenizer
    if run.task.name in GENERATION_TASKS:
        tokenizer = copy.deepcopy(tokenizer)
    backbone = replace(
        template,
        model=structural_copy(template.model, private),
        tokenizer=tokenizer,
        pooling=adapter.config["pooling"],
    )
    return AdaptedModel(backbone, build_method(run.method), build_task(run.task), adapter.labels)


def _per_row_ok(config: dict[str, Any], model: AdaptedModel) -> bool:
    """Whether the shared base can serve this adapter per row: plain LoRA, bottleneck or head, not generation."""
    if config["method"]["name"] not in PER_ROW_METHODS or config["task"]["name"] in GENERATION_TASKS:
        return False
    return not any(isinstance(m, LoRA) and m.magnitude is not None for m in model.modules())


def harvest(model: AdaptedModel) -> tuple[dict[str, LoRA], dict[str, BottleneckAdapter]]:
    """The LoRA and bottleneck modules the method added, by the name of the base module they adapt."""
    loras: dict[str, LoRA] = {}
    bottlenecks: dict[str, BottleneckAdapter] = {}
    for host_name, host in model.backbone.named_modules():
        for child in host.children():
            if isinstance(child, LoRA):
                loras[host_name] = child
            elif isinstance(child, BottleneckAdapter):
                bottlenecks[host_name] = child
    return loras, bottlenecks
