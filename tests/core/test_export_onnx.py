"""``adaptune export --format onnx``: the graph onnxruntime runs gives adaptune's logits (merged LoRA, unmerged
bottleneck, every pooling, token classification) at several lengths and batch sizes; the module docstring's
tokenizers + onnxruntime recipe works; prefix, causal_lm and decoders are refused in one line; a graph that
fails the check leaves nothing behind; a missing onnxruntime names the extra."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from adaptune import Predictor, load_config, train
from adaptune.cli import app
from adaptune.errors import ConfigError
from adaptune.export_onnx import ONNX_CONFIG, ONNX_FILE, OnnxCheckError, export_onnx

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is in the onnx and test extras")
from tokenizers import Tokenizer  # noqa: E402

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ROWS = [
    ("where is my parcel", "order"),
    ("I want my money back", "refund"),
    ("has my order shipped yet", "order"),
    ("refund me please", "refund"),
]
CONLL = "Laura B-PER\nlives O\nin O\nBerlin B-LOC\n\nPaul B-PER\nvisited O\nParis B-LOC\ntoday O\n"
TEXTS = [
    "hi",
    "where is my parcel",
    "I ordered a blue jacket two weeks ago and it has still not arrived , can you help",
    "refund " * 150,  # cut at max_length (128)
    "has it shipped",
]
Train = Callable[..., Path]


@pytest.fixture(scope="module")
def trained(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Train:
    """``trained(*overrides, model=tiny_bert, data=...)``: the adapter folder of a 3-step run (``data``: a file
    name in the runs' folder, or an absolute path)."""
    folder = tmp_path_factory.mktemp("onnx_runs")
    seq = folder / "train.jsonl"
    seq.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in ROWS), encoding="utf-8")
    (folder / "train.conll").write_text(CONLL, encoding="utf-8")
    pairs = [{"text": t, "pair": "a question from a customer", "label": lab} for t, lab in ROWS]
    (folder / "pairs.jsonl").write_text("".join(json.dumps(row) + "\n" for row in pairs), encoding="utf-8")
    runs: dict[tuple[str, ...], Path] = {}

    def run(*overrides: str, model: Path = tiny_bert, data: str = "train.jsonl") -> Path:
        key = (str(model), data, *overrides)
        if key not in runs:
            out = folder / f"run{len(runs)}"
            cfg = load_config(
                None,
                [
                    f"model.name_or_path={model}",
                    f"data.train={folder / data}",
                    "data.batch_size=2",
                    "training.max_steps=3",
                    "training.learning_rate=0.05",
                    "training.progress=false",
                    f"training.output_dir={out}",
                    *overrides,
                ],
            )
            runs[key] = train(cfg).adapter_dir
        return runs[key]

    return run


def onnx_logits(folder: Path, texts: list[str]) -> np.ndarray:
    """The module docstring's recipe: tokenizers + onnxruntime alone, from the files the export wrote."""
    info = json.loads((folder / ONNX_CONFIG).read_text(encoding="utf-8"))
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(info["max_length"])
    tokenizer.enable_padding(pad_id=info["tokenizer"]["pad_token_id"], pad_token=info["tokenizer"]["pad_token"])
    enc = tokenizer.encode_batch(texts)
    rows = {
        "input_ids": [e.ids for e in enc],
        "attention_mask": [e.attention_mask for e in enc],
        "token_type_ids": [e.type_ids for e in enc],
    }
    session = ort.InferenceSession(str(folder / ONNX_FILE), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {k: np.array(rows[k], dtype=np.int64) for k in info["inputs"]})[0]  # type: ignore[no-any-return]


def max_diff_over_batches(folder: Path, adapter: Path, texts: list[str]) -> float:
    """Largest |onnx - Predictor| over the texts run one at a time, two at a time and all together."""
    reference = [t.numpy() for t in Predictor.load(adapter).logits(texts)]
    worst = 0.0
    for size in (1, 2, len(texts)):
        for start in range(0, len(texts), size):
            chunk = texts[start : start + size]
            for offset, row in enumerate(onnx_logits(folder, chunk)):
                worst = max(worst, float(np.abs(row - reference[start + offset]).max()))
    return worst


