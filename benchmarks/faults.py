"""Fault injection: SIGKILL a training process at random points, resume it, and check the result is exact.

    .venv/bin/python benchmarks/faults.py                          # 100 kills -> benchmarks/results/faults.json
    .venv/bin/python benchmarks/faults.py --kills 5 --out /tmp/faults.json

A child process runs ``adaptune train CONFIG --set training.output_dir=RUN [--resume]`` (the real CLI command,
called in the child) on a tiny random BERT (hidden 32, 2 layers, ``tests/tiny.py``) with a bottleneck adapter
(dropout on, so RNG state matters), the first 64 bundled intent examples, batch 8, 2 epochs, evaluating on 16 dev
examples and checkpointing after every optimiser step. Each kill point, drawn from a seeded RNG, is one of:

``time``   a random moment after the child starts (loading, resuming, training, evaluating, saving);
``write``  a random file write (checkpoint tensors, ``state.json``, ``latest.json``, the adapter, reports), plus a
           random delay of 0-5 ms, so the kill lands in or just after the write and its ``fsync``;
``stall``  a random file write that stops half-way (half the bytes in the temporary file, as on a slow disk),
           then the kill: a torn file is guaranteed.

After a kill the run is resumed with ``--resume``, killed again up to a random number of times (1-4), and finally
left to finish. Every kill is followed by two loads: the adapter folder, if present, must either be refused with
``AdapterFileError`` or hold the uninterrupted run's tensors; and the resumed child must load the checkpoint (a
``CheckpointError`` or any other failure counts as a corrupt load). A finished run's ``adapter.safetensors`` must
hold tensors bitwise equal (same names, dtypes, shapes and bytes) to those of an uninterrupted run made by the same
harness, and its ``metrics.jsonl`` must be equal except for timing. The results file holds
``{"kills": N, "exact_resumes": N, "corrupt_loads": N, "bad_input_kinds": N, "bad_input_cases": N}``: kills whose
run resumed and ended with the uninterrupted weights, kills after which a load failed or a result differed, and the
bad-input catalogue beside them (``tests/reliability/test_bad_inputs.py`` and its ``test_bad_inputs_*.py``
companions: the kinds of bad input their tables list and the test cases they hold; ``--catalogue-only`` recounts
those without new kills).

Children are forked from a ``multiprocessing`` fork server that imported adaptune once, so a restart costs
tens of milliseconds instead of the five seconds that importing torch and transformers takes on a small machine;
each child is still a separate process that dies by SIGKILL. Tests import :func:`run_faults` from this file
(``tests/reliability/test_kill_resume.py`` runs 20 kills in CI).
"""

from __future__ import annotations

import argparse
import ast
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
INTENTS = ROOT / "src" / "adaptune" / "resources" / "data" / "intents"
RESULTS = ROOT / "benchmarks" / "results" / "faults.json"
SEGMENT_TIMEOUT_S = 120.0  # a child that runs longer has hung
TIMING_FIELDS = ("tokens_per_s",)
#: Imported once by the fork server, so that children do not pay for them (a missing one is skipped).
PRELOAD = (
    "adaptune.cli",
    "adaptune.api",
    "adaptune.evaluation.plots",
    "adaptune.evaluation.metrics",
    "sklearn.metrics",
    "transformers.models.bert.modeling_bert",
    "transformers.models.bert.tokenization_bert_fast",
)


# --- the child ---------------------------------------------------------------------------------------------


def _stall_half_way(path: Path, data: bytes, events: Connection, index: int) -> None:
    """Write half of ``data`` to a temporary file beside ``path`` (as the atomic writer does), then hang."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, _ = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.write(fd, data[: len(data) // 2])
    os.fsync(fd)
    events.send(("stalled", index, str(path)))
    time.sleep(SEGMENT_TIMEOUT_S)


def _install_write_hooks(events: Connection, stall_at: int) -> None:
    """Report every atomic file write to the parent; make write number ``stall_at`` hang half-way."""
    import adaptune.io as io_module
    import adaptune.training.checkpoint as checkpoint_module

    original = io_module.atomic_write_bytes
    count = 0

    def reporting_write(path: str | Path, data: bytes) -> None:
        nonlocal count
        count += 1
        events.send(("write", count, str(path)))
        if count == stall_at:
            _stall_half_way(Path(path), data, events, count)
        original(path, data)

    io_module.atomic_write_bytes = reporting_write  # atomic_write_text/json and save_adapter look it up here
    checkpoint_module.atomic_write_bytes = reporting_write  # imported by name for state.safetensors


def _child(args: list[str], events: Connection, stall_at: int, log: str) -> None:
    """Entry point of a training child: output to ``log``, hooks on, then the CLI's ``train`` command."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    _install_write_hooks(events, stall_at)
    from adaptune.cli import app

    app(args=args, prog_name="adaptune")  # exits: 0 when finished, 2 on an adaptune error, 1 on a traceback


