"""examples/recommendation on a small slice: the MovieLens-100K rows that prepare_data.py builds (leave-one-out,
seen items, the catalogue as corpus rows), and run.sh end to end on a tiny BERT (data, training, the frozen
baseline and the quality records). MovieLens-100K comes with the RecBole package (scripts/setup.sh --test installs
it): missing, the tests fail under CI and skip otherwise."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

from example_kit import EXAMPLES, ROOT, load_script

FOLDER = EXAMPLES / "recommendation"
prepare = load_script(FOLDER / "prepare_data.py")


@pytest.fixture(scope="module")
def movielens() -> Path:
    if importlib.util.find_spec("recbole") is None:
        message = "MovieLens-100K needs the RecBole package: .venv/bin/pip install --no-deps recbole==1.2.1"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return prepare.movielens_folder()  # type: ignore[no-any-return]


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_prepare_data_builds_leave_one_out_rows(movielens: Path, tmp_path: Path) -> None:
    counts = prepare.main(["--out", str(tmp_path), "--users", "20", "--history", "3", "--train-per-user", "2"])
    train, dev, test = (read(tmp_path / f"{split}.jsonl") for split in ("train", "dev", "test"))
    corpus = [row["item"] for row in test if "item" in row]
    queries = [row for row in test if "query" in row]
    assert counts == {"train": len(train), "dev": len(dev), "test": len(test)}
    assert len(corpus) == len(set(corpus)) == 1664  # 1,682 films, 18 of them listed twice under one title
    assert len(queries) == 20 and len(train) <= 40  # every one of the first 20 users has 5 likes or more
    for row in queries:
        assert row["positive"] in corpus and row["positive"] not in row["seen"]
        assert set(row["seen"]) <= set(corpus) and len(row["query"].split(" | ")) <= 3  # --history 3
    # user 1's test row: their last like, after their dev row's target, which their history then starts with
    first_dev, first_test = dev[0], queries[0]
    history = first_test["query"].removeprefix("Recently liked: ")
    assert history.startswith(prepare.short_text(first_dev["positive"]))
    assert first_dev["positive"] in first_test["seen"]
    assert prepare.film_text({"movie_title": "Usual Suspects, The", "release_year": "1995", "class": "Crime"}) == (
        "The Usual Suspects (1995). Genres: Crime."
    )


def test_run_sh_trains_and_reports_against_the_frozen_model(movielens: Path, tiny_bert: Path, tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "USERS": "20", "OMP_NUM_THREADS": "1"}
    overrides = [f"model.name_or_path={tiny_bert}", "training.max_steps=3", "training.progress=false"]
    overrides += ["data.batch_size=16", "data.max_length=128"]
    args = [arg for value in overrides for arg in ("--set", value)]
    done = subprocess.run(
        ["bash", str(FOLDER / "run.sh"), *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "dev at_start vs frozen: largest difference 0.00e+00" in done.stdout
    records = json.loads((tmp_path / "lora" / "quality_records.json").read_text(encoding="utf-8"))
    assert [(r["metric"], r["split"], r["method"]) for r in records] == [
        ("recall@10", "test", "lora"),
        ("ndcg@10", "test", "lora"),
    ]
    results = json.loads((tmp_path / "lora" / "results.json").read_text(encoding="utf-8"))
    assert results["steps"] == 3 and results["metric"] == "ndcg@10"
    assert all(0.0 <= r["value"] <= 1.0 and 0.0 <= r["value_at_start"] <= 1.0 for r in records)
