"""Records of the examples' figures in ``benchmarks/results/quality.json``, in the format of
``benchmarks/quality.py`` (whose ``upsert`` also rewrites the tables in the READMEs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_summary(run_dir: Path) -> dict[str, Any]:
    """What a training run's ``results.json`` says about its cost, for the record."""
    results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    return {
        "trainable_params": results.get("trainable_params"),
        "train_tokens_per_s": results.get("train_tokens_per_s"),
        "peak_rss_mb": results.get("peak_rss_mb"),
        "wall_s": results.get("wall_s"),
        "precision": (results.get("precision") or {}).get("chosen"),
    }


def record(**fields: Any) -> dict[str, Any]:
    """A record: task, dataset, split, model, method, metric, value, then the rest; the host; the command last."""
    from adaptune.hardware import host_record

    command = fields.pop("command")
    fields["value"] = round(float(fields["value"]), 4)
    return {**fields, "host": host_record(probe=True), "command": command}


def upsert(records: list[dict[str, Any]]) -> None:
    """Replace the records with the same key (``quality.KEY``: task, dataset, split, model, method, metric, combine,
    precision), keep the rest."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from quality import upsert as upsert_quality

    upsert_quality(records)
