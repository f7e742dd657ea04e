"""Watch a stream of dated headlines for a surge of negative news, scored by an adapter through ``adaptune serve``.

    .venv/bin/python examples/finance_monitor/monitor.py runs/finance_monitor/data/headlines.jsonl \
        --server http://127.0.0.1:8000 --adapter fpb-sentiment --plot runs/finance_monitor/negative_share.png
    tail -f news.jsonl | .venv/bin/python examples/finance_monitor/monitor.py -      # or read standard input

Each input line is a JSON object with ``date`` (ISO ``YYYY-MM-DD`` or a full ISO timestamp) and ``text``; lines must
come in date order (an earlier date than the last one is an error naming the line). Headlines are sent to the
server's ``/v1/classify`` in batches of ``--batch`` (fewer when the stream pauses: a batch is sent when it is full,
when the date changes, or at the end). For each headline the monitor keeps the share of negative headlines among
those of the last ``--window-days`` days (the headline's own day included). An alert line is printed when that share
reaches ``--threshold`` with at least ``--min-count`` headlines in the window; the alert re-arms once the share falls
below ``threshold - hysteresis``, so one surge gives one alert, not one per headline. At the end it writes a PNG of
the share per day with the threshold and the alerts marked, and prints a summary line.

Only the standard library and matplotlib: the monitor is a client, it needs no torch.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import urllib.request
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO


@dataclass(frozen=True)
class Headline:
    line: int
    when: dt.datetime
    text: str


@dataclass(frozen=True)
class Alert:
    when: dt.datetime
    share: float
    negatives: int
    total: int
    text: str


def read_stream(lines: Iterable[str], source: str) -> Iterator[Headline]:
    """Parse and check the JSON lines; errors name ``source:line`` and the field."""
    last: dt.datetime | None = None
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            item = json.loads(raw)
        except json.JSONDecodeError as err:
            raise SystemExit(f"{source}:{number}: not JSON ({err.msg})") from None
        if not isinstance(item, dict) or not isinstance(item.get("text"), str) or not item["text"].strip():
            raise SystemExit(f"{source}:{number}: field 'text' must be a non-empty string")
        try:
            when = dt.datetime.fromisoformat(str(item.get("date")))
        except ValueError:
            raise SystemExit(f"{source}:{number}: field 'date' must be an ISO date, got {item.get('date')!r}") from None
        if last is not None and when < last:
            raise SystemExit(f"{source}:{number}: field 'date' {when.date()} is earlier than the line before")
        last = when
        yield Headline(number, when, item["text"])


def batches(headlines: Iterable[Headline], size: int) -> Iterator[list[Headline]]:
    """Runs of at most ``size`` headlines, cut where the day changes (so a day's alert is not held back)."""
    batch: list[Headline] = []
    for headline in headlines:
        if batch and (len(batch) == size or headline.when.date() != batch[-1].when.date()):
            yield batch
            batch = []
        batch.append(headline)
    if batch:
        yield batch


class Classifier:
    """``POST /v1/classify`` on an ``adaptune serve`` server."""

    def __init__(self, server: str, adapter: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        self.url, self.adapter, self.timeout = server.rstrip("/") + "/v1/classify", adapter, timeout
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"

    def labels(self, texts: list[str]) -> list[str]:
        body = json.dumps({"adapter": self.adapter, "inputs": texts}).encode()
        request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer: dict[str, Any] = json.load(response)
        except urllib.error.HTTPError as err:
            raise SystemExit(f"{self.url}: HTTP {err.code}: {err.read().decode(errors='replace')[:300]}") from None
        return [p["label"] for p in answer["predictions"]]


@dataclass
class NegativeShare:
    """The rolling share of negative headlines over the last ``window_days`` days, with one alert per surge."""

    window_days: int
    threshold: float
    min_count: int
    hysteresis: float
    negative_label: str = "negative"
    window: deque[tuple[dt.date, bool]] = field(default_factory=deque)
    armed: bool = True
    #: (day, share at the day's last headline, headlines in the window) for the plot.
    daily: dict[dt.date, tuple[float, int]] = field(default_factory=dict)

    def add(self, headline: Headline, label: str) -> Alert | None:
        day = headline.when.date()
        self.window.append((day, label == self.negative_label))
        while self.window and (day - self.window[0][0]).days >= self.window_days:
            self.window.popleft()
        negatives, total = sum(neg for _, neg in self.window), len(self.window)
        share = negatives / total
        self.daily[day] = (share, total)
        if self.armed and total >= self.min_count and share >= self.threshold:
            self.armed = False
            return Alert(headline.when, share, negatives, total, headline.text)
        if not self.armed and share < self.threshold - self.hysteresis:
            self.armed = True
        return None


def plot(share: NegativeShare, alerts: list[Alert], threshold: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = sorted(share.daily)
    fig, ax = plt.subplots(figsize=(9, 3.6), dpi=110)
    ax.plot(days, [share.daily[d][0] for d in days], marker=".", label=f"negative share, last {share.window_days} days")
    ax.axhline(threshold, color="tab:red", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    for alert in alerts:
        ax.axvline(alert.when.date(), color="tab:red", alpha=0.35, linewidth=6)
        ax.annotate("alert", (alert.when.date(), alert.share), color="tab:red", ha="center", va="bottom")
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of negative headlines")
    ax.set_title(title)
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stream", help="JSON-lines file of {date, text}, or - for standard input.")
    parser.add_argument("--server", default="http://127.0.0.1:8000")
    parser.add_argument("--adapter", default="fpb-sentiment", help="Adapter name on the server.")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--window-days", type=int, default=3)
    parser.add_argument("--threshold", type=float, default=0.35)
    parser.add_argument("--min-count", type=int, default=10, help="Fewest headlines in the window for an alert.")
    parser.add_argument("--hysteresis", type=float, default=0.1)
    parser.add_argument("--negative-label", default="negative", help="The adapter's label for negative news.")
    parser.add_argument("--plot", type=Path, default=Path("runs/finance_monitor/negative_share.png"))
    args = parser.parse_args(argv)
    source: TextIO = sys.stdin if args.stream == "-" else open(args.stream, encoding="utf-8")  # noqa: SIM115
    name = "<stdin>" if args.stream == "-" else args.stream
    classifier = Classifier(args.server, args.adapter, args.api_key)
    share = NegativeShare(args.window_days, args.threshold, args.min_count, args.hysteresis, args.negative_label)
    alerts: list[Alert] = []
    seen = 0
    with source:
        for batch in batches(read_stream(source, name), args.batch):
            for headline, label in zip(batch, classifier.labels([h.text for h in batch]), strict=True):
                seen += 1
                if (alert := share.add(headline, label)) is not None:
                    alerts.append(alert)
                    print(
                        f"ALERT {alert.when.date()}: {alert.share:.0%} of the last {args.window_days} days' headlines "
                        f"are negative ({alert.negatives} of {alert.total}; threshold {args.threshold:.0%}); "
                        f"latest: {alert.text[:100]}",
                        flush=True,
                    )
    if not seen:
        raise SystemExit(f"{name}: no headlines")
    plot(share, alerts, args.threshold, args.plot, f"{args.adapter}: negative news, {seen} headlines")
    print(f"{seen} headlines over {len(share.daily)} days, {len(alerts)} alert(s); plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
