"""Data selection (``adaptune select``): the ranking functions on hand-made vectors, the embedder on a tiny random
BERT, uncertainty through a stubbed and a trained adapter, the output file, the CLI, and, with the real MiniLM on
SST-2 and CoNLL-2003 sentences from ``../shared/data``, that picks come from the target's domain."""

from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import typer
from typer.testing import CliRunner

from adaptune import load_config, train
from adaptune.backbone import load_backbone
from adaptune.cli_data import select
from adaptune.config import ModelConfig
from adaptune.errors import ConfigError, DataError
from adaptune.selection import (
    Embedder,
    centroid_scores,
    entropy,
    k_center_greedy,
    select_file,
    select_rows,
    uncertainty_scores,
)


def _unit(*angles: float) -> torch.Tensor:
    """2-d unit vectors at ``angles`` (degrees)."""
    radians = torch.tensor(angles, dtype=torch.float32) * math.pi / 180
    return torch.stack([radians.cos(), radians.sin()], dim=1)


class StubEmbedder:
    """Hand-made vectors by text: ``"a30"`` is the unit vector at 30 degrees (any suffix after ``#`` ignored)."""

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        return _unit(*(float(text.split("#")[0][1:]) for text in texts))


# -- ranking functions on hand-made vectors ------------------------------------------------------------------


def test_k_center_greedy_takes_the_farthest_point_each_time() -> None:
    vectors = _unit(0, 5, 10, 90, 180, 100)
    assert k_center_greedy(vectors, 1) == [0]
    # from 0°: 180° is farthest; then 90° (90° from both picks); then 10° (min distance to {0,180,90} is largest)
    assert k_center_greedy(vectors, 4, start=0) == [0, 4, 3, 2]
    assert k_center_greedy(vectors, 3, start=5) == [5, 0, 4]  # from 100°: 0° (100° away), then 180°
    assert k_center_greedy(_unit(0, 90, 90), 2) == [0, 1]  # an exact tie goes to the lower index
    picked = k_center_greedy(vectors, 6)
    assert sorted(picked) == list(range(6))  # all rows, each once
    with pytest.raises(ValueError, match="between 1 and"):
        k_center_greedy(vectors, 7)


def test_k_center_greedy_matches_a_brute_force_farthest_first() -> None:
    generator = torch.Generator().manual_seed(0)
    vectors = torch.nn.functional.normalize(torch.randn(40, 8, generator=generator), dim=1)
    picked = [0]
    for _ in range(9):
        distance = 1 - vectors @ vectors[picked].T  # (40, picks)
        nearest = distance.min(1).values
        nearest[picked] = -1
        picked.append(int(nearest.argmax()))
    assert k_center_greedy(vectors, 10) == picked


def test_centroid_scores_are_cosines_to_the_normalised_target_mean() -> None:
    pool, target = _unit(0, 45, 90, 180), _unit(30, 60)
    scores = centroid_scores(pool, target)
    expected = torch.cos(torch.tensor([45.0, 0.0, 45.0, 135.0]) * math.pi / 180)
    torch.testing.assert_close(scores, expected)


def test_entropy_is_zero_for_certainty_and_log_c_for_uniform() -> None:
    probs = torch.tensor([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]])
    torch.testing.assert_close(entropy(probs), torch.tensor([0.0, math.log(3), math.log(2)]))


def test_centroid_picks_the_nearest_and_kcenter_spreads_them() -> None:
    pool = ["a0#1", "a0#2", "a0#3", "a20", "a-20", "a40", "a-40", "a180"]
    target = ["a-5", "a5"]
    near = select_rows(pool, 3, strategy="centroid", target_texts=target, embedder=StubEmbedder())  # type: ignore[arg-type]
    assert near.indices == [0, 1, 2]  # the three copies of 0°
    assert near.scores == pytest.approx([1.0, 1.0, 1.0])
    spread = select_rows(pool, 3, strategy="kcenter", target_texts=target, embedder=StubEmbedder(), candidates=7 / 3)  # type: ignore[arg-type]
    # the 7 most target-like rows (all but 180°); from 0°, farthest first: 40° then -40°
    assert spread.indices == [0, 5, 6]
    assert spread.scores == pytest.approx([1.0, math.cos(math.radians(40)), math.cos(math.radians(40))])
    with pytest.raises(ConfigError, match="TARGET"):
        select_rows(pool, 2, strategy="kcenter", embedder=StubEmbedder())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="more than the pool's 8 rows"):
        select_rows(pool, 9, strategy="centroid", target_texts=target, embedder=StubEmbedder())  # type: ignore[arg-type]


# -- uncertainty ----------------------------------------------------------------------------------------------


def _stub_predictor(kind: str, logits: list[torch.Tensor], word_index: list[list[int]] | None = None) -> Any:
    """What :func:`uncertainty_scores` uses of a Predictor: ``task.kind``, ``task.config``, ``logits``, and for
    tagging ``examples`` and ``encode`` (``word_index`` per text)."""
    encoded = [SimpleNamespace(word_index=w) for w in word_index or []]
    return SimpleNamespace(
        name="stub",
        task=SimpleNamespace(kind=kind, config=SimpleNamespace()),
        logits=lambda texts: logits[: len(texts)],
        examples=lambda texts: texts,
        encode=lambda examples: encoded,
    )


