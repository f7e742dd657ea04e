"""Integration: the real all-MiniLM-L6-v2 on subsets of the shared SST-2, CoNLL-2003 and Resume NER data.

Thresholds are far above chance but well below what full training reaches (see benchmarks/results/quality.json),
so they catch a broken pipeline, not noise.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adaptune import Predictor, load_config, train
from adaptune.api import TrainResult
from adaptune.backbone import load_backbone
from adaptune.config import ModelConfig

pytestmark = pytest.mark.integration
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def test_minilm_pooling_is_read_from_the_model() -> None:
    backbone = load_backbone(ModelConfig(name_or_path=MINILM))
    assert backbone.pooling == "mean", "all-MiniLM-L6-v2's 1_Pooling/config.json says mean pooling"
    assert backbone.model_type == "bert" and backbone.hidden_size == 384 and backbone.num_layers == 6


def _train(tmp: Path, *overrides: str) -> TrainResult:
    return train(
        load_config(
            None, [f"model.name_or_path={MINILM}", "training.progress=false", f"training.output_dir={tmp}", *overrides]
        )
    )


def test_sst2_bottleneck(shared_data: Path, tmp_path: Path) -> None:
    sst2 = shared_data / "sst2"
    run = _train(
        tmp_path,
        f"data.train={sst2 / 'train.tsv'}",
        f"data.dev={sst2 / 'dev.tsv'}",
        "data.text_column=sentence",
        "data.max_train_examples=2000",
        "data.max_eval_examples=300",
        "training.epochs=1",
    )
    accuracy = run.results["splits"]["dev"]["headline"]["accuracy"]
    assert accuracy > 0.72, accuracy
    predictor = Predictor.load(run.adapter_dir)
    texts = ["a gorgeous , witty , seductive movie .", "the plot is nothing but boilerplate clichés"]
    assert [p["label"] for p in predictor.predict(texts)] == ["1", "0"]
    again = Predictor.load(run.adapter_dir).logits(texts)
    assert all(torch.equal(a, b) for a, b in zip(predictor.logits(texts), again, strict=True))


def test_conll2003_bottleneck(shared_data: Path, tmp_path: Path) -> None:
    conll = shared_data / "conll2003"
    run = _train(
        tmp_path,
        "task.name=token_cls",
        f"data.train={conll / 'train.txt'}",
        f"data.dev={conll / 'valid.txt'}",
        "data.format=conll",
        "data.max_train_examples=1500",
        "data.max_eval_examples=300",
        "training.epochs=2",
        "training.learning_rate=0.003",
    )
    f1 = run.results["splits"]["dev"]["headline"]["f1"]
    assert f1 > 0.45, f1
    out = Predictor.load(run.adapter_dir).predict(["Angela Merkel visited Paris on Monday with Siemens executives ."])
    kinds = {e["type"] for e in out[0]["entities"]}
    assert "PER" in kinds or "LOC" in kinds, out


def test_resume_ner_bottleneck(shared_data: Path, tmp_path: Path) -> None:
    resume = shared_data / "resume_ner"
    run = _train(
        tmp_path,
        "task.name=token_cls",
        f"data.train={resume / 'train.char.bmes'}",
        f"data.dev={resume / 'dev.char.bmes'}",
        "data.format=bmes",
        "data.max_train_examples=1000",
        "data.max_eval_examples=200",
        "data.batch_size=16",
        "training.epochs=3",
        "training.learning_rate=0.005",
    )
    report = run.results["splits"]["dev"]["headline"]
    assert report["f1"] > 0.3, report
    out = Predictor.load(run.adapter_dir).predict(["张伟，男，汉族，本科学历，现任北京大学教授。"])[0]
    assert all(out["text"][e["start"] : e["end"]] == e["text"] for e in out["entities"])
