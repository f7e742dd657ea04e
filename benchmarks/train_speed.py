"""Training speed, memory and quality: adaptune vs peft vs AdapterHub ``adapters``, same batches, same run.

    .venv/bin/python benchmarks/train_speed.py                 # the full table (see --help for the size)
    .venv/bin/python benchmarks/train_speed.py --quick         # a short validation run of every row
    .venv/bin/python benchmarks/train_speed.py --methods lora,head --tools adaptune,peft --precisions bf16

One plan (``speed_common.Plan``) is written first: SST-2 training examples (a seeded subset), tokenised once with
MiniLM's tokenizer, the length-bucketed batches of every epoch (adaptune's ``train_batches``, batch 32), the dev
set in length-sorted batches, and the hyper-parameters. Every record is then one subprocess (peak RSS is that
tool's): adaptune (``speed_workers.py adaptune``, its own Trainer, plain and with its speed switches), peft
(``speed_workers.py peft``) and AdapterHub (``adapters_worker.py`` under ``.venv-adapters/bin/python``; it pins
transformers 4.57). Every tool runs at every precision asked for (``--precisions``; ``auto``: fp32 and bf16
autocast where adaptune's matmul probe finds bf16 the faster precision on this host, else fp32); the headline
target ratios pair adaptune's fastest run with the peer's faster one there, and the fp32 runs elsewhere
(:func:`speed_report.headline`; each record says which and why, and carries the host). The matmul peaks that MFU
divides by are measured in the same run. Results: ``benchmarks/results/train_speed.json``,
``train_speed.md`` and ``train_speed.png`` (:mod:`speed_report`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed_common import METHODS, Plan
from speed_report import build_record, headline, run_precisions, write_results

from adaptune.hardware import host_record, matmul_peak

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"
ADAPTERS_PYTHON = ROOT / ".venv-adapters" / "bin" / "python"
TOOLS = ("adaptune", "peft", "adapters")
#: Every switch off: ``training.fast_dropout`` defaults to auto (on for CPU training), so plain says false.
PLAIN: dict[str, Any] = {"fast_dropout": False}
#: adaptune variants: name -> (TrainingConfig switches, needs frozen bottom blocks, bf16 only); each alone, on
#: top of :data:`PLAIN`.
VARIANTS: dict[str, tuple[dict[str, Any], bool, bool]] = {
    "plain": ({}, False, False),
    "bf16_base": ({"bf16_base": True}, False, True),
    "no_grad": ({"frozen_prefix_no_grad": True}, True, False),
    "cache": ({"activation_cache": "memory"}, True, False),
    "cache_mmap": ({"activation_cache": "mmap"}, True, False),
    "compile": ({"compile": True}, False, False),
    "padding_free": ({"padding_free": True}, False, False),
    "fast_dropout": ({"fast_dropout": True}, False, False),
    "trim_memory": ({"trim_memory": True}, False, False),
}
SIZES = {"full": (2048, 872, 3), "quick": (256, 128, 2)}


def frozen_bottom(method: str) -> bool:
    """True when the method leaves bottom blocks frozen (head-only and the top-2 variants)."""
    return method == "head" or METHODS[method]["top"] is not None


def fast_switches(method: str, precision: str) -> dict[str, Any]:
    """Every adaptune speed switch that applies to the method at this precision."""
    switches: dict[str, Any] = {"fast_dropout": True}
    if precision == "bf16":
        switches["bf16_base"] = True
    if frozen_bottom(method):
        switches["activation_cache"] = "memory"
    return switches


def adaptune_variants(method: str, precision: str, ablation: bool) -> list[tuple[str, dict[str, Any]]]:
    """``plain``, ``fast`` (all applicable speed switches) and ``lean`` (``fast`` with ``trim_memory``), plus
    each switch alone with ``ablation``."""
    runs = [("plain", dict(PLAIN))]
    fast = fast_switches(method, precision)
    if ablation:
        for name, (switches, needs_frozen, bf16_only) in VARIANTS.items():
            if (
                name != "plain"
                and not (name == "padding_free" and method == "prefix")  # a key/value prefix per example
                and (not needs_frozen or frozen_bottom(method))
                and (not bf16_only or precision == "bf16")
            ):
                runs.append((name, {**PLAIN, **switches}))
    if fast and fast not in [s for _n, s in runs]:
        runs.append(("fast", fast))
    runs.append(("lean", {**fast, "trim_memory": True}))
    return runs


def peer_supports(tool: str, method: str) -> bool:
    """peft has no bottleneck adapter (its peer is AdapterHub's seq_bn)."""
    return not (tool == "peft" and method.startswith("bottleneck"))


def read_examples(path: Path, limit: int | None, seed: int) -> list[tuple[str, int]]:
    """``(sentence, label)`` rows of an SST-2 TSV; a seeded subset of ``limit`` rows when given."""
    import numpy as np

    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    rows = [(line.rsplit("\t", 1)[0].strip(), int(line.rsplit("\t", 1)[1])) for line in lines if line.strip()]
    if limit is not None and limit < len(rows):
        keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=limit, replace=False))
        rows = [rows[i] for i in keep]
    return rows


