"""Data for the customer-service example: BANKING77 intents, CLINC150 with its out-of-scope queries, reply records.

    .venv/bin/python examples/customer_service/prepare_data.py          # -> runs/customer_service/data

Read from ../shared/data (never copied into the project):

* BANKING77 (Casanueva et al. 2020, CC BY 4.0): 10,003 training and 3,080 test queries, 77 intents. It has no dev
  split: a fixed 10% of the training rows per intent (``random.Random(13)``) becomes ``banking77/dev.csv``.
* CLINC150 "full" (Larson et al. 2019, CC BY 3.0): 150 in-scope intents (100 train, 20 val, 30 test queries each)
  and out-of-scope queries (100 val, 1,000 test). ``clinc150/{train,dev,test}.csv`` are the in-scope splits;
  ``clinc150/oos_{dev,test}.csv`` the out-of-scope ones (label ``oos``, never trained on).
* Reply records for the SmolLM2 reply adapter (``replies/{train,dev}.jsonl``, OpenAI ``messages``): the system turn
  names the intent, the user turn is a BANKING77 query of that intent, the assistant turn is the intent's reply
  from ``replies.json`` (written for this example, Apache-2.0 like the project). Training takes up to
  ``--replies-per-intent`` (default 4) queries per intent from the BANKING77 training split; dev one query per
  intent from the BANKING77 dev split.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHARED = ROOT.parent / "shared" / "data"

#: The reply adapter's system turn; examples/customer_service/route.py sends the same.
SYSTEM = "You are the support assistant of a mobile bank. The customer's request is about: {intent}. Answer briefly."


def read_banking(path: Path) -> list[tuple[str, str]]:
    """``text,category`` CSV rows (quoted fields may hold newlines: a real CSV parser), whitespace trimmed."""
    with path.open(encoding="utf-8", newline="") as f:
        return [(" ".join(row["text"].split()), row["category"]) for row in csv.DictReader(f)]


def stratified_holdout(rows: list[tuple[str, str]], share: float, seed: int) -> tuple[list, list]:
    """(kept, held out): ``share`` of each label's rows held out, the order shuffled."""
    rng = random.Random(seed)
    by_label: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for row in rows:
        by_label[row[1]].append(row)
    kept, held = [], []
    for label in sorted(by_label):
        group = by_label[label]
        rng.shuffle(group)
        n = max(1, round(len(group) * share))
        held += group[:n]
        kept += group[n:]
    rng.shuffle(kept)
    rng.shuffle(held)
    return kept, held


def cap(rows: list, per_label: int | None) -> list[tuple[str, str]]:
    """The first ``per_label`` rows of each label, in their order (all rows when None): smoke-test slices that
    still hold every label."""
    taken: dict[str, int] = defaultdict(int)
    kept = []
    for text, label in rows:
        taken[label] += 1
        if per_label is None or taken[label] <= per_label:
            kept.append((text, label))
    return kept


def write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows(rows)


def reply_records(rows: list[tuple[str, str]], replies: dict[str, str], per_intent: int) -> list[dict]:
    taken: dict[str, int] = defaultdict(int)
    records = []
    for text, intent in rows:
        if taken[intent] < per_intent:
            taken[intent] += 1
            messages = [
                {"role": "system", "content": SYSTEM.format(intent=intent.replace("_", " "))},
                {"role": "user", "content": text},
                {"role": "assistant", "content": replies[intent]},
            ]
            records.append({"messages": messages})
    return records


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "customer_service" / "data")
    parser.add_argument("--shared", type=Path, default=SHARED, help="The shared data folder.")
    parser.add_argument("--per-intent", type=int, default=None, help="Keep this many training rows per intent.")
    parser.add_argument("--eval-per-intent", type=int, default=None, help="The same for the other splits.")
    parser.add_argument("--replies-per-intent", type=int, default=4)
    args = parser.parse_args()
    banking_train, banking_dev = stratified_holdout(read_banking(args.shared / "banking77" / "train.csv"), 0.1, 13)
    banking_test = read_banking(args.shared / "banking77" / "test.csv")
    clinc = json.loads((args.shared / "clinc150" / "data_full.json").read_text(encoding="utf-8"))
    train, other = args.per_intent, args.eval_per_intent
    parts = {
        "banking77/train": cap(banking_train, train),
        "banking77/dev": cap(banking_dev, other),
        "banking77/test": cap(banking_test, other),
        "clinc150/train": cap(clinc["train"], train),
        "clinc150/dev": cap(clinc["val"], other),
        "clinc150/test": cap(clinc["test"], other),
        "clinc150/oos_dev": cap(clinc["oos_val"], other and other * 10),
        "clinc150/oos_test": cap(clinc["oos_test"], other and other * 10),
    }
    for name, rows in parts.items():
        write_csv(args.out / f"{name}.csv", rows)
    replies = json.loads((HERE / "replies.json").read_text(encoding="utf-8"))
    write_jsonl(args.out / "replies" / "train.jsonl", reply_records(banking_train, replies, args.replies_per_intent))
    write_jsonl(args.out / "replies" / "dev.jsonl", reply_records(banking_dev, replies, 1))
    print(f"wrote {args.out}: " + ", ".join(f"{name} {len(rows)}" for name, rows in parts.items()))


if __name__ == "__main__":
    main()
