"""Export an encoder classifier adapter (seq_cls, token_cls) as one ONNX graph, checked with onnxruntime.

``export_onnx(adapter_dir, out_dir)`` (the CLI's ``adaptune export ADAPTER OUT --format onnx``) loads the adapter
onto its base model, folds a mergeable method into the weights (lora/dora, ia3, bitfit, head:
:class:`~adaptune.methods.base.Mergeable`) or keeps the method's modules in the graph as they are (bottleneck,
and any other method that adds modules without changing the inputs), and writes::

    out/model.onnx          base + method + head: input_ids, attention_mask (and token_type_ids when the tokenizer
                            gives them), each (batch, sequence) int64 -> logits, (batch, labels) for a sequence
                            task (the adapter's pooling, mean/cls/last/max, inside the graph), (batch, sequence,
                            labels) for a token task; batch and sequence are dynamic axes
    out/tokenizer.json ...  the tokenizer
    out/onnx_config.json    task, labels, max length, pooling, input names, opset, padding, how it was checked

Before anything is written the graph is run with onnxruntime (CPUExecutionProvider) on a few inputs of different
lengths, one at a time and as one padded batch, and compared with the logits of adaptune's
:class:`~adaptune.inference.Predictor` on the unmerged adapter; a maximum absolute difference above ``tolerance``
(1e-4) is an :class:`OnnxCheckError` and leaves no output folder. The difference is recorded under ``check``.

The graph is traced with torch's TorchScript exporter (``torch.onnx.export(..., dynamo=False)``): it needs only
torch, exports a small encoder in about a second, and the onnxruntime check at several lengths and batch sizes
covers what a trace could have fixed to the example's shapes. The default torch.export-based exporter gives the
same graph to float rounding but needs onnxscript and onnx-ir besides and is several times slower.

Refused with a one-line :class:`~adaptune.errors.ConfigError`: methods that change the inputs (prompt and prefix
tuning put virtual tokens or key/value prefixes in front), generative tasks (causal_lm) and decoder base models.

Running the export with onnxruntime and tokenizers alone (sequence classification)::

    import json, numpy as np, onnxruntime as ort
    from tokenizers import Tokenizer

    info = json.load(open(f"{out}/onnx_config.json"))
    tokenizer = Tokenizer.from_file(f"{out}/tokenizer.json")
    tokenizer.enable_truncation(info["max_length"])
    tokenizer.enable_padding(pad_id=info["tokenizer"]["pad_token_id"], pad_token=info["tokenizer"]["pad_token"])
    enc = tokenizer.encode_batch(["where is my parcel?", "I want a refund"])
    rows = {"input_ids": [e.ids for e in enc], "attention_mask": [e.attention_mask for e in enc],
            "token_type_ids": [e.type_ids for e in enc]}
    session = ort.InferenceSession(f"{out}/model.onnx", providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {k: np.array(rows[k], dtype=np.int64) for k in info["inputs"]})[0]
    print([info["labels"][i] for i in logits.argmax(-1)])   # softmax(logits) gives adaptune's scores

For a token task the logits are ``(batch, sequence, labels)``: encode the words with ``is_pretokenized=True`` and
read each word's tag at its first sub-token (``enc.word_ids``), as adaptune does.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from adaptune import __version__
from adaptune.errors import AdaptuneError, ConfigError, DataError
from adaptune.export import merge_and_unload
from adaptune.extras import as_missing_extra
from adaptune.inference import Predictor, model_from_adapter
from adaptune.io import atomic_write_json, load_adapter
from adaptune.methods.base import Mergeable, changes_inputs
from adaptune.model import BACKBONE_INPUTS, AdaptedModel
from adaptune.peft_interop.common import check_out, write_folder
from adaptune.registry import method_names, method_registration, methods_with, task_names, task_registration

ONNX_FILE = "model.onnx"
ONNX_CONFIG = "onnx_config.json"
OPSET = 17
TOLERANCE = 1e-4
#: The words of the check's inputs (:func:`probe_inputs`).
PROBE_TEXT = "where is my parcel , it was due on monday and i would like a refund please"


class OnnxCheckError(AdaptuneError):
    """The exported graph's logits differ from adaptune's by more than the tolerance (nothing was written)."""


@dataclass
class OnnxExport:
    """Where the export went, whether the method was merged into the weights, and the check's largest difference."""

    path: Path
    merged: bool
    max_abs_diff: float
    check: dict[str, Any]


