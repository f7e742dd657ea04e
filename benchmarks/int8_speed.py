"""int8 inference on the CPU: ``Predictor.load(..., quantize="int8")`` against float adaptune and peft's merged model.

    nice -n 10 .venv/bin/python benchmarks/int8_speed.py                 # both tasks: trains two adapters first
    nice -n 10 .venv/bin/python benchmarks/int8_speed.py --quick         # smoke run, to /tmp/int8_speed_quick.json
    .venv/bin/python benchmarks/int8_speed.py --task sst2 --adapter runs/sst2_lora/adapter   # reuse an adapter

For each task, a LoRA adapter on sentence-transformers/all-MiniLM-L6-v2 trained by the project's config
(``configs/sst2_lora.yaml``: SST-2, seq_cls; ``configs/conll2003_lora.yaml``: CoNLL-2003 English NER, token_cls)
stopped after ``--train-steps`` steps (``--adapter`` reuses a trained one instead), then

* quality: SST-2 dev accuracy, CoNLL-2003 test entity F1 (the task's own evaluation, as ``adaptune eval``) of the
  float Predictor and of the int8 one (target: within 0.5 points);
* speed: examples/s of ``--examples`` inputs (dev sentences; test sentences for CoNLL) at batch sizes 1 and 32,
  tokenisation included, best of ``--repeats`` passes after a warm-up batch (``onnx_speed.examples_per_s``), for
  ``adaptune`` (fp32, LoRA unmerged), ``adaptune_int8`` (int8 base, LoRA unmerged in float),
  ``adaptune_int8_merged`` (LoRA merged, then the base quantised) and ``peft_merged``: the adapter exported with
  :func:`adaptune.peft_interop.export_peft`, loaded by ``PeftModel.from_pretrained`` on transformers' task class and
  ``merge_and_unload()`` (fp32; seq_cls pooled as ``adaptune.json`` says, the level at which it equals adaptune).

Every Predictor here runs ``precision="fp32"`` so that only int8 differs. Records (``"benchmark": "int8_speed"``,
``"kind": "quality"`` or ``"speed"``, the host with its matmul probe and the command) replace this benchmark's
records of the same dataset in ``--out`` (``benchmarks/results/inference.json``; other benchmarks' records are
kept). ``--quick`` (a few steps and examples, ``/tmp/int8_speed_quick.json`` unless ``--out`` says otherwise) only
checks that everything runs: its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from onnx_speed import BATCH_SIZES, MODEL, RESULTS, ROOT, examples_per_s, save

from adaptune import Predictor, load_config, train
from adaptune.hardware import host_record
from adaptune.io import read_adapter_config
from adaptune.quantize import reduce_range

#: task -> the project config that trains it, the split that is scored, and the metric reported.
TASKS: dict[str, dict[str, str]] = {
    "sst2": {"config": "configs/sst2_lora.yaml", "split": "dev", "metric": "accuracy"},
    "conll2003": {"config": "configs/conll2003_lora.yaml", "split": "test", "metric": "f1"},
}
QUICK = Path("/tmp/int8_speed_quick.json")
Run = Callable[[list[Any]], Any]


def train_adapter(task: str, steps: int, eval_examples: int | None, out: Path) -> Path:
    """The task's config (``TASKS``) stopped after ``steps`` optimiser steps; the adapter folder."""
    overrides = [
        f"training.max_steps={steps}",
        "training.progress=false",
        "training.device=cpu",
        "training.precision=fp32",
        f"training.output_dir={out}",
    ]
    if eval_examples is not None:
        overrides.append(f"data.max_eval_examples={eval_examples}")
    return train(load_config(ROOT / TASKS[task]["config"], overrides), overwrite=True).adapter_dir


def scored_split(predictor: Predictor, task: str, limit: int | None) -> tuple[str, list[Any]]:
    """The labelled file scored for ``task`` (named by its config) and its examples, read with the adapter's data
    settings."""
    split = TASKS[task]["split"]
    path = str(getattr(load_config(ROOT / TASKS[task]["config"]).data, split))
    examples = predictor.task.read(path, predictor.data, split=split)
    return path, examples[:limit] if limit else examples


def inputs_of(examples: list[Any]) -> list[Any]:
    """What a user would send: the sentence, or the words of a token task's sentence."""
    return [{"tokens": list(ex.tokens)} if hasattr(ex, "tokens") else ex.text for ex in examples]