# --- one child process: start, maybe kill, wait ------------------------------------------------------------


@dataclass(frozen=True)
class KillPlan:
    """When to kill a segment: ``kind`` is ``none``, ``time``, ``write`` or ``stall``."""

    kind: str
    after_s: float = 0.0
    at_write: int = 0
    jitter_s: float = 0.0


@dataclass
class Segment:
    """How one child process ended: killed (and right after which write), or its exit code."""

    killed: bool
    exitcode: int | None
    writes: list[str]
    wall_s: float

    @property
    def where(self) -> str:
        return Path(self.writes[-1]).name if self.writes else "before any write"


def _kill(process: Any) -> None:
    if process.exitcode is None:
        os.kill(process.pid, signal.SIGKILL)
    process.join()


def _run_segment(ctx: Any, args: list[str], plan: KillPlan, log: Path) -> Segment:
    """Run one child until it exits or the plan kills it."""
    receiver, sender = ctx.Pipe(duplex=False)
    stall_at = plan.at_write if plan.kind == "stall" else 0
    process = ctx.Process(target=_child, args=(args, sender, stall_at, str(log)), daemon=True)
    started = time.monotonic()
    process.start()
    sender.close()
    writes: list[str] = []
    deadline = started + (plan.after_s if plan.kind == "time" else SEGMENT_TIMEOUT_S)
    while True:
        ready = wait([receiver, process.sentinel], max(0.0, deadline - time.monotonic()))
        if not ready:
            _kill(process)
            if plan.kind != "time":
                raise RuntimeError(f"a training child hung for {SEGMENT_TIMEOUT_S:.0f} s:\n{_tail(log)}")
            break
        if receiver not in ready:
            process.join()
            break
        try:
            kind, index, path = receiver.recv()
        except EOFError:  # the child closed its end: it is exiting
            process.join()
            break
        if kind == "write":
            writes.append(path)
        if kind == "stalled" or (plan.kind == "write" and kind == "write" and index == plan.at_write):
            time.sleep(plan.jitter_s if kind == "write" else 0.0)
            _kill(process)
            break
    receiver.close()
    killed = process.exitcode == -signal.SIGKILL
    return Segment(killed, process.exitcode, writes, time.monotonic() - started)


# --- the reference run and the kill plans ------------------------------------------------------------------


@dataclass
class Reference:
    """The uninterrupted run: its adapter tensors, its metrics log, its writes in order, and its duration."""

    weights: dict[str, tuple[str, tuple[int, ...], bytes]]
    metrics: list[dict[str, Any]]
    writes: list[str]
    wall_s: float

    def writes_after(self, step: int | None) -> int:
        """How many writes a run resumed from checkpoint ``step`` still makes."""
        if step is None:
            return len(self.writes)
        pointers = [i for i, path in enumerate(self.writes) if Path(path).name == "latest.json"]
        return len(self.writes) - (pointers[step - 1] + 1) if 0 < step <= len(pointers) else len(self.writes)