def test_uncertainty_ranks_by_entropy_of_the_predicted_distribution() -> None:
    probs = torch.tensor([[0.98, 0.01, 0.01], [0.4, 0.3, 0.3], [0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    predictor = _stub_predictor("classify", list(probs.log()))
    scores = uncertainty_scores(predictor, ["w", "x", "y", "z"])
    torch.testing.assert_close(scores, entropy(probs))
    picked = select_rows(["w", "x", "y", "z"], 3, strategy="uncertainty", predictor=predictor)
    assert picked.indices == [3, 1, 2]
    assert picked.scores[0] == pytest.approx(math.log(3), abs=1e-5)


def test_uncertainty_of_a_tagger_is_the_mean_over_words_only() -> None:
    sure, unsure = torch.tensor([10.0, -10.0]), torch.tensor([0.0, 0.0])
    # sentence 0: [CLS] w0 w0-cont w1 [SEP]; the special and continuation positions are unsure but not counted
    first = torch.stack([unsure, sure, unsure, sure, unsure])
    second = torch.stack([sure, unsure, sure])
    predictor = _stub_predictor("tag", [first, second], [[-1, 0, -1, 1, -1], [-1, 0, -1]])
    scores = uncertainty_scores(predictor, ["a b", "c"])
    assert float(scores[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(scores[1]) == pytest.approx(math.log(2), abs=1e-6)
    with pytest.raises(ConfigError, match="'generate' adapter"):
        uncertainty_scores(_stub_predictor("generate", []), ["x"])


def test_uncertainty_with_a_trained_tiny_adapter_through_the_cli(
    tiny_bert: Path, bundled_data: Path, tmp_path: Path
) -> None:
    cfg = load_config(
        None,
        [
            f"model.name_or_path={tiny_bert}",
            "model.pooling=mean",
            "method.name=head",
            f"data.train={bundled_data / 'intents' / 'train.jsonl'}",
            "data.max_train_examples=48",
            "training.epochs=1",
            "training.progress=false",
            f"training.output_dir={tmp_path / 'run'}",
        ],
    )
    result = train(cfg)
    pool = tmp_path / "pool.jsonl"
    texts = ["where is my parcel?", "I want a refund", "payment failed", "cancel my order", "hello"]
    pool.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    app = typer.Typer()
    app.command()(select)
    out = tmp_path / "picked.jsonl"
    args = [str(pool), "--n", "3", "--out", str(out), "--strategy", "uncertainty", "--adapter", str(result.adapter_dir)]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    from adaptune import Predictor

    expected = uncertainty_scores(Predictor.load(result.adapter_dir), texts)
    order = torch.argsort(-expected, stable=True)[:3].tolist()
    assert [row["id"] for row in rows] == order
    assert [row["rank"] for row in rows] == [1, 2, 3]
    assert [row["pool_line"] for row in rows] == [i + 1 for i in order]
    assert [row["score"] for row in rows] == pytest.approx([float(expected[i]) for i in order], abs=1e-5)
    missing = CliRunner().invoke(app, [str(pool), "--n", "2", "--out", str(out), "--strategy", "uncertainty"])
    assert missing.exit_code == 2 and "--adapter DIR" in missing.output


# -- the embedder and the output file on a tiny random BERT ---------------------------------------------------


def test_embedder_gives_unit_vectors_independent_of_batching(tiny_bert: Path) -> None:
    backbone = load_backbone(ModelConfig(name_or_path=str(tiny_bert), pooling="mean"))
    texts = ["a short one", "a much longer sentence with many more words in it than the others", "mid size text"]
    batched = Embedder(backbone, batch_size=2).embed(texts)
    alone = torch.cat([Embedder(backbone, batch_size=1).embed([t]) for t in texts])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(batched.norm(dim=1), torch.ones(3))
    enc = backbone.tokenizer(texts[0], return_tensors="pt")
    with torch.no_grad():
        hidden = backbone.model(**enc).last_hidden_state[0]
    torch.testing.assert_close(batched[0], torch.nn.functional.normalize(hidden.mean(0), dim=0), atol=1e-5, rtol=1e-4)
    assert Embedder.load(str(tiny_bert)).backbone.pooling == "cls"  # no sentence-transformers config: CLS


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize("ext", ["csv", "tsv", "jsonl"])
def test_select_file_writes_the_picked_rows_with_their_fields(tiny_bert: Path, tmp_path: Path, ext: str) -> None:
    pool = tmp_path / "pool.csv"
    _write_csv(pool, [{"text": f"row number {i} about {'cats' if i % 2 else 'cars'}", "id": i} for i in range(12)])
    target = tmp_path / "target.jsonl"
    target.write_text('{"sentence": "cats are nice"}\n{"sentence": "a cat"}\n', encoding="utf-8")
    embedder = Embedder.load(str(tiny_bert))
    out = tmp_path / f"picked.{ext}"
    picked = select_file(pool, target, n=4, out=out, strategy="kcenter", embedder=embedder)
    if ext == "jsonl":
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    else:
        delimiter = "," if ext == "csv" else "\t"
        rows = list(csv.DictReader(out.open(encoding="utf-8"), delimiter=delimiter))
    assert list(rows[0]) == ["text", "id", "score", "rank", "pool_line"]
    assert [int(row["id"]) for row in rows] == picked.indices
    assert [int(row["rank"]) for row in rows] == [1, 2, 3, 4]
    assert [int(row["pool_line"]) for row in rows] == [i + 2 for i in picked.indices]  # line 1 is the header
    assert [float(row["score"]) for row in rows] == pytest.approx(picked.scores, abs=1e-5)
    assert len(set(picked.indices)) == 4


def test_select_file_refusals_name_the_file_and_field(tiny_bert: Path, tmp_path: Path) -> None:
    embedder = Embedder.load(str(tiny_bert))
    target = tmp_path / "target.csv"
    _write_csv(target, [{"text": "x"}])
    clash = tmp_path / "clash.csv"
    _write_csv(clash, [{"text": "a", "score": 1}, {"text": "b", "score": 2}])
    with pytest.raises(DataError) as err:
        select_file(clash, target, n=1, out=tmp_path / "o.csv", embedder=embedder)
    assert err.value.file == str(clash) and err.value.field == "score" and err.value.line == 2
    no_text = tmp_path / "no_text.csv"
    _write_csv(no_text, [{"body": "a"}])
    with pytest.raises(DataError) as err:
        select_file(no_text, target, n=1, out=tmp_path / "o.csv", embedder=embedder)
    assert err.value.file == str(no_text) and err.value.field == "text" and "fields present: body" in str(err.value)
    with pytest.raises(ConfigError, match="cannot tell the format"):
        select_file(target, target, n=1, out=tmp_path / "o.xlsx", embedder=embedder)
    assert not (tmp_path / "o.csv").exists()


# -- the real MiniLM on SST-2 (movie reviews) mixed with CoNLL-2003 (news) -------------------------------------


@pytest.fixture(scope="module")
def review_vs_news(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, set[int]]:
    """A pool of 200 SST-2 training sentences and 200 CoNLL-2003 sentences (shuffled, csv with an ``origin``
    column), a target of 50 held-out SST-2 dev sentences, and the pool rows (0-based) that are SST-2."""
    from adaptune.data.readers import read_text_examples, read_token_examples

    sst = [e.text for e in read_text_examples(shared_data / "sst2" / "train.tsv", text_column="sentence")[:3000]]
    dev = [e.text for e in read_text_examples(shared_data / "sst2" / "dev.tsv", text_column="sentence")]
    news = [e.text for e in read_token_examples(shared_data / "conll2003" / "train.txt")[:3000]]
    rng = random.Random(0)
    long_enough = [[t for t in texts if len(t.split()) >= 6] for texts in (sst, dev, news)]
    mix = [(t, "sst2") for t in rng.sample(long_enough[0], 200)] + [
        (t, "conll") for t in rng.sample(long_enough[2], 200)
    ]
    rng.shuffle(mix)
    folder = tmp_path_factory.mktemp("review_vs_news")
    pool, target = folder / "pool.csv", folder / "target.tsv"
    _write_csv(pool, [{"text": text, "origin": origin} for text, origin in mix])
    target.write_text("sentence\n" + "".join(t + "\n" for t in rng.sample(long_enough[1], 50)), encoding="utf-8")
    return pool, target, {i for i, (_, origin) in enumerate(mix) if origin == "sst2"}


def _mean_pairwise_cosine(vectors: torch.Tensor) -> float:
    sims = vectors @ vectors.T
    n = vectors.shape[0]
    return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))


@pytest.mark.integration
def test_minilm_picks_movie_reviews_for_a_movie_review_target(
    review_vs_news: tuple[Path, Path, set[int]], tmp_path: Path
) -> None:
    pool, target, in_domain = review_vs_news
    embedder = Embedder.load()  # sentence-transformers/all-MiniLM-L6-v2, packaged: offline
    assert embedder.backbone.pooling == "mean"  # read from its 1_Pooling/config.json
    texts = [row["text"] for row in csv.DictReader(pool.open(encoding="utf-8"))]
    found = {}
    for strategy in ("centroid", "kcenter"):
        out = tmp_path / f"{strategy}.csv"
        found[strategy] = select_file(
            pool, target, n=50, out=out, strategy=strategy, target_text_column="sentence", embedder=embedder
        )
        rows = list(csv.DictReader(out.open(encoding="utf-8")))
        assert list(rows[0]) == ["text", "origin", "score", "rank", "pool_line"]
        assert sum(row["origin"] == "sst2" for row in rows) >= 45, strategy  # >= 90% from the target's domain
        assert sum(i in in_domain for i in found[strategy].indices) >= 45
    spread = {name: _mean_pairwise_cosine(embedder.embed([texts[i] for i in s.indices])) for name, s in found.items()}
    assert spread["kcenter"] < spread["centroid"] - 0.05, spread  # kcenter's picks are less alike
