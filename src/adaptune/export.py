"""Export a trained adapter as a plain transformers model folder, with the method merged into the weights.

``merge_to_hf(adapter_dir, out_dir)`` (the CLI's ``adaptune merge ADAPTER OUT``) loads the adapter onto its base
model, folds the method into the base weights (LoRA/DoRA and IA3 are merged; BitFit's biases and a head-only
adapter need no folding) and writes::

    out/config.json, out/model.safetensors   the merged backbone: AutoModel.from_pretrained(out) loads it
    out/tokenizer.json, ...                  the tokenizer
    out/head.safetensors                     the task head's tensors (classifier.weight (labels, d), .bias)
    out/head_config.json                     task, labels, pooling, max length and how to apply the head

Methods that cannot be folded into the weights (bottleneck adapters are non-linear) are refused with an error.

Applying the head with transformers and safetensors alone (sequence classification)::

    import json, torch
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    model, tokenizer = AutoModel.from_pretrained(out).eval(), AutoTokenizer.from_pretrained(out)
    head, info = load_file(f"{out}/head.safetensors"), json.load(open(f"{out}/head_config.json"))
    enc = tokenizer(texts, padding=True, truncation=True, max_length=info["max_length"], return_tensors="pt")
    hidden = model(**enc).last_hidden_state                                    # (B, T, d)
    mask = enc["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)       # info["pooling"] == "mean"; "cls": hidden[:, 0]
    logits = pooled @ head["classifier.weight"].T + head["classifier.bias"]   # (B, len(info["labels"]))

For token classification (``info["head"]["input"] == "tokens"``) the classifier applies to ``hidden`` directly,
giving ``(B, T, labels)``. Pooling ``last`` takes the last real token, ``max`` the masked element-wise maximum.
The base model's own pooler layer (BERT's ``pooler``), which adaptune never uses, is not exported.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from adaptune.errors import ConfigError
from adaptune.inference import model_from_adapter
from adaptune.io import atomic_write_json, load_adapter
from adaptune.methods.base import Mergeable
from adaptune.model import AdaptedModel
from adaptune.registry import methods_with

HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head_config.json"


def merge_to_hf(
    adapter_dir: str | Path, out_dir: str | Path, *, base: str | None = None, overwrite: bool = False
) -> Path:
    """Write the merged backbone, its tokenizer and the head to ``out_dir`` (see the module docstring).

    ``base`` loads the adapter onto another copy of its base model (same weights). The folder is written beside
    ``out_dir`` and renamed into place, so a crash never leaves a half-written export; an existing non-empty
    ``out_dir`` is an error unless ``overwrite``.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"output folder {out} exists and is not empty; pass overwrite=True (--overwrite)")
    adapter = load_adapter(adapter_dir)
    model = model_from_adapter(adapter, base=base).eval()
    merge_and_unload(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.backbone.save_pretrained(staging)
        model.info.tokenizer.save_pretrained(staging)
        save_file({k: v.detach().contiguous() for k, v in model.head.state_dict().items()}, staging / HEAD_WEIGHTS)
        atomic_write_json(staging / HEAD_CONFIG, head_config(model, adapter.config))
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def merge_and_unload(model: AdaptedModel) -> None:
    """Fold the model's method into its backbone and remove the method's modules; refuse methods that can't."""
    method = model.method
    if not isinstance(method, Mergeable):
        name = getattr(method.config, "name", type(method).__name__)
        mergeable = ", ".join(methods_with(Mergeable))
        raise ConfigError(
            f"method '{name}' cannot be merged into the base weights (mergeable: {mergeable}); "
            "use the adapter folder with adaptune (Predictor.load) instead"
        )
    method.merge_and_unload(model.backbone)


def head_config(model: AdaptedModel, description: dict[str, Any]) -> dict[str, Any]:
    """What a user needs to apply ``head.safetensors``: labels, pooling, max length and the head's input."""
    head: nn.Module = model.head
    pooled = hasattr(head, "pooling")
    return {
        "task": description["task"],
        "task_state": description.get("task_state", {}),
        "labels": list(model.labels),
        "pooling": description["pooling"] if pooled else None,
        "max_length": description["max_length"],
        "head": {
            "class": type(head).__name__,
            "input": "pooled" if pooled else "tokens",
            "tensors": {k: list(v.shape) for k, v in head.state_dict().items()},
            "formula": "logits = input @ classifier.weight.T + classifier.bias",
        },
        "merged_from": {
            "method": description["method"],
            "base_model": description["base_model"],
        },
    }
