"""``--device`` on every command: auto and cpu run here; a CUDA device on a machine without one is a one-line
error naming the device (train, eval, predict, serve), never a traceback or a silent fall-back to the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from adaptune import load_config, train
from adaptune.errors import ConfigError
from adaptune.inference import Predictor, model_device
from adaptune.inference.multi import MultiPredictor

runner = CliRunner()
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")


@pytest.fixture(scope="module")
def adapter(tiny_bert: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("devices")
    intents = bundled_data / "intents"
    cfg = load_config(
        None,
        [
            f"model.name_or_path={tiny_bert}",
            "method.name=lora",
            f"data.train={intents / 'train.jsonl'}",
            f"data.dev={intents / 'dev.jsonl'}",
            "data.max_train_examples=200",
            "data.max_eval_examples=8",
            "training.max_steps=2",
            "training.progress=false",
            "training.device=cpu",
            f"training.output_dir={out / 'run'}",
        ],
    )
    result = train(cfg)
    assert model_device(result.model) == torch.device("cpu")
    folder = out / "adapters" / "intents"
    folder.parent.mkdir()
    result.adapter_dir.rename(folder)
    return folder


def test_predict_and_eval_run_on_the_device_asked_for(adapter: Path, bundled_data: Path) -> None:
    from adaptune.cli import app

    predictor = Predictor.load(adapter, device="cpu")
    assert model_device(predictor.model).type == "cpu"
    text = json.loads((bundled_data / "intents" / "test.jsonl").read_text(encoding="utf-8").splitlines()[0])["text"]
    auto = Predictor.load(adapter).predict([text])  # auto: the CPU here
    assert predictor.predict([text]) == auto
    out = runner.invoke(app, ["predict", str(adapter), "-", "--device", "cpu"], input=text + "\n")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["label"] == auto[0]["label"]


@no_cuda
@pytest.mark.parametrize("command", ["predict", "eval", "serve"])
def test_a_cuda_device_without_cuda_is_a_one_line_error(command: str, adapter: Path, bundled_data: Path) -> None:
    from adaptune.cli import app

    args = {
        "predict": ["predict", str(adapter), "-"],
        "eval": ["eval", str(adapter), str(bundled_data / "intents" / "dev.jsonl")],
        "serve": ["serve", "--base", "x", "--adapters", str(adapter.parent)],
    }[command]
    out = runner.invoke(app, [*args, "--device", "cuda:0"], input="hello\n")
    assert out.exit_code != 0
    assert "device 'cuda:0'" in out.output and "sees no CUDA device" in out.output, out.output
    assert out.exception is None or isinstance(out.exception, SystemExit)


@no_cuda
def test_the_server_core_refuses_a_missing_device_before_loading(adapter: Path, tiny_bert: Path) -> None:
    with pytest.raises(ConfigError, match="sees no CUDA device"):
        MultiPredictor(str(tiny_bert), adapter.parent, device="cuda")
    served = MultiPredictor(str(tiny_bert), adapter.parent, device="cpu")
    assert "intents" in served.entries and served.device == torch.device("cpu")
