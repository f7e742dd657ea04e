"""Training on several processes (torch.distributed, gloo on this machine's CPU), launched as a user would:
``adaptune train CONFIG --nproc 2`` starts torchrun, which starts the ranks.

Two processes with ``grad_accum_steps = 1`` take the same batches per optimiser step as one process with
``grad_accum_steps = 2`` (the global batch), so with dropout off the final adapters agree to float tolerance. A
killed rank ends the run with an error within a timeout, never a hang, and the run resumes, here on another
number of processes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptune.config import load_config
from adaptune.errors import ConfigError
from adaptune.training.distributed import Distributed, check_switches, resolve_device
from tiny import make_tiny_bert

WORDS = {"pos": ["good", "great", "fine", "happy", "nice"], "neg": ["bad", "awful", "sad", "poor", "ugly"]}


def _rows(n: int, seed: int) -> str:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = ("pos", "neg")[i % 2]
        text = " ".join(rng.choice(WORDS[label]) for _ in range(rng.randint(2, 9)))
        rows.append(json.dumps({"text": text, "label": label}) + "\n")
    return "".join(rows)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dropout-free tiny BERT, 32 training and 10 dev rows, and a LoRA config with every dropout at 0."""
    folder = tmp_path_factory.mktemp("ddp")
    make_tiny_bert(folder / "model", dropout=0.0)
    (folder / "train.jsonl").write_text(_rows(32, 0), encoding="utf-8")
    (folder / "dev.jsonl").write_text(_rows(10, 1), encoding="utf-8")
    (folder / "run.yaml").write_text(
        f"model: {{name_or_path: {folder / 'model'}}}\n"
        "method: {name: lora, r: 4, dropout: 0.0}\n"
        "task: {name: seq_cls, head_dropout: 0.0}\n"
        f"data: {{train: {folder / 'train.jsonl'}, dev: {folder / 'dev.jsonl'}, batch_size: 4}}\n"
        "training: {epochs: 2, learning_rate: 0.01, progress: false, log_every: 1, device: cpu}\n",
        encoding="utf-8",
    )
    return folder


def _adaptune(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "adaptune", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter.safetensors")


def _records(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]


def _one_and_two(setup: Path, name: str, *switches: str, atol: float = 1e-5, rtol: float = 1e-4) -> str:
    """Train ``setup/<name>_one`` on 1 process accumulating 2 batches and ``setup/<name>_two`` on 2 processes,
    with the same ``--set`` switches; assert the two adapters agree to ``atol``/``rtol``. The 2-process stdout."""
    config = str(setup / "run.yaml")
    accumulate = ["--set", "training.grad_accum_steps=2"]
    one = _adaptune("train", config, "--set", f"training.output_dir={setup / f'{name}_one'}", *accumulate, *switches)
    assert one.returncode == 0, one.stderr[-3000:]
    out = f"training.output_dir={setup / f'{name}_two'}"
    two = _adaptune("train", config, "--nproc", "2", "--set", out, *switches)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _weights(setup / f"{name}_one"), _weights(setup / f"{name}_two")
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=atol, rtol=rtol, msg=key)
    return two.stdout


def test_two_processes_train_the_adapter_one_process_trains(setup: Path) -> None:
    stdout = _one_and_two(setup, "plain")
    assert stdout.count("| adapter:") == 1  # rank 0 reports, once
    one, two = setup / "plain_one", setup / "plain_two"
    # rank 0 alone writes: one metrics log with one record per step and evaluation, the same losses as one process
    ones, twos = _records(one), _records(two)
    assert [r["step"] for r in twos] == [r["step"] for r in ones]
    for r1, r2 in zip(ones, twos, strict=True):
        for key in ("train_loss", "eval_accuracy", "eval_loss"):
            if key in r1:
                assert r2[key] == pytest.approx(r1[key], rel=1e-4, abs=1e-5), (r1, r2)
    results = json.loads((two / "results.json").read_text(encoding="utf-8"))
    single = json.loads((one / "results.json").read_text(encoding="utf-8"))
    assert results["nproc"] == 2 and "nproc" not in single
    assert results["splits"]["dev"]["headline"]["accuracy"] == single["splits"]["dev"]["headline"]["accuracy"]
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == sorted(
        p.name for p in (one / "checkpoints").iterdir()
    )


