"""Low-resource SST-2: 500 training rows, MiniLM + bottleneck, with the defaults, after a 20-trial search, and with
data augmentation; mean and spread over 3 seeds.

    .venv/bin/python benchmarks/low_resource.py              # about half an hour on 2 cores
    .venv/bin/python benchmarks/low_resource.py --quick      # smoke run (3 trials, 1 seed), to /tmp

The user's situation: 500 labelled sentences (``--rows``, drawn from SST-2's training file with ``--data-seed``)
and 200 more of their own for validation (``--val-rows``, disjoint, from the same file). Checkpoints are chosen and
the search is steered on that validation set only; the figure reported is SST-2's dev set (872 sentences), which
no setting sees before it is scored (the ``test`` of each run). Three settings, each trained with the seeds
``--seeds`` (13, 14, 15):

* ``defaults``: ``configs/sst2_bottleneck.yaml``'s model, method and data settings with every training default
  (5 epochs, the method's learning rate);
* ``search``: ``adaptune tune`` for ``--trials`` (20) trials over the learning rate, the bottleneck's reduction
  factor, the epochs and the batch size (seeded TPE, median pruning), then the best trial's config trained again
  with each seed (its own trial figure would flatter it: it is the best of 20 on the validation set);
* ``augment``: the defaults with ``data.augment`` (one EDA copy of each row: swap, delete, insert; p 0.1).

Records go to ``benchmarks/results/quality.json`` (``"train_rows": 500``, ``"setting"``, ``value`` = the mean,
``std`` and the per-seed ``values``), with the tables rewritten.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from sweep_defaults import sample_sst2, write_tsv

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
SHARED = ROOT.parent / "shared" / "data"
WORK = ROOT / "runs" / "low_resource"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SEARCH_SPACE = {
    "training.learning_rate": {"low": 3e-4, "high": 3e-2, "log": True},
    "method.reduction_factor": {"choices": [8, 16, 32]},
    "training.epochs": {"low": 3, "high": 15},
    "data.batch_size": {"choices": [8, 16, 32]},
}
AUGMENT = {"copies": 1, "ops": ["swap", "delete", "insert"], "p": 0.1}


def write_data(rows: int, val_rows: int, seed: int, out: Path) -> tuple[Path, Path]:
    """``rows`` training and ``val_rows`` validation sentences, disjoint, drawn from SST-2's training file."""
    header, picked = sample_sst2(rows + val_rows, seed)
    return write_tsv(out / f"train_{rows}.tsv", header, picked[:rows]), write_tsv(
        out / f"val_{val_rows}.tsv", header, picked[rows:]
    )


def base_tree(train: Path, val: Path) -> dict[str, Any]:
    """MiniLM + bottleneck on the user's rows: SST-2's dev file is the test, every training setting a default."""
    return {
        "model": {"name_or_path": MODEL},
        "method": {"name": "bottleneck"},
        "task": {"name": "seq_cls"},
        "data": {
            "train": str(train),
            "dev": str(val),
            "test": str(SHARED / "sst2" / "dev.tsv"),
            "text_column": "sentence",
            "max_length": 128,
        },
        "training": {"progress": False},
    }


def train_seeds(tree: dict[str, Any], params: dict[str, Any], seeds: list[int], folder: Path) -> dict[str, Any]:
    """Train ``tree`` with the dotted ``params`` (a search's best values) once per seed: SST-2 dev accuracy of
    each, their mean and standard deviation, and costs."""
    from adaptune import train
    from adaptune.tuning.trials import build_config

    values, runs = [], []
    for seed in seeds:
        result = train(build_config(tree, {**params, "training.seed": seed}, folder / str(seed)), overwrite=True)
        values.append(round(float(result.results["splits"]["test"]["headline"]["accuracy"]), 4))
        runs.append(result)
        print(f"   seed {seed}: SST-2 dev accuracy {values[-1]:.4f}", flush=True)
    return {
        "value": round(statistics.fmean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
        "values": values,
        "seeds": seeds,
        "trainable_params": runs[0].trainable_params,
        "train_tokens_per_s": round(statistics.fmean(r.train_tokens_per_s for r in runs), 1),
        "peak_rss_mb": max(r.results["peak_rss_mb"] for r in runs),
        "wall_s": round(sum(r.wall_s for r in runs), 1),
        "precision": runs[0].results["precision"]["chosen"],
    }


def search(
    tree: dict[str, Any], space: dict[str, Any], trials: int, folder: Path, seed: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ``trials``-trial study over ``space`` (:data:`SEARCH_SPACE`): the best trial's values, and a summary."""
    from adaptune.tuning import tune

    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "low_resource_search.yaml"
    block = {"metric": "accuracy", "space": space, "startup_trials": 8, "pruner": "median"}
    config.write_text(yaml.safe_dump({**tree, "search": block}, sort_keys=False), encoding="utf-8")
    started = time.perf_counter()
    result = tune(config, trials, study_dir=folder / "study", seed=seed, echo=lambda line: print(line, flush=True))
    summary = {
        "trials": result.finished,
        "pruned": result.pruned,
        "best_trial_val_accuracy": result.best_value,
        "best_params": result.best_params,
        "search_s": round(time.perf_counter() - started, 1),
    }
    return result.best_params, summary


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--val-rows", type=int, default=200)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[13, 14, 15])
    parser.add_argument("--data-seed", type=int, default=13)
    parser.add_argument("--quick", action="store_true", help="3 trials of at most 3 epochs, one seed; to /tmp")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.seeds = 3, [13]
    return args


def main() -> None:
    from quality import upsert

    from adaptune.hardware import host_record

    args = parse_args()
    work = Path("/tmp/low_resource_quick") if args.quick else WORK
    train, val = write_data(args.rows, args.val_rows, args.data_seed, work / "data")
    tree, space = base_tree(train, val), SEARCH_SPACE
    if args.quick:
        tree["training"]["epochs"] = 1
        space = {**SEARCH_SPACE, "training.epochs": {"low": 1, "high": 3}}
    command = " ".join([".venv/bin/python benchmarks/low_resource.py", *sys.argv[1:]])
    host = host_record(probe=True)
    settings: dict[str, dict[str, Any]] = {}
    print("== defaults", flush=True)
    settings["defaults"] = train_seeds(tree, {}, args.seeds, work / "defaults")
    print(f"== search: {args.trials} trials", flush=True)
    best, summary = search(tree, space, args.trials, work / "search", args.data_seed)
    settings["search"] = {**train_seeds(tree, best, args.seeds, work / "search_best"), "search": summary}
    print("== augment", flush=True)
    augmented = copy.deepcopy(tree)
    augmented["data"]["augment"] = AUGMENT
    settings["augment"] = train_seeds(augmented, {}, args.seeds, work / "augment")
    records = [
        {
            "task": "seq_cls",
            "dataset": "sst2",
            "split": "dev",
            "model": MODEL,
            "method": "bottleneck",
            "metric": "accuracy",
            "train_rows": args.rows,
            "setting": name,
            **figures,
            "val_rows": args.val_rows,
            "host": host,
            "command": command,
        }
        for name, figures in settings.items()
    ]
    if args.quick:
        print(json.dumps(records, indent=2))
        return
    upsert(records)
    for r in records:
        print(f"{r['setting']:9s} {r['value']:.4f} ± {r['std']:.4f}  {r['values']}", flush=True)


if __name__ == "__main__":
    main()