def export_onnx(
    adapter_dir: str | Path,
    out_dir: str | Path,
    *,
    base: str | None = None,
    overwrite: bool = False,
    tolerance: float = TOLERANCE,
    check_inputs: Sequence[str | dict[str, Any]] | None = None,
) -> OnnxExport:
    """Write ``model.onnx``, the tokenizer and ``onnx_config.json`` to ``out_dir`` (see the module docstring).

    ``check_inputs``: inputs as ``Predictor.predict`` takes them for the onnxruntime check (default: four texts
    of different lengths, the last cut at the adapter's max length). The folder is written beside ``out_dir``
    and renamed into place; an existing non-empty ``out_dir`` is an error unless ``overwrite``.
    """
    onnx, ort = _runtime()
    out = check_out(out_dir, overwrite)
    adapter = load_adapter(adapter_dir)
    model = model_from_adapter(adapter, base=base).eval()
    check_exportable(model)
    model.padding_free = False
    predictor = Predictor(model, adapter.config, batch_size=1, name=str(adapter.path))
    items = list(check_inputs) if check_inputs is not None else probe_inputs(predictor)
    reference = [t.numpy() for t in predictor.logits(items)]  # each input alone, the method unmerged
    batch = predictor.task.collate(
        predictor.encode(predictor.examples(items)), predictor.pad_id, predictor.tokenizer.padding_side
    )
    names = [name for name in BACKBONE_INPUTS if name in batch]
    merged = isinstance(model.method, Mergeable)
    if merged:
        merge_and_unload(model)
    check: dict[str, Any] = {}

    def write(staging: Path) -> None:
        per_token = reference[0].ndim == 2
        trace_to_onnx(model, {n: batch[n] for n in names}, staging / ONNX_FILE, per_token=per_token)
        onnx.checker.check_model(str(staging / ONNX_FILE))
        check.update(check_graph(ort, staging / ONNX_FILE, {n: batch[n].numpy() for n in names}, reference))
        check["tolerance"] = tolerance
        if not check["max_abs_diff"] <= tolerance:
            raise OnnxCheckError(
                f"the ONNX graph's logits differ from adaptune's by {check['max_abs_diff']:.3g} (max abs) on "
                f"{len(items)} inputs, above the tolerance {tolerance:g}; nothing was written to {out}"
            )
        predictor.tokenizer.save_pretrained(staging)
        atomic_write_json(staging / ONNX_CONFIG, onnx_config(predictor, names, merged=merged, check=check))

    write_folder(out, write)  # staged beside out and renamed into place: never a half-written export
    return OnnxExport(out, merged, check["max_abs_diff"], check)


def _runtime() -> tuple[ModuleType, ModuleType]:
    """onnx and onnxruntime (the ``onnx`` extra), or a :class:`~adaptune.extras.MissingExtraError` naming it."""
    try:
        import onnx
        import onnxruntime
    except ImportError as err:
        missing = as_missing_extra(err, "ONNX export (adaptune export --format onnx)")
        if missing is None:
            raise
        raise missing from None
    return onnx, onnxruntime


def check_exportable(model: AdaptedModel) -> None:
    """Refuse, in one line, what one ONNX graph of ``input_ids``/``attention_mask`` -> ``logits`` cannot hold."""
    method_name = getattr(model.method.config, "name", type(model.method).__name__)
    if changes_inputs(model.method):
        takes_inputs = [
            name for name in method_names() if not getattr(method_registration(name).factory, "changes_inputs", False)
        ]
        raise ConfigError(
            f"--format onnx: method '{method_name}' changes the model's inputs (virtual tokens or key/value "
            f"prefixes in front), which the exported graph does not take; supported methods: "
            f"{', '.join(takes_inputs)} (merged into the weights: {', '.join(methods_with(Mergeable))})"
        )
    task_name = getattr(model.task.config, "name", type(model.task).__name__)
    exported = ("classify", "tag")
    classifiers = [name for name in task_names() if getattr(task_registration(name).factory, "kind", "") in exported]
    if model.task.kind not in exported:
        generates = model.task.kind == "generate"
        why = "generates text" if generates else "needs more than input ids (entity markers, passage windows)"
        advice = "use --format peft" if generates else "serve the adapter with adaptune serve"
        raise ConfigError(
            f"--format onnx: task '{task_name}' {why}, and the export is one graph from input ids to logits; "
            f"supported tasks: {', '.join(classifiers)} (for '{task_name}' {advice})"
        )
    if model.info.is_decoder:
        raise ConfigError(
            f"--format onnx: the base model is a decoder ({model.info.model_type}); the export supports encoder "
            f"base models (BERT, MiniLM, XLM-R, e5 ...) with the tasks {', '.join(classifiers)}"
        )


