"""Synthetic query/item pairs for ``text_pair_rank`` tests: the query "the <adjective> <noun>" goes with the item
"a <noun> by the <place>", the adjective fixing the place. The shared noun gives even a random model something to
rank by; the eight items of each noun differ only in the place, which training must learn from the adjective (hard
in-batch negatives)."""

from __future__ import annotations

import json
import random
from pathlib import Path

ADJECTIVES = ["red", "blue", "green", "small", "old", "quiet", "bright", "cold"]
NOUNS = ["cat", "car", "song", "book", "tree", "coat"]
PLACES = ["river", "city", "garden", "school", "market", "island", "forest", "station"]


def pair_rows(count: int = 48, seed: int = 0) -> list[dict[str, str]]:
    """``count`` rows ``{"query", "positive"}`` (48 distinct pairs, repeated beyond that), shuffled."""
    rows = [
        {"query": f"the {adjective} {noun}", "positive": f"a {noun} by the {place}"}
        for adjective, place in zip(ADJECTIVES, PLACES, strict=True)
        for noun in NOUNS
    ]
    random.Random(seed).shuffle(rows)
    return [rows[i % len(rows)] for i in range(count)]


def corpus_items() -> list[str]:
    """Every item text of :func:`pair_rows`."""
    return [f"a {noun} by the {place}" for place in PLACES for noun in NOUNS]


def write_pairs(path: Path, count: int = 48, seed: int = 0, *, corpus: bool = False) -> Path:
    """Write :func:`pair_rows` as JSON Lines; with ``corpus`` also one corpus row per item."""
    rows: list[dict[str, str]] = pair_rows(count, seed)
    if corpus:
        rows += [{"item": item} for item in corpus_items()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
