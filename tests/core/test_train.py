"""End to end on tiny random BERTs: train, adapter file, reload, predict, evaluate, and every refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptune import Predictor, load_config, train
from adaptune.api import TrainResult
from adaptune.backbone import load_backbone
from adaptune.config import ModelConfig
from adaptune.errors import AdapterFileError, DataError
from adaptune.io import CONFIG_FILE, WEIGHTS_FILE


def _run(tmp: Path, model: Path, data: Path, task: str, ext: str, *extra: str) -> TrainResult:
    cfg = load_config(
        None,
        [
            f"model.name_or_path={model}",
            f"task.name={task}",
            "method.name=bottleneck",
            "method.reduction_factor=4",
            f"data.train={data / f'train.{ext}'}",
            f"data.dev={data / f'dev.{ext}'}",
            f"data.test={data / f'test.{ext}'}",
            "data.max_train_examples=160",
            "data.max_eval_examples=40",
            "data.batch_size=16",
            "data.max_length=64",
            "model.pooling=mean",
            "training.epochs=6",
            "training.learning_rate=0.05",
            "training.log_every=1",
            "training.progress=false",
            f"training.output_dir={tmp}",
            *extra,
        ],
    )
    return train(cfg)


@pytest.fixture(scope="module")
def intents_run(tiny_bert: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return _run(tmp_path_factory.mktemp("intents"), tiny_bert, bundled_data / "intents", "seq_cls", "jsonl")


@pytest.fixture(scope="module")
def ner_run(tiny_bert: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    return _run(tmp_path_factory.mktemp("ner"), tiny_bert, bundled_data / "ner", "token_cls", "conll")


def _losses(run: TrainResult) -> list[float]:
    lines = (run.output_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r["train_loss"] for r in map(json.loads, lines) if "train_loss" in r]


@pytest.mark.parametrize("run_name", ["intents_run", "ner_run"])
def test_loss_goes_down_and_reports_are_written(run_name: str, request: pytest.FixtureRequest) -> None:
    run: TrainResult = request.getfixturevalue(run_name)
    losses = _losses(run)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    for name in (
        "results.json",
        "metrics.jsonl",
        "training_curves.png",
        "eval_dev.json",
        "eval_test.txt",
        "predictions_test.jsonl",
        "config.yaml",
    ):
        assert (run.output_dir / name).is_file(), name
    results = json.loads((run.output_dir / "results.json").read_text(encoding="utf-8"))
    assert set(results["splits"]) == {"dev", "test"}
    assert results["trainable_params"] == run.trainable_params > 0


def test_only_adapter_and_head_are_trained(intents_run: TrainResult, tiny_bert: Path) -> None:
    base = load_backbone(ModelConfig(name_or_path=str(tiny_bert))).model.state_dict()
    tensors = load_file(intents_run.adapter_dir / WEIGHTS_FILE)
    assert all(k.startswith(("adapter.", "head.")) for k in tensors)
    assert all(".bottleneck." in k for k in tensors if k.startswith("adapter."))
    assert not any(k[len("adapter.") :] in base for k in tensors if k.startswith("adapter.")), "no base tensor saved"
    predictor = Predictor.load(intents_run.adapter_dir)
    trained_base = {k: v for k, v in predictor.model.backbone.state_dict().items() if ".bottleneck." not in k}
    assert trained_base.keys() == base.keys()
    assert all(torch.equal(trained_base[k], base[k]) for k in base)


def test_adapter_config_describes_itself(intents_run: TrainResult) -> None:
    desc = json.loads((intents_run.adapter_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    assert desc["format"] == "adaptune-adapter" and desc["format_version"] == 1
    assert desc["method"]["name"] == "bottleneck" and desc["method"]["reduction_factor"] == 4
    assert desc["task"]["name"] == "seq_cls"
    assert len(desc["labels"]) == 10 and "refund_request" in desc["labels"]
    assert desc["base_model"]["fingerprint"] and desc["base_model"]["model_type"] == "bert"
    assert desc["pooling"] == "mean"
    assert desc["weights"]["bytes"] == (intents_run.adapter_dir / WEIGHTS_FILE).stat().st_size


@pytest.mark.parametrize("run_name", ["intents_run", "ner_run"])
def test_save_load_predict_gives_identical_logits(run_name: str, request: pytest.FixtureRequest) -> None:
    run: TrainResult = request.getfixturevalue(run_name)
    texts = ["where is my order A1024-77?", "我想退款", "Alice from Shenzhen bought a Kindle at JD"]
    first, second = Predictor.load(run.adapter_dir), Predictor.load(run.adapter_dir)
    a, b = first.logits(texts), second.logits(texts)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    single = [first.logits([t])[0] for t in texts]
    assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a, single, strict=True)), "batching changes nothing"


def test_predict_outputs(intents_run: TrainResult, ner_run: TrainResult) -> None:
    out = Predictor.load(intents_run.adapter_dir).predict(["hello", {"text": "cancel my order"}])
    assert out[0]["label"] in out[0]["scores"] and abs(sum(out[0]["scores"].values()) - 1) < 1e-4
    tagged = Predictor.load(ner_run.adapter_dir).predict(["Bob ordered a Kindle in Paris", "张三在北京"])
    for item in tagged:
        assert len(item["tags"]) == len(item["tokens"])
        for ent in item["entities"]:
            assert item["text"][ent["start"] : ent["end"]] == ent["text"]


def test_eval_reproduces_training_report(intents_run: TrainResult, bundled_data: Path) -> None:
    predictor = Predictor.load(intents_run.adapter_dir)
    examples = predictor.task.read(str(bundled_data / "intents" / "test.jsonl"), predictor.data, split="test")[:40]
    result, _ = predictor.evaluate_examples(examples)
    saved = json.loads((intents_run.output_dir / "eval_test.json").read_text(encoding="utf-8"))
    assert result.headline["accuracy"] == pytest.approx(saved["headline"]["accuracy"])


def test_unknown_label_at_evaluation(intents_run: TrainResult, tmp_path: Path) -> None:
    path = tmp_path / "eval.jsonl"
    path.write_text('{"text": "hi", "label": "greeting"}\n{"text": "yo", "label": "small_talk"}\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        Predictor.load(intents_run.adapter_dir).evaluate(path)
    assert f"{path}:2" in str(err.value) and "'small_talk'" in str(err.value) and "label" in str(err.value)


def test_other_base_model_is_refused(intents_run: TrainResult, other_tiny_bert: Path, tiny_bert: Path) -> None:
    with pytest.raises(AdapterFileError) as err:
        Predictor.load(intents_run.adapter_dir, base=str(other_tiny_bert))
    assert str(tiny_bert) in str(err.value) and str(other_tiny_bert) in str(err.value)


def _copy_adapter(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_truncated_weights_are_refused(intents_run: TrainResult, tmp_path: Path) -> None:
    copy = _copy_adapter(intents_run.adapter_dir, tmp_path / "a")
    blob = (copy / WEIGHTS_FILE).read_bytes()
    (copy / WEIGHTS_FILE).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(AdapterFileError, match=r"adapter.safetensors is corrupt or truncated"):
        Predictor.load(copy)


def test_newer_format_is_refused(intents_run: TrainResult, tmp_path: Path) -> None:
    copy = _copy_adapter(intents_run.adapter_dir, tmp_path / "a")
    desc = json.loads((copy / CONFIG_FILE).read_text(encoding="utf-8"))
    desc["format_version"] = 99
    (copy / CONFIG_FILE).write_text(json.dumps(desc), encoding="utf-8")
    with pytest.raises(AdapterFileError, match="format version 99.*upgrade adaptune"):
        Predictor.load(copy)


def test_missing_adapter_and_missing_model(tmp_path: Path) -> None:
    with pytest.raises(AdapterFileError, match="does not exist"):
        Predictor.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterFileError, match="adapter_config.json is missing"):
        Predictor.load(tmp_path / "empty")


def test_multi_label_and_text_pairs(tiny_bert: Path, tmp_path: Path) -> None:
    rows = [
        ("refund please and the box was broken", "refund_request|complaint", "order A1"),
        ("hello, where is my order", "greeting|order_status", "order B2"),
        ("the parcel is late and I am angry", "order_status|complaint", "order C3"),
        ("hi there", "greeting", "none"),
    ] * 8
    path = tmp_path / "multi.tsv"
    path.write_text("text\tlabels\tcontext\n" + "".join(f"{t}\t{lab}\t{c}\n" for t, lab, c in rows), encoding="utf-8")
    cfg = load_config(
        None,
        [
            f"model.name_or_path={tiny_bert}",
            "task.multi_label=true",
            f"data.train={path}",
            f"data.dev={path}",
            "data.label_column=labels",
            "data.label_separator=|",
            "data.text_pair_column=context",
            "training.epochs=2",
            "training.progress=false",
            f"training.output_dir={tmp_path / 'run'}",
        ],
    )
    run = train(cfg)
    headline = run.results["splits"]["dev"]["headline"]
    assert {"accuracy", "macro_f1", "micro_f1"} <= set(headline)
    predictor = Predictor.load(run.adapter_dir)
    assert predictor.labels == ["complaint", "greeting", "order_status", "refund_request"]
    out = predictor.predict([{"text": "refund please", "text_pair": "order A1"}])[0]
    assert isinstance(out["labels"], list) and set(out["scores"]) == set(predictor.labels)
    assert all(0 <= p <= 1 for p in out["scores"].values())
