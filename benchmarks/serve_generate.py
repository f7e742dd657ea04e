"""Generation throughput of ``adaptune serve`` with and without request batching, over HTTP on loopback.

Setup: the real SmolLM2-135M-Instruct (the packaged copy, offline, found by ``adaptune.backbone.resolve_model``)
and one freshly initialised LoRA causal_lm adapter (r=8; ``B`` is zero, so it answers as the base does: speed is
what is measured). ``adaptune serve`` runs in a subprocess, twice:

* ``batched``: ``--max-batch 16 --max-wait-ms 20``: concurrent greedy requests are decoded together;
* ``one_by_one``: ``--max-batch 1 --max-wait-ms 0``: every request is its own batch (the old behaviour).

Each round sends ``--requests`` (16) greedy ``POST /v1/generate`` requests at once (one prompt each, distinct
prompts, ``max_new_tokens`` 32) and waits for all; after a warm-up round, ``--rounds`` rounds are timed and the
median by requests/s is kept. Recorded per mode: requests/s, generated tokens/s (completion tokens over the wall
time), p50/max latency, errors, the batches the server's ``/metrics`` counted, and whether the texts equal the
one-by-one texts. The server runs in fp32 on every host; the record holds the host
(:func:`adaptune.hardware.host_record`, with its matmul probe). Written to ``benchmarks/results/serve_generate.json``.

    nice -n 10 .venv/bin/python benchmarks/serve_generate.py             # a few minutes on 2 CPU cores
    nice -n 10 .venv/bin/python benchmarks/serve_generate.py --quick     # smoke run, to /tmp/serve_generate.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from serve_load import free_port, launch

from adaptune.backbone import fingerprint, load_backbone, resolve_model
from adaptune.config import ModelConfig, validate_config
from adaptune.hardware import host_record
from adaptune.inference import build_model
from adaptune.io import save_adapter
from adaptune.peft_interop.importer import describe_adapter

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ADAPTER = "smol-lora"
TOPICS = [
    "the weather in Paris",
    "how to cook rice",
    "why the sky is blue",
    "the history of chess",
    "how a bicycle works",
    "what a prime number is",
    "the water cycle",
    "how to learn a language",
    "the planets of the solar system",
    "how bees make honey",
    "what a computer does",
    "the rules of football",
    "how plants grow",
    "what causes rain",
    "how trains run",
    "why we sleep",
]
#: Modes: name -> (max_batch, max_wait_ms).
MODES = {"batched": (16, 20.0), "one_by_one": (1, 0.0)}


def make_adapter(folder: Path, base: str) -> None:
    """A LoRA causal_lm adapter on ``base`` as training would save it (freshly initialised)."""
    torch.manual_seed(0)
    backbone = load_backbone(ModelConfig(name_or_path=base, pooling="last"))
    base_fp, base_params = fingerprint(backbone.model), sum(p.numel() for p in backbone.model.parameters())
    run = validate_config({"method": {"name": "lora", "r": 8}, "task": {"name": "causal_lm"}})
    model = build_model(backbone, run.method, run.task, [])
    description = describe_adapter(
        model, name_or_path=base, base_fingerprint=base_fp, base_params=base_params, max_length=512
    )
    save_adapter(folder / ADAPTER, model.trainable_state(), description)


def start_server(
    base: str, adapters: Path, port: int, max_batch: int, max_wait_ms: float, threads: int | None
) -> subprocess.Popen[bytes]:
    """``adaptune serve`` in a subprocess; returns once ``/health`` answers."""
    command = [sys.executable, "-m", "adaptune.cli", "serve", "--base", base, "--adapters", str(adapters)]
    command += ["--port", str(port), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)]
    command += ["--threads", str(threads)] if threads else []
    command += ["--precision", "fp32"]  # on any host, so batched and one-by-one texts stay comparable
    return launch(command, port, "adaptune-serve-generate.log")


async def one_round(url: str, prompts: list[str], max_new_tokens: int) -> dict[str, Any]:
    """Every prompt as its own greedy request, all sent at once; wall time, latencies, texts, tokens, errors."""
    latencies: list[float] = []

    async def send(client: httpx.AsyncClient, prompt: str) -> dict[str, Any] | None:
        started = time.perf_counter()
        body = {"adapter": ADAPTER, "prompts": [prompt], "max_new_tokens": max_new_tokens}
        response = await client.post("/v1/generate", json=body)
        latencies.append(time.perf_counter() - started)
        if response.status_code != 200:
            print(f"error: HTTP {response.status_code}: {response.text[:200]}", file=sys.stderr, flush=True)
            return None
        return dict(response.json()["generations"][0])

    limits = httpx.Limits(max_connections=len(prompts))
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        started = time.perf_counter()
        outs = await asyncio.gather(*(send(client, p) for p in prompts))
        wall = time.perf_counter() - started
    tokens = sum(out["completion_tokens"] for out in outs if out is not None)
    return {
        "wall_s": wall,
        "requests_per_s": round(len(prompts) / wall, 3),
        "tokens_per_s": round(tokens / wall, 2),
        "completion_tokens": tokens,
        "p50_ms": round(statistics.median(latencies) * 1000, 1),
        "max_ms": round(max(latencies) * 1000, 1),
        "errors": sum(out is None for out in outs),
        "texts": [out["text"] if out is not None else None for out in outs],
    }


def generation_batches(url: str) -> tuple[int, int]:
    """(generation batches, requests in them) counted by the server so far."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = [re.search(rf"^adaptune_generation_batch_requests_{k} (\d+)$", text, re.M) for k in ("count", "sum")]
    return (int(found[0].group(1)), int(found[1].group(1))) if found[0] and found[1] else (0, 0)


