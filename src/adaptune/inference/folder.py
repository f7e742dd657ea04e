"""Adapters as the multi-adapter predictor holds them: safe names, the adapters folder, one loaded adapter.

Every adapter is built (:func:`adaptune.inference.adapter_model`, as :func:`~adaptune.inference.model_from_adapter`
builds it) on a *structural copy* of the shared base model: a new module tree whose parameters and buffers are the
base's own tensors (no weights are copied), so the method can attach its modules and hooks without touching the
model other adapters use. Then, by what the method and the task declare (never by their names):

* a method with a per-row form (:class:`~adaptune.methods.base.PerRowBatched`, ``per_row_parts`` not None: plain
  LoRA, bottleneck, head-only) on a task that does not generate is served **per row**: its parts go to the shared
  base's :class:`~adaptune.per_row.MultiAdapterLayers` and the copy is dropped, so rows of any mix of such
  adapters run in one forward pass;
* every other adapter (prefix, prompt, IA3, BitFit, stacks, DoRA, and every adapter of a ``generate`` task) keeps
  its copy with the method attached, a private :class:`~adaptune.model.AdaptedModel`; its rows run as a group
  (one forward per such adapter per batch). Tensors the method overwrites in the base (BitFit's biases) are
  private clones.

Before any of that, :func:`read_listing` reads an adapter folder's :class:`Listing` from its ``adapter_config.json``
alone (no tensors): name, method, task and labels, checked against the base, and the task bound to the base, which
is all that parsing and tokenising a request needs; the predictor loads the weights (an :class:`Entry`) on first use.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from adaptune.backbone import Backbone
from adaptune.config import validate_config
from adaptune.errors import AdapterFileError, ConfigError
from adaptune.inference import adapter_model, load_adapter_state
from adaptune.inference.errors import AdapterNameError, AdapterNotFound, AdapterRefused
from adaptune.io import CONFIG_FILE, AdapterFile, BaseMismatch, check_base, load_adapter, read_adapter_config
from adaptune.methods.base import PerRowBatched, PerRowPart, changes_inputs
from adaptune.model import AdaptedModel
from adaptune.registry import build_task, task_registration
from adaptune.tasks.base import Task

#: Allowed adapter names: a folder name directly inside the adapters folder, nothing that walks out of it.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


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


class _Described:
    """What an adapter's config says, for :class:`Entry` and :class:`Listing` (both have these fields)."""

    name: str
    config: dict[str, Any]
    task: Task[Any]
    labels: list[str]

    @property
    def task_name(self) -> str:
        return str(self.config["task"]["name"])

    @property
    def method_name(self) -> str:
        return str(self.config["method"]["name"])

    @property
    def kind(self) -> str:
        """What the task predicts (:data:`~adaptune.tasks.base.TaskKind`)."""
        return str(self.task.kind)

    @property
    def max_length(self) -> int:
        return int(self.config["max_length"])

    def _description(self, batching: str | None) -> dict[str, Any]:
        """The fields of ``GET /v1/adapters`` that the config and ``batching`` give."""
        return {
            "name": self.name,
            "method": self.method_name,
            "task": self.task_name,
            "labels": self.labels,
            "max_length": self.max_length,
            "batching": batching,
        }


@dataclass
class Entry(_Described):
    """One loaded adapter: its description, task, labels and head, and how the predictor runs it.

    ``index`` (>= 1) is its slot in the shared per-row layers (``model`` is then None: its ``parts``, read from
    the adapter file, are written into the shared layers' stacks on registration and dropped there, so the stacks
    hold the only copy); 0 when it runs on its private ``model``.
    """

    name: str
    path: Path
    config: dict[str, Any]
    task: Task[Any]
    head: nn.Module
    labels: list[str]
    model: AdaptedModel | None = None
    index: int = 0
    parts: list[PerRowPart] = field(default_factory=list)

    @property
    def per_row(self) -> bool:
        return self.model is None

    @property
    def batching(self) -> str:
        return "per-row" if self.per_row else "grouped"

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/adapters`` shows."""
        return self._description(self.batching)


@dataclass
class Listing(_Described):
    """One adapter of the folder as the predictor lists it, loaded or not: read from its config alone
    (:func:`read_listing`), with the task that parses and tokenises its requests.

    ``entry``: its weights while they are loaded (None when not loaded, or evicted); ``last_used``: when a request
    (or a load) last named it, on the predictor's clock (the least recently used is evicted first); ``nbytes``: its
    loaded tensors' bytes, measured at its last load (None before); ``batching``: per-row or grouped, known once
    loaded.
    """

    name: str
    path: Path
    config: dict[str, Any]
    task: Task[Any]
    labels: list[str]
    entry: Entry | None = None
    last_used: int = 0
    nbytes: int | None = None
    batching: str | None = None

    @property
    def file_bytes(self) -> int:
        """Size of its tensor file, from the config (an estimate of :attr:`nbytes` before it is measured)."""
        return int(self.config["weights"]["bytes"])

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/adapters`` shows: :meth:`Entry.describe`, whether it is loaded and its bytes."""
        batching = self.entry.batching if self.entry is not None else self.batching
        return {**self._description(batching), "loaded": self.entry is not None, "bytes": self.nbytes}


