"""The adapter file: a folder with ``adapter.safetensors`` and ``adapter_config.json``.

``adapter_config.json`` describes the adapter completely: format version, method and its config, task and its
config, label names, the base model (id, type and a fingerprint of its weights), pooling, max length, the data
reading options, and the size and SHA-256 of the tensor file, so a truncated or altered file is refused on load.
The tensor file's header in turn holds the description fields that change predictions (:data:`SEALED_FIELDS`:
labels, method and task configs, pooling, max length, reading options), so an edited ``adapter_config.json`` is
refused on load too, naming the fields that differ; :func:`reseal` re-signs an intended edit
(``adaptune info ADAPTER --reseal``).
Both files are written atomically (temporary file, fsync, rename); the config is written last, so a crash leaves
either the previous adapter or none, never a half-written one that loads. safetensors only, never pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from adaptune import __version__
from adaptune.errors import AdapterFileError, OutputError, os_error_message

if TYPE_CHECKING:
    from adaptune.model import AdaptedModel

#: Description fields that change what an adapter predicts: sealed into the tensor file's header at save (as
#: canonical JSON under :data:`SEAL_KEY`) and compared on load. The base model, metrics and parameter counts are
#: not sealed (a different base is caught by its fingerprint; the others are records).
SEALED_FIELDS = ("method", "task", "task_state", "labels", "pooling", "max_length", "data")
SEAL_KEY = "adaptune.sealed_description"
FORMAT_NAME = "adaptune-adapter"
FORMAT_VERSION = 1
WEIGHTS_FILE = "adapter.safetensors"
CONFIG_FILE = "adapter_config.json"


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary file beside ``path`` for the ``with`` block to write; afterwards it is fsynced, made readable
    (0644) and renamed onto ``path``, so readers see the old file or the new one, never a part. For writers that
    need a path of their own (the GGUF writer); bytes in memory go through :func:`atomic_write_bytes`.

    An OS error (disk full, read-only folder, a file where a folder should be) is an :class:`OutputError` naming
    ``path``, and leaves no temporary file behind."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise OutputError(os_error_message(err, "write", path)) from None
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; adapters and reports are meant to be shared
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OutputError(os_error_message(err, "write", path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_file`)."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


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
        metadata={"format": "pt", SEAL_KEY: _canonical(sealed_part(description))},
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
    edited = edited_fields(config, header_metadata(blob))
    if edited:
        raise AdapterFileError(
            f"{folder / CONFIG_FILE} was edited after the adapter was saved: {'; '.join(edited)}. The tensors "
            f"were trained with the saved values, so the adapter is refused. If the edit is intended, re-sign it "
            f"with: adaptune info {folder} --reseal"
        )
    return AdapterFile(folder, config, tensors)


def sealed_part(description: dict[str, Any]) -> dict[str, Any]:
    """The :data:`SEALED_FIELDS` of a description (missing ones as None)."""
    return {key: description.get(key) for key in SEALED_FIELDS}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def header_metadata(blob: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's JSON header (8-byte little-endian length, then the header)."""
    try:
        size = int.from_bytes(blob[:8], "little")
        header = json.loads(blob[8 : 8 + size])
    except (ValueError, UnicodeDecodeError):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def edited_fields(config: dict[str, Any], metadata: dict[str, str]) -> list[str]:
    """For each sealed field whose value in ``config`` differs from the tensor file's seal, ``"field 'x': saved
    A, now B"``; empty when they agree or the file has no seal (saved before sealing existed)."""
    raw = metadata.get(SEAL_KEY)
    if raw is None:
        return []
    try:
        sealed = json.loads(raw)
    except json.JSONDecodeError:
        return [f"the seal in {WEIGHTS_FILE} is unreadable"]
    current = json.loads(_canonical(sealed_part(config)))
    return [
        f"field '{key}': saved {_short(sealed.get(key))}, now {_short(current.get(key))}"
        for key in SEALED_FIELDS
        if _canonical(sealed.get(key)) != _canonical(current.get(key))
    ]


def _short(value: Any, limit: int = 120) -> str:
    text = _canonical(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def reseal(folder: str | Path) -> list[str]:
    """Re-sign an adapter whose ``adapter_config.json`` was edited on purpose: the tensor file is rewritten with
    the same tensors and the description's current sealed fields, and the config with the new size and SHA-256
    (both atomically). The tensor file must still be intact. Returns what was re-signed (as
    :func:`edited_fields` words it); empty when nothing differed (nothing is written then, unless the file had
    no seal yet)."""
    folder = Path(folder)
    config = read_adapter_config(folder)
    blob = (folder / config["weights"]["file"]).read_bytes()
    if hashlib.sha256(blob).hexdigest() != config["weights"]["sha256"]:
        raise AdapterFileError(f"{folder / config['weights']['file']} is corrupt or truncated; it cannot be re-signed")
    metadata = header_metadata(blob)
    changed = edited_fields(config, metadata)
    if not changed and SEAL_KEY in metadata:
        return []
    description = {k: v for k, v in config.items() if k not in ("format", "format_version", "weights")}
    save_adapter(folder, load_safetensors_bytes(blob), description)
    return changed or ["no seal yet: sealed now"]


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
    found: str | Callable[[str], str],
    *,
    where: str,
    this: str = "this model",
    advice: str = "load it onto the base it was trained on",
) -> None:
    """Raise :class:`BaseMismatch` unless the adapter described by ``description`` was trained on base weights
    with fingerprint ``found`` (:func:`adaptune.backbone.fingerprint`), or with the fingerprint that ``found``
    gives for the recorded one (:class:`adaptune.backbone.BaseFingerprint`: the scheme of an older record).
    ``where`` names the adapter, ``this`` the model it is put on, ``advice`` what to do instead."""
    base = description.base_model if isinstance(description, AdapterDescription) else None
    recorded = base.fingerprint if base else description["base_model"]["fingerprint"]  # type: ignore[index]
    name = base.name_or_path if base else description["base_model"]["name_or_path"]  # type: ignore[index]
    found = found if isinstance(found, str) else found(recorded)
    if recorded != found:
        raise BaseMismatch(
            f"{where} was trained on base model '{name}' (fingerprint {recorded}), not on this model: {this} has "
            f"different weights (fingerprint {found}); {advice}"
        )
