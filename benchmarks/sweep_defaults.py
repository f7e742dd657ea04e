"""Sweep each method's learning rate (and its size, where it has one) with ``adaptune tune``, on a sentence task and
a token task, against the method's defaults.

    .venv/bin/python benchmarks/sweep_defaults.py                        # 5 methods x 2 data sets, 8 trials each
    .venv/bin/python benchmarks/sweep_defaults.py --methods lora --datasets sst2 --trials 4
    .venv/bin/python benchmarks/sweep_defaults.py --quick                # smoke run (2 trials, tiny subsets)

The data are what our users bring: a few thousand labelled rows, not a benchmark's full training set. SST-2
(``seq_cls``): ``--sst2-rows`` (4,000) random training sentences, scored on the whole dev set (872).
CoNLL-2003 English (``token_cls``): ``--conll-rows`` (3,000) random training sentences, scored on the whole
validation file (3,250 sentences; test is left alone). Both subsets are drawn with ``--seed`` and written under
``runs/sweep_defaults/data`` (the shared data are never copied into the project). MiniLM, ``--epochs`` (3) epochs.

For every (data set, method): one run with the method's defaults (no learning rate given), then a study of
``--trials`` trials (optuna TPE, median pruning at each epoch's dev evaluation) over

* ``training.learning_rate``: log-uniform from a tenth to ten times the method's default;
* the size: LoRA's ``r`` in {4, 8, 16} (``alpha`` stays 16, so the update's scale alpha / r moves with r, as
  with peft's fixed ``lora_alpha``), prefix and prompt tuning's
  ``num_virtual_tokens`` in {10, 20, 40}; IA3 and BitFit have none.

Records (``benchmarks/results/sweep.json``, one per data set and method: the defaults' dev figure and learning
rate, the best trial's values and dev figure, every trial's learning rate and figure, seconds, the host) and the
table ``sweep.md``, also written into README.md and README.zh-CN.md between ``<!-- sweep-table -->`` markers.
A default changes in ``adaptune.methods`` only where both data sets agree on it; the README says which did.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from quality import READMES, default_learning_rate, replace_between, results_lock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
SHARED = ROOT.parent / "shared" / "data"
WORK = ROOT / "runs" / "sweep_defaults"
RESULTS = ROOT / "benchmarks" / "results"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
METHODS = ("lora", "ia3", "bitfit", "prefix", "prompt")
#: The size each method's study searches besides the learning rate (key -> choices).
SIZES: dict[str, dict[str, list[int]]] = {
    "lora": {"method.r": [4, 8, 16]},
    "prefix": {"method.num_virtual_tokens": [10, 20, 40]},
    "prompt": {"method.num_virtual_tokens": [10, 20, 40]},
}
#: Data set -> (task config, data config without the file names, dev metric).
DATASETS: dict[str, dict[str, Any]] = {
    "sst2": {
        "task": {"name": "seq_cls"},
        "data": {"text_column": "sentence", "max_length": 128, "batch_size": 32},
        "metric": "accuracy",
    },
    "conll2003": {
        "task": {"name": "token_cls"},
        "data": {"format": "conll", "max_length": 256, "batch_size": 32},
        "metric": "f1",
    },
}


def sample_sst2(rows: int, seed: int) -> tuple[str, list[str]]:
    """SST-2's training TSV header and ``rows`` of its sentence lines drawn at random with ``seed``."""
    lines = (SHARED / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    header, body = lines[0], lines[1:]
    return header, random.Random(seed).sample(body, min(rows, len(body)))


def write_tsv(path: Path, header: str, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *lines]) + "\n", encoding="utf-8")
    return path


def sst2_subset(rows: int, seed: int, out: Path) -> tuple[Path, Path]:
    """``rows`` random SST-2 training sentences (TSV with its header) and the dev file as it is."""
    header, picked = sample_sst2(rows, seed)
    return write_tsv(out / f"sst2_train_{rows}.tsv", header, picked), SHARED / "sst2" / "dev.tsv"


