"""The quality records' bookkeeping in benchmarks/quality.py: means over seeds, and upserts from processes running
side by side (the results lock)."""

from __future__ import annotations

import json
import multiprocessing
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quality


def record(value: float, seed_rss: float = 100.0, **extra) -> dict:
    return {
        "task": "seq_cls",
        "dataset": "sst2",
        "split": "dev",
        "model": "m",
        "method": "bottleneck",
        "metric": "accuracy",
        "value": value,
        "trainable_params": 10,
        "train_tokens_per_s": 1000.0 + value,
        "peak_rss_mb": seed_rss,
        "wall_s": 10.0,
        "precision": "bf16",
        "command": "x",
        **extra,
    }


def test_over_seeds_records_the_mean_spread_and_each_seed() -> None:
    runs = [[record(0.88, 100)], [record(0.90, 300)], [record(0.89, 200)]]
    (merged,) = quality.over_seeds(runs, [13, 14, 15], "sst2_bottleneck", ["training.precision=fp32"])
    assert merged["value"] == pytest.approx(0.89)
    assert merged["std"] == pytest.approx(0.01)
    assert merged["values"] == [0.88, 0.90, 0.89] and merged["seeds"] == [13, 14, 15]
    assert merged["peak_rss_mb"] == 300
    assert merged["command"].endswith("sst2_bottleneck --seeds 13 14 15 --set training.precision=fp32")
    assert quality.value_cell(merged) == "0.8900 ± 0.0100 (3 seeds)"
    assert quality.spread(record(0.5)) == "0.5000"


def test_over_seeds_refuses_seeds_trained_in_different_precisions() -> None:
    other = record(0.9) | {"precision": "fp32"}
    with pytest.raises(ValueError, match="different precisions"):
        quality.over_seeds([[record(0.9)], [other]], [1, 2], "n", [])


def test_precision_table_shows_the_spread_of_means_over_seeds() -> None:
    fp32 = record(0.8842) | {"precision": "fp32", "std": 0.002, "values": [0.882, 0.884, 0.886]}
    bf16 = record(0.8800) | {"std": 0.004, "values": [0.876, 0.88, 0.884]}
    (row,) = quality.precision_table([fp32, bf16])[2:]
    assert "0.8842 ± 0.0020 (3 seeds)" in row and "0.8800 ± 0.0040 (3 seeds) bf16" in row and "-0.42" in row


def _upsert_many(path: str, worker: int) -> None:
    for i in range(20):
        quality.upsert([record(0.5) | {"method": f"w{worker}-{i}"}], Path(path), tables=False)


def test_upserts_from_processes_side_by_side_keep_every_record(tmp_path: Path) -> None:
    path = tmp_path / "quality.json"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_upsert_many, args=(str(path), w)) for w in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    methods = {r["method"] for r in json.loads(path.read_text(encoding="utf-8"))}
    assert methods == {f"w{w}-{i}" for w in range(3) for i in range(20)}