def build_plan(train_n: int, dev_n: int, epochs: int, batch_size: int, seed: int) -> Plan:
    """Tokenise the examples once and fix every batch of every epoch."""
    from transformers import AutoTokenizer

    from adaptune.backbone import resolve_model
    from adaptune.config import DEFAULT_MODEL
    from adaptune.data.batching import eval_batches, train_batches

    model_dir = resolve_model(DEFAULT_MODEL).path
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def encode(rows: list[tuple[str, int]]) -> list[dict[str, Any]]:
        return [{"input_ids": tokenizer(t, truncation=True, max_length=256)["input_ids"], "label": y} for t, y in rows]

    train = encode(read_examples(SST2 / "train.tsv", train_n, seed))
    dev = encode(read_examples(SST2 / "dev.tsv", dev_n, seed))
    lengths = [len(r["input_ids"]) for r in train]
    hparams = {
        "batch_size": batch_size,
        "eval_batch_size": 64,
        "weight_decay": 0.01,
        "warmup_ratio": 0.06,
        "max_grad_norm": 1.0,
        "seed": seed,
    }
    return Plan(
        model_dir=model_dir,
        pad_id=int(tokenizer.pad_token_id),
        num_labels=2,
        train=train,
        epochs=[train_batches(lengths, batch_size, seed=seed, epoch=e) for e in range(epochs)],
        dev=dev,
        dev_batches=eval_batches([len(r["input_ids"]) for r in dev], 64),
        hparams=hparams,
    )


def worker_command(
    tool: str, method: str, precision: str, switches: dict[str, Any], plan: Path, out: Path
) -> list[str]:
    """The subprocess that measures one record."""
    common = ["--plan", str(plan), "--method", method, "--precision", precision, "--out", str(out)]
    if tool == "adapters":
        return [str(ADAPTERS_PYTHON), str(ROOT / "benchmarks" / "adapters_worker.py"), *common]
    extra = ["--switches", json.dumps(switches)] if tool == "adaptune" else []
    return [sys.executable, str(ROOT / "benchmarks" / "speed_workers.py"), tool, *common, *extra]


