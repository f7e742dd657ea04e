"""Inference speed on the CPU: the ONNX export under onnxruntime vs adaptune's Predictor, MiniLM + LoRA (seq_cls).

    nice -n 10 .venv/bin/python benchmarks/onnx_speed.py                   # a few minutes on 2 cores
    nice -n 10 .venv/bin/python benchmarks/onnx_speed.py --examples 64     # a smoke run

Trains a short LoRA adapter on sentence-transformers/all-MiniLM-L6-v2 (the packaged model): on SST-2 when
``../shared/data/sst2`` is there, else on the bundled intents data (``--data`` chooses), exports it with
:func:`adaptune.export_onnx.export_onnx`, and times the same ``--examples`` dev texts through

* ``onnxruntime``: the exported graph (CPUExecutionProvider), tokenised with ``tokenizers`` as the module
  docstring of :mod:`adaptune.export_onnx` shows;
* ``adaptune``: ``Predictor.load(adapter).logits`` (LoRA unmerged, torch, float32);
* ``adaptune_merged``: ``Predictor.load(adapter, merge=True).logits`` (LoRA folded into the weights),

at batch sizes 1 and 32, with the same number of threads for torch and onnxruntime (``--threads``; default
torch's). Times include tokenisation; each figure is the best of ``--repeats`` passes over the inputs after one
warm-up batch. Each record holds the host (:func:`adaptune.hardware.host_record`: CPU, its bf16 flags, the fp32
and bf16 matmul rates), the thread count and the largest logit difference between the backends on these inputs.
Records replace this benchmark's records in ``benchmarks/results/inference.json`` (a JSON list; records of other
benchmarks there are kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaptune import Predictor, load_config, train
from adaptune.export_onnx import ONNX_CONFIG, ONNX_FILE, export_onnx
from adaptune.hardware import host_record

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "inference.json"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SST2 = ROOT.parent / "shared" / "data" / "sst2"
INTENTS = ROOT / "src" / "adaptune" / "resources" / "data" / "intents"
DATASETS: dict[str, dict[str, Any]] = {
    "sst2": {"train": SST2 / "train.tsv", "dev": SST2 / "dev.tsv", "text_column": "sentence"},
    "intents": {"train": INTENTS / "train.jsonl", "dev": INTENTS / "dev.jsonl", "text_column": "text"},
}
BATCH_SIZES = (1, 32)
Run = Callable[[list[str]], np.ndarray]


def train_adapter(dataset: str, steps: int, out: Path) -> Path:
    """A short LoRA run (method defaults) of ``steps`` batches of 32; the adapter folder."""
    data = DATASETS[dataset]
    overrides = [
        f"model.name_or_path={MODEL}",
        "method.name=lora",
        "task.name=seq_cls",
        f"data.train={data['train']}",
        f"data.dev={data['dev']}",
        f"data.text_column={data['text_column']}",
        f"data.max_train_examples={steps * 32}",
        "data.max_length=128",
        "data.batch_size=32",
        f"training.max_steps={steps}",
        "training.progress=false",
        "training.device=cpu",
        f"training.output_dir={out}",
    ]
    return train(load_config(None, overrides), overwrite=True).adapter_dir


def onnx_runner(folder: Path, threads: int) -> Run:
    """Tokenise with ``tokenizers`` and run the graph with onnxruntime (``threads`` intra-op threads)."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    info = json.loads((folder / ONNX_CONFIG).read_text(encoding="utf-8"))
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(info["max_length"])
    tokenizer.enable_padding(pad_id=info["tokenizer"]["pad_token_id"], pad_token=info["tokenizer"]["pad_token"])
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"])

    def run(texts: list[str]) -> np.ndarray:
        enc = tokenizer.encode_batch(texts)
        rows = {
            "input_ids": [e.ids for e in enc],
            "attention_mask": [e.attention_mask for e in enc],
            "token_type_ids": [e.type_ids for e in enc],
        }
        feed = {name: np.array(rows[name], dtype=np.int64) for name in info["inputs"]}
        return session.run(["logits"], feed)[0]  # type: ignore[no-any-return]

    return run


def predictor_runner(predictor: Predictor) -> Run:
    """``predictor.logits`` as one array (its ``batch_size`` batches the inputs)."""
    return lambda texts: torch.stack(predictor.logits(texts)).numpy()


