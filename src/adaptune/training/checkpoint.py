"""Resumable training checkpoints.

A checkpoint is a folder ``checkpoints/step-NNNNNNN`` with ``state.safetensors`` (trainable weights, the best
weights so far, the optimiser moments, torch's RNG state) and ``state.json`` (loop position, optimiser
hyper-parameters, scheduler, numpy and python RNG states, the config fingerprint, a digest of the training and
dev data as encoded (:func:`data_digest`: a resumed run refuses changed data) and the tensor file's SHA-256).
``checkpoints/latest.json`` points at the newest complete one and is replaced atomically after the folder is
written, so a crash at any moment leaves a loadable checkpoint. Older folders are removed afterwards.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from adaptune.errors import AdaptuneError
from adaptune.io import atomic_write_bytes, atomic_write_json


@dataclass
class LoopState:
    """Where the loop is: everything besides tensors that a resumed run needs."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_gain: int = 0
    stopped_early: bool = False
    #: Global batches per optimiser step (processes x accumulation); 0 in checkpoints from before it was kept.
    global_group: int = 0


class CheckpointError(AdaptuneError):
    """A checkpoint that cannot be used: corrupt, or made by a different config or other data."""


def data_digest(path: str, encoded: Sequence[Any]) -> dict[str, Any]:
    """What a checkpoint records of one split's data: its path, how many examples, and the SHA-256 of the
    examples as the model sees them (token ids, segment ids, targets), so any change that matters to training
    is caught, whatever the source (a file, a folder, a hub dataset)."""
    digest = hashlib.sha256()
    for example in encoded:
        digest.update(json.dumps([example.input_ids, example.token_type_ids, example.target]).encode())
        digest.update(b"\n")
    return {"path": path, "examples": len(encoded), "sha256": digest.hexdigest()}


def _check_data(folder: Path, saved: dict[str, Any], now: dict[str, Any]) -> None:
    for split, then in saved.items():
        current = now.get(split)
        if current is None or current["sha256"] == then["sha256"]:
            continue  # a split that is gone is a config change, caught with the config
        raise CheckpointError(
            f"data.{split} {current['path']} changed since checkpoint {folder} was written ({then['examples']} "
            f"examples then, {current['examples']} now; SHA-256 of the encoded examples {then['sha256'][:12]} "
            f"then, {current['sha256'][:12]} now): resume with the data the run started with, or start again "
            "with --overwrite"
        )


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, slots in sd["state"].items():
        for slot, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"opt.{index}.{slot}"] = value
            else:
                scalars[f"{index}.{slot}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, index, slot = key.split(".", 2)
            state.setdefault(int(index), {})[slot] = value
    for key, value in meta["scalars"].items():
        index, slot = key.split(".", 1)
        state.setdefault(int(index), {})[slot] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    root: Path,
    *,
    loop: LoopState,
    trainable: dict[str, torch.Tensor],
    best: dict[str, torch.Tensor] | None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config_fingerprint: str,
    config_flat: dict[str, Any],
    data: dict[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint for ``loop.step`` and point ``latest.json`` at it."""
    folder = root / f"step-{loop.step:07d}"
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in trainable.items()}
    if best is not None:
        tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in best.items()})
    opt_tensors, opt_meta = _optimizer_tensors(optimizer)
    tensors.update({k: v.contiguous() for k, v in opt_tensors.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    blob = save_tensors(tensors)
    np_state = np.random.get_state()
    meta = {
        "loop": asdict(loop),
        "optimizer": opt_meta,
        "scheduler": scheduler.state_dict(),
        "rng": {"python": random.getstate(), "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]},
        "config_fingerprint": config_fingerprint,
        "config": config_flat,
        "data": data or {},
        "tensors_sha256": hashlib.sha256(blob).hexdigest(),
    }
    atomic_write_bytes(folder / "state.safetensors", blob)
    atomic_write_json(folder / "state.json", meta)
    atomic_write_json(root / "latest.json", {"checkpoint": folder.name, "step": loop.step})
    for old in root.glob("step-*"):
        if old.is_dir() and old.name != folder.name:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".*.tmp"):  # half-written files of a run killed mid-write (never read by anyone)
        stale.unlink(missing_ok=True)
    return folder


@dataclass
class Restored:
    """What :func:`load_checkpoint` gives back besides the restored optimiser, scheduler and RNGs."""

    loop: LoopState
    trainable: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor] | None


def find_checkpoint(root: Path) -> Path | None:
    """The folder ``latest.json`` points at, or None when there is no checkpoint."""
    pointer = root / "latest.json"
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text(encoding="utf-8"))["checkpoint"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{pointer} is corrupt: {type(err).__name__}: {err}") from None
    if not isinstance(name, str) or not name.startswith("step-"):
        raise CheckpointError(f"{pointer} is corrupt: 'checkpoint' is {name!r}, not a step-N folder name")
    return root / name


_META_KEYS = ("loop", "optimizer", "scheduler", "rng", "config_fingerprint", "tensors_sha256")


def _read_meta(path: Path) -> dict[str, Any]:
    """Read a checkpoint's ``state.json``; a :class:`CheckpointError` naming it when unreadable or incomplete."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise CheckpointError(f"{path} cannot be read: {err.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is corrupt or truncated: {err}") from None
    missing = [key for key in _META_KEYS if key not in meta] if isinstance(meta, dict) else list(_META_KEYS)
    if missing:
        raise CheckpointError(f"{path} is corrupt: it lacks {', '.join(missing)}")
    return meta  # type: ignore[no-any-return]


def read_checkpoint(folder: Path) -> tuple[dict[str, Any], bytes]:
    """A checkpoint's ``state.json`` and its verified tensor file (a :class:`CheckpointError` naming the file
    when unreadable, incomplete or corrupt). Under several processes rank 0 reads and sends them to the others."""
    meta_path, blob_path = folder / "state.json", folder / "state.safetensors"
    meta = _read_meta(meta_path)
    try:
        blob = blob_path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{blob_path} cannot be read: {err.strerror}") from None
    if hashlib.sha256(blob).hexdigest() != meta["tensors_sha256"]:
        raise CheckpointError(f"{blob_path} is corrupt or truncated (SHA-256 differs from {meta_path})")
    return meta, blob


def load_checkpoint(
    folder: Path,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config_fingerprint: str,
    config_flat: dict[str, Any],
    data: dict[str, Any] | None = None,
    read: tuple[dict[str, Any], bytes] | None = None,
) -> Restored:
    """Verify and read a checkpoint (or use ``read``, what :func:`read_checkpoint` gave); restore optimiser,
    scheduler and RNG states in place. ``data`` (:func:`data_digest` by split) must match what the checkpoint
    recorded (checkpoints that recorded none pass)."""
    meta, blob = read if read is not None else read_checkpoint(folder)
    if meta["config_fingerprint"] != config_fingerprint:
        saved = meta.get("config", {})
        keys = sorted(k for k in set(saved) | set(config_flat) if saved.get(k) != config_flat.get(k))
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {config_flat.get(k)!r}" for k in keys[:10])
        raise CheckpointError(f"checkpoint {folder} was made with a different config ({diffs})")
    _check_data(folder, meta.get("data") or {}, data or {})
    tensors = load_tensors(blob)
    _restore_optimizer(optimizer, tensors, meta["optimizer"])
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    py = meta["rng"]["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = meta["rng"]["numpy"]
    np.random.set_state((npst[0], np.asarray(npst[1], dtype=np.uint32), *npst[2:]))
    trainable = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    best = {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")} or None
    return Restored(LoopState(**meta["loop"]), trainable, best)
