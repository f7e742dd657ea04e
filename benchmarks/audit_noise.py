"""Finding flipped labels: ``adaptune audit`` on SST-2 training rows with 5% of their labels flipped.

A random subset of SST-2's training sentences (``--train-rows``, seeded) gets ``--noise`` of its labels flipped
(seeded; each flipped row takes another label at random), is written as JSON Lines with its original fields, and
is audited with training dynamics (one run) and confident learning (``--folds`` runs) using the config's adapter
(default ``configs/sst2_bottleneck.yaml``, ``--epochs`` epochs). Reported: precision@k of the ranking at finding
the flipped rows, for k = the number flipped, 50 and 100.

    nice -n 5 .venv/bin/python benchmarks/audit_noise.py [--train-rows 4000 --epochs 3 --folds 3]

Records (task ``seq_cls``, dataset ``sst2``, split ``train``, metric ``audit_precision_at_<k> (<method>)``, with
``train_rows``, ``flipped``, the host and the command) are upserted into ``--results`` (default
``benchmarks/results/quality.json``) by ``quality.py``'s key; the tables are not rewritten here. Needs
``../shared/data/sst2``; the data and runs go to ``--work`` (default ``runs/audit_noise``, never shipped).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
WORK = ROOT / "runs" / "audit_noise"
RESULTS = ROOT / "benchmarks" / "results" / "quality.json"


def noisy_subset(path: str, text_column: str, label_column: str, rows: int, noise: float, seed: int) -> Any:
    """``rows`` random records of ``path`` (seeded), ``noise`` of them with another label: (records, flipped
    0-based indices, labels)."""
    from adaptune.data.review import read_rows

    every = read_rows(path, text_column=text_column)
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(every), size=min(rows, len(every)), replace=False)
    records = [dict(every[i].values) for i in picked]
    labels = sorted({str(r[label_column]) for r in records})
    flipped = rng.choice(len(records), size=round(noise * len(records)), replace=False)
    for i in flipped:
        others = [name for name in labels if name != str(records[i][label_column])]
        records[i][label_column] = others[int(rng.integers(len(others)))]
    return records, {int(i) for i in flipped}, labels


def run_figures(work: Path) -> dict[str, Any]:
    """Trainable parameters, the mean training rate and the peak RSS over the audit's runs (their results.json)."""
    found = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(work.rglob("results.json"))]
    return {
        "trainable_params": found[0]["trainable_params"] if found else 0,
        "train_tokens_per_s": round(sum(r["train_tokens_per_s"] for r in found) / max(len(found), 1), 1),
        "peak_rss_mb": max((r["peak_rss_mb"] for r in found), default=0.0),
        "precision": found[0]["precision"]["chosen"] if found else "fp32",
    }


def upsert_into(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace the records of ``path`` with the same ``quality.KEY`` by ``records`` (without rewriting the tables)."""
    from quality import upsert

    upsert(records, path, tables=False)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "sst2_bottleneck.yaml"), help="the run config")
    parser.add_argument("--train-rows", type=int, default=4000, help="SST-2 training rows audited")
    parser.add_argument("--noise", type=float, default=0.05, help="share of the labels flipped")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset and of the flips")
    parser.add_argument("--epochs", type=float, default=3, help="training.epochs of every audit run")
    parser.add_argument("--folds", type=int, default=3, help="confident learning: folds")
    parser.add_argument("--methods", nargs="+", default=["dynamics", "confident"], choices=["dynamics", "confident"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--work", type=Path, default=WORK, help="folder for the data and the runs")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results file records are upserted into")
    return parser.parse_args()


def main() -> None:
    from adaptune import load_config
    from adaptune.audit import audit, precision_at_k
    from adaptune.hardware import host_record

    args = parse_args()
    overrides = [f"training.epochs={args.epochs:g}", "training.progress=false", *args.overrides]
    cfg = load_config(args.config, overrides)
    assert cfg.data.train is not None, "the config names SST-2's training file"
    records, flipped, _ = noisy_subset(
        cfg.data.train, cfg.data.text_column, cfg.data.label_column, args.train_rows, args.noise, args.seed
    )
    data = args.work / "train_noisy.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    command = " ".join([".venv/bin/python benchmarks/audit_noise.py", *sys.argv[1:]])
    host, found = host_record(probe=True), []
    for method in args.methods:
        work = args.work / method
        started = time.perf_counter()
        result = audit(cfg, data, method=method, folds=args.folds, work_dir=work)
        wall = time.perf_counter() - started
        for k_name, k in (("k", len(flipped)), ("50", 50), ("100", 100)):
            found.append(
                {
                    "task": cfg.task.name,
                    "dataset": "sst2",
                    "split": "train",
                    "model": cfg.model.name_or_path,
                    "method": cfg.method.name,
                    "metric": f"audit_precision_at_{k_name} ({method})",
                    "value": round(precision_at_k(result.ranking, flipped, k), 4),
                    "k": k,
                    "audit": method,
                    "train_rows": len(records),
                    "noise": args.noise,
                    "flipped": len(flipped),
                    "epochs": args.epochs,
                    **({"folds": args.folds} if method == "confident" else {}),
                    **run_figures(work),
                    "wall_s": round(wall, 1),
                    "host": host,
                    "command": command,
                }
            )
    upsert_into(args.results, found)
    print(json.dumps([{k: r[k] for k in ("metric", "value", "k", "wall_s")} for r in found], indent=2))


if __name__ == "__main__":
    main()
