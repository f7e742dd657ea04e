"""Merging two sentiment adapters: each alone, the merges of ``adaptune combine`` and AdapterFusion, on both tests.

Two LoRA adapters on all-MiniLM-L6-v2 share the labels ``negative`` / ``positive``: one trained on SST-2 (movie
reviews; ``--sst2-examples`` of its training sentences, its dev set as the test: GLUE's test has no labels), one on
the positive and negative sentences of Financial PhraseBank (``Sentences_AllAgree``: 873 of 2,264 sentences,
split 80/20 with seed 0). Each adapter alone, the ``linear``, ``ties``, ``dare_linear`` and ``dare_ties`` merges
(weights and density below) and, when the ``fusion`` method is registered, an AdapterFusion over both adapters
trained on both training sets, are scored by accuracy on both test sets.

    .venv/bin/python benchmarks/combine_quality.py [--sst2-examples 20000]

Records (``"combine"`` names the merge, ``"alone:<dataset>"`` an input adapter) are upserted into
``benchmarks/results/quality.json`` with the tables (see ``quality.py``). Needs ``../shared/data`` (sst2,
financial_phrasebank); the converted data files go to ``runs/combine_quality/data`` (never shipped).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
SHARED = ROOT.parent / "shared" / "data"
WORK = ROOT / "runs" / "combine_quality"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
LABELS = {"0": "negative", "1": "positive"}
#: The merges measured: (how, weights, density).
MERGES = [
    ("linear", [0.5, 0.5], None),
    ("ties", [1.0, 1.0], 0.5),
    ("dare_linear", [0.5, 0.5], 0.5),
    ("dare_ties", [1.0, 1.0], 0.5),
]


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read_sst2(name: str) -> list[dict[str, str]]:
    with (SHARED / "sst2" / name).open(encoding="utf-8") as f:
        return [{"text": r["sentence"].strip(), "label": LABELS[r["label"]]} for r in csv.DictReader(f, delimiter="\t")]


def prepare_data(sst2_examples: int) -> dict[str, Path]:
    """SST-2 and the positive/negative rows of Financial PhraseBank as JSONL with the same label names."""
    sst_train, sst_test = read_sst2("train.tsv"), read_sst2("dev.tsv")
    random.Random(0).shuffle(sst_train)
    lines = (SHARED / "financial_phrasebank" / "Sentences_AllAgree.txt").read_text(encoding="latin-1").splitlines()
    fpb = [
        {"text": text.strip(), "label": label.strip()}
        for text, label in (line.rsplit("@", 1) for line in lines if "@" in line)
        if label.strip() in ("positive", "negative")
    ]
    random.Random(0).shuffle(fpb)
    cut = int(0.8 * len(fpb))
    folder = WORK / "data"
    return {
        "sst2_train": write_jsonl(folder / "sst2_train.jsonl", sst_train[:sst2_examples]),
        "sst2_test": write_jsonl(folder / "sst2_test.jsonl", sst_test),
        "fpb_train": write_jsonl(folder / "fpb_train.jsonl", fpb[:cut]),
        "fpb_test": write_jsonl(folder / "fpb_test.jsonl", fpb[cut:]),
        "both_train": write_jsonl(folder / "both_train.jsonl", sst_train[: len(fpb[:cut])] + fpb[:cut]),
    }


def train_adapter(name: str, train_file: Path, epochs: float, method: str = "{name: lora}") -> Any:
    from adaptune import load_config, train

    cfg = load_config(
        None,
        [
            f"model.name_or_path={MODEL}",
            f"method={method}",
            f"data.train={train_file}",
            "data.batch_size=32",
            "data.max_length=128",
            f"training.epochs={epochs}",
            "training.progress=false",
            f"training.output_dir={WORK / name}",
        ],
    )
    return train(cfg, overwrite=True)


def record(dataset: str, split: str, combine: str, value: float, params: int, wall_s: float) -> dict[str, Any]:
    return {
        "task": "seq_cls",
        "dataset": dataset,
        "split": split,
        "model": MODEL,
        "method": "fusion" if combine == "fusion" else "lora",
        "combine": combine,
        "metric": "accuracy",
        "value": round(value, 4),
        "trainable_params": params,
        "train_tokens_per_s": 0.0,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "wall_s": round(wall_s, 1),
        "command": ".venv/bin/python benchmarks/combine_quality.py",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sst2-examples", type=int, default=20000)
    args = parser.parse_args()
    from adaptune.cli_combine import evaluate_adapters
    from adaptune.combine import combine_adapters
    from adaptune.registry import method_names

    data = prepare_data(args.sst2_examples)
    tests = [data["sst2_test"], data["fpb_test"]]
    adapters: dict[str, tuple[Path, int, float]] = {}
    alone = (("alone:sst2", data["sst2_train"], 1), ("alone:financial_phrasebank", data["fpb_train"], 5))
    for name, train_file, epochs in alone:
        started = time.perf_counter()
        result = train_adapter(name.split(":")[1], train_file, epochs)
        adapters[name] = (result.adapter_dir, result.trainable_params, time.perf_counter() - started)
        precision = result.results["precision"]["chosen"]  # every run here trains with the same (auto) setting
    inputs = [adapters["alone:sst2"][0], adapters["alone:financial_phrasebank"][0]]
    for how, weights, density in MERGES:
        started = time.perf_counter()
        out = combine_adapters(inputs, how, weights, out=WORK / f"merged_{how}", density=density, overwrite=True)
        adapters[how] = (out, adapters["alone:sst2"][1], time.perf_counter() - started)
    if "fusion" in method_names():
        started = time.perf_counter()
        members = json.dumps([{"name": n, "adapter": str(p)} for n, p in zip(("sst2", "fpb"), inputs, strict=True)])
        result = train_adapter("fusion", data["both_train"], 3, method=f"{{name: fusion, members: {members}}}")
        adapters["fusion"] = (result.adapter_dir, result.trainable_params, time.perf_counter() - started)
    table = evaluate_adapters([a[0] for a in adapters.values()], tests)
    records = []
    for (combine, (_, params, wall)), (_, scores) in zip(adapters.items(), table.rows, strict=True):
        for (dataset, split), value in zip((("sst2", "dev"), ("financial_phrasebank", "test")), scores, strict=True):
            if value is not None:
                records.append(record(dataset, split, combine, value, params, wall))
            print(f"{combine:28s} {dataset:22s} {value}", flush=True)
    from quality import upsert

    from adaptune.hardware import host_record

    host = host_record(probe=True)
    upsert([{**r, "host": host, "precision": precision} for r in records])


if __name__ == "__main__":
    main()