def conll_sentences(path: Path) -> list[str]:
    """The sentences of a CoNLL file as text blocks (``-DOCSTART-`` blocks left out)."""
    blocks = [b.strip("\n") for b in path.read_text(encoding="utf-8").split("\n\n")]
    return [b for b in blocks if b.strip() and not b.startswith("-DOCSTART-")]


def conll_subset(rows: int, seed: int, out: Path) -> tuple[Path, Path]:
    """``rows`` random CoNLL-2003 training sentences (CoNLL text) and the validation file as it is."""
    sentences = conll_sentences(SHARED / "conll2003" / "train.txt")
    picked = random.Random(seed).sample(sentences, min(rows, len(sentences)))
    out.mkdir(parents=True, exist_ok=True)
    train = out / f"conll2003_train_{rows}.txt"
    train.write_text("\n\n".join(picked) + "\n", encoding="utf-8")
    return train, SHARED / "conll2003" / "valid.txt"


def base_tree(dataset: str, method: str, train: Path, dev: Path, epochs: int, out: Path) -> dict[str, Any]:
    """The run config of one (data set, method): the method's defaults, no learning rate given."""
    spec = DATASETS[dataset]
    return {
        "model": {"name_or_path": MODEL},
        "method": {"name": method},
        "task": dict(spec["task"]),
        "data": {"train": str(train), "dev": str(dev), **spec["data"]},
        "training": {"epochs": epochs, "output_dir": str(out), "progress": False},
    }


def search_block(method: str, metric: str) -> dict[str, Any]:
    """The study's space: the learning rate from a tenth to ten times the default, and the method's size."""
    lr = default_learning_rate(method)
    space: dict[str, Any] = {"training.learning_rate": {"low": lr / 10, "high": lr * 10, "log": True}}
    space.update({key: {"choices": choices} for key, choices in SIZES.get(method, {}).items()})
    return {"metric": metric, "space": space, "startup_trials": 4, "pruner": "median", "prune_startup_trials": 3}


def run_defaults(tree: dict[str, Any], metric: str) -> dict[str, Any]:
    """Train the config as it is: its dev figure, seconds, precision and trainable parameters."""
    from adaptune import train
    from adaptune.config import validate_config

    started = time.perf_counter()
    result = train(validate_config(tree), overwrite=True)
    return {
        "value": round(float(result.results["splits"]["dev"]["headline"][metric]), 4),
        "seconds": round(time.perf_counter() - started, 1),
        "precision": result.results["precision"]["chosen"],
        "trainable_params": result.trainable_params,
    }


def run_study(tree: dict[str, Any], method: str, metric: str, trials: int, folder: Path, seed: int) -> dict[str, Any]:
    """``trials`` trials of :func:`search_block` over ``tree``; the best trial and every trial's figures."""
    from adaptune.tuning import tune
    from adaptune.tuning.study import import_optuna

    config = folder / f"{folder.name}.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump({**tree, "search": search_block(method, metric)}, sort_keys=False))
    started = time.perf_counter()
    result = tune(config, trials, study_dir=folder / "study", seed=seed, echo=lambda line: print(line, flush=True))
    optuna = import_optuna()
    study = optuna.load_study(study_name=result.study_name, storage=f"sqlite:///{folder / 'study' / 'study.sqlite3'}")
    every = [
        {"number": t.number, "state": t.state.name, "value": t.value, **t.params}
        for t in study.trials
        if t.state.name in ("COMPLETE", "PRUNED")
    ]
    return {
        "best_value": None if result.best_value is None else round(result.best_value, 4),
        "best_params": result.best_params,
        "complete": result.complete,
        "pruned": result.pruned,
        "failed": result.failed,
        "trials": every,
        "seconds": round(time.perf_counter() - started, 1),
    }


