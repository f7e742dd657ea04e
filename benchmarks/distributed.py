"""Training on 1 and 2 processes of this machine: examples/s and final dev accuracy, MiniLM + LoRA on SST-2.

Both runs take the same global batch per optimiser step (1 process: ``grad_accum_steps=2``; 2 processes under
torchrun via ``adaptune train --nproc 2``: 1 batch each), so they train the same adapter up to float rounding and
the difference is the cost of running apart: on a 2-core machine expect no speed-up (each process gets one core
where the single process used two), only the overhead of the gradient all-reduce and the sharded evaluation.

    .venv/bin/python benchmarks/distributed.py [--train-examples 8000]

Writes ``benchmarks/results/distributed.json`` (a record per run with ``"nproc"``; the precision the run chose and
the host, :func:`adaptune.hardware.host_record` with its matmul probe, in each). Needs ``../shared/data/sst2``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from adaptune.hardware import host_record

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "distributed.json"


def run(nproc: int, examples: int, out: Path) -> dict[str, object]:
    """One training run; the record of what it measured."""
    args = ["train", "configs/sst2_lora.yaml", "--overwrite", "--device", "cpu"]  # paths from the repository root
    sets = [
        f"data.max_train_examples={examples}",
        f"training.output_dir={out}",
        "training.progress=false",
        "training.eval_every=1000000",  # dev once, at the end
    ]
    if nproc == 1:
        sets.append("training.grad_accum_steps=2")  # the global batch of 2 processes
    for item in sets:
        args += ["--set", item]
    command = [sys.executable, "-m", "adaptune", *args] + (["--nproc", str(nproc)] if nproc > 1 else [])
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    results = json.loads((ROOT / out / "results.json").read_text(encoding="utf-8"))
    train_s = float(results["train_s"])
    return {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "method": "lora",
        "dataset": "sst2",
        "nproc": nproc,
        "backend": "gloo" if nproc > 1 else None,
        "threads_per_process": 1 if nproc > 1 else torch.get_num_threads(),
        "train_examples": examples,
        "global_batch": 64,
        "steps": results["steps"],
        "examples_per_s": round(examples / train_s, 1),
        "train_tokens_per_s": results["train_tokens_per_s"],
        "train_s": train_s,
        "wall_s": round(wall, 1),
        "dev_accuracy": results["splits"]["dev"]["headline"]["accuracy"],
        "precision": results.get("precision"),  # what training.precision (auto) chose for the run
        "host": host_record(probe=True),
        "command": " ".join([".venv/bin/python", "-m", "adaptune", *command[3:]]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-examples", type=int, default=8000)
    args = parser.parse_args()
    records = []
    for nproc in (1, 2):
        record = run(nproc, args.train_examples, Path("runs") / f"distributed_{nproc}")
        print(json.dumps(record), flush=True)
        records.append(record)
    one = records[0]["examples_per_s"]
    for record in records:
        record["speed_vs_1_process"] = round(float(record["examples_per_s"]) / float(one), 3)  # type: ignore[arg-type]
    RESULTS.write_text(json.dumps(records, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
