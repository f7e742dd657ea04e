"""What export and import share: file names, peft's task types, the result type, ``adaptune.json`` and writing a
folder so that a crash leaves the old one or none."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adaptune.errors import AdapterFileError, ConfigError

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PICKLE = "adapter_model.bin"
#: adaptune's description of an export (labels, pooling, what is exact), beside peft's two files.
SIDECAR = "adaptune.json"
SIDECAR_FORMAT = "adaptune-peft-export"
#: adaptune task -> peft task type, and back
TASK_TYPES = {"seq_cls": "SEQ_CLS", "token_cls": "TOKEN_CLS", "causal_lm": "CAUSAL_LM"}
TASKS_BY_TYPE = {v: k for k, v in TASK_TYPES.items()}
#: adaptune task -> the transformers auto class a peft user loads the base with
AUTO_CLASSES = {
    "seq_cls": "AutoModelForSequenceClassification",
    "token_cls": "AutoModelForTokenClassification",
    "causal_lm": "AutoModelForCausalLM",
}
#: the task whose head is the base model's own frozen LM head: nothing in ``modules_to_save``, no labels
LM_TASK = "causal_lm"
#: peft types that keep their tensors outside the base model (``prompt_embeddings``), and their head under
#: ``base_model.`` instead of ``base_model.model.``
PROMPT_LEARNING_TYPES = {"PROMPT_TUNING", "PREFIX_TUNING"}
#: why peft's outputs differ from adaptune's for prompt or prefix tuning on a decoder (adaptune numbers positions
#: from the attention mask, :mod:`adaptune.positions`)
DECODER_POSITIONS = "peft numbers positions 0..n+T-1 whatever the padding: equal outputs for unpadded inputs only"
LM_PREFIX_POSITIONS = (
    "peft numbers the text after the prefix n..n+T-1 whatever the padding unless it is given position_ids (recent "
    "peft adds n to them): equal outputs for unpadded or right-padded inputs, or with position_ids = "
    "attention_mask.cumsum(-1) - 1 (as generate() passes them)"
)


@dataclass
class InteropResult:
    """Where the folder went, whether the other side computes exactly adaptune's logits, and why not."""

    path: Path
    exact: bool
    notes: list[str] = field(default_factory=list)


def head_prefix(peft_type: str) -> str:
    """Where peft keeps ``modules_to_save`` tensors in its file."""
    return "base_model." if peft_type in PROMPT_LEARNING_TYPES else "base_model.model."


def read_sidecar(folder: str | Path) -> dict[str, Any] | None:
    """``adaptune.json`` of an adaptune export, or None for a folder peft wrote."""
    path = Path(folder) / SIDECAR
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterFileError(f"{path} is corrupt: {err}") from None
    return data if isinstance(data, dict) and data.get("format") == SIDECAR_FORMAT else None


def check_out(out_dir: str | Path, overwrite: bool) -> Path:
    """``out_dir`` as a Path; a :class:`ConfigError` when it holds something and ``overwrite`` is off."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(f"output folder {out} exists and is not empty; pass overwrite=True (--overwrite)")
    return out


def write_folder(out: Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(staging)`` on a new folder beside ``out``, then rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(staging)
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