def table(records: list[dict[str, Any]]) -> list[str]:
    """The sweep table: per data set and method, the defaults against the best trial."""
    lines = [
        "| data set (dev metric) | method | LR of the defaults run | dev with defaults | best LR | best size "
        "| dev, best trial | trials (pruned) | seconds |",
        "|---|---|--:|--:|--:|---|--:|--:|--:|",
    ]
    for r in records:
        best = r["study"]["best_params"]
        size = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in best.items() if k != "training.learning_rate")
        lr = best.get("training.learning_rate")
        lines.append(
            f"| {r['dataset']} ({r['metric']}) | {r['method']} | {r['default_learning_rate']:g} | "
            f"{r['defaults']['value']:.4f} | {'–' if lr is None else f'{lr:.2g}'} | {size or '–'} | "
            f"{'–' if r['study']['best_value'] is None else format(r['study']['best_value'], '.4f')} | "
            f"{r['study']['complete'] + r['study']['pruned']} ({r['study']['pruned']}) | "
            f"{r['defaults']['seconds'] + r['study']['seconds']:,.0f} |"
        )
    return lines


def save(records: list[dict[str, Any]], out: Path, readmes: bool) -> None:
    """Upsert ``records`` into ``out/sweep.json`` (by data set and method), write ``sweep.md`` and the READMEs."""
    with results_lock():  # the two data sets' sweeps may run side by side
        path = out / "sweep.json"
        existing = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
        keys = {(r["dataset"], r["method"]) for r in records}
        merged = [r for r in existing if (r["dataset"], r["method"]) not in keys] + records
        merged.sort(key=lambda r: (r["dataset"], METHODS.index(r["method"]) if r["method"] in METHODS else 99))
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(merged, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        lines = table(merged)
        (out / "sweep.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
        for readme in READMES if readmes else ():
            if readme.is_file():
                readme.write_text(replace_between(readme.read_text(encoding="utf-8"), "sweep-table", lines), "utf-8")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--trials", type=int, default=8, help="trials per study (default 8)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--sst2-rows", type=int, default=4000)
    parser.add_argument("--conll-rows", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=13, help="the subsets' and the samplers' seed")
    parser.add_argument("--quick", action="store_true", help="2 trials, 1 epoch, 200 rows: to /tmp/sweep_quick")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (sweep.json, sweep.md)")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.epochs, args.sst2_rows, args.conll_rows = 2, 1, 200, 200
        args.out = Path("/tmp/sweep_quick")
    return args


def main() -> None:
    from adaptune.hardware import host_record

    args = parse_args()
    work = args.out / "work" if args.quick else WORK
    data = {
        "sst2": lambda: sst2_subset(args.sst2_rows, args.seed, work / "data"),
        "conll2003": lambda: conll_subset(args.conll_rows, args.seed, work / "data"),
    }
    command = " ".join([".venv/bin/python benchmarks/sweep_defaults.py", *sys.argv[1:]])
    host = host_record(probe=True)
    for dataset in args.datasets:
        train, dev = data[dataset]()
        rows = args.sst2_rows if dataset == "sst2" else args.conll_rows
        metric = DATASETS[dataset]["metric"]
        for method in args.methods:
            folder = work / f"{dataset}_{method}"
            tree = base_tree(dataset, method, train, dev, args.epochs, folder / "defaults")
            if args.quick:
                tree["data"]["max_eval_examples"] = 200
            print(f"== {dataset} {method}: defaults", flush=True)
            defaults = run_defaults(tree, metric)
            print(f"== {dataset} {method}: {args.trials} trials", flush=True)
            study = run_study(tree, method, metric, args.trials, folder, args.seed)
            record = {
                "dataset": dataset,
                "task": DATASETS[dataset]["task"]["name"],
                "split": "dev",
                "model": MODEL,
                "method": method,
                "metric": metric,
                "train_rows": rows,
                "epochs": args.epochs,
                "default_learning_rate": default_learning_rate(method),
                "defaults": defaults,
                "study": study,
                "host": host,
                "command": command,
            }
            save([record], args.out, readmes=not args.quick)
            print(
                json.dumps(
                    {k: record[k] for k in ("dataset", "method", "defaults")}
                    | {"best": study["best_params"], "best_value": study["best_value"]}
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
