"""The recommendation run against the frozen model: recall@10 and NDCG@10 on dev and test, before and after.

The frozen baseline is the base model's own embeddings, with no adapter: the run's config with ``method: head``
(the task has no head parameters, so nothing is added) evaluated on the same files. On dev it equals the run's
``at_start`` figures (``training.eval_at_start``: a fresh LoRA adapter is the identity); the script checks that.
Prints a markdown table and writes ``quality_records.json`` into the run folder: records in the layout of
``benchmarks/results/quality.json`` (``value_at_start``: the frozen model's figure on the same split), which
``--record`` also writes there.

    .venv/bin/python examples/recommendation/report.py runs/recommendation/lora [--record]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
METRICS = ("recall@10", "ndcg@10")
COMMAND = "examples/recommendation/run.sh"


def frozen_figures(run: Path) -> dict[str, dict[str, float]]:
    """Headline figures of the run's base model without any adapter, per evaluated split."""
    import yaml

    from adaptune.api import evaluate_split, prepare
    from adaptune.config import validate_config
    from adaptune.model import AdaptedModel
    from adaptune.registry import build_method

    tree = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    tree["method"] = {"name": "head"}
    cfg = validate_config(tree)
    prep = prepare(cfg)
    model = AdaptedModel(prep.backbone, build_method(cfg.method), prep.task, prep.labels).eval()
    evaluated = {name: split for name, split in prep.splits.items() if name != "train"}
    return {name: evaluate_split(model, split, cfg)[0].headline for name, split in evaluated.items()}


def records(run: Path, results: dict[str, Any], frozen: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """quality.json records of the run's test split (dev when it has none), one per metric of :data:`METRICS`."""
    import yaml
    from records import record, run_summary

    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    split = "test" if "test" in results["splits"] else "dev"
    headline = results["splits"][split]["headline"]
    return [
        record(
            task=cfg["task"]["name"],
            dataset="movielens-100k",
            split=split,
            model=cfg["model"]["name_or_path"],
            method=cfg["method"]["name"],
            metric=metric,
            value=headline[metric],
            value_at_start=round(frozen[split][metric], 4),
            baseline="the frozen base model's embeddings (no adapter), same split",
            scenario="recommendation",
            **run_summary(run),
            command=COMMAND,
        )
        for metric in METRICS
    ]


def table(results: dict[str, Any], frozen: dict[str, dict[str, float]]) -> str:
    """Markdown: per split and metric, the frozen model's figure and the adapter's."""
    lines = ["| split | metric | frozen base model | with the adapter |", "|:--|:--|--:|--:|"]
    for split, summary in results["splits"].items():
        for metric in METRICS:
            lines.append(f"| {split} | {metric} | {frozen[split][metric]:.4f} | {summary['headline'][metric]:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    from records import upsert

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="The run folder (training.output_dir).")
    parser.add_argument("--record", action="store_true", help="Write the records to benchmarks/results/quality.json.")
    args = parser.parse_args(argv)
    results = json.loads((args.run / "results.json").read_text(encoding="utf-8"))
    frozen = frozen_figures(args.run)
    at_start = results.get("at_start")
    if at_start is not None:
        drift = max(abs(at_start[m] - frozen["dev"][m]) for m in METRICS)
        print(f"dev at_start vs frozen: largest difference {drift:.2e} (the fresh adapter is the identity)")
    found = records(args.run, results, frozen)
    (args.run / "quality_records.json").write_text(json.dumps(found, indent=1) + "\n", encoding="utf-8")
    print(table(results, frozen))
    print(f"records: {args.run / 'quality_records.json'}")
    if args.record:
        upsert(found)
        print(f"{len(found)} records written to benchmarks/results/quality.json")
    return found


if __name__ == "__main__":
    main()
