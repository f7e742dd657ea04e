"""The adapter file: a folder with ``adapter.safetensors`` and ``adapter_config.json``.

``adapter_config.json`` describes the adapter completely: format version, method and its config, task and its
config, label names, the base model (id, type and a fingerprint of its weights), pooling, max length, the data
reading options, and the size and SHA-256 of the tensor file, so a truncated or altered file is refused on load.
Both files are written atomically (temporary file, fsync, rename); the config is written last, so a crash leaves
either the previous adapter or none, never a half-written one that loads. safetensors only, never pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from adaptune import __version__
from adaptune.errors import AdapterFileError

if TYPE_CHECKING:
    from adaptune.model import AdaptedModel

FORMAT_NAME = "adaptune-adapter"
FORMAT_VERSION = 1
WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter_config.json"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; adapters and reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Pretty JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass
class AdapterFile:
    """A loaded adapter: its description and its tensors."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def labels(self) -> list[str]:
        return list(self.config["labels"])


def save_adapter(
    folder: str | Path, tensors: dict[str, torch.Tensor], description: AdapterDescription | dict[str, Any]
) -> Path:
    """Write an adapter folder; ``description`` (:func:`describe`) becomes ``adapter_config.json`` (format fields
    are added)."""
    folder = Path(folder)
    if isinstance(description, AdapterDescription):
        description = description.as_json()
    blob = save_safetensors_bytes(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        metadata={"format": "pt"},
    )
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        **description,
        "weights": {
            "file": WEIGHTS_FILE,
            "bytes": len(blob),
            "sha256": hashlib.sha256(blob).hexdigest(),
            "tensors": len(tensors),
        },
    }
    atomic_write_bytes(folder / WEIGHTS_FILE, blob)
    atomic_write_json(folder / CONFIG_FILE, config)
    return folder