@pytest.mark.parametrize("pooling", ["mean", "cls", "last", "max"])
def test_seq_cls_lora_is_merged_and_matches_the_predictor(trained: Train, tmp_path: Path, pooling: str) -> None:
    adapter = trained("method.name=lora", f"model.pooling={pooling}")
    result = export_onnx(adapter, tmp_path / "onnx")
    assert result.merged and result.max_abs_diff <= 1e-4
    assert result.check["batch_sizes"] == [1, 4] and len(set(result.check["lengths"])) == 4
    assert result.check["lengths"][-1] == 128  # the longest probe is cut at max_length
    assert max_diff_over_batches(result.path, adapter, TEXTS) <= 1e-4


def test_bottleneck_is_exported_unmerged(trained: Train, tmp_path: Path) -> None:
    adapter = trained("method.name=bottleneck", "method.reduction_factor=4")
    result = export_onnx(adapter, tmp_path / "onnx")
    assert not result.merged and result.max_abs_diff <= 1e-4
    assert max_diff_over_batches(result.path, adapter, TEXTS) <= 1e-4
    info = json.loads((result.path / ONNX_CONFIG).read_text(encoding="utf-8"))
    assert info["merged"] is False and info["method"]["name"] == "bottleneck"


def test_token_cls_gives_per_token_logits(trained: Train, tmp_path: Path) -> None:
    adapter = trained("method.name=lora", "task.name=token_cls", data="train.conll")
    result = export_onnx(adapter, tmp_path / "onnx")
    assert result.merged and result.max_abs_diff <= 1e-4
    predictor = Predictor.load(adapter)
    items = ["Laura lives in Berlin", "Paul", "Paul visited Paris today and Laura visited Berlin"]
    encoded = predictor.encode(predictor.examples(items))
    batch = predictor.task.collate(encoded, predictor.pad_id)
    info = json.loads((result.path / ONNX_CONFIG).read_text(encoding="utf-8"))
    session = ort.InferenceSession(str(result.path / ONNX_FILE), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {name: batch[name].numpy() for name in info["inputs"]})[0]
    assert logits.shape == (3, batch["input_ids"].shape[1], len(predictor.labels))
    for row, expected in enumerate(predictor.logits(items)):
        got = logits[row][batch["attention_mask"][row].numpy().astype(bool)]
        assert np.abs(got - expected.numpy()).max() <= 1e-4
    assert info["pooling"] is None and info["outputs"]["logits"] == ["batch", "sequence", "labels"]


def test_text_pairs_use_token_type_ids(trained: Train, tmp_path: Path) -> None:
    adapter = trained("method.name=lora", "data.text_pair_column=pair", data="pairs.jsonl")
    result = export_onnx(adapter, tmp_path / "onnx")  # the check's inputs are pairs: the adapter takes no other
    assert result.max_abs_diff <= 1e-4
    pairs = [("where is my parcel", "it is late"), ("refund", "a question from a customer about an order")]
    tokenizer = Tokenizer.from_file(str(result.path / "tokenizer.json"))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tokenizer.encode_batch(pairs)
    assert any(1 in e.type_ids for e in enc)
    feed = {
        "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
    }
    session = ort.InferenceSession(str(result.path / ONNX_FILE), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], feed)[0]
    expected = Predictor.load(adapter).logits([{"text": a, "text_pair": b} for a, b in pairs])
    assert np.abs(logits - torch.stack(expected).numpy()).max() <= 1e-4


def test_the_config_says_how_to_run_and_how_it_was_checked(trained: Train, tmp_path: Path) -> None:
    adapter = trained("method.name=lora", "model.pooling=mean")
    export_onnx(adapter, tmp_path / "onnx")
    files = {p.name for p in (tmp_path / "onnx").iterdir()}
    assert {ONNX_FILE, ONNX_CONFIG, "tokenizer.json"} <= files
    info = json.loads((tmp_path / "onnx" / ONNX_CONFIG).read_text(encoding="utf-8"))
    assert info["task"]["name"] == "seq_cls" and info["labels"] == ["order", "refund"]
    assert info["max_length"] == 128 and info["pooling"] == "mean" and info["merged"] is True
    assert info["inputs"] == ["input_ids", "attention_mask", "token_type_ids"] and info["opset"] == 17
    assert info["outputs"] == {"logits": ["batch", "labels"]} and "dynamo=False" in info["exporter"]
    check = info["check"]
    assert check["provider"] == "CPUExecutionProvider" and check["runtime"].startswith("onnxruntime ")
    assert check["max_abs_diff"] <= check["tolerance"] == 1e-4 and check["inputs"] == 4
    assert not list(tmp_path.glob(".onnx.*"))  # no staging folder left


