"""``text_pair_rank``: ranking metrics against hand-computed values, the in-batch InfoNCE loss and its masking of
duplicate items, evaluation over a corpus with seen items left out, training through the public API with LoRA and a
bottleneck (loss falls, the fresh adapter evaluates as the frozen model, save/load exact), prediction outputs, and
bad input named by file, line and field."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from adaptune import Predictor, load_config, train
from adaptune.api import TrainResult, evaluate_split, prepare
from adaptune.config import DataConfig, validate_config
from adaptune.errors import ConfigError, DataError
from adaptune.evaluation.ranking import format_ranking_report, ranking_metrics
from adaptune.io import load_adapter
from adaptune.model import AdaptedModel
from adaptune.registry import build_method, build_task
from adaptune.tasks.text_pair_rank import NEGATIVE, POSITIVE, QUERY, PairExample, TextPairRanking, info_nce
from rank_kit import corpus_items, write_pairs


def make_task(**fields: Any) -> TextPairRanking:
    task = build_task(validate_config({"task": {"name": "text_pair_rank", **fields}}).task)
    assert isinstance(task, TextPairRanking)
    return task


# --- metrics ------------------------------------------------------------------------------------------------
def test_metrics_equal_hand_computed_values() -> None:
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.3, 0.7], [0.2, 0.8, 0.6, 0.4, 0.0]])
    # query 0: ranking 0, 4, 2 ...: its item 2 at rank 3. Query 1: item 1 left out, ranking 2, 3, 0, 4: hits at 2, 3.
    got = ranking_metrics(scores, [{2}, {0, 3}], [set(), {1}])
    ndcg_1 = (1 / math.log2(3) + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert got == pytest.approx(
        {
            "recall@1": 0.0,
            "recall@5": 1.0,
            "recall@10": 1.0,
            "ndcg@10": (1 / math.log2(4) + ndcg_1) / 2,
            "mrr@10": (1 / 3 + 1 / 2) / 2,
        }
    )
    # a relevant item at rank 12 counts for nothing at 10; ties go by corpus order (item 0 before item 1)
    far = torch.linspace(1, 0, 12).unsqueeze(0)
    assert ranking_metrics(far, [{11}]) == {
        "recall@1": 0.0,
        "recall@5": 0.0,
        "recall@10": 0.0,
        "ndcg@10": 0.0,
        "mrr@10": 0.0,
    }
    tied = ranking_metrics(torch.zeros(1, 3), [{1}])
    assert tied["recall@1"] == 0.0 and tied["mrr@10"] == 0.5
    # half of two relevant items in the top 1
    assert ranking_metrics(torch.tensor([[0.9, 0.8, 0.1]]), [{0, 2}])["recall@1"] == 0.5


def unit(*values: float) -> torch.Tensor:
    return F.normalize(torch.tensor(values, dtype=torch.float32), dim=0)


def test_evaluate_ranks_each_query_against_the_split_corpus() -> None:
    task = make_task()
    a, b, c = unit(1, 0, 0), unit(0, 1, 0), unit(0, 0, 1)
    examples = [
        PairExample("q1", positive="A", seen=("B",)),  # B, its nearest item, is left out
        PairExample("q2", positive="B", negative="C"),
        PairExample("q2", positive="C"),  # the same query again: two relevant items
        PairExample(None, candidates=("D",)),  # a corpus row
    ]
    predictions = [
        torch.stack([unit(0.5, 1, 0), a]),
        torch.stack([unit(0, 0.2, 1), b, c]),
        torch.stack([unit(0, 0.2, 1), c]),
        torch.stack([unit(1, 1, 1)]),
    ]
    out = task.evaluate(examples, predictions, [])
    assert (out.report["n"], out.report["corpus"]) == (2, 4)
    # q1 (.45, .89, 0): B left out, D (.775) before A (.447): rank 2. q2 (0, .2, 1)/|.|: C (.98), D (.68), B (.20),
    # A (0): its items C and B at ranks 1 and 3.
    ndcg_q1 = 1 / math.log2(3)
    ndcg_q2 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert out.headline == pytest.approx(
        {
            "ndcg@10": (ndcg_q1 + ndcg_q2) / 2,
            "recall@10": 1.0,
            "mrr@10": (1 / 2 + 1) / 2,
            "recall@1": 1 / 4,
            "recall@5": 1.0,
        }
    )
    assert task.default_metric == "ndcg@10"


# --- the loss -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(tiny_bert: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_bert)


def test_collate_makes_a_row_per_text_and_points_at_each_positive(tokenizer: Any) -> None:
    task = make_task()
    examples = [
        PairExample("the red cat", positive="a cat", negative="a dog"),
        PairExample("the car", positive="a car"),
    ]
    batch = task.collate([task.encode(ex, tokenizer, [], 32) for ex in examples], 0)
    assert batch["row_role"].tolist() == [QUERY, POSITIVE, NEGATIVE, QUERY, POSITIVE]
    assert batch["example_index"].tolist() == [0, 0, 0, 1, 1]
    assert batch["labels"].tolist() == [0, 2]  # columns among the item rows: a cat, a dog, a car
    assert batch["input_ids"].shape[0] == 5 and batch["attention_mask"][3].sum() == len(
        tokenizer("the car")["input_ids"]
    )


def test_duplicate_items_in_a_batch_are_not_negatives(tokenizer: Any) -> None:
    task = make_task(temperature=0.5)
    texts = [("q one", "shared item"), ("q two", "other item"), ("q three", "shared item")]
    batch = task.collate([task.encode(PairExample(q, positive=p), tokenizer, [], 32) for q, p in texts], 0)
    gen = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(6, 8, generator=gen), dim=-1)
    emb[5] = emb[1]  # the shared item embeds the same wherever it is
    q, items = emb[[0, 2, 4]], emb[[1, 3, 5]]
    sim = q @ items.T / 0.5
    # by hand: query 0 sees columns 0 (its item) and 1; query 2 sees columns 2 (its item) and 1; query 1 all three
    expected = torch.stack(
        [
            -torch.log_softmax(sim[0, [0, 1]], 0)[0],
            -torch.log_softmax(sim[1], 0)[1],
            -torch.log_softmax(sim[2, [1, 2]], 0)[1],
        ]
    ).mean()
    torch.testing.assert_close(info_nce(emb, batch, 0.5), expected)
    unmasked = F.cross_entropy(sim, torch.tensor([0, 1, 2]))
    assert not torch.isclose(unmasked, expected)


def test_several_items_of_one_query_are_not_each_others_negatives(tokenizer: Any) -> None:
    task = make_task(temperature=1.0)
    texts = [("same query", "item a"), ("same query", "item b"), ("another", "item c")]
    batch = task.collate([task.encode(PairExample(q, positive=p), tokenizer, [], 32) for q, p in texts], 0)
    emb = F.normalize(torch.randn(6, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    sim = emb[[0, 2, 4]] @ emb[[1, 3, 5]].T
    expected = torch.stack(
        [
            -torch.log_softmax(sim[0, [0, 2]], 0)[0],
            -torch.log_softmax(sim[1, [1, 2]], 0)[0],
            -torch.log_softmax(sim[2], 0)[2],
        ]
    ).mean()
    torch.testing.assert_close(info_nce(emb, batch, 1.0), expected)


# --- training through the API -------------------------------------------------------------------------------
def train_pairs(tmp: Path, model_dir: Path, method: dict[str, Any], *extra: str) -> TrainResult:
    fields = [f"method.{key}={value}" for key, value in method.items()]
    cfg = load_config(
        None,
        [
            f"model.name_or_path={model_dir}",
            "model.pooling=mean",
            *fields,
            "task.name=text_pair_rank",
            f"data.train={write_pairs(tmp / 'train.jsonl', 48)}",
            f"data.dev={write_pairs(tmp / 'dev.jsonl', 48, corpus=True)}",
            "data.batch_size=16",
            "data.max_length=32",
            "training.max_steps=40",
            "training.learning_rate=0.03",
            "training.eval_at_start=true",
            "training.progress=false",
            f"training.output_dir={tmp / 'run'}",
            *extra,
        ],
    )
    return train(cfg)


@pytest.fixture(
    scope="module",
    params=[{"name": "lora", "r": 4, "alpha": 8}, {"name": "bottleneck", "reduction_factor": 4}],
    ids=["lora", "bottleneck"],
)
def trained(request: pytest.FixtureRequest, tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_pairs(tmp_path_factory.mktemp(request.param["name"]), tiny_bert, request.param)
    finally:
        torch.set_num_threads(threads)


def test_training_lowers_the_loss_and_raises_ndcg(trained: TrainResult) -> None:
    start, dev = trained.results["at_start"], trained.results["splits"]["dev"]["headline"]
    assert dev["loss"] < 0.9 * start["loss"], (start, dev)
    assert dev["ndcg@10"] > start["ndcg@10"] + 0.05, (start, dev)
    assert trained.results["metric"] == "ndcg@10"


def test_the_fresh_adapter_evaluates_as_the_frozen_model(trained: TrainResult, tiny_bert: Path) -> None:
    """``training.eval_at_start`` is the frozen baseline: LoRA's B and the bottleneck's W_up start at zero."""
    cfg = validate_config(
        {
            "model": {"name_or_path": str(tiny_bert), "pooling": "mean"},
            "method": {"name": "head"},
            "task": {"name": "text_pair_rank"},
            "data": {**_data_paths(trained), "max_length": 32},
        }
    )
    prep = prepare(cfg)
    frozen = AdaptedModel(prep.backbone, build_method(cfg.method), prep.task, prep.labels).eval()
    headline, _ = evaluate_split(frozen, prep.splits["dev"], cfg)
    assert trained.results["at_start"] == pytest.approx(headline.headline, abs=1e-6)


def _data_paths(result: TrainResult) -> dict[str, str]:
    import yaml

    data = yaml.safe_load((result.output_dir / "config.yaml").read_text(encoding="utf-8"))["data"]
    return {"train": data["train"], "dev": data["dev"]}


def test_save_load_round_trip_is_exact(trained: TrainResult) -> None:
    inputs = ["the red cat", {"text": "the old car", "items": ["a car by the school", "a cat by the river"]}]
    in_memory = Predictor(trained.model, load_adapter(trained.adapter_dir).config)
    loaded = Predictor.load(trained.adapter_dir)
    for a, b in zip(in_memory.logits(inputs), loaded.logits(inputs), strict=True):
        assert torch.equal(a, b)
    assert in_memory.predict(inputs) == loaded.predict(inputs)
    dev = _data_paths(trained)["dev"]
    ranking = {k: v for k, v in trained.results["splits"]["dev"]["headline"].items() if k != "loss"}  # per batch
    assert {k: v for k, v in loaded.evaluate(dev).headline.items() if k != "loss"} == pytest.approx(ranking, abs=1e-6)


def test_predict_gives_embeddings_and_ranks_given_items(trained: TrainResult) -> None:
    predictor = Predictor.load(trained.adapter_dir)
    items = corpus_items()[:6]
    embedded, ranked = predictor.predict(["the red cat", {"text": "the red cat", "items": items}])
    vector = torch.tensor(embedded["embedding"])
    assert embedded["text"] == "the red cat" and vector.shape == (32,)
    assert float(vector.norm()) == pytest.approx(1.0, abs=1e-4)
    scores = [entry["score"] for entry in ranked["items"]]
    assert scores == sorted(scores, reverse=True) and {e["item"] for e in ranked["items"]} == set(items)
    item_vectors = torch.tensor([predictor.predict([t])[0]["embedding"] for t in items])
    by_hand = dict(zip(items, (item_vectors @ vector).tolist(), strict=True))
    for entry in ranked["items"]:
        assert entry["score"] == pytest.approx(by_hand[entry["item"]], abs=1e-4)


def test_the_head_method_alone_is_refused(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nothing to train"):
        train_pairs(tmp_path, tiny_bert, {"name": "head"})


# --- bad input ----------------------------------------------------------------------------------------------
def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_rows_are_read_with_the_configured_columns(tmp_path: Path) -> None:
    task = make_task(query_column="user", positive_column="liked", seen_column="history")
    path = write(tmp_path / "t.jsonl", '{"user": "u", "liked": "x", "history": ["y", "z"]}\n{"item": "w"}\n')
    assert task.read(path, DataConfig(), split="dev") == [
        PairExample("u", positive="x", seen=("y", "z"), source=f"{path}:1"),
        PairExample(None, candidates=("w",), source=f"{path}:2"),
    ]
    csv = write(tmp_path / "t.csv", 'user,liked,history\nu,x,"[""y""]"\n')
    assert task.read(csv, DataConfig(), split="train")[0].seen == ("y",)


@pytest.mark.parametrize(
    ("text", "line", "field", "says"),
    [
        ('{"query": "q", "positive": "p"}\n{"text": "t"}\n', 2, "query", "needs a 'query'"),
        ('{"query": "q"}\n', 1, "positive", "needs the item"),
        ('{"query": "q", "positive": "p", "item": "i"}\n', 1, "item", "not both"),
        ('{"query": "q", "positive": "p", "seen": "y"}\n', 1, "seen", "list of texts"),
        ('{"query": "q", "positive": 3}\n', 1, "positive", "expected text"),
        ('{"query": "q", "positive": "p"}\n{"item": "i"}\n', 2, "item", "corpus item row"),
    ],
)
def test_bad_training_rows_are_named(tmp_path: Path, text: str, line: int, field: str, says: str) -> None:
    path = write(tmp_path / "bad.jsonl", text)
    with pytest.raises(DataError, match=says) as err:
        make_task().read(path, DataConfig(), split="train")
    assert (err.value.file, err.value.line, err.value.field) == (path, line, field)


def test_a_limit_that_would_cut_the_corpus_is_refused(tmp_path: Path) -> None:
    path = str(write_pairs(tmp_path / "dev.jsonl", 4, corpus=True))
    with pytest.raises(ConfigError, match="max_eval_examples"):
        make_task().read(path, DataConfig(max_eval_examples=2), split="dev")


def test_one_pair_is_too_few_and_bad_predict_inputs_are_named() -> None:
    task = make_task()
    with pytest.raises(DataError, match="at least 2"):
        task.label_names([PairExample("q", positive="p")])
    with pytest.raises(DataError) as err:
        task.parse_input({"text": "q", "items": "not a list"})
    assert err.value.field == "items"
    with pytest.raises(DataError) as err:
        task.parse_input({"items": ["a"]})
    assert err.value.field == "text"
    assert task.parse_input({"query": "q"}) == PairExample("q")


def test_the_ranking_table_shows_every_figure() -> None:
    report = {"ranking": {"recall@10": 0.25, "ndcg@10": 0.125}, "n": 4, "corpus": 9}
    text = format_ranking_report(report, "test")
    assert text.splitlines()[2].split() == ["queries", "corpus", "recall@10", "ndcg@10"]
    assert text.splitlines()[4].split() == ["4", "9", "0.2500", "0.1250"]
    markdown = format_ranking_report(report, "test", markdown=True)
    assert "| 4 | 9 | 0.2500 | 0.1250 |" in markdown and markdown.startswith("### test: ranking")