def _workers(launcher: int) -> dict[int, int]:
    """The rank of each worker process under the torchrun started by ``launcher`` (pid -> RANK)."""
    import psutil

    ranks = {}
    for proc in psutil.Process(launcher).children(recursive=True):
        try:
            rank = proc.environ().get("RANK")
        except psutil.Error:
            continue
        if rank is not None and "adaptune" in " ".join(proc.cmdline()):
            ranks[proc.pid] = int(rank)
    return ranks


def test_a_killed_rank_fails_the_run_and_it_resumes_on_one_process(setup: Path) -> None:
    run = setup / "killed"
    args = ["train", str(setup / "run.yaml"), "--set", f"training.output_dir={run}", "--set", "training.epochs=150"]
    args += ["--set", "training.eval_every=20"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "adaptune", *args, "--nproc", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 180
        while not (run / "checkpoints" / "latest.json").is_file():
            assert launcher.poll() is None, launcher.stdout.read() if launcher.stdout else ""
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.2)
        victims = [pid for pid, rank in _workers(launcher.pid).items() if rank == 1]
        assert victims, "rank 1 not found"
        os.kill(victims[0], signal.SIGKILL)
        output, _ = launcher.communicate(timeout=120)  # a hang fails here
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert "Signal 9" in output or "SIGKILL" in output or "exitcode" in output, output[-3000:]
    assert not (run / "adapter").exists()

    resumed = _adaptune(*args, "--resume", timeout=300)  # on one process, which accumulates 2 batches per step
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads((run / "results.json").read_text(encoding="utf-8"))
    assert result["steps"] == 150 * 4  # 8 global batches an epoch, 2 per step
    uninterrupted = setup / "uninterrupted"
    args[3] = f"training.output_dir={uninterrupted}"
    straight = _adaptune(*args, "--set", "training.grad_accum_steps=2", timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]
    a, b = _weights(uninterrupted), _weights(run)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=1e-3, msg=key)


def test_shards_are_equal_in_length_and_cover_every_batch() -> None:
    batches = [[i] for i in range(7)]
    shards = [Distributed(rank=r, world=3).shard(batches) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert sorted(b[0] for s in shards for b in s) == [0, 0, 1, 1, 2, 3, 4, 5, 6]  # padded from the start
    assert shards[1] == [[1], [4], [0]]  # rank r's j-th batch is global batch r + 3j
    assert Distributed().shard(batches) == batches


def test_switches_that_cannot_run_on_several_processes_are_refused_by_name(setup: Path) -> None:
    cfg = load_config(setup / "run.yaml", ["training.activation_cache=mmap"])
    check_switches(cfg.training, 1)
    with pytest.raises(ConfigError, match="training.activation_cache"):
        check_switches(cfg.training, 2)
    check_switches(load_config(setup / "run.yaml", ["training.activation_cache=memory"]).training, 2)


def test_devices_resolve_or_are_refused_with_the_reason() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="not one of auto, cpu, cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA device"):
            resolve_device("cuda:0")


def test_a_device_that_is_not_there_is_a_one_line_error(setup: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal is for machines without it")
    out = _adaptune("train", str(setup / "run.yaml"), "--device", "cuda", "--set", f"training.output_dir={setup / 'c'}")
    assert out.returncode != 0
    assert "sees no CUDA device" in out.stderr and "Traceback" not in out.stderr


def test_bf16_and_padding_free_work_on_two_processes(setup: Path) -> None:
    """The speed switches that change how the frozen base runs (bf16 autocast, a bf16 base, padding-free
    batches) run under DDP as in one process: the same adapter to bf16 tolerance."""
    switches = []
    for key in ("bf16", "bf16_base", "padding_free"):
        switches += ["--set", f"training.{key}=true"]
    _one_and_two(setup, "bf16", *switches, atol=2e-2, rtol=5e-2)


def test_the_activation_cache_in_memory_works_on_two_processes(setup: Path) -> None:
    """Method ``head`` with the frozen backbone's outputs cached in memory (each rank caches the examples it
    meets) trains on 2 processes to the 1-process adapter; a bad config is refused once, before torchrun."""
    switches = ["--set", "method={name: head}", "--set", "training.activation_cache=memory"]
    switches += ["--set", "training.frozen_prefix_no_grad=true", "--set", "training.epochs=3"]
    _one_and_two(setup, "cache", *switches)
    bad = _adaptune("train", str(setup / "run.yaml"), "--nproc", "2", "--set", "training.epochs=-1")
    assert bad.returncode != 0 and "training.epochs" in bad.stderr and "torch.distributed" not in bad.stderr
