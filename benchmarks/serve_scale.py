"""Many adapters on one ``adaptune serve``: 1, 8, 64 and 256 LoRA adapters on MiniLM, and 256 with 64 loaded.

Setup: the real all-MiniLM-L6-v2 (the packaged copy, offline). One short real LoRA training (``--train-steps``
steps, r=8 on query and value, seq_cls) on the bundled intents data (``src/adaptune/resources/data/intents``), then
256 copies whose LoRA A and B are seeded random tensors of the trained shapes (each scaled to the trained tensor's
standard deviation; the head stays the trained one), written with the project's own writer
(:func:`adaptune.io.save_adapter`), so every adapter answers differently. Request texts: the intents dev and test
sentences, one per request.

For each adapter count a real ``adaptune serve`` process runs over loopback with exactly that many adapters in its
folder (hard links), every one loading on first use. Measured per server:

* memory: VmRSS of the server (``/proc/<pid>/status``) after start-up (nothing loaded), after the first request
  (one adapter loaded, the server warmed up) and after one request to each adapter (all loaded, or as many as the
  limit keeps); the growth per loaded adapter from one to all, next to the adapter's tensor bytes
  (``GET /v1/adapters``) and its file size;
* cold loads: the first request to each adapter, sent one at a time (client latency, median), next to warm
  single requests, and the server's own load time (``adaptune_adapter_load_seconds`` sum / count);
* throughput: ``--clients`` closed-loop clients (serve_load.py's raw keep-alive HTTP/1.1 load generator) send
  ``--requests`` classify requests spread over all the server's adapters, **uniform** (the headline: the most
  distinct adapters per micro-batch, the hard case for one shared forward pass) and **Zipf-like** (adapter of rank
  ``k`` with weight ``1/(k+1)``, what many tenants' traffic looks like); requests/s, p50/p99 latency, errors.

The eviction run serves the 256 adapters with ``--max-loaded-adapters 64`` under the same two traffic mixes: the
loads and evictions during the measured rounds (from ``/metrics``) show what the LRU costs. Every scenario runs
``--rounds`` times, all servers' rounds alternating (1, 8, 64, 256, 256/64, 1, ...), each figure the median round.

Records go to ``benchmarks/results/serve_scale.json`` (one per adapter count and one for the eviction run, each with
the ``host`` and the server ``command``; ``uniform`` and ``zipf`` results and the requests/s ratio to the
1-adapter server), with ``serve_scale.md`` (table) beside it. Targets: 64 vs 1 adapter >= 0.9x and 256 vs 1 >= 0.8x
requests/s (uniform).

    .venv/bin/python benchmarks/serve_scale.py            # full run (a quiet machine: about 10 minutes)
    .venv/bin/python benchmarks/serve_scale.py --quick    # smoke run (1 and 4 adapters), to /tmp/serve_scale_quick.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch
from serve_load import MINILM, RESULTS, free_port, launch, median_round, offered_load, run_loop, summary

from adaptune import load_config, train
from adaptune.hardware import host_record
from adaptune.io import load_adapter, save_adapter

ROOT = Path(__file__).resolve().parents[1]
INTENTS = ROOT / "src" / "adaptune" / "resources" / "data" / "intents"
COUNTS = (1, 8, 64, 256)
EVICTION = (256, 64)  # adapters served, most loaded at once
QUICK_COUNTS = (1, 4)
QUICK_EVICTION = (4, 2)


def intents_texts() -> list[str]:
    """The bundled intents dev and test sentences."""
    lines = [line for split in ("dev", "test") for line in (INTENTS / f"{split}.jsonl").read_text("utf-8").splitlines()]
    return [json.loads(line)["text"] for line in lines if line.strip()]


def train_one(out: Path, steps: int) -> Path:
    """A short real LoRA run (r=8 on query and value) on the bundled intents data; the adapter folder."""
    overrides = [
        f"model.name_or_path={MINILM}",
        "method.name=lora",
        "method.r=8",
        "task.name=seq_cls",
        f"data.train={INTENTS / 'train.jsonl'}",
        f"data.dev={INTENTS / 'dev.jsonl'}",
        "data.max_length=128",
        "data.batch_size=16",
        f"training.max_steps={steps}",
        "training.progress=false",
        "training.device=cpu",
        "training.precision=fp32",
        f"training.output_dir={out}",
    ]
    return train(load_config(None, overrides), overwrite=True).adapter_dir


def make_copies(trained: Path, folder: Path, count: int) -> list[str]:
    """``count`` adapters like ``trained`` whose LoRA A and B are seeded random tensors of the trained shapes,
    saved with :func:`adaptune.io.save_adapter` (names ``lora-000``...)."""
    adapter = load_adapter(trained)
    description = {k: v for k, v in adapter.config.items() if k not in ("format", "format_version", "weights")}
    lora_keys = [key for key in adapter.tensors if "lora_a" in key or "lora_b" in key]
    assert lora_keys, f"no LoRA tensors in {trained}"
    names = []
    for index in range(count):
        generator = torch.Generator().manual_seed(index)
        tensors = dict(adapter.tensors)
        for key in lora_keys:
            trained_tensor = adapter.tensors[key]
            noise = torch.randn(trained_tensor.shape, generator=generator, dtype=torch.float32)
            tensors[key] = (noise * trained_tensor.float().std()).to(trained_tensor.dtype)
        names.append(f"lora-{index:03d}")
        save_adapter(folder / names[-1], tensors, description)
    return names


def rss_mb(pid: int) -> float:
    """The process's resident set (VmRSS) in MiB, from ``/proc/<pid>/status``."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) / 1024  # type: ignore[union-attr]


