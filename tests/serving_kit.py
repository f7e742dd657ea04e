"""Adapters for the server tests: built in memory on a tiny base, moved off their init, saved as adapter folders."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import torch
import uvicorn

from adaptune.backbone import fingerprint, load_backbone
from adaptune.config import ModelConfig, validate_config
from adaptune.inference import build_model
from adaptune.io import save_adapter
from adaptune.peft_interop.importer import describe_adapter
from adaptune.server.app import ServerSettings

INTENTS = ["order_status", "refund", "greeting"]
SENTIMENT = ["negative", "positive"]
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]

#: name -> (method, task, labels): the mix the server tests serve (two LoRA, one bottleneck, one NER).
FOUR_ADAPTERS: dict[str, tuple[dict[str, Any], str, list[str]]] = {
    "intents-lora": ({"name": "lora", "r": 4, "roles": ["query", "value"]}, "seq_cls", INTENTS),
    "sentiment-lora": (
        {"name": "lora", "r": 8, "alpha": 8.0, "roles": ["query", "key", "ffn_out"]},
        "seq_cls",
        SENTIMENT,
    ),
    "intents-bottleneck": ({"name": "bottleneck", "reduction_factor": 4}, "seq_cls", INTENTS),
    "ner-lora": ({"name": "lora", "r": 4}, "token_cls", TAGS),
}


def make_adapter(
    folder: Path,
    base: Path,
    method: dict[str, Any],
    task: str,
    labels: list[str],
    *,
    seed: int,
    max_length: int = 64,
    pooling: str = "mean",
) -> Path:
    """An adapter folder whose method and head tensors are all moved off their init (as training would), so that
    every adapter made with another seed gives other outputs."""
    bb = load_backbone(ModelConfig(name_or_path=str(base), pooling=pooling))
    base_fp, base_params = fingerprint(bb.model), sum(p.numel() for p in bb.model.parameters())
    run = validate_config({"method": method, "task": {"name": task}})
    model = build_model(bb, run.method, run.task, labels)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in [*model.adapter_parameters().values(), *model.head.parameters()]:
            param.add_(torch.randn(param.shape, generator=gen) * 0.3)
    if task == "token_cls":
        model.task.load_learned_state({"tag_scheme": "BIO"})
    description = describe_adapter(
        model, name_or_path=str(base), base_fingerprint=base_fp, base_params=base_params, max_length=max_length
    )
    return save_adapter(folder, model.trainable_state(), description)


def make_four(folder: Path, base: Path) -> dict[str, Path]:
    """The four adapters of :data:`FOUR_ADAPTERS` under ``folder``."""
    return {
        name: make_adapter(folder / name, base, method, task, labels, seed=seed)
        for seed, (name, (method, task, labels)) in enumerate(FOUR_ADAPTERS.items())
    }


API_KEY = "test-key"
#: A prompt-tuning adapter: served grouped (its own forward), not per row.
GROUPED = "intents-prompt"
#: An adapter trained on another base: refused with the reason.
FOREIGN = "foreign-lora"

#: The limits of the shared test server (small, so the tests can go over them cheaply).
SETTINGS = ServerSettings(max_batch=8, max_wait_ms=20, max_input_tokens=40, max_body_bytes=4000, api_key=API_KEY)


def assert_same(got: dict[str, Any], want: dict[str, Any], tol: float = 1e-5) -> None:
    """A served prediction equals the offline one: labels, tags and spans exactly, scores to ``tol``."""
    assert got.keys() == want.keys()
    for key, value in want.items():
        if key == "scores":
            assert got[key].keys() == value.keys()
            assert all(abs(got[key][k] - v) <= tol for k, v in value.items()), (got[key], value)
        elif key == "score":
            assert abs(got[key] - value) <= tol
        elif key == "entities":
            assert [{**e, "score": 0} for e in got[key]] == [{**e, "score": 0} for e in value]
            assert all(abs(a["score"] - b["score"]) <= tol for a, b in zip(got[key], value, strict=True))
        else:
            assert got[key] == value, key


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Run ``app`` on uvicorn in a background thread on a free 127.0.0.1 port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


#: The repository root: where ``adaptune serve`` subprocesses run.
ROOT_DIR = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(bases: Sequence[str], adapters: Path, *extra: str) -> Iterator[str]:
    """The real ``adaptune serve`` command in a subprocess on a free loopback port (``extra``: more options); yields
    its URL once /health answers, and stops it at the end."""
    port = free_port()
    command = [sys.executable, "-m", "adaptune.cli", "serve", "--adapters", str(adapters), "--port", str(port)]
    for base in bases:
        command += ["--base", base]
    process = subprocess.Popen([*command, *extra], cwd=ROOT_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "adaptune serve did not come up"
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
