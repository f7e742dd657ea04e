"""Evaluation reports of a split: JSON, text and markdown tables, a confusion-matrix PNG, a predictions file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adaptune.evaluation.generation import format_lm_report
from adaptune.evaluation.metrics import format_report_markdown, format_report_table
from adaptune.io import atomic_write_json, atomic_write_text
from adaptune.tasks.base import EvalOutput, Task


def report_tables(report: dict[str, Any], split: str, markdown: bool = False) -> str:
    """The headline table of a report and, for tagging, the token-level table labelled as secondary."""
    fmt = format_report_markdown if markdown else format_report_table
    if "perplexity" in report:  # causal language modelling
        return format_lm_report(report, split, markdown)
    if "ranking" in report:  # text_pair_rank
        from adaptune.evaluation.ranking import format_ranking_report

        return format_ranking_report(report, split, markdown)
    if "by_language" in report:  # extractive QA
        from adaptune.evaluation.squad import format_qa_report

        return format_qa_report(report, split, markdown)
    if "per_type" in report:
        main = fmt(report, f"{split}: entity level, strict ({report.get('scheme', '')}) (headline)")
        token = report.get("token_level")
        if token is not None:
            main += "\n" + fmt(token, f"{split}: token level (secondary view: counting O tokens inflates it)")
        return main
    return fmt(report, f"{split}: per class")


def write_eval_report(
    out_dir: Path,
    split: str,
    path: str,
    result: EvalOutput,
    task: Task,
    examples: Sequence[Any],
    predictions: Sequence[Any],
    labels: Sequence[str],
) -> dict[str, Any]:
    """Write ``eval_<split>.json``, ``eval_<split>.txt``/``.md``, ``predictions_<split>.jsonl`` and, for
    single-label classification, ``confusion_<split>.png``. Returns the summary stored in ``results.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        "json": f"eval_{split}.json",
        "table": f"eval_{split}.txt",
        "markdown": f"eval_{split}.md",
        "predictions": f"predictions_{split}.jsonl",
    }
    atomic_write_json(
        out_dir / files["json"], {"split": split, "path": path, "headline": result.headline, "report": result.report}
    )
    atomic_write_text(out_dir / files["table"], report_tables(result.report, split))
    atomic_write_text(out_dir / files["markdown"], report_tables(result.report, split, markdown=True))
    pairs = zip(examples, predictions, strict=True)
    lines = [json.dumps(task.to_output(ex, pred, labels), ensure_ascii=False) for ex, pred in pairs]
    atomic_write_text(out_dir / files["predictions"], "\n".join(lines) + "\n")
    confusion = result.report.get("confusion_matrix")
    if confusion is not None:
        files["confusion_png"] = f"confusion_{split}.png"
        from adaptune.evaluation.plots import plot_confusion_matrix  # matplotlib only when a plot is drawn

        plot_confusion_matrix(
            confusion["matrix"],
            confusion["labels"],
            out_dir / files["confusion_png"],
            title=f"{split}: confusion matrix (rows: gold, normalised)",
        )
    return {"path": path, "headline": result.headline, "files": files}