def examples_per_s(run: Run, texts: Sequence[str], batch_size: int, repeats: int) -> float:
    """Inputs per second through ``run`` in batches of ``batch_size``: the best of ``repeats`` passes."""
    batches = [list(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    run(batches[0])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            run(batch)
        best = min(best, time.perf_counter() - start)
    return round(len(texts) / best, 1)


def measure(adapter: Path, folder: Path, texts: list[str], threads: int, repeats: int) -> list[dict[str, object]]:
    """One record per backend and batch size, with its speed relative to the Predictor's at that batch size."""
    predictors = {  # float32, as the exported graph
        "adaptune": Predictor.load(adapter, device="cpu", precision="fp32"),
        "adaptune_merged": Predictor.load(adapter, merge=True, device="cpu", precision="fp32"),
    }
    runners = {"onnxruntime": onnx_runner(folder, threads), **{k: predictor_runner(p) for k, p in predictors.items()}}
    chunks = [texts[i : i + 32] for i in range(0, len(texts), 32)]
    logits = {name: np.concatenate([run(chunk) for chunk in chunks]) for name, run in runners.items()}
    records: list[dict[str, object]] = []
    for batch_size in BATCH_SIZES:
        for predictor in predictors.values():
            predictor.batch_size = batch_size
        rates = {name: examples_per_s(run, texts, batch_size, repeats) for name, run in runners.items()}
        for name, rate in rates.items():
            records.append(
                {
                    "backend": name,
                    "batch_size": batch_size,
                    "examples_per_s": rate,
                    "speed_vs_adaptune": round(rate / rates["adaptune"], 3),
                    "max_abs_diff_vs_adaptune": float(np.abs(logits[name] - logits["adaptune"]).max()),
                }
            )
    return records


def save(
    records: Sequence[dict[str, object]], path: Path, benchmark: str = "onnx_speed", key: Sequence[str] = ()
) -> None:
    """Replace ``benchmark``'s records in ``path`` (a JSON list) by ``records``, keeping other benchmarks' records:
    all of them, or with ``key`` only those with the same values of ``key`` as one of ``records`` (an upsert)."""
    kept = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    new = {tuple(record.get(k) for k in key) for record in records}
    kept = [r for r in kept if r.get("benchmark") != benchmark or tuple(r.get(k) for k in key) not in new]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([*kept, *records], indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=sorted(DATASETS), default="sst2" if SST2.is_dir() else "intents")
    parser.add_argument("--examples", type=int, default=512, help="dev texts timed (cycled if the split is shorter)")
    parser.add_argument("--train-steps", type=int, default=60, help="LoRA training steps of batch 32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch and onnxruntime threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the inputs; the best counts")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = ROOT / "runs" / "onnx_speed"
    adapter = train_adapter(args.data, args.train_steps, work / "run")
    started = time.perf_counter()
    exported = export_onnx(adapter, work / "onnx", overwrite=True)
    export_s = round(time.perf_counter() - started, 1)
    predictor = Predictor.load(adapter, device="cpu")
    dev_file = str(DATASETS[args.data]["dev"])
    dev = [example.text for example in predictor.task.read(dev_file, predictor.data, split="dev")]
    texts = [dev[i % len(dev)] for i in range(args.examples)]
    common = {
        "benchmark": "onnx_speed",
        "model": MODEL,
        "method": "lora",
        "task": "seq_cls",
        "dataset": args.data,
        "train_steps": args.train_steps,
        "examples": len(texts),
        "repeats": args.repeats,
        "timing": "best pass over the inputs after a warm-up batch; tokenisation included",
        "export_s": export_s,
        "export_check_max_abs_diff": exported.max_abs_diff,
        "onnx_bytes": (exported.path / ONNX_FILE).stat().st_size,
        "onnxruntime": exported.check["runtime"].split()[-1],
        "threads": args.threads,  # torch.set_num_threads and onnxruntime's intra_op_num_threads
        "host": host_record(probe=True),
        "command": " ".join([".venv/bin/python", "benchmarks/onnx_speed.py", *sys.argv[1:]]),
    }
    records = [{**common, **record} for record in measure(adapter, exported.path, texts, args.threads, args.repeats)]
    for record in records:
        print(json.dumps({k: record[k] for k in ("backend", "batch_size", "examples_per_s")}), flush=True)
    save(records, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