def metric(url: str, name: str) -> float:
    """One sample of the server's ``/metrics`` (0 when absent)."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", httpx.get(f"{url}/metrics", timeout=30).text, re.M)
    return float(found.group(1)) if found else 0.0


def zipf_names(names: list[str], requests: int, seed: int = 0) -> list[str]:
    """``requests`` adapter names, rank ``k`` drawn with weight ``1/(k+1)`` (seeded)."""
    return random.Random(seed).choices(names, weights=[1 / (k + 1) for k in range(len(names))], k=requests)


@dataclass
class Server:
    """One running ``adaptune serve`` over ``names`` and what was measured while it started."""

    names: list[str]
    max_loaded: int | None
    command: list[str]
    process: subprocess.Popen[bytes]
    url: str
    port: int
    facts: dict[str, Any] = field(default_factory=dict)
    rounds: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {"uniform": [], "zipf": []})


def start(folder: Path, names: list[str], max_loaded: int | None, args: argparse.Namespace) -> Server:
    """Start a server on ``folder`` (holding ``names``); measure RSS, cold and warm single requests."""
    port = free_port()
    command = [sys.executable, "-m", "adaptune.cli", "serve", "--base", MINILM, "--adapters", str(folder)]
    command += ["--port", str(port), "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
    command += ["--threads", str(args.threads)] if args.threads else []
    command += ["--max-loaded-adapters", str(max_loaded)] if max_loaded else []
    process = launch(command, port, f"adaptune-serve-scale-{len(names)}.log")
    server = Server(names, max_loaded, command, process, f"http://127.0.0.1:{port}", port)
    before = rss_mb(process.pid)
    cold = [single(server, names[0])]  # one at a time: each loads its adapter
    one = rss_mb(process.pid)  # the first request also warms the server up (activations, allocator)
    cold += [single(server, name) for name in names[1:]]
    warm = [single(server, name) for name in names[-min(len(names), 32) :]]
    listed = {a["name"]: a for a in httpx.get(f"{server.url}/v1/adapters", timeout=30).json()["adapters"]}
    after = rss_mb(process.pid)
    loaded = len([n for n in names if listed[n]["loaded"]])
    tensor_bytes = [listed[n]["bytes"] for n in names if listed[n]["bytes"]]
    file_bytes = [(folder / n / "adapter.safetensors").stat().st_size for n in names]
    loads = metric(server.url, 'adaptune_adapter_loads_total{trigger="request"}')
    load_s = metric(server.url, 'adaptune_adapter_load_seconds_sum{trigger="request"}')
    server.facts = {
        "rss_mb_started": round(before, 1),
        "rss_mb_one_loaded": round(one, 1),
        "rss_mb_all_requested": round(after, 1),
        # from one loaded adapter to all of them loaded (none for a single adapter)
        "rss_growth_per_adapter_kb": round((after - one) * 1024 / (loaded - 1), 1) if loaded > 1 else None,
        "adapter_tensor_kb": round(statistics.mean(tensor_bytes) / 1024, 1) if tensor_bytes else None,
        "adapter_file_kb": round(statistics.mean(file_bytes) / 1024, 1),
        "loaded_after_start": loaded,
        "cold_request_ms_p50": round(statistics.median(cold) * 1000, 2),
        "warm_request_ms_p50": round(statistics.median(warm) * 1000, 2),
        "cold_load_ms_mean": round(1000 * load_s / loads, 2) if loads else None,
    }
    print(json.dumps({"adapters": len(names), "max_loaded_adapters": max_loaded, **server.facts}), flush=True)
    return server


def single(server: Server, name: str) -> float:
    """Seconds for one classify request to ``name`` (checked)."""
    started = time.perf_counter()
    answer = httpx.post(f"{server.url}/v1/classify", json={"adapter": name, "inputs": ["where is my parcel?"]})
    assert answer.status_code == 200, answer.text
    return time.perf_counter() - started


def one_round(server: Server, traffic: str, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """``--requests`` single-text requests spread over the server's adapters (``traffic``: uniform or zipf)."""
    rng = random.Random(1)
    if traffic == "uniform":
        picks = [server.names[i % len(server.names)] for i in range(args.requests)]
        rng.shuffle(picks)
    else:
        picks = zipf_names(server.names, args.requests)
    jobs = [(name, [texts[i % len(texts)]]) for i, name in enumerate(picks)]
    loads = metric(server.url, 'adaptune_adapter_loads_total{trigger="request"}')
    evictions = metric(server.url, "adaptune_adapter_evictions_total")
    wall, latencies, errors = run_loop(offered_load(server.port, jobs, args.clients))
    record = summary("adaptune-server", len(server.names), wall, latencies, args.requests, errors)
    record["loads"] = int(metric(server.url, 'adaptune_adapter_loads_total{trigger="request"}') - loads)
    record["evictions"] = int(metric(server.url, "adaptune_adapter_evictions_total") - evictions)
    return {**record, "traffic": traffic, "max_loaded_adapters": server.max_loaded}