def run_mode(name: str, base: str, adapters: Path, prompts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """One server in mode ``name``: a warm-up round, then ``--rounds`` timed rounds; the median round's record."""
    max_batch, max_wait_ms = MODES[name]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_server(base, adapters, port, max_batch, max_wait_ms, args.threads)
    try:
        asyncio.run(one_round(url, prompts, args.max_new_tokens))
        before = generation_batches(url)
        rounds = []
        for _ in range(args.rounds):
            rounds.append(asyncio.run(one_round(url, prompts, args.max_new_tokens)))
            print(json.dumps({"mode": name, **{k: v for k, v in rounds[-1].items() if k != "texts"}}), flush=True)
        after = generation_batches(url)
    finally:
        process.terminate()
        process.wait(timeout=60)
    chosen = dict(sorted(rounds, key=lambda r: r["requests_per_s"])[(len(rounds) - 1) // 2])
    chosen.pop("wall_s")
    return {
        "mode": name,
        "max_batch": max_batch,
        "max_wait_ms": max_wait_ms,
        **chosen,
        "errors": sum(r["errors"] for r in rounds),
        "rounds_requests_per_s": [r["requests_per_s"] for r in rounds],
        "rounds_tokens_per_s": [r["tokens_per_s"] for r in rounds],
        "batches_per_round": round((after[0] - before[0]) / args.rounds, 2),
        "requests_per_batch": round((after[1] - before[1]) / max(1, after[0] - before[0]), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=16, help="Concurrent requests per round (one prompt each).")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="Timed rounds per mode (median kept).")
    parser.add_argument("--threads", type=int, default=None, help="The server's torch threads (default: torch's).")
    parser.add_argument("--quick", action="store_true", help="4 requests, 8 tokens, 1 round, to /tmp.")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.max_new_tokens, args.rounds = 4, 8, 1
    base, where = MODEL, resolve_model(MODEL)  # the hub id resolves to the packaged GGUF offline, as in training
    prompts = [f"Tell me about {TOPICS[i % len(TOPICS)]} (question {i + 1})." for i in range(args.requests)]
    with tempfile.TemporaryDirectory() as tmp:
        adapters = Path(tmp) / "adapters"
        make_adapter(adapters, base)
        records = [run_mode(name, base, adapters, prompts, args) for name in MODES]
    reference = records[-1]["texts"]
    for record in records:
        texts = record.pop("texts")
        record["texts_equal_one_by_one"] = sum(a == b for a, b in zip(texts, reference, strict=True))
    speedup = records[0]["tokens_per_s"] / records[1]["tokens_per_s"]
    result = {
        "model": MODEL,
        "weights": str(Path(where.path) / where.gguf_file) if where.gguf_file else where.path,
        "adapter": "lora r=8 (fresh)",
        "requests": args.requests,
        "max_new_tokens": args.max_new_tokens,
        "decoding": "greedy",
        "server_threads": args.threads or torch.get_num_threads(),
        "precision": "fp32",
        "host": host_record(probe=True),
        "records": records,
        "batched_speedup": round(speedup, 2),
    }
    out = Path("/tmp/serve_generate.json") if args.quick else RESULTS / "serve_generate.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for record in records:
        print(
            f"{record['mode']:>11}: {record['requests_per_s']:.2f} requests/s, {record['tokens_per_s']:.1f} tokens/s, "
            f"{record['batches_per_round']} batches per round, p50 {record['p50_ms']:.0f} ms, "
            f"{record['errors']} errors, {record['texts_equal_one_by_one']}/{args.requests} texts as one by one"
        )
    print(f"batched / one by one: {speedup:.2f}x tokens/s; written to {out}")


if __name__ == "__main__":
    main()
