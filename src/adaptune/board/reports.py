"""What a run folder shows on the board: its evaluation reports, its worst errors, and its downloads.

Everything is read from the files a run writes (README "What a run writes"): ``results.json`` (the splits, each
with its report files), ``eval_<split>.json`` (the per-class or per-type table, the confusion matrix),
``predictions_<split>.jsonl`` (one prediction per example, in the data file's order) and the PNG plots. The
worst errors pair each prediction with its gold labels, read again from the split's file by the task's own reader;
when the predictions file is missing the adapter predicts them (:class:`~adaptune.inference.Predictor`).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adaptune.config import RunConfig, load_config
from adaptune.errors import AdaptuneError
from adaptune.registry import build_task

#: The board-written YAML of a run (what it was started with).
BOARD_CONFIG = "board.yaml"
#: Files of a run folder the page may show (plots).
_SHOWN = re.compile(r"^(confusion_[\w-]+|training_curves)\.png$")


class NotReady(AdaptuneError):
    """Something a run has not written (yet): a report before evaluation, an adapter before the end (HTTP 404)."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def report(folder: Path) -> dict[str, Any]:
    """``results.json`` with each split's full report (``eval_<split>.json``) and the plots that exist."""
    results = _read_json(folder / "results.json")
    if not isinstance(results, dict):
        raise NotReady(f"{folder.name} has no results.json yet: its report is written when training ends")
    splits = {}
    for split, info in results.get("splits", {}).items():
        files = info.get("files", {})
        evaluation = _read_json(folder / files.get("json", f"eval_{split}.json")) or {}
        splits[split] = {
            "headline": info.get("headline", {}),
            "report": evaluation.get("report", {}),
            "confusion_png": files.get("confusion_png"),
        }
    plots = sorted(path.name for path in folder.glob("*.png") if _SHOWN.match(path.name))
    summary = {key: value for key, value in results.items() if key != "splits"}
    return {"summary": summary, "splits": splits, "plots": plots}


def shown_file(folder: Path, name: str) -> Path:
    """A plot of the run folder by name (nothing else: not the adapter, not the log)."""
    path = folder / name
    if not _SHOWN.match(name) or not path.is_file():
        raise NotReady(f"{folder.name} has no plot {name!r}")
    return path


def run_config(folder: Path) -> RunConfig:
    """The config a run trained with: its resolved ``config.yaml`` once written, else the board's YAML."""
    resolved = folder / "config.yaml"
    return load_config(resolved if resolved.is_file() else folder / BOARD_CONFIG)


def reproduce_yaml(folder: Path) -> Path:
    """The YAML that reproduces the run: the resolved config (every default filled in) or the one it started with."""
    resolved = folder / "config.yaml"
    return resolved if resolved.is_file() else folder / BOARD_CONFIG


def adapter_zip(folder: Path) -> bytes:
    """The run's adapter folder as a zip (entries under ``adapter/``)."""
    adapter = folder / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise NotReady(f"{folder.name} has no adapter yet: it is saved when training ends")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(adapter.rglob("*")):
            if path.is_file():
                archive.write(path, Path("adapter") / path.relative_to(adapter))
    return buffer.getvalue()


def _predicted(prediction: dict[str, Any]) -> list[str]:
    """The label names of a prediction, as the tasks' outputs give them (one label, several, a relation)."""
    if "labels" in prediction:
        return list(prediction["labels"])
    return [str(prediction[key]) for key in ("label", "relation") if key in prediction]


def _error(example: Any, gold: Sequence[str], prediction: dict[str, Any]) -> dict[str, Any] | None:
    """One error row, or None when the prediction is right. Tag predictions count wrong tags; label predictions
    are wrong when their set differs, and rank by the confidence of the wrong answer."""
    where = getattr(example, "source", "")
    if "tags" in prediction:
        wrong = sum(g != p for g, p in zip(gold, prediction["tags"], strict=False))
        if not wrong:
            return None
        tokens = prediction.get("tokens", [])
        return {
            "where": where,
            "text": prediction.get("text", ""),
            "tokens": tokens,
            "gold": list(gold),
            "predicted": prediction["tags"],
            "wrong": wrong,
            "rank": float(wrong),
        }
    predicted = _predicted(prediction)
    if not predicted or sorted(predicted) == sorted(gold):
        return None
    return {
        "where": where,
        "text": prediction.get("text", getattr(example, "text", "")),
        "gold": list(gold),
        "predicted": predicted,
        "score": prediction.get("score"),
        "rank": float(prediction.get("score") or 0.0),
    }


def _predictions(folder: Path, split_info: dict[str, Any], examples: Sequence[Any]) -> list[dict[str, Any]]:
    """The split's predictions file, or (when there is none) the adapter's predictions now."""
    name = split_info.get("files", {}).get("predictions")
    path = folder / name if name else None
    if path is not None and path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    from adaptune.inference import Predictor

    predictor = Predictor.load(folder / "adapter")
    return predictor.task.predict(predictor, [predictor.task.without_labels(ex) for ex in examples])


def worst_errors(folder: Path, split: str, limit: int = 20) -> dict[str, Any]:
    """The ``limit`` worst errors on a split: most confidently wrong labels, or sentences with most wrong tags."""
    results = _read_json(folder / "results.json")
    if not isinstance(results, dict) or split not in results.get("splits", {}):
        raise NotReady(f"{folder.name} has no evaluation on {split!r}")
    info = results["splits"][split]
    cfg = run_config(folder)
    task = build_task(cfg.task)
    examples = task.read(info["path"], cfg.data, split=split)
    limit_eval = cfg.data.max_eval_examples
    examples = examples[:limit_eval] if limit_eval else examples
    predictions = _predictions(folder, info, examples)
    rows = []
    for example, prediction in zip(examples, predictions, strict=False):
        row = _error(example, task.gold(example), prediction)
        if row is not None:
            rows.append(row)
    rows.sort(key=lambda row: -row["rank"])
    return {"split": split, "examples": len(examples), "errors": len(rows), "rows": rows[:limit]}