def probe_inputs(predictor: Predictor) -> list[str | dict[str, Any]]:
    """Four texts of different lengths: 1, 6 and 17 words, and one longer than the max length (truncated); as
    text pairs when the adapter was trained on pairs (its task refuses a single text)."""
    words = PROBE_TEXT.split()
    long_words = (words * (predictor.max_length // len(words) + 2))[: predictor.max_length + 8]
    texts = [" ".join(chosen) for chosen in (words[:1], words[:6], words, long_words)]
    try:
        predictor.examples(texts[:1])
    except DataError:
        return [{"text": text, "text_pair": " ".join(words[:4])} for text in texts]
    return list(texts)


class LogitsGraph(nn.Module):
    """The adapted model as a function of positional tensors ``(B, T)`` named ``names`` -> logits."""

    def __init__(self, model: AdaptedModel, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = list(names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(dict(zip(self.names, inputs, strict=True)))  # type: ignore[no-any-return]


def trace_to_onnx(model: AdaptedModel, example: dict[str, torch.Tensor], path: Path, *, per_token: bool) -> None:
    """Trace ``model`` on ``example`` (a padded batch of different lengths, so the mask path is traced) into
    ``path`` with dynamic batch and sequence axes. TorchScript exporter (``dynamo=False``): see the module
    docstring; its deprecation and tracer warnings are silenced, the onnxruntime check tests what they warn of."""
    names = list(example)
    axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "sequence"} for name in names}
    axes["logits"] = {0: "batch", 1: "sequence"} if per_token else {0: "batch"}
    graph = LogitsGraph(model, names).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            tuple(example[name] for name in names),
            str(path),
            dynamo=False,
            input_names=names,
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
        )


def check_graph(
    ort: ModuleType, path: Path, batch: dict[str, np.ndarray], reference: Sequence[np.ndarray]
) -> dict[str, Any]:
    """Run ``path`` with onnxruntime on each row of ``batch`` alone (unpadded) and on the whole padded batch;
    the largest absolute difference from ``reference`` (per input: ``(labels,)`` or ``(tokens, labels)``)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    mask = batch["attention_mask"].astype(bool)
    worst = 0.0
    runs = [[row] for row in range(len(reference))] + [list(range(len(reference)))]
    for rows in runs:
        columns = mask[rows].any(0)  # drop the columns that are padding in every row of this run
        feed = {name: array[rows][:, columns] for name, array in batch.items()}
        logits = session.run(["logits"], feed)[0]
        for got, row in zip(logits, rows, strict=True):
            got = got[mask[row, columns]] if got.ndim == 2 else got
            diff = float(np.abs(got.astype(np.float64) - reference[row]).max())
            worst = max(worst, diff) if np.isfinite(diff) else float("inf")
    return {
        "runtime": f"onnxruntime {ort.__version__}",
        "provider": "CPUExecutionProvider",
        "reference": "adaptune Predictor.logits on the adapter as trained (unmerged), each input alone",
        "inputs": len(reference),
        "lengths": [int(n) for n in mask.sum(1)],
        "batch_sizes": sorted({len(rows) for rows in runs}),
        "max_abs_diff": worst,
    }


def onnx_config(predictor: Predictor, names: Sequence[str], *, merged: bool, check: dict[str, Any]) -> dict[str, Any]:
    """What a user needs to run ``model.onnx`` with onnxruntime and tokenizers alone."""
    desc, tokenizer, head = predictor.description, predictor.tokenizer, predictor.model.head
    per_token = not hasattr(head, "pooling")
    return {
        "format": "adaptune-onnx",
        "format_version": 1,
        "adaptune_version": __version__,
        "file": ONNX_FILE,
        "task": desc["task"],
        "task_state": desc.get("task_state", {}),
        "labels": list(predictor.labels),
        "max_length": predictor.max_length,
        "pooling": None if per_token else desc["pooling"],
        "inputs": list(names),
        "outputs": {"logits": ["batch", "sequence", "labels"] if per_token else ["batch", "labels"]},
        "tokenizer": {
            "file": "tokenizer.json" if getattr(tokenizer, "is_fast", False) else None,
            "pad_token": tokenizer.pad_token,
            "pad_token_id": int(tokenizer.pad_token_id),
            "padding_side": tokenizer.padding_side,
        },
        "opset": OPSET,
        "exporter": f"torch.onnx.export (TorchScript, dynamo=False), torch {torch.__version__.split('+')[0]}",
        "method": desc["method"],
        "merged": merged,
        "base_model": desc["base_model"],
        "check": check,
    }
