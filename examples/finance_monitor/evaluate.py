"""Score the finance monitor's sentiment adapter on the fixed test split and on its all-agree subset.

    .venv/bin/python examples/finance_monitor/evaluate.py [--adapter runs/finance_monitor/run/adapter] [--record]

Prints accuracy and macro-F1 on ``test.csv`` (the 50%-agreement labels) and ``test_allagree.csv`` (the test rows
every annotator agreed on), with the per-class table; ``--record`` writes them to
``benchmarks/results/quality.json`` (dataset ``financial_phrasebank``, splits ``test`` and ``test_allagree``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def main() -> None:
    from records import record, run_summary, upsert

    from adaptune.evaluation.report import report_tables
    from adaptune.inference import Predictor

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    root = HERE.parents[1]
    parser.add_argument("--adapter", type=Path, default=root / "runs" / "finance_monitor" / "run" / "adapter")
    parser.add_argument("--data", type=Path, default=root / "runs" / "finance_monitor" / "data")
    parser.add_argument("--record", action="store_true", help="Write the figures to benchmarks/results/quality.json.")
    args = parser.parse_args()
    predictor = Predictor.load(args.adapter)
    records = []
    for split in ("test", "test_allagree"):
        result = predictor.evaluate(args.data / f"{split}.csv")
        print(f"{split}: accuracy {result.headline['accuracy']:.4f}, macro-F1 {result.headline['macro_f1']:.4f}")
        print(report_tables(result.report, split))
        for metric in ("accuracy", "macro_f1"):
            records.append(
                record(
                    task="seq_cls",
                    dataset="financial_phrasebank",
                    split=split,
                    model=predictor.description["base_model"]["name_or_path"],
                    method=predictor.description["method"]["name"],
                    metric=metric,
                    value=result.headline[metric],
                    scenario="finance_monitor",
                    **run_summary(args.adapter.parent),
                    command=".venv/bin/adaptune train examples/finance_monitor/config.yaml && "
                    ".venv/bin/python examples/finance_monitor/evaluate.py --record",
                )
            )
    if args.record:
        upsert(records)
        print(f"{len(records)} records written to benchmarks/results/quality.json")


if __name__ == "__main__":
    main()