def write_config(model: Path, folder: Path, data: Path = INTENTS) -> Path:
    """The training config the children run, as a YAML file in ``folder``."""
    config = {
        "model": {"name_or_path": str(model)},
        "method": {"name": "bottleneck", "reduction_factor": 4, "dropout": 0.1},
        "task": {"name": "seq_cls"},
        "data": {
            "train": str(data / "train.jsonl"),
            "dev": str(data / "dev.jsonl"),
            "max_train_examples": 64,
            "max_eval_examples": 16,
            "batch_size": 8,
        },
        "training": {"epochs": 2, "eval_every": 1, "log_every": 1, "num_threads": 1, "progress": False},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "faults.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _args(config: Path, out: Path, resume: bool) -> list[str]:
    return ["train", str(config), "--set", f"training.output_dir={out}", *(["--resume"] if resume else [])]


def _metrics(out: Path) -> list[dict[str, Any]]:
    """The run's metrics log without its timing fields (which differ between any two runs)."""
    path = out / "metrics.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS} for line in lines]


def _weights(out: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """The adapter's tensors as ``name -> (dtype, shape, raw bytes)``, for a bitwise comparison.

    The file's bytes are not compared: safetensors writes its metadata from a hash map, whose order differs
    between processes, so two files with identical tensors can differ in their header.
    """
    import torch
    from safetensors.torch import load_file

    from adaptune.io import WEIGHTS_FILE

    tensors = load_file(out / "adapter" / WEIGHTS_FILE)
    return {
        name: (str(t.dtype), tuple(t.shape), t.contiguous().flatten().view(torch.uint8).numpy().tobytes())
        for name, t in tensors.items()
    }


def make_reference(ctx: Any, config: Path, out: Path) -> Reference:
    """Train once without kills, in a child made the same way as the others."""
    out.mkdir(parents=True, exist_ok=True)
    segment = _run_segment(ctx, _args(config, out, resume=False), KillPlan("none"), out / "child.log")
    if segment.exitcode != 0:
        raise RuntimeError(f"the reference run failed (exit {segment.exitcode}):\n{_tail(out / 'child.log')}")
    return Reference(_weights(out), _metrics(out), segment.writes, segment.wall_s)


def _checkpoint_step(out: Path) -> int | None:
    """The step ``latest.json`` points at, or None (no checkpoint, or one the child will refuse)."""
    try:
        step = json.loads((out / "checkpoints" / "latest.json").read_text(encoding="utf-8"))["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return step if isinstance(step, int) else None


def plan_kill(rng: random.Random, reference: Reference, out: Path) -> KillPlan:
    """A random kill point for the next segment of the run in ``out``."""
    kind = rng.choices(("time", "write", "stall"), weights=(1, 1, 1))[0]
    if kind == "time":
        return KillPlan("time", after_s=rng.uniform(0.0, reference.wall_s))
    remaining = max(1, reference.writes_after(_checkpoint_step(out)))
    return KillPlan(kind, at_write=rng.randint(1, remaining), jitter_s=rng.uniform(0.0, 0.005))


# --- runs made of killed and resumed segments -------------------------------------------------------------


@dataclass
class FaultReport:
    """What the kills did. ``kills == exact_resumes + corrupt_loads`` when every run finished."""

    kills: int = 0
    exact_resumes: int = 0
    corrupt_loads: int = 0
    runs: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    landed: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)
    steps_not_redone: int = 0  # optimiser steps that resumed children took from checkpoints instead of redoing

    def as_json(self) -> dict[str, int]:
        return {"kills": self.kills, "exact_resumes": self.exact_resumes, "corrupt_loads": self.corrupt_loads}


def _tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]) if log.is_file() else ""


def _adapter_problem(out: Path, reference: Reference) -> str | None:
    """Load the adapter folder left by a kill: it must be refused, or hold the uninterrupted run's tensors."""
    from adaptune.errors import AdapterFileError
    from adaptune.io import load_adapter

    if not (out / "adapter").exists():
        return None
    try:
        load_adapter(out / "adapter")
    except AdapterFileError:
        return None  # refused, as a half-written adapter must be
    except Exception as err:
        return f"loading the adapter left by a kill raised {type(err).__name__}: {err}"
    return None if _weights(out) == reference.weights else "an adapter left by a kill loaded with other weights"


def _finish(out: Path, reference: Reference, segment: Segment, report: FaultReport, kills: int) -> None:
    """Score a run whose last child exited by itself: exact, or every kill of the run is a corrupt load."""
    problem = None
    if segment.exitcode != 0:
        problem = f"the resumed child exited with {segment.exitcode}:\n{_tail(out / 'child.log')}"
    elif _weights(out) != reference.weights:
        problem = "the finished run's adapter.safetensors differs from the uninterrupted run's"
    elif _metrics(out) != reference.metrics:
        problem = "the finished run's metrics.jsonl differs from the uninterrupted run's"
    if problem is not None and kills == 0:
        raise RuntimeError(f"{out.name}: a run without kills failed, so the harness is broken: {problem}")
    if problem is None:
        report.exact_resumes += kills
    else:
        report.corrupt_loads += kills
        report.problems.append(f"{out.name}: {problem}")


def faulty_run(
    ctx: Any, config: Path, out: Path, reference: Reference, rng: random.Random, budget: int, report: FaultReport
) -> None:
    """Train in ``out`` with up to ``budget`` kills, resuming after each; then let it finish and score it."""
    kills, resume = 0, False
    out.mkdir(parents=True, exist_ok=True)
    while True:
        plan = plan_kill(rng, reference, out) if kills < budget else KillPlan("none")
        step = _checkpoint_step(out) if resume else None
        report.steps_not_redone += step or 0
        segment = _run_segment(ctx, _args(config, out, resume), plan, out / "child.log")
        ending = f"killed after {segment.where}" if segment.killed else f"exit {segment.exitcode}"
        start = f"from step {step}" if step is not None else "from the start"
        report.segments.append(f"{out.name} {plan.kind:5s} {start:14s} {segment.wall_s:5.2f} s  {ending}")
        if not segment.killed:
            _finish(out, reference, segment, report, kills)
            return
        kills, resume = kills + 1, True
        report.kills += 1
        report.kinds[plan.kind] += 1
        report.landed[segment.where] += 1
        problem = _adapter_problem(out, reference)
        if problem is not None:
            report.corrupt_loads += 1
            report.problems.append(f"{out.name}: {problem}")
            kills -= 1  # scored here, not again when the run finishes