def run_worker(cmd: list[str], out: Path, timeout: float) -> tuple[dict[str, Any] | None, str]:
    """Run one worker; its measurements, or None and the end of its error output."""
    env = {**os.environ, "PYTHONPATH": "", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0 or not out.is_file():
        return None, (proc.stderr or proc.stdout)[-2000:]
    measured: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    measured["wall_s"] = round(time.perf_counter() - started, 1)
    return measured, ""


def planned_runs(args: argparse.Namespace) -> list[tuple[str, str, str, str, dict[str, Any]]]:
    """``(method, tool, precision, variant, switches)`` for every record asked for."""
    runs = []
    for method in args.methods:
        for precision in args.precisions:
            for tool in args.tools:
                if tool == "adaptune":
                    runs += [
                        (method, tool, precision, v, s) for v, s in adaptune_variants(method, precision, args.ablation)
                    ]
                elif peer_supports(tool, method):
                    runs.append((method, tool, precision, "plain", {}))
    return runs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="256 training examples, 2 epochs, 128 dev examples")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated: adaptune, peft, adapters")
    parser.add_argument(
        "--precisions",
        default="auto",
        help="comma-separated: fp32, bf16 (autocast); auto: both where bf16 is the faster precision here, else fp32",
    )
    parser.add_argument("--ablation", action="store_true", help="also each adaptune switch alone")
    parser.add_argument("--train-examples", type=int, help="SST-2 training examples (default 2048; quick 256)")
    parser.add_argument("--epochs", type=int, help="epochs over them (default 3; quick 2)")
    parser.add_argument(
        "--repeats", type=int, default=1, help="run every record N times (interleaved), keep the faster"
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per record")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="results folder")
    args = parser.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    args.tools = [t for t in args.tools.split(",") if t]
    args.precisions = run_precisions([p for p in args.precisions.split(",") if p])
    unknown = set(args.methods) - set(METHODS) | set(args.tools) - set(TOOLS) | set(args.precisions) - {"fp32", "bf16"}
    if unknown:
        parser.error(f"unknown choices: {sorted(unknown)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    train_n, dev_n, epochs = SIZES["quick" if args.quick else "full"]
    train_n, epochs = args.train_examples or train_n, args.epochs or epochs
    command = " ".join(["benchmarks/train_speed.py", *(argv if argv is not None else sys.argv[1:])])
    plan = build_plan(train_n, dev_n, epochs, batch_size=32, seed=42)
    peaks = {p: matmul_peak(p) for p in ("fp32", "bf16")}
    print(f"matmul peak: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s", flush=True)
    pairs, host = headline(args.precisions), host_record(probe=True)
    print(f"precisions {', '.join(args.precisions)}; headline pairs: {pairs['headline_precision']}", flush=True)
    best: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    failures = 0
    runs = planned_runs(args) * args.repeats  # repeats interleave the tools, and the faster run of each is kept
    with tempfile.TemporaryDirectory(prefix="train-speed-") as work:
        plan_path = Path(work) / "plan.json"
        plan.write(plan_path)
        for index, (method, tool, precision, variant, switches) in enumerate(runs):
            out = Path(work) / f"result-{index}.json"
            measured, error = run_worker(
                worker_command(tool, method, precision, switches, plan_path, out), out, args.timeout
            )
            if measured is None:
                failures += 1
                print(f"FAILED {method} {tool} {precision} {variant}:\n{error}", file=sys.stderr, flush=True)
                continue
            record = build_record(plan, method, tool, precision, variant, switches, measured, peaks, command)
            record.update(headline_precision=pairs["headline_precision"], headline_why=pairs["headline_why"], host=host)
            key = (method, tool, precision, variant)
            record["repeats"] = best[key]["repeats"] + 1 if key in best else 1
            if key not in best or record["tokens_per_s"] > best[key]["tokens_per_s"]:
                best[key] = record
            best[key]["repeats"] = record["repeats"]
            print(
                f"{method:16s} {tool:9s} {precision} {variant:10s} {record['tokens_per_s']:8.0f} tok/s "
                f"(later epochs {record['tokens_per_s_later_epochs']:8.0f})  rss {record['peak_rss_mb']:6.0f} MB  "
                f"dev {record['dev_metric']:.4f}  mfu {record['mfu']:.3f}",
                flush=True,
            )
    write_results(Path(args.out), list(best.values()), peaks, command, quick=args.quick, pairs=pairs)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