def read_compatible(path: Path, base_fingerprint: str | Callable[[str], str]) -> dict[str, Any]:
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


def read_listing(name: str, folder: Path, template: Backbone, base_fingerprint: str | Callable[[str], str]) -> Listing:
    """Adapter ``name`` of ``folder`` from its config alone (no tensors): checked against the base
    (:func:`read_compatible`), its tensor file's size checked, its method and task configs validated, its task built
    and bound to ``template``.
    :class:`AdapterNameError` for a name that leaves ``folder``, :class:`AdapterNotFound` for no such folder,
    :class:`AdapterRefused` for a folder this base or this adaptune cannot serve."""
    path = adapter_path(folder, name)
    if not path.is_dir():
        raise AdapterNotFound(f"no adapter folder {name!r} in the adapters folder")
    config = read_compatible(path, base_fingerprint)
    weights, size = path / config["weights"]["file"], config["weights"]["bytes"]
    found = weights.stat().st_size if weights.is_file() else None
    if found != size:  # cheap (no read); the SHA-256 is checked when the weights load
        state = "missing" if found is None else f"truncated or corrupt: {found} bytes, config records {size} bytes"
        raise AdapterRefused(f"{weights} is {state}")
    try:
        run = validate_config({"method": config["method"], "task": config["task"]})
        task = build_task(run.task)
        task.bind(replace(template, pooling=config["pooling"]))
        task.load_learned_state(config.get("task_state", {}))
    except (ConfigError, KeyError, TypeError, ValueError) as err:
        raise AdapterRefused(f"{path / CONFIG_FILE} cannot be used by this adaptune: {err}") from None
    return Listing(name, path, config, task, list(config["labels"]))


def build_entry(name: str, path: Path, template: Backbone, base_fingerprint: str | Callable[[str], str]) -> Entry:
    """Load adapter ``name`` from ``path`` onto a structural copy of ``template`` (see the module docstring)."""
    read_compatible(path, base_fingerprint)
    try:
        adapter = load_adapter(path)
        model = _build_model(adapter, template)
    except (AdapterFileError, ConfigError, KeyError, ValueError) as err:
        raise AdapterRefused(str(err)) from None
    model.eval()
    entry = Entry(name, path, adapter.config, model.task, model.head, list(model.labels), model)
    parts = per_row_parts(model)
    if parts is not None:
        entry.parts = parts
        entry.model = None  # drop the private module tree: the shared layers hold what it added
    return entry


def per_row_parts(model: AdaptedModel) -> list[PerRowPart] | None:
    """What the shared base applies per row for ``model`` (:class:`~adaptune.methods.base.PerRowBatched`), or
    None when it runs on its own model: a method without a per-row form (or one that changes the inputs), or a
    task that generates (generation runs per adapter) or makes several batch rows of one example
    (:attr:`~adaptune.tasks.base.Task.rows_are_examples`)."""
    method = model.method
    if model.task.kind == "generate" or not model.task.rows_are_examples:
        return None
    if changes_inputs(method) or not isinstance(method, PerRowBatched):
        return None
    return method.per_row_parts(model.backbone)


def _build_model(adapter: AdapterFile, template: Backbone) -> AdaptedModel:
    """The adapter's :class:`AdaptedModel` on a copy of ``template`` that shares the base tensors it never writes."""
    shared = {id(t) for t in [*template.model.parameters(), *template.model.buffers()]}
    model = adapter_model(adapter, _copy(adapter, template, frozenset()), with_state=False)
    written = frozenset(id(p) for p in model.stored_parameters().values()) & shared
    if written:  # e.g. BitFit trains the base's own biases: give this adapter private copies of them
        model = adapter_model(adapter, _copy(adapter, template, written), with_state=False)
    load_adapter_state(model, adapter)
    return model.to(next(template.model.parameters()).device)  # the adapter's own tensors to the base's device


def _copy(adapter: AdapterFile, template: Backbone, private: frozenset[int]) -> Backbone:
    """A structural copy of ``template`` for ``adapter``; adapters of a generating task get their own tokenizer
    too (a fast tokenizer must not be used by two threads at once, and generation runs on its own thread)."""
    tokenizer = template.tokenizer
    if _generates(adapter):
        tokenizer = copy.deepcopy(tokenizer)
    return replace(
        template,
        model=structural_copy(template.model, private),
        tokenizer=tokenizer,
        pooling=adapter.config["pooling"],
    )


def _generates(adapter: AdapterFile) -> bool:
    """Whether the adapter's task is of kind ``generate`` (read from the registered task class)."""
    factory = task_registration(str(adapter.config["task"]["name"])).factory
    return getattr(factory, "kind", None) == "generate"
