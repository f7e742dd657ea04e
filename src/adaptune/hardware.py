"""The machine a run or a benchmark runs on: CPU model, the instruction-set flags that decide matmul speed, threads.

``host_record()`` is the ``"host"`` field of every benchmark record and of a run's ``results.json``, so a figure
can always be read against the machine that produced it. Hosts of the same kind differ: some have AMX-BF16, where
bf16 matmuls run several times the fp32 rate; among those with only AVX512-BF16, some ran bf16 at about half the
fp32 rate and others (an AMD EPYC family 25 model 17) at about twice it. The CPU's name alone does not tell, so the
precision choice rests on a measurement (:func:`matmul_probe`).

``matmul_probe()`` measures which: the fp32 and bf16 rates of a 1024x1024 matmul, once per host (cached under the
adaptune cache). ``choose_precision()`` turns ``training.precision`` / ``--precision`` (``auto``, ``fp32``,
``bf16``) into a :class:`PrecisionChoice`: ``auto`` is bf16 on a GPU that supports it and on a CPU whose bf16
matmuls are at least 1.3x as fast as fp32, else fp32.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from adaptune.errors import ConfigError

#: The CPU flags that decide which precision is fast: bf16 dot products (AVX512-BF16), the AMX tile unit and
#: its bf16 and int8 matmuls, and AVX512-VNNI (int8 dot products).
FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "amx_int8", "avx512_vnni", "avx512f", "avx2")


@lru_cache(maxsize=1)
def _first_cpu() -> dict[str, str]:
    """The fields of the first processor in ``/proc/cpuinfo`` (Linux); empty elsewhere."""
    path = Path("/proc/cpuinfo")
    text = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else ""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    return fields


def cpu_info() -> tuple[str, frozenset[str]]:
    """The CPU's model name and its flags, from ``/proc/cpuinfo`` (Linux); elsewhere the platform's name, no flags."""
    fields = _first_cpu()
    model = fields.get("model name", "")
    return model or platform.processor() or platform.machine(), frozenset(fields.get("flags", "").split())


def cpu_generation() -> str | None:
    """``family.model`` of the CPU (``25.17``: AMD Zen 4), which tells cores apart that a virtual machine shows
    under one model name (``AMD EPYC``); None where ``/proc/cpuinfo`` does not say."""
    fields = _first_cpu()
    family, model = fields.get("cpu family"), fields.get("model")
    return f"{family}.{model}" if family and model else None


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def host_record(*, probe: bool = False) -> dict[str, Any]:
    """The machine, for a benchmark record: CPU model, cores, the flags in :data:`FLAGS`, torch and its threads, GPU;
    with ``probe`` also the fp32 and bf16 matmul rates of :func:`matmul_probe` (``"matmul_gflops"``)."""
    model, flags = cpu_info()
    record: dict[str, Any] = {
        "cpu": model,
        "cpu_family_model": cpu_generation(),
        "cores": usable_cores(),
        **{flag: flag in flags for flag in FLAGS},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if probe:
        figures = matmul_probe()
        record["matmul_gflops"] = {p: figures[p] for p in ("fp32", "bf16")}
    return record


#: The bf16/fp32 matmul rate ratio from which ``auto`` picks bf16 on a CPU (AMX hosts reach 4-7x; hosts with
#: AVX512-BF16 and no AMX differ by core, some at about 0.5x, and those stay fp32).
FAST_BF16_RATIO = 1.3
#: Pins the probe's figures instead of measuring: ``{"fp32": GFLOP/s, "bf16": GFLOP/s}`` as JSON (the test suite
#: sets it, so runs are deterministic; a fleet of identical hosts may too).
PROBE_ENV = "ADAPTUNE_MATMUL_PROBE"
PROBE_FILE = "matmul_probe.json"
PROBE_SIZE = 1024
#: Seconds of measuring per precision, in two interleaved halves (once per host; then the cache answers).
PROBE_SECONDS = 0.25


def matmul_peak(precision: str, size: int = 1024, seconds: float = 1.5) -> float:
    """Best FLOP/s of a ``(size, size) @ (size, size)`` matmul at ``precision`` (``fp32`` or ``bf16``) on the CPU,
    over about ``seconds``: the MFU denominator of the benchmarks and the measurement behind :func:`matmul_probe`."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b  # warm-up
    best, deadline = 0.0, time.perf_counter() + seconds
    while True:  # at least one timed round, however slow the machine
        started = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - started))
        if time.perf_counter() >= deadline:
            return best if math.isfinite(best) else 0.0


