"""examples/finance_monitor: the fixed split, the monitor's rolling share and alerts, and the whole example on a
slice (prepare, train MiniLM briefly, serve, monitor the replayed stream) over loopback."""

from __future__ import annotations

import csv
import datetime as dt
import json
import shutil
from pathlib import Path

import pytest

from example_kit import EXAMPLES, load_script, run
from serving_kit import serving

FOLDER = EXAMPLES / "finance_monitor"
monitor = load_script(FOLDER / "monitor.py")
prepare = load_script(FOLDER / "prepare_data.py")


def headline(day: int, text: str = "x", line: int = 1) -> object:
    return monitor.Headline(line, dt.datetime(2024, 1, 1) + dt.timedelta(days=day), text)


def test_one_alert_per_surge_with_hysteresis() -> None:
    share = monitor.NegativeShare(window_days=2, threshold=0.5, min_count=4, hysteresis=0.2)
    labels = ["neutral"] * 4 + ["negative"] * 6 + ["neutral"] * 30 + ["negative"] * 30
    alerts = [a for i, label in enumerate(labels) if (a := share.add(headline(i // 4), label)) is not None]
    # the first surge alerts once (at the headline that brings the share to 0.5), re-arms when it falls below 0.3,
    # and the second surge alerts again
    assert len(alerts) == 2
    assert alerts[0].negatives == 4 and alerts[0].total == 8 and alerts[0].share == 0.5
    assert alerts[1].when.date() > alerts[0].when.date()


def test_the_window_forgets_old_days() -> None:
    share = monitor.NegativeShare(window_days=3, threshold=0.9, min_count=1, hysteresis=0.1)
    share.add(headline(0), "negative")
    share.add(headline(2), "neutral")
    assert share.daily[headline(2).when.date()] == (0.5, 2)
    share.add(headline(3), "neutral")  # day 0 is now 3 days back: out of the window
    assert share.daily[headline(3).when.date()] == (0.0, 2)


def test_min_count_holds_back_an_alert() -> None:
    share = monitor.NegativeShare(window_days=7, threshold=0.3, min_count=5, hysteresis=0.1)
    assert [share.add(headline(0), "negative") for _ in range(4)] == [None] * 4
    assert share.add(headline(0), "negative") is not None


def test_stream_errors_name_line_and_field() -> None:
    lines = ['{"date": "2024-01-02", "text": "a"}', '{"date": "2024-01-01", "text": "b"}']
    with pytest.raises(SystemExit, match=r"news.jsonl:2: field 'date' 2024-01-01 is earlier"):
        list(monitor.read_stream(lines, "news.jsonl"))
    with pytest.raises(SystemExit, match=r"news.jsonl:1: field 'text'"):
        list(monitor.read_stream(['{"date": "2024-01-01"}'], "news.jsonl"))
    with pytest.raises(SystemExit, match=r"news.jsonl:1: field 'date' must be an ISO date"):
        list(monitor.read_stream(['{"date": "yesterday", "text": "a"}'], "news.jsonl"))


def test_batches_cut_at_day_changes() -> None:
    items = [headline(0), headline(0), headline(0), headline(1)]
    assert [len(b) for b in monitor.batches(items, 2)] == [2, 1, 1]


def test_split_is_fixed_and_stratified(shared_data: Path) -> None:
    rows = prepare.read_phrasebank(shared_data / "financial_phrasebank" / "Sentences_50Agree.txt")
    first, second = prepare.split(rows), prepare.split(rows)
    assert first == second
    texts = [set(t for t, _ in part) for part in first.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert sum(map(len, first.values())) == len(rows) == len({t for t, _ in rows})
    negative_share = {name: sum(y == "negative" for _, y in part) / len(part) for name, part in first.items()}
    assert max(negative_share.values()) - min(negative_share.values()) < 0.01


@pytest.mark.integration
def test_example_end_to_end_on_a_slice(shared_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    source = shared_data / "financial_phrasebank"
    run([str(FOLDER / "prepare_data.py"), "--out", str(data), "--source", str(source), "--limit", "300"])
    stream = (data / "headlines.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(stream) == len(list(csv.DictReader((data / "test.csv").open(encoding="utf-8"))))
    dates = [json.loads(line)["date"] for line in stream]
    assert dates == sorted(dates)
    run_dir = tmp_path / "run"
    overrides = [f"data.{split}={data / split}.csv" for split in ("train", "dev", "test")]
    overrides += ["training.epochs=1", f"training.output_dir={run_dir}", "data.max_length=64"]
    run(["-m", "adaptune.cli", "train", str(FOLDER / "config.yaml"), *(a for o in overrides for a in ("--set", o))])
    adapters = tmp_path / "adapters"
    shutil.copytree(run_dir / "adapter", adapters / "fpb-sentiment")
    plot = tmp_path / "share.png"
    with serving(["sentence-transformers/all-MiniLM-L6-v2"], adapters) as url:
        done = run([str(FOLDER / "monitor.py"), str(data / "headlines.jsonl"), "--server", url, "--plot", str(plot)])
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"{len(stream)} headlines over ") and "alert(s)" in summary
    assert plot.stat().st_size > 10_000
