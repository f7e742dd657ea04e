"""Synthetic data for tiny-model tests of the relation and QA tasks: the relation and its direction follow from the
words between the two entities, and the answer from the question's name, so a small model can learn them."""

from __future__ import annotations

import json
import random
from pathlib import Path

THINGS = ["apple", "bottle", "letter", "engine", "river", "garden", "bridge", "piano", "castle", "forest", "table"]
#: (pattern with {a} first and {b} second in the text, relation of a to b).
PATTERNS = [
    ("the {a} is inside the {b} .", "Content-Container(e1,e2)"),
    ("the {a} contains the {b} .", "Content-Container(e2,e1)"),
    ("the {a} came from the {b} .", "Entity-Origin(e1,e2)"),
    ("the {a} was the source of the {b} .", "Entity-Origin(e2,e1)"),
    ("the {a} stood near the {b} .", "Other"),
]


def relation_rows(count: int, seed: int, *, spans: bool = False) -> list[dict[str, object]]:
    """``count`` rows ``{"text", "label"}`` with inline ``<e1>``/``<e2>`` markup (or ``"e1"``/``"e2"`` spans)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        a, b = rng.sample(THINGS, 2)
        pattern, label = rng.choice(PATTERNS)
        if spans:
            text = pattern.format(a=a, b=b)
            start_a = text.index(f" {a} ") + 1
            start_b = text.index(f" {b} ", start_a + len(a)) + 1
            rows.append(
                {"text": text, "e1": [start_a, start_a + len(a)], "e2": [start_b, start_b + len(b)], "label": label}
            )
        else:
            rows.append({"text": pattern.format(a=f"<e1>{a}</e1>", b=f"<e2>{b}</e2>"), "label": label})
    return rows


def write_relations(path: Path, count: int = 48, seed: int = 0, *, spans: bool = False) -> Path:
    """Write :func:`relation_rows` as JSON Lines to ``path``."""
    path.write_text("".join(json.dumps(r) + "\n" for r in relation_rows(count, seed, spans=spans)), encoding="utf-8")
    return path


NAMES = ["alice", "bob", "carol", "david", "emma", "frank", "grace", "henry", "irene", "jack", "kate", "leo"]
CITIES = ["paris", "london", "berlin", "madrid", "rome", "vienna", "prague", "dublin", "oslo", "lisbon"]
FOODS = ["apples", "bread", "cheese", "rice", "soup", "fish"]


def qa_rows(count: int, seed: int) -> list[dict[str, object]]:
    """Synthetic English QA: passages of "<name> lives in <city> ." sentences (with filler about food), a
    question about one name, its city as the answer; the offsets are the true ones."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        names = rng.sample(NAMES, 8)
        sentences = []
        for name in names:
            sentences.append(f"{name} lives in {rng.choice(CITIES)} .")
            sentences.append(f"{name} likes {rng.choice(FOODS)} .")
        context = " ".join(sentences)
        target = rng.choice(names)
        sentence = next(s for s in sentences if s.startswith(f"{target} lives"))
        city = sentence.split()[3]
        start = context.index(sentence) + len(f"{target} lives in ")
        rows.append(
            {
                "id": f"q{index}",
                "question": f"where does {target} live ?",
                "context": context,
                "answers": {"text": [city], "answer_start": [start]},
            }
        )
    return rows


def write_qa(path: Path, count: int = 48, seed: int = 0) -> Path:
    """Write :func:`qa_rows` as JSON Lines to ``path``."""
    path.write_text("".join(json.dumps(r) + "\n" for r in qa_rows(count, seed)), encoding="utf-8")
    return path
