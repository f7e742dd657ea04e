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
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from adaptune.errors import AdapterFileError

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


def save_adapter(folder: str | Path, tensors: dict[str, torch.Tensor], description: dict[str, Any]) -> Path:
    """Write an adapter folder; ``description`` becomes ``adapter_config.json`` (format fields are added)."""
    folder = Path(folder)
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
