"""Financial PhraseBank for the finance monitor: a fixed split and a replayed stream of dated headlines.

    .venv/bin/python examples/finance_monitor/prepare_data.py            # -> runs/finance_monitor/data

Financial PhraseBank (Malo et al. 2014, CC BY-NC-SA 3.0; ../shared/data/financial_phrasebank, never copied into the
project) gives 4,846 sentences from English financial news, each labelled negative / neutral / positive by the
majority of 5 to 8 annotators (the ``Sentences_50Agree.txt`` file). The split written here is fixed: the exact
duplicate sentences are dropped (the first kept), then a split stratified by label with ``random.Random(13)``:
80% train, 10% dev, 10% test. ``test_allagree.csv`` is the part of the test split whose sentence is also in
``Sentences_AllAgree.txt`` (every annotator agreed), the subset on which published figures are often given.

``headlines.jsonl`` is a stream for the monitor: the test sentences, each with a date. The sentences have no dates
of their own, so the dates are made up: the test split is replayed over ``--days`` days (default 60) with the
negative sentences concentrated on a surge window (days 40 to 44 by default), so that the monitor has a real
change to find. Each line is ``{"date": "YYYY-MM-DD", "text": ..., "label": ...}``; the monitor reads only date and
text (the label is kept so that the alert can be checked against what was replayed).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import random
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data" / "financial_phrasebank"
LABELS = ("negative", "neutral", "positive")


def read_phrasebank(path: Path) -> list[tuple[str, str]]:
    """``sentence@label`` lines (Latin-1, CRLF) as (sentence, label); exact duplicate sentences dropped."""
    rows, seen = [], set()
    for number, line in enumerate(path.read_text(encoding="latin-1").splitlines(), 1):
        if not line.strip():
            continue
        text, sep, label = line.rpartition("@")
        if not sep or label not in LABELS:
            raise SystemExit(f"{path}:{number}: expected 'sentence@negative|neutral|positive', got {line[:80]!r}")
        if text not in seen:
            seen.add(text)
            rows.append((text.strip(), label))
    return rows


def split(rows: list[tuple[str, str]], seed: int = 13) -> dict[str, list[tuple[str, str]]]:
    """80/10/10 stratified by label, the order inside each split shuffled."""
    rng = random.Random(seed)
    by_label: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in rows:
        by_label[row[1]].append(row)
    parts: dict[str, list[tuple[str, str]]] = {"train": [], "dev": [], "test": []}
    for label in LABELS:
        group = by_label[label]
        rng.shuffle(group)
        n_dev = n_test = round(len(group) * 0.1)
        parts["test"] += group[:n_test]
        parts["dev"] += group[n_test : n_test + n_dev]
        parts["train"] += group[n_test + n_dev :]
    for part in parts.values():
        rng.shuffle(part)
    return parts


def replay(
    rows: list[tuple[str, str]], *, days: int, surge: tuple[int, int], start: dt.date, seed: int = 13
) -> list[dict[str, str]]:
    """The rows spread over ``days`` days in date order; ~70% of the negative rows fall in the ``surge`` days
    (inclusive, 0-based), the others and every other row uniformly over all days."""
    rng = random.Random(seed)
    dated = []
    for text, label in rows:
        day = rng.randint(*surge) if label == "negative" and rng.random() < 0.7 else rng.randrange(days)
        dated.append((day, rng.random(), text, label))
    dated.sort()
    return [{"date": (start + dt.timedelta(days=d)).isoformat(), "text": t, "label": y} for d, _, t, y in dated]


def write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "finance_monitor" / "data")
    parser.add_argument("--source", type=Path, default=SHARED, help="The financial_phrasebank folder.")
    parser.add_argument("--limit", type=int, default=None, help="Keep only this many training rows (smoke tests).")
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--surge", type=int, nargs=2, default=(40, 44), metavar=("FIRST", "LAST"))
    parser.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2024, 1, 1))
    args = parser.parse_args()
    parts = split(read_phrasebank(args.source / "Sentences_50Agree.txt"))
    if args.limit is not None:
        parts["train"] = parts["train"][: args.limit]
    all_agree = {text for text, _ in read_phrasebank(args.source / "Sentences_AllAgree.txt")}
    args.out.mkdir(parents=True, exist_ok=True)
    for name, rows in parts.items():
        write_csv(args.out / f"{name}.csv", rows)
    write_csv(args.out / "test_allagree.csv", [row for row in parts["test"] if row[0] in all_agree])
    stream = replay(parts["test"], days=args.days, surge=tuple(args.surge), start=args.start)
    with (args.out / "headlines.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(item, ensure_ascii=False) + "\n" for item in stream)
    counts = {name: len(rows) for name, rows in parts.items()}
    print(
        f"wrote {args.out}: {counts}, test_allagree {sum(r[0] in all_agree for r in parts['test'])}, "
        f"headlines.jsonl {len(stream)} over {args.days} days (surge days {args.surge[0]}-{args.surge[1]})"
    )


if __name__ == "__main__":
    main()