def _started() -> None:
    """A child that does nothing: starting it starts the fork server."""


def fork_server() -> Any:
    """A fork-server context whose server imported adaptune once (children start in milliseconds).

    The server is started here, so that the reference run's duration (the range of ``time`` kills) does not
    include its imports.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(list(PRELOAD))
    process = ctx.Process(target=_started)
    process.start()
    process.join()
    return ctx


def run_faults(
    model: Path, work: Path, kills: int, *, seed: int = 0, max_per_run: int = 4, log: Any = None
) -> FaultReport:
    """Kill and resume training children until ``kills`` kills were made; see the module docstring."""
    ctx = fork_server()
    config = write_config(model, work)
    reference = make_reference(ctx, config, work / "reference")
    rng = random.Random(seed)
    report = FaultReport()
    while report.kills < kills:
        out = work / f"run-{report.runs:03d}"
        report.runs += 1
        budget = min(kills - report.kills, rng.randint(1, max_per_run))
        faulty_run(ctx, config, out, reference, rng, budget, report)
        if log is not None:
            log(f"run {report.runs}: {report.as_json()}")
    return report


# --- the bad-input catalogue --------------------------------------------------------------------------------

#: The bad-input catalogue: ``test_bad_inputs.py`` (first tour) and its companions ``test_bad_inputs_*.py``
#: (the second tour: data, server, training), each with a table of kinds in its docstring.
CATALOGUE = sorted((ROOT / "tests" / "reliability").glob("test_bad_inputs*.py"))


def _table_kinds(path: Path) -> int:
    """The rows of the kinds table in ``path``'s docstring (between its ``=====`` rules; continuation lines of a
    row leave its first column blank)."""
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    lines = doc.splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("=====")]
    if len(rules) < 3:
        return 0
    width = len(lines[rules[0]].split()[0])  # the first column's rule
    return sum(1 for row in lines[rules[1] + 1 : rules[2]] if row[:width].strip())


def catalogue() -> dict[str, int]:
    """The bad-input catalogue (:data:`CATALOGUE`) in two numbers: the kinds of bad input its tables list, and the
    test cases pytest collects from its files (each a refusal or warning it checks)."""
    kinds = sum(_table_kinds(path) for path in CATALOGUE)
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *map(str, CATALOGUE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    cases = sum(1 for line in collected.stdout.splitlines() if "::" in line)
    return {"bad_input_kinds": kinds, "bad_input_cases": cases}


# --- command line ------------------------------------------------------------------------------------------


def _tiny_bert(folder: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import make_tiny_bert

    return make_tiny_bert(folder)


def main(argv: list[str] | None = None) -> int:
    from adaptune.io import atomic_write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=100, help="number of SIGKILLs (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results file (default {RESULTS})")
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument(
        "--catalogue-only",
        action="store_true",
        help="only recount the bad-input catalogue; keep the kill figures already in the results file",
    )
    options = parser.parse_args(argv)
    counts = catalogue()
    print(f"bad-input catalogue: {counts['bad_input_kinds']} kinds, {counts['bad_input_cases']} test cases")
    if options.catalogue_only:
        previous = json.loads(options.out.read_text(encoding="utf-8")) if options.out.is_file() else {}
        atomic_write_json(options.out, {**previous, **counts})
        print(f"{options.out}: {json.dumps({**previous, **counts})}")
        return 0
    with tempfile.TemporaryDirectory(prefix="adaptune-faults-") as temporary:
        work = options.work or Path(temporary)
        started = time.monotonic()
        model = _tiny_bert(work / "tiny_bert")
        report = run_faults(model, work, options.kills, seed=options.seed, log=print)
    for line in report.segments:
        print(line)
    print(f"{report.runs} runs in {time.monotonic() - started:.0f} s; kill kinds {dict(report.kinds)}")
    print(f"kills landed after: {dict(report.landed.most_common())}")
    for problem in report.problems:
        print(f"PROBLEM {problem}")
    record = {**report.as_json(), **counts}
    atomic_write_json(options.out, record)
    print(f"kills {report.kills}, exact resumes {report.exact_resumes}, corrupt loads {report.corrupt_loads}; {counts}")
    print(f"{options.out}: {json.dumps(record)}")
    return 0 if report.corrupt_loads == 0 and report.exact_resumes == report.kills else 1


if __name__ == "__main__":
    sys.exit(main())
