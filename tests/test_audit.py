"""Label-noise auditing (``adaptune audit``): the two rankings on hand-made figures, the epoch-end callback, and
on a tiny random BERT with a synthetic data set whose words make the class obvious and some of whose labels are
flipped, that both methods rank the flipped rows first; the output file, the CLI and the refusals."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import typer
import yaml
from typer.testing import CliRunner

from adaptune import Predictor, load_config, train
from adaptune.audit import (
    GoldProbabilities,
    audit,
    audit_file,
    confident_ranking,
    dynamics_ranking,
    precision_at_k,
)
from adaptune.cli_data import audit as audit_command
from adaptune.config import RunConfig
from adaptune.errors import ConfigError, DataError

FILLER = ["the", "a", "movie", "film", "story", "plot", "it", "was", "this", "one", "really", "quite"]


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, set[int]]:
    """160 rows ``{"text", "label", "id"}``: three ``good`` (label pos) or ``bad`` (neg) words among filler, with
    about 10% of the labels flipped (seeded); and the 0-based indices of the flipped rows."""
    rng = random.Random(0)
    rows, flipped = [], set()
    for i in range(160):
        good = i % 2 == 1
        words = ["good" if good else "bad"] * 3 + rng.sample(FILLER, 3)
        rng.shuffle(words)
        if rng.random() < 0.1:
            good = not good
            flipped.add(i)
        rows.append({"text": " ".join(words), "label": "pos" if good else "neg", "id": i})
    path = tmp_path_factory.mktemp("noisy") / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path, flipped


def _config(model: Path, data: Path | None, *extra: str) -> RunConfig:
    return load_config(
        None,
        [
            f"model.name_or_path={model}",
            "model.pooling=mean",
            "method.name=head",
            *([f"data.train={data}"] if data else []),
            "data.batch_size=16",
            "data.max_length=32",
            "training.epochs=5",
            "training.learning_rate=0.01",
            "training.progress=false",
            "training.log_every=100",
            *extra,
        ],
    )


# -- the rankings on hand-made figures ------------------------------------------------------------------------


def test_dynamics_ranking_puts_low_confidence_first_and_breaks_ties_by_variability() -> None:
    gold = np.array([[0.9, 0.1, 0.2, 0.5], [0.9, 0.1, 0.4, 0.5], [0.9, 0.1, 0.6, 0.8]])  # (epochs, rows)
    correct = gold > 0.5
    order, figures = dynamics_ranking(gold, correct)
    assert order.tolist() == [1, 2, 3, 0]
    np.testing.assert_allclose(figures["confidence"], [0.9, 0.1, 0.4, 0.6])
    np.testing.assert_allclose(figures["variability"], gold.std(0))
    np.testing.assert_allclose(figures["correctness"], [1.0, 0.0, 1 / 3, 1 / 3])
    tied = np.array([[0.3, 0.1], [0.3, 0.5]])  # same mean 0.3: the steadier row (lower std) first
    assert dynamics_ranking(tied, tied > 0.5)[0].tolist() == [0, 1]


def test_confident_ranking_flags_rows_below_their_threshold_with_another_class_above_its_own() -> None:
    probs = np.array(
        [[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.3, 0.7, 0.0], [0.1, 0.9, 0.0], [0.2, 0.7, 0.1], [0.5, 0.1, 0.4]]
    )
    given = np.array([0, 0, 0, 1, 1, 2])
    order, figures = confident_ranking(probs, given)
    # t_0 = mean(.9, .8, .3) = 2/3, t_1 = mean(.9, .7) = .8, t_2 = .4
    np.testing.assert_allclose(figures["thresholds"], [2 / 3, 0.8, 0.4])
    np.testing.assert_allclose(figures["self_confidence"], [0.9, 0.8, 0.3, 0.9, 0.7, 0.4])
    # row 2 is below t_0 (.3 < 2/3) but no other class reaches its threshold (p_1 .7 < t_1 .8); row 4 likewise
    # (.7 < .8, and p_0 .2 < 2/3, p_2 .1 < .4); row 5 is not below t_2 (.4): nothing is flagged
    assert not figures["flagged"].any()
    probs[2] = [0.1, 0.85, 0.05]  # now t_0 = .6: row 2 is below it and p_1 .85 >= t_1 .8
    order, figures = confident_ranking(probs, given)
    assert figures["flagged"].tolist() == [False, False, True, False, False, False]
    assert order.tolist()[0] == 2  # flagged first, then by self-confidence
    assert order.tolist()[1:] == [5, 4, 1, 0, 3]


def test_precision_at_k() -> None:
    assert precision_at_k([3, 1, 2, 0], {1, 3}, 2) == 1.0
    assert precision_at_k([3, 1, 2, 0], {1, 3}, 4) == 0.5
    assert precision_at_k([], {1}, 3) == 0.0


# -- the callback ---------------------------------------------------------------------------------------------


def test_gold_probabilities_are_the_eval_mode_predictions_at_each_epoch_end(
    tiny_bert: Path, noisy: tuple[Path, set[int]], tmp_path: Path
) -> None:
    data, _ = noisy
    watcher = GoldProbabilities()
    cfg = _config(tiny_bert, data, "training.epochs=2", f"training.output_dir={tmp_path}", "task.head_dropout=0.5")
    result = train(cfg, callbacks=[watcher])
    assert len(watcher.epochs) == 2 and watcher.epochs[0].shape == (160, 2)
    examples = result.model.task.read(str(data), cfg.data, split="train")
    final = Predictor.load(result.adapter_dir).forward(examples)  # no dev split: the adapter is the last epoch's
    np.testing.assert_allclose(watcher.epochs[-1], np.array([probs for _, probs in final]), atol=1e-5)
    labels = result.model.labels
    gold = np.array([labels.index(e.labels[0]) for e in examples])
    np.testing.assert_array_equal(watcher.gold, gold)
    np.testing.assert_allclose(watcher.gold_probabilities()[1], watcher.epochs[1][np.arange(160), gold])
    assert not np.allclose(watcher.epochs[0], watcher.epochs[1])  # the model learned between the two


# -- both methods on noisy data -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dynamics", "confident"])
def test_the_flipped_rows_rank_first(
    tiny_bert: Path, noisy: tuple[Path, set[int]], tmp_path: Path, method: str
) -> None:
    data, flipped = noisy
    out = tmp_path / "audit.csv"
    result = audit_file(_config(tiny_bert, data), None, out, method=method, folds=3, work_dir=tmp_path / "work")
    k = len(flipped)
    assert 10 <= k <= 22
    assert precision_at_k(result.ranking, flipped, k) >= 0.8  # chance: about 0.1
    assert sorted(result.ranking) == list(range(160))
    top = result.rows[0]
    assert top.index in flipped and top.given_label != top.suggested_label
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    scores = ["confidence", "variability", "correctness"] if method == "dynamics" else ["self_confidence"]
    extra = ["suggested_probability", "flagged"] if method == "confident" else []
    assert list(rows[0]) == [
        "text",
        "label",
        "id",
        "rank",
        "data_line",
        "given_label",
        "suggested_label",
        *scores,
        *extra,
    ]
    assert [int(row["id"]) for row in rows] == result.ranking
    assert all(int(row["data_line"]) == int(row["id"]) + 1 for row in rows)
    assert all(row["given_label"] == row["label"] for row in rows)
    if method == "confident":
        flagged = {int(row["id"]) for row in rows if row["flagged"] == "true"}
        assert len(flagged & flipped) >= 0.8 * len(flagged) > 0
        assert (tmp_path / "work" / "fold_3" / "run" / "adapter").is_dir()  # --work keeps the runs


def test_the_cli_audits_the_configs_training_data(
    tiny_bert: Path, noisy: tuple[Path, set[int]], tmp_path: Path
) -> None:
    data, flipped = noisy
    config = tmp_path / "audit.yaml"
    tree = {
        "model": {"name_or_path": str(tiny_bert), "pooling": "mean"},
        "method": {"name": "head"},
        "data": {"train": str(data), "batch_size": 16, "max_length": 32, "max_train_examples": 100},
        "training": {"epochs": 5, "learning_rate": 0.01, "progress": False},
    }
    config.write_text(yaml.safe_dump(tree), encoding="utf-8")
    app = typer.Typer()
    app.command()(audit_command)
    out = tmp_path / "ranked.jsonl"
    done = CliRunner().invoke(app, [str(config), "--out", str(out), "--top", "3"])
    assert done.exit_code == 0, done.output
    assert "ranked 100 rows (dynamics)" in done.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 100  # data.max_train_examples applies
    first_100 = {i for i in flipped if i < 100}
    assert precision_at_k([row["id"] for row in rows], first_100, len(first_100)) >= 0.8
    bad = CliRunner().invoke(app, [str(config), str(tmp_path / "missing.jsonl"), "--out", str(out)])
    assert bad.exit_code == 2 and "missing.jsonl" in bad.output and "no such file" in bad.output


def test_refusals_name_the_file_field_or_key(tiny_bert: Path, tmp_path: Path) -> None:
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text('{"text": "good good"}\n{"text": "bad bad", "label": "neg"}\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        audit(_config(tiny_bert, unlabelled))
    assert err.value.file == str(unlabelled) and err.value.field == "label" and err.value.line == 1
    clash = tmp_path / "clash.jsonl"
    clash.write_text('{"text": "good", "label": "pos", "rank": 1}\n{"text": "bad", "label": "neg", "rank": 2}\n')
    with pytest.raises(DataError) as err:
        audit(_config(tiny_bert, clash))
    assert err.value.file == str(clash) and err.value.field == "rank"
    with pytest.raises(ConfigError, match="task.name' = 'token_cls'"):
        audit(_config(tiny_bert, clash, "task.name=token_cls"))
    with pytest.raises(ConfigError, match="multi_label"):
        audit(_config(tiny_bert, clash, "task.multi_label=true"))
    with pytest.raises(ConfigError, match="no data to audit"):
        audit(_config(tiny_bert, None))
    two = tmp_path / "two.jsonl"
    two.write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n')
    with pytest.raises(ConfigError, match="--folds 3"):
        audit(_config(tiny_bert, two), method="confident", folds=3)
    with pytest.raises(ConfigError, match="--method 'vote'"):
        audit(_config(tiny_bert, two), method="vote")
    with pytest.raises(ConfigError, match="cannot tell the format"):
        audit_file(_config(tiny_bert, two), None, tmp_path / "out.xlsx")