def peft_runner(adapter: Path, work: Path, max_length: int) -> Run:
    """peft's merged model on the exported adapter: logits for a list of :func:`inputs_of` items."""
    import transformers
    from peft import PeftModel

    from adaptune.backbone import resolve_model
    from adaptune.peft_interop import export_peft
    from adaptune.tasks.pooling import pool

    folder = export_peft(adapter, work / "peft", overwrite=True).path
    sidecar = json.loads((folder / "adaptune.json").read_text(encoding="utf-8"))
    load_with, head = sidecar["load_with"], sidecar["head"]
    where = resolve_model(MODEL).path
    auto = getattr(transformers, load_with["auto_class"])
    hf = auto.from_pretrained(where, num_labels=load_with["num_labels"], pad_token_id=load_with["pad_token_id"])
    model = PeftModel.from_pretrained(hf, folder).merge_and_unload().eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(where)
    classifier = model.get_submodule(head["linear"])

    def run(items: list[Any]) -> torch.Tensor:
        words = isinstance(items[0], dict)
        texts = [item["tokens"] for item in items] if words else items
        enc = tokenizer(
            texts, is_split_into_words=words, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        with torch.no_grad():
            if words:
                return model(**enc).logits  # type: ignore[no-any-return]
            hidden = model.base_model(**enc).last_hidden_state
            return classifier(pool(hidden, enc["attention_mask"], head["pooling"]))  # type: ignore[no-any-return]

    return run


def quality(adapter: Path, task: str, limit: int | None) -> list[dict[str, Any]]:
    """The task's metric, float and int8, in points, with int8's difference."""
    metric, out = TASKS[task]["metric"], []
    for backend, quantize in (("adaptune", None), ("adaptune_int8", "int8")):
        predictor = Predictor.load(adapter, device="cpu", precision="fp32", quantize=quantize)
        path, examples = scored_split(predictor, task, limit)
        started = time.perf_counter()
        result, _ = predictor.evaluate_examples(examples, path)
        out.append(
            {
                "kind": "quality",
                "backend": backend,
                "split": TASKS[task]["split"],
                "eval_examples": len(examples),
                "metric": metric,
                "value": round(100 * float(result.headline[metric]), 2),
                "eval_s": round(time.perf_counter() - started, 1),
            }
        )
    out[1]["delta_vs_float_points"] = round(out[1]["value"] - out[0]["value"], 2)
    return out


def speed(adapter: Path, task: str, work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """examples/s per backend and batch size, relative to float adaptune at that batch size."""
    predictors = {
        "adaptune": Predictor.load(adapter, device="cpu", precision="fp32"),
        "adaptune_int8": Predictor.load(adapter, device="cpu", precision="fp32", quantize="int8"),
        "adaptune_int8_merged": Predictor.load(adapter, device="cpu", precision="fp32", merge=True, quantize="int8"),
    }
    first = predictors["adaptune"]
    _, examples = scored_split(first, task, None)
    items = inputs_of([examples[i % len(examples)] for i in range(args.examples)])
    runners: dict[str, Run] = {name: p.logits for name, p in predictors.items()}
    runners["peft_merged"] = peft_runner(adapter, work, first.max_length)
    records: list[dict[str, Any]] = []
    for batch_size in BATCH_SIZES:
        for predictor in predictors.values():
            predictor.batch_size = batch_size
        rates = {name: examples_per_s(run, items, batch_size, args.repeats) for name, run in runners.items()}
        for name, rate in rates.items():
            records.append(
                {
                    "kind": "speed",
                    "backend": name,
                    "batch_size": batch_size,
                    "examples_per_s": rate,
                    "speed_vs_adaptune": round(rate / rates["adaptune"], 3),
                    "examples": len(items),
                    "repeats": args.repeats,
                    "timing": "best pass over the inputs after a warm-up batch; tokenisation included",
                }
            )
    return records


def run_task(task: str, args: argparse.Namespace, host: dict[str, Any]) -> list[dict[str, Any]]:
    """Train (or reuse) the task's adapter, then its quality and speed records."""
    work = ROOT / "runs" / ("int8_speed_quick" if args.quick else "int8_speed") / task
    adapter = args.adapter or train_adapter(task, args.train_steps, args.eval_examples, work / "run")
    common = {
        "benchmark": "int8_speed",
        "model": MODEL,
        "method": "lora",
        "task": read_adapter_config(adapter)["task"]["name"],
        "dataset": task,
        "config": TASKS[task]["config"],
        "train_steps": None if args.adapter else args.train_steps,
        "adapter": str(args.adapter) if args.adapter else "trained by this run",
        "kernel": "torch.ops.quantized.linear_dynamic (" + torch.backends.quantized.engine + ")",
        "activation_bits": 7 if reduce_range() else 8,
        "threads": args.threads,
        "host": host,
        "command": " ".join([".venv/bin/python", "benchmarks/int8_speed.py", *sys.argv[1:]]),
    }
    records = quality(adapter, task, args.eval_examples) + speed(adapter, task, work, args)
    for record in records:
        shown = {k: record[k] for k in ("backend", "batch_size", "examples_per_s", "metric", "value") if k in record}
        print(json.dumps({"dataset": task, **shown}), flush=True)
    return [{**common, **record} for record in records]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=[*TASKS, "all"], default="all")
    parser.add_argument("--adapter", type=Path, help="a trained LoRA adapter of --task to reuse (no training)")
    parser.add_argument("--train-steps", type=int, default=600, help="optimiser steps of the config's run")
    parser.add_argument("--eval-examples", type=int, default=None, help="score only the first N examples")
    parser.add_argument("--examples", type=int, default=512, help="inputs timed (cycled if the split is shorter)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the inputs; the best counts")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 steps, 64 scored, 16 timed, 1 pass")
    parser.add_argument("--out", type=Path, default=None, help=f"results file (default {RESULTS}; --quick: {QUICK})")
    args = parser.parse_args()
    if args.adapter and args.task == "all":
        parser.error("--adapter needs --task (the adapter's dataset)")
    if args.quick:
        args.train_steps, args.eval_examples, args.examples, args.repeats = 4, 64, 16, 1
    args.out = args.out or (QUICK if args.quick else RESULTS)
    if args.quick and args.out.resolve() == RESULTS.resolve():
        parser.error(f"--quick figures mean nothing: write them elsewhere than {RESULTS}")
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    host = host_record(probe=True)
    tasks = list(TASKS) if args.task == "all" else [args.task]
    records = [record for task in tasks for record in run_task(task, args, host)]
    save(records, args.out, benchmark="int8_speed", key=("dataset",))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