def read_adapter_config(folder: str | Path) -> dict[str, Any]:
    """Read and check ``adapter_config.json`` (format name and version) without loading tensors."""
    folder = Path(folder)
    config_path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise AdapterFileError(f"adapter folder {folder} does not exist")
    if not config_path.is_file():
        raise AdapterFileError(f"{config_path} is missing: {folder} is not an adaptune adapter (or was not finished)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterFileError(f"{config_path} is corrupt: {err}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise AdapterFileError(f"{config_path} is not an adaptune adapter config (format field missing)")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise AdapterFileError(
            f"{config_path} has format version {version!r}; this adaptune reads versions up to {FORMAT_VERSION}: "
            "upgrade adaptune"
        )
    _check_fields(config, config_path)
    return config


#: Fields a loader relies on, with their JSON types (``base_model`` and ``weights`` are checked one level down).
_REQUIRED: dict[str, type] = {
    "method": dict,
    "task": dict,
    "labels": list,
    "base_model": dict,
    "pooling": str,
    "max_length": int,
    "weights": dict,
    "base_model.name_or_path": str,
    "base_model.fingerprint": str,
    "weights.file": str,
    "weights.bytes": int,
    "weights.sha256": str,
}
_JSON_TYPES = {dict: "JSON object", list: "list", str: "string", int: "integer"}


def _check_fields(config: dict[str, Any], config_path: Path) -> None:
    """Refuse a config that lacks a field the loader needs, naming the field."""
    for key, kind in _REQUIRED.items():
        parent, _, name = key.rpartition(".")
        node = config[parent] if parent else config
        value = node.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise AdapterFileError(f"{config_path}: field '{key}' is missing or not a {_JSON_TYPES[kind]}")


def load_adapter(folder: str | Path) -> AdapterFile:
    """Load an adapter folder, verifying the tensor file's size and SHA-256 against the config."""
    folder = Path(folder)
    config = read_adapter_config(folder)
    weights_path = folder / config["weights"]["file"]
    if not weights_path.is_file():
        raise AdapterFileError(f"{weights_path} is missing")
    blob = weights_path.read_bytes()
    expected = config["weights"]
    if len(blob) != expected["bytes"] or hashlib.sha256(blob).hexdigest() != expected["sha256"]:
        raise AdapterFileError(
            f"{weights_path} is corrupt or truncated: {len(blob)} bytes, config records {expected['bytes']} bytes "
            "and a different SHA-256"
        )
    try:
        tensors = load_safetensors_bytes(blob)
    except SafetensorError as err:
        raise AdapterFileError(f"{weights_path} is not a valid safetensors file: {err}") from None
    return AdapterFile(folder, config, tensors)


class BaseModelRecord(BaseModel):
    """The base model an adapter was trained on: id or folder, GGUF file, type, width and weight fingerprint."""

    model_config = ConfigDict(extra="allow")

    name_or_path: str
    gguf_file: str | None = None
    model_type: str | None = None
    hidden_size: int | None = None
    fingerprint: str


class ParamCounts(BaseModel):
    """Parameter counts recorded with an adapter: trained (method + head), method, head, and the frozen base."""

    model_config = ConfigDict(extra="allow")

    trainable: int
    method: int
    head: int
    base: int


class AdapterDescription(BaseModel):
    """What ``adapter_config.json`` says about an adapter, besides the format and weights fields that
    :func:`save_adapter` adds: written by training, import and stacking through :func:`describe`, read by the
    predictor and the server, which check the base with :func:`check_base`. Extra fields are kept (an import
    records where it came from)."""

    model_config = ConfigDict(extra="allow")

    adaptune_version: str
    method: dict[str, Any]
    task: dict[str, Any]
    task_state: dict[str, Any] = Field(default_factory=dict)
    labels: list[str]
    base_model: BaseModelRecord
    pooling: str
    max_length: int
    data: dict[str, Any] = Field(default_factory=dict)
    params: ParamCounts
    metrics: dict[str, Any] = Field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The description as the JSON object the adapter file stores."""
        return self.model_dump(mode="json")


def describe(
    model: AdaptedModel,
    *,
    name_or_path: str,
    base_fingerprint: str,
    base_params: int,
    max_length: int,
    data: dict[str, Any],
    gguf_file: str | None = None,
    metrics: dict[str, Any] | None = None,
    **extra: Any,
) -> AdapterDescription:
    """The description of ``model`` (an :class:`~adaptune.model.AdaptedModel`) on the base ``name_or_path``:
    the method as it records itself (``config_for_file``: a stack names its members' sources), the task config and
    learned state, labels, base, pooling, ``max_length``, the data reading options and the parameter counts."""
    info = model.info
    return AdapterDescription(
        adaptune_version=__version__,
        method=model.method.config_for_file(),
        task=model.task.config.model_dump(mode="json"),
        task_state=model.task.learned_state(),
        labels=list(model.labels),
        base_model=BaseModelRecord(
            name_or_path=name_or_path,
            gguf_file=gguf_file,
            model_type=info.model_type,
            hidden_size=info.hidden_size,
            fingerprint=base_fingerprint,
        ),
        pooling=info.pooling,
        max_length=max_length,
        data=data,
        params=ParamCounts(
            trainable=sum(p.numel() for p in model.trainable()),
            method=sum(p.numel() for p in model.adapter_parameters().values()),
            head=sum(p.numel() for p in model.head.parameters()),
            base=base_params,
        ),
        metrics=metrics or {},
        **extra,
    )


class BaseMismatch(AdapterFileError):
    """An adapter recorded for other base weights than the model it is put on."""


def check_base(
    description: dict[str, Any] | AdapterDescription,
    found: str,
    *,
    where: str,
    this: str = "this model",
    advice: str = "load it onto the base it was trained on",
) -> None:
    """Raise :class:`BaseMismatch` unless the adapter described by ``description`` was trained on base weights
    with fingerprint ``found`` (:func:`adaptune.backbone.fingerprint`). ``where`` names the adapter, ``this`` the
    model it is put on, ``advice`` what to do instead."""
    base = description.base_model if isinstance(description, AdapterDescription) else None
    recorded = base.fingerprint if base else description["base_model"]["fingerprint"]  # type: ignore[index]
    name = base.name_or_path if base else description["base_model"]["name_or_path"]  # type: ignore[index]
    if recorded != found:
        raise BaseMismatch(
            f"{where} was trained on base model '{name}' (fingerprint {recorded}), not on this model: {this} has "
            f"different weights (fingerprint {found}); {advice}"
        )
