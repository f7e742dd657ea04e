"""Load benchmark of ``adaptune serve``: 1 adapter vs 8 adapters mixed, over HTTP on loopback, and peft in-process.

Setup: the real all-MiniLM-L6-v2 (the packaged copy, offline) and 8 LoRA seq_cls adapters (r=8 on query and value,
``B`` and the head random, so every adapter answers differently; training is not needed to measure speed).
Texts: the SST-2 dev sentences of ``../shared/data/sst2/dev.tsv``.

1. ``adaptune serve`` runs in a subprocess with the 8 adapters. A fixed offered load of ``--clients`` concurrent
   closed-loop clients (raw keep-alive HTTP/1.1 over asyncio streams, in this process) sends ``--requests``
   classify requests of ``--texts-per-request`` texts each: first all to one adapter, then spread over the 8
   (adapter ``i % 8`` for request ``i``). Measured: requests/s, examples/s, p50/p99 request latency, errors
   (non-200 answers), and the CPU milliseconds per request of the server and of the load generator.
2. peft in-process: the same base in transformers with 8 LoRA adapters (same shapes), the same texts in batches
   of ``--peft-batch`` (32), fp32, each row with its own adapter through peft's ``adapter_names=`` argument; every
   example counts as one request, latency is per batch.

Both run ``--rounds`` times (the server's scenarios alternating 1, 8, 1, 8, ...); each record is the median round
by requests/s, with every round's rate in ``rounds_requests_per_s`` (two loopback runs of a few seconds on a
2-core machine differ by a few percent). Records go to ``benchmarks/results/serve.json`` as ``{"adapters", "tool",
"requests_per_s", "examples_per_s", "p50_ms", "p99_ms", "errors", ..., "host"}`` (the server in fp32, as peft; the
host with its matmul probe, :func:`adaptune.hardware.host_record`), with ``serve.md`` (table) and
``serve.png`` (chart) beside it.

    .venv/bin/python benchmarks/serve_load.py            # full run (quiet machine: a few minutes)
    .venv/bin/python benchmarks/serve_load.py --quick    # smoke run, written to /tmp/serve_quick.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from adaptune.backbone import fingerprint, load_backbone
from adaptune.config import ModelConfig, validate_config
from adaptune.hardware import host_record
from adaptune.inference import build_model
from adaptune.io import save_adapter
from adaptune.peft_interop.importer import describe_adapter

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
ROOT = Path(__file__).resolve().parents[1]
SST2_DEV = ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv"
RESULTS = ROOT / "benchmarks" / "results"
N_ADAPTERS = 8
RANK = 8


def sst2_texts(limit: int | None = None) -> list[str]:
    """The SST-2 dev sentences (first column of the TSV, header skipped)."""
    lines = SST2_DEV.read_text(encoding="utf-8").splitlines()[1:]
    texts = [line.split("\t")[0].strip() for line in lines if line.strip()]
    return texts[:limit] if limit else texts


def make_adapters(folder: Path, count: int = N_ADAPTERS) -> list[str]:
    """``count`` LoRA seq_cls adapters on MiniLM with random ``B`` and head (distinct seeds)."""
    backbone = load_backbone(ModelConfig(name_or_path=MINILM))
    base_fp, base_params = fingerprint(backbone.model), sum(p.numel() for p in backbone.model.parameters())
    run = validate_config({"method": {"name": "lora", "r": RANK}, "task": {"name": "seq_cls"}})
    names = []
    for index in range(count):
        torch.manual_seed(index)
        model = build_model(backbone, run.method, run.task, ["negative", "positive"])
        with torch.no_grad():
            for name, param in model.adapter_parameters().items():
                if "lora_b" in name:
                    param.normal_(std=0.02)
        description = describe_adapter(
            model, name_or_path=MINILM, base_fingerprint=base_fp, base_params=base_params, max_length=128
        )
        names.append(f"sst2-lora-{index}")
        save_adapter(folder / names[-1], model.trainable_state(), description)
        model.method.detach(backbone.model)
    return names


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(adapters: Path, port: int, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    """``adaptune serve`` in a subprocess; returns once ``/health`` answers."""
    command = [sys.executable, "-m", "adaptune.cli", "serve", "--base", MINILM, "--adapters", str(adapters)]
    command += ["--port", str(port), "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
    command += ["--threads", str(args.threads)] if args.threads else []
    command += [] if args.padding_free else ["--no-padding-free"]
    command += ["--precision", "fp32"]  # peft's precision here, on any host (not serve's auto)
    return launch(command, port, "adaptune-serve-load.log")


def launch(command: list[str], port: int, log_name: str) -> subprocess.Popen[bytes]:
    """Run ``command`` (an ``adaptune serve``) with its output in ``log_name`` under the temp folder; returns once
    ``/health`` answers on ``port``."""
    log = open(Path(tempfile.gettempdir()) / log_name, "wb")  # noqa: SIM115 (lives with the process)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"adaptune serve exited with {process.returncode}; see {log.name}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("adaptune serve did not start within 300 s")


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(
    tool: str, adapters: int, wall: float, latencies: list[float], examples: int, errors: int
) -> dict[str, Any]:
    """One result record."""
    ordered = sorted(latencies)
    pick = (lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000) if ordered else (lambda q: 0.0)
    return {
        "adapters": adapters,
        "tool": tool,
        "requests_per_s": round(len(latencies) / wall, 2),
        "examples_per_s": round(examples / wall, 2),
        "p50_ms": round(statistics.median(ordered) * 1000, 2) if ordered else 0.0,
        "p99_ms": round(pick(0.99), 2),
        "errors": errors,
    }


def request_bytes(port: int, adapter: str, texts: list[str]) -> bytes:
    """One ``POST /v1/classify`` as HTTP/1.1 bytes (keep-alive), serialised before the clock starts."""
    body = json.dumps({"adapter": adapter, "inputs": texts}).encode()
    head = (
        f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length (what uvicorn sends for JSON)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = next(int(line.split(b":", 1)[1]) for line in lines[1:] if line.lower().startswith(b"content-length:"))
    return status, await reader.readexactly(length)


async def offered_load(port: int, jobs: list[tuple[str, list[str]]], clients: int) -> tuple[float, list[float], int]:
    """Send ``jobs`` from ``clients`` concurrent closed-loop clients; ``(wall s, latencies s, errors)``.

    Each client holds one keep-alive connection and speaks HTTP/1.1 over asyncio streams with requests serialised
    in advance: the load generator shares the server's cores, so it must cost as little as possible (as wrk
    does). An answer counts as correct when its status is 200 and
    it holds one prediction per text."""
    payloads = [(request_bytes(port, adapter, texts), len(texts)) for adapter, texts in jobs]
    queue: asyncio.Queue[tuple[bytes, int]] = asyncio.Queue()
    for payload in payloads:
        queue.put_nowait(payload)
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while not queue.empty():
                payload, count = queue.get_nowait()
                started = time.perf_counter()
                try:
                    writer.write(payload)
                    status, body = await read_response(reader)
                    ok = status == 200 and body.count(b'"label":') == count
                    problem = "" if ok else f"HTTP {status}: {body[:200]!r}"
                except (OSError, asyncio.IncompleteReadError, ValueError) as err:
                    ok, problem = False, f"{type(err).__name__}: {err}"
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                if not ok and errors < 5:
                    print(f"error: {problem}", file=sys.stderr, flush=True)
                latencies.append(time.perf_counter() - started)
                errors += 0 if ok else 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return time.perf_counter() - started, latencies, errors


def run_loop(coroutine: Any) -> Any:
    """``asyncio.run`` on uvloop when it is installed (the server's loop too)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def make_jobs(names: list[str], texts: list[str], requests: int, per_request: int) -> list[tuple[str, list[str]]]:
    """Request ``i``: adapter ``names[i % len(names)]``, the next ``per_request`` texts (cycling)."""
    return [
        (names[i % len(names)], [texts[(i * per_request + k) % len(texts)] for k in range(per_request)])
        for i in range(requests)
    ]


def run_server_scenarios(names: list[str], folder: Path, texts: list[str], args: argparse.Namespace) -> list[dict]:
    """1 adapter and 8 mixed against one running server at the same offered load, in ``--rounds`` alternating
    rounds (1, 8, 1, 8, ...); each scenario's record is its median round by requests/s, with every round's rate."""
    port = free_port()
    process = start_server(folder, port, args)
    rounds: dict[int, list[dict[str, Any]]] = {1: [], N_ADAPTERS: []}
    try:
        warm = make_jobs(names, texts, args.clients * 2, args.texts_per_request)
        run_loop(offered_load(port, warm, args.clients))
        for _ in range(args.rounds):
            for adapters in (1, N_ADAPTERS):
                rounds[adapters].append(one_round(port, process.pid, names[:adapters], texts, args))
                print(json.dumps(rounds[adapters][-1]), flush=True)
    finally:
        process.terminate()
        process.wait(timeout=60)
    return [median_round(found) for found in rounds.values()]


def one_round(port: int, pid: int, names: list[str], texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """``--requests`` requests spread over ``names``: one record, with the CPU each side used per request."""
    jobs = make_jobs(names, texts, args.requests, args.texts_per_request)
    client_cpu, server_cpu = time.process_time(), process_cpu_s(pid)
    wall, latencies, errors = run_loop(offered_load(port, jobs, args.clients))
    client_cpu, server_cpu = time.process_time() - client_cpu, process_cpu_s(pid) - server_cpu
    record = summary("adaptune-server", len(names), wall, latencies, args.requests * args.texts_per_request, errors)
    return {
        **record,
        "clients": args.clients,
        "texts_per_request": args.texts_per_request,
        "padding_free": args.padding_free,
        "precision": "fp32",
        "server_cpu_ms_per_request": round(1000 * server_cpu / args.requests, 2),
        "client_cpu_ms_per_request": round(1000 * client_cpu / args.requests, 2),
    }


def median_round(found: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median requests/s (errors summed over all rounds, every round's rate listed)."""
    ordered = sorted(found, key=lambda r: r["requests_per_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["errors"] = sum(r["errors"] for r in found)
    chosen["rounds_requests_per_s"] = [r["requests_per_s"] for r in found]
    return chosen


def run_peft(texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """peft's mixed-adapter batch in-process: 8 LoRA adapters, ``adapter_names`` per row, batch 32, fp32."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel, AutoTokenizer

    from adaptune.backbone import resolve_model

    where = resolve_model(MINILM).path
    tokenizer = AutoTokenizer.from_pretrained(where)
    base = AutoModel.from_pretrained(where, dtype=torch.float32).eval()
    names = [f"a{i}" for i in range(N_ADAPTERS)]
    config = LoraConfig(r=RANK, lora_alpha=16, target_modules=["query", "value"], init_lora_weights=False)
    model = get_peft_model(base, config, adapter_name=names[0])
    for name in names[1:]:
        model.add_adapter(name, config)
    heads = [torch.nn.Linear(base.config.hidden_size, 2) for _ in names]
    model.eval()
    latencies: list[float] = []

    def step(batch_texts: list[str], offset: int) -> None:
        enc = tokenizer(batch_texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        rows = [names[(offset + k) % N_ADAPTERS] for k in range(len(batch_texts))]
        hidden = model(**enc, adapter_names=rows).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        for index, head in enumerate(heads):
            chosen = [k for k, row in enumerate(rows) if row == names[index]]
            if chosen:
                torch.softmax(head(pooled[chosen]), -1)

    found = []
    with torch.no_grad():
        step(texts[: args.peft_batch], 0)  # warm-up
        for _ in range(args.rounds):  # the dev texts once per round, like the server's rounds
            latencies = []
            started = time.perf_counter()
            for offset in range(0, len(texts), args.peft_batch):
                t0 = time.perf_counter()
                step(texts[offset : offset + args.peft_batch], offset)
                latencies.append(time.perf_counter() - t0)
            record = summary("peft", N_ADAPTERS, time.perf_counter() - started, latencies, len(texts), 0)
            record["requests_per_s"] = record["examples_per_s"]  # in-process, every example is one request
            found.append(record)
            print(json.dumps(record), flush=True)
    return {**median_round(found), "batch": args.peft_batch, "latency": "per batch"}


def write_reports(records: list[dict[str, Any]], out: Path) -> None:
    """JSON records, a markdown table and a bar chart beside them."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")
    header = "| tool | adapters | requests/s | examples/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|---|\n"
    rows = "".join(
        f"| {r['tool']} | {r['adapters']} | {r['requests_per_s']} | {r['examples_per_s']} | {r['p50_ms']} | "
        f"{r['p99_ms']} | {r['errors']} |\n"
        for r in records
    )
    out.with_suffix(".md").write_text(header + rows, encoding="utf-8")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    labels = [f"{r['tool']}\n{r['adapters']} adapter(s)" for r in records]
    ax.bar(labels, [r["examples_per_s"] for r in records], color=["#4c72b0", "#55a868", "#c44e52"][: len(records)])
    ax.set_ylabel("examples / s")
    ax.set_title("MiniLM, SST-2 dev, LoRA r=8 (serve_load.py)")
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Small smoke run; results to /tmp/serve_quick.json.")
    parser.add_argument("--clients", type=int, default=64, help="Concurrent closed-loop clients (offered load).")
    parser.add_argument("--requests", type=int, default=1600, help="Requests per scenario and round.")
    parser.add_argument("--rounds", type=int, default=3, help="Alternating rounds per scenario (median reported).")
    parser.add_argument("--texts-per-request", type=int, default=1, help="Texts in each classify request.")
    parser.add_argument("--max-batch", type=int, default=32, help="Server: rows per forward pass.")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="Server: wait for a batch to fill.")
    parser.add_argument("--peft-batch", type=int, default=32, help="peft: batch size.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the server and of peft.")
    parser.add_argument(
        "--no-padding-free", dest="padding_free", action="store_false", help="Server: padded forward passes."
    )
    parser.add_argument("--out", type=Path, default=None, help="Results JSON (default results/serve.json).")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds = min(args.requests, 192), 1
    args.out = args.out or (Path(tempfile.gettempdir()) / "serve_quick.json" if args.quick else RESULTS / "serve.json")
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    texts = sst2_texts(256 if args.quick else None)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "adapters"
        names = make_adapters(folder)
        records = run_server_scenarios(names, folder, texts, args)
    records.append(run_peft(texts, args))
    print(json.dumps(records[-1]), flush=True)
    host = host_record(probe=True)
    records = [{**record, "host": host} for record in records]
    write_reports(records, args.out)
    one, mixed, peft = records
    print(
        f"8 mixed / 1 adapter: {mixed['requests_per_s'] / one['requests_per_s']:.3f}x (target >= 0.95); "
        f"server 8 mixed / peft 8 mixed, examples/s: {mixed['examples_per_s'] / peft['examples_per_s']:.3f}x "
        f"(target >= 1); errors {one['errors'] + mixed['errors']}; written to {args.out}"
    )


if __name__ == "__main__":
    main()