def probe_key() -> str:
    """What a cached probe is valid for: CPU model (and :func:`cpu_generation`), the flags of :data:`FLAGS` it has,
    torch version, threads."""
    model, flags = cpu_info()
    present = ",".join(flag for flag in FLAGS if flag in flags)
    threads = torch.get_num_threads()
    return f"{model} ({cpu_generation()}) | {present} | torch {torch.__version__} | {threads} threads"


def probe_path() -> Path:
    """The probe cache: ``matmul_probe.json`` under the adaptune cache (``$ADAPTUNE_CACHE``)."""
    from adaptune.packaged_e5 import cache_root

    return cache_root() / PROBE_FILE


def _pinned() -> dict[str, Any] | None:
    """The figures of :data:`PROBE_ENV`, when set."""
    text = os.environ.get(PROBE_ENV)
    if not text:
        return None
    try:
        figures = json.loads(text)
        return {"fp32": float(figures["fp32"]), "bf16": float(figures["bf16"]), "source": PROBE_ENV}
    except (ValueError, TypeError, KeyError) as err:
        raise ConfigError(
            f'environment variable {PROBE_ENV}={text!r} is not JSON like {{"fp32": 80, "bf16": 400}}: {err}'
        ) from None


def _read_cache(path: Path) -> dict[str, Any]:
    """The cached probes by :func:`probe_key`; an unreadable or corrupt file counts as empty (measured again)."""
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return cached if isinstance(cached, dict) else {}


def _valid(entry: Any) -> bool:
    return isinstance(entry, dict) and all(
        isinstance(entry.get(p), int | float) and entry[p] > 0 for p in ("fp32", "bf16")
    )


def matmul_probe() -> dict[str, Any]:
    """fp32 and bf16 GFLOP/s of a 1024x1024 matmul on this CPU: ``{"fp32": ..., "bf16": ..., "source": ...}``.

    Measured once per host (about ``2 * PROBE_SECONDS``) and kept in :func:`probe_path`, keyed by
    :func:`probe_key`, written atomically; a corrupt cache file is measured again (and rewritten), a cache that
    cannot be written only costs the next process another measurement. :data:`PROBE_ENV` pins the figures."""
    pinned = _pinned()
    if pinned is not None:
        return pinned
    from adaptune.errors import OutputError
    from adaptune.io import atomic_write_json

    key, path = probe_key(), probe_path()
    cached = _read_cache(path)
    entry = cached.get(key)
    if _valid(entry):
        return {"fp32": float(entry["fp32"]), "bf16": float(entry["bf16"]), "source": str(path)}
    rates: dict[str, float] = {"fp32": 0.0, "bf16": 0.0}
    for precision in ("fp32", "bf16", "fp32", "bf16"):  # interleaved: a passing load weighs on both alike
        rates[precision] = max(rates[precision], matmul_peak(precision, PROBE_SIZE, PROBE_SECONDS / 2))
    entry: dict[str, Any] = {p: round(rate / 1e9, 1) for p, rate in rates.items()}
    entry["measured"] = datetime.now(UTC).isoformat(timespec="seconds")
    with contextlib.suppress(OutputError):  # a read-only cache: the choice stands, measured again next time
        atomic_write_json(path, {**{k: v for k, v in cached.items() if _valid(v)}, key: entry})
    return {"fp32": entry["fp32"], "bf16": entry["bf16"], "source": "measured"}


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run or a predictor uses, and why.

    ``name``: ``fp32`` or ``bf16`` (bf16 autocast, fp32 master weights); ``bf16_base``: the frozen base weights
    are stored in bf16 as well; ``reason``: one human sentence with the measured figures; ``probe``: the
    :func:`matmul_probe` figures it was decided on (None when nothing was measured)."""

    name: str
    bf16_base: bool
    reason: str
    probe: dict[str, Any] | None = None

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    def record(self) -> dict[str, Any]:
        """The ``"precision"`` field of a run's ``results.json``."""
        out: dict[str, Any] = {"chosen": self.name, "bf16_base": self.bf16_base, "reason": self.reason}
        if self.probe is not None:
            out["matmul_gflops"] = {p: self.probe[p] for p in ("fp32", "bf16")}
        return out