def records_of(servers: list[Server], args: argparse.Namespace) -> list[dict[str, Any]]:
    """One record per server: its facts, the median round of each traffic mix, the ratio to the 1-adapter server."""
    host = host_record(probe=True) if "probe" in inspect.signature(host_record).parameters else host_record()
    baseline = {t: median_round(servers[0].rounds[t])["requests_per_s"] for t in ("uniform", "zipf")}
    out = []
    for server in servers:
        record: dict[str, Any] = {
            "adapters": len(server.names),
            "max_loaded_adapters": server.max_loaded,
            **server.facts,
        }
        for traffic in ("uniform", "zipf"):
            chosen = median_round(server.rounds[traffic])
            keep = ("requests_per_s", "p50_ms", "p99_ms", "errors", "loads", "evictions", "rounds_requests_per_s")
            record[traffic] = {k: chosen[k] for k in keep}
            record[traffic]["vs_1_adapter"] = round(chosen["requests_per_s"] / baseline[traffic], 3)
        record.update(
            clients=args.clients,
            requests=args.requests,
            rounds=args.rounds,
            train_steps=args.train_steps,
            command=" ".join(["adaptune", *server.command[3:]]),
            host=host,
        )
        out.append(record)
    return out


def write_reports(records: list[dict[str, Any]], out: Path) -> None:
    """The JSON records and a markdown table beside them."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")
    head = (
        "| adapters | loaded at most | traffic | requests/s | vs 1 | p50 ms | p99 ms | loads | evictions | "
        "RSS growth / adapter KiB | tensors / adapter KiB | cold request ms | warm request ms |\n"
        "|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n"
    )
    rows = ""
    for r in records:
        for traffic in ("uniform", "zipf"):
            t = r[traffic]
            rows += (
                f"| {r['adapters']} | {r['max_loaded_adapters'] or 'all'} | {traffic} | {t['requests_per_s']} | "
                f"{t['vs_1_adapter']} | {t['p50_ms']} | {t['p99_ms']} | {t['loads']} | {t['evictions']} | "
                f"{r['rss_growth_per_adapter_kb'] or '–'} | {r['adapter_tensor_kb']} | {r['cold_request_ms_p50']} | "
                f"{r['warm_request_ms_p50']} |\n"
            )
    out.with_suffix(".md").write_text(head + rows, encoding="utf-8")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Smoke run: 1 and 4 adapters; to /tmp.")
    parser.add_argument("--clients", type=int, default=64, help="Concurrent closed-loop clients (offered load).")
    parser.add_argument("--requests", type=int, default=1600, help="Requests per scenario and round.")
    parser.add_argument("--rounds", type=int, default=3, help="Alternating rounds per scenario (median reported).")
    parser.add_argument("--max-batch", type=int, default=32, help="Server: rows per forward pass.")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="Server: wait for a batch to fill.")
    parser.add_argument("--threads", type=int, default=None, help="Server: torch threads.")
    parser.add_argument("--train-steps", type=int, default=20, help="Steps of the one real LoRA training.")
    parser.add_argument("--out", type=Path, default=None, help="Results JSON (default results/serve_scale.json).")
    args = parser.parse_args()
    args.counts, args.eviction = (QUICK_COUNTS, QUICK_EVICTION) if args.quick else (COUNTS, EVICTION)
    if args.quick:
        args.requests, args.rounds, args.clients, args.train_steps = min(args.requests, 96), 1, 16, 4
    quick_out = Path(tempfile.gettempdir()) / "serve_scale_quick.json"
    args.out = args.out or (quick_out if args.quick else RESULTS / "serve_scale.json")
    return args


def main() -> None:
    args = parse_args()
    texts = intents_texts()
    servers: list[Server] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        every = make_copies(train_one(root / "run", args.train_steps), root / "all", max(args.counts))
        try:
            for count, max_loaded in [*((c, None) for c in args.counts), args.eviction]:
                folder = root / (f"n{count}" + (f"-max{max_loaded}" if max_loaded else ""))
                for name in every[:count]:  # hard links: the same files, no copies
                    shutil.copytree(root / "all" / name, folder / name, copy_function=os.link)
                servers.append(start(folder, every[:count], max_loaded, args))
            for server in servers:  # warm-up (and, for the eviction run, a cache of the Zipf mix's head)
                run_loop(offered_load(server.port, [(n, texts[:1]) for n in server.names * 2], args.clients))
            for _ in range(args.rounds):
                for server in servers:
                    for traffic in ("uniform", "zipf"):
                        server.rounds[traffic].append(one_round(server, traffic, texts, args))
                        print(json.dumps(server.rounds[traffic][-1]), flush=True)
        finally:
            for server in servers:
                server.process.terminate()
                server.process.wait(timeout=60)
    records = records_of(servers, args)
    write_reports(records, args.out)
    for r in records:
        print(
            f"{r['adapters']} adapters (loaded at most {r['max_loaded_adapters'] or 'all'}): uniform "
            f"{r['uniform']['requests_per_s']} requests/s ({r['uniform']['vs_1_adapter']}x of 1 adapter), zipf "
            f"{r['zipf']['requests_per_s']} ({r['zipf']['vs_1_adapter']}x); RSS +{r['rss_growth_per_adapter_kb']} KiB "
            f"per loaded adapter ({r['adapter_tensor_kb']} KiB of tensors); cold request "
            f"{r['cold_request_ms_p50']} ms, warm {r['warm_request_ms_p50']} ms"
        )
    print(f"targets: 64 vs 1 >= 0.9x, 256 vs 1 >= 0.8x (uniform); written to {args.out}")


if __name__ == "__main__":
    main()