def test_prefix_is_refused_in_one_line(trained: Train, tmp_path: Path) -> None:
    adapter = trained("method.name=prefix", "method.num_virtual_tokens=2")
    with pytest.raises(ConfigError, match=r"method 'prefix' changes the model's inputs.*supported methods: .*lora"):
        export_onnx(adapter, tmp_path / "onnx")
    done = runner.invoke(app, ["export", str(adapter), str(tmp_path / "onnx"), "--format", "onnx"])
    assert done.exit_code == 2 and "method 'prefix'" in done.output and "Traceback" not in done.output
    assert not (tmp_path / "onnx").exists()


def test_causal_lm_and_decoders_are_refused(trained: Train, tiny_llama: Path, tmp_path: Path) -> None:
    from decoders.lm_tools import make_tiny_causal_llama, write_alpaca

    lm = make_tiny_causal_llama(tmp_path / "lm")
    data = str(write_alpaca(tmp_path / "alpaca.json", 8))
    adapter = trained("method.name=lora", "task.name=causal_lm", "data.max_length=32", model=lm, data=data)
    with pytest.raises(ConfigError, match=r"task 'causal_lm' generates text.*supported tasks: seq_cls, token_cls"):
        export_onnx(adapter, tmp_path / "onnx")
    decoder = trained("method.name=lora", model=tiny_llama)
    with pytest.raises(ConfigError, match=r"the base model is a decoder \(llama\)"):
        export_onnx(decoder, tmp_path / "onnx")
    assert not (tmp_path / "onnx").exists()


def test_a_graph_that_fails_the_check_writes_nothing(
    trained: Train, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import adaptune.export_onnx as module

    traced = module.trace_to_onnx

    def off_by_a_little(model: torch.nn.Module, *args: object, **kwargs: object) -> None:
        with torch.no_grad():
            model.head.classifier.bias.add_(1e-3)  # type: ignore[union-attr,operator]
        traced(model, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "trace_to_onnx", off_by_a_little)
    adapter = trained("method.name=lora", "model.pooling=mean")
    with pytest.raises(OnnxCheckError, match=r"differ from adaptune's by 0.001 \(max abs\).*nothing was written"):
        export_onnx(adapter, tmp_path / "onnx")
    assert list(tmp_path.iterdir()) == []


def test_cli_reports_the_check_and_refuses_a_full_folder(trained: Train, tmp_path: Path) -> None:
    adapter = trained("method.name=lora", "model.pooling=mean")
    out = tmp_path / "onnx"
    done = runner.invoke(app, ["export", str(adapter), str(out), "--format", "onnx"])
    assert done.exit_code == 0, done.output
    assert "max abs logit difference from adaptune" in done.output and "CPUExecutionProvider" in done.output
    assert (out / ONNX_FILE).is_file()
    again = runner.invoke(app, ["export", str(adapter), str(out), "--format", "onnx"])
    assert again.exit_code == 2 and "exists and is not empty" in again.output
    assert runner.invoke(app, ["export", str(adapter), str(out), "--format", "onnx", "--overwrite"]).exit_code == 0


def test_missing_onnxruntime_names_the_extra(trained: Train, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = trained("method.name=lora", "model.pooling=mean")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    done = runner.invoke(app, ["export", str(adapter), str(tmp_path / "onnx"), "--format", "onnx"])
    lines = [line for line in done.output.splitlines() if line.strip()]
    assert done.exit_code == 2 and len(lines) == 1, done.output
    assert "needs the onnx extra (onnxruntime is not installed)" in lines[0]
    assert "pip install -c requirements/lock.txt -e '.[onnx]'" in lines[0]