PRECISIONS = ("auto", "fp32", "bf16")


def requested(precision: str, bf16: bool = False) -> str:
    """What is asked for: ``precision``, or ``bf16`` when the older ``bf16`` switch is on and ``precision`` is
    ``auto``; both ``bf16`` and ``precision='fp32'`` is a :class:`ConfigError` naming the two."""
    if bf16 and precision == "fp32":
        raise ConfigError("bf16 = true asks for bf16, but precision = 'fp32'; keep one of the two")
    return "bf16" if bf16 and precision == "auto" else precision


def choose_precision(requested: str, device: torch.device) -> PrecisionChoice:
    """The precision for ``requested`` (``auto``, ``fp32``, ``bf16``) on ``device``.

    ``fp32`` and ``bf16`` are taken as asked (bf16 on a device without it is a :class:`ConfigError`). ``auto``:
    on CUDA bf16 when the GPU supports it, else fp32; on the CPU bf16 with the frozen base in bf16 when
    :func:`matmul_probe` finds bf16 matmuls at least :data:`FAST_BF16_RATIO` times as fast as fp32 (AMX), else
    fp32."""
    if requested not in PRECISIONS:
        raise ConfigError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    if requested == "fp32":
        return PrecisionChoice("fp32", False, "fp32, as asked")
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        gpu = torch.cuda.get_device_name(device)
        if requested == "bf16" and not supported:
            raise ConfigError(f"precision bf16 was asked for, but {gpu} has no bf16 support; use fp32 or auto")
        if requested == "bf16":
            return PrecisionChoice("bf16", False, "bf16, as asked")
        if supported:
            return PrecisionChoice("bf16", False, f"bf16 (auto): {gpu} supports bf16")
        return PrecisionChoice("fp32", False, f"fp32 (auto): {gpu} has no bf16 support")
    if device.type != "cpu":
        if requested == "bf16":
            raise ConfigError(f"precision bf16 was asked for, but bf16 autocast on {device} is not supported here")
        return PrecisionChoice("fp32", False, f"fp32 (auto): {device.type} devices run fp32 here")
    if requested == "bf16":
        return PrecisionChoice("bf16", False, "bf16, as asked")
    return _auto_on_cpu(matmul_probe())


def _auto_on_cpu(probe: dict[str, Any]) -> PrecisionChoice:
    model, flags = cpu_info()
    ratio = probe["bf16"] / probe["fp32"] if probe["fp32"] > 0 else 0.0
    unit = "AMX-BF16" if "amx_bf16" in flags else "AVX512-BF16, no AMX" if "avx512_bf16" in flags else "no bf16 unit"
    figures = (
        f"bf16 matmuls run at {probe['bf16']:.0f} GFLOP/s on this CPU ({model}, {unit}), {ratio:.2f}x the fp32 "
        f"rate of {probe['fp32']:.0f} GFLOP/s"
    )
    if ratio >= FAST_BF16_RATIO:
        return PrecisionChoice("bf16", True, f"bf16 (auto): {figures}", probe)
    return PrecisionChoice(
        "fp32", False, f"fp32 (auto): {figures} (bf16 needs at least {FAST_BF16_RATIO}x to pay)", probe
    )
