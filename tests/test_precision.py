"""``training.precision`` / ``--precision``: auto picks bf16 only where the matmul probe finds it faster (forced
both ways here by pinning the probe), the probe is cached per host (and survives a corrupt cache), the CUDA
branch, the config's bf16 switches, and the predictors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from adaptune import hardware, load_config, train
from adaptune.cli import app
from adaptune.config import validate_config
from adaptune.errors import ConfigError
from adaptune.hardware import PROBE_ENV, choose_precision, host_record, matmul_probe, probe_key, probe_path
from adaptune.inference import Predictor
from adaptune.inference.multi import MultiPredictor
from adaptune.training.callbacks import Callback, StepRecord
from adaptune.training.loop import Trainer
from adaptune.training.precision import decide
from decoders.lm_tools import make_tiny_causal_llama, write_alpaca
from serving_kit import INTENTS, make_adapter

FAST_BF16 = {"fp32": 80.0, "bf16": 400.0}  # an AMX host: 5x
SLOW_BF16 = {"fp32": 160.0, "bf16": 80.0}  # AVX512-BF16 only: 0.5x
CPU = torch.device("cpu")


def pin(monkeypatch: pytest.MonkeyPatch, figures: dict[str, float]) -> None:
    monkeypatch.setenv(PROBE_ENV, json.dumps(figures))


# -- the rules --------------------------------------------------------------------------------------------------
def test_auto_on_a_cpu_follows_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    pin(monkeypatch, FAST_BF16)
    fast = choose_precision("auto", CPU)
    assert (fast.name, fast.bf16_base, fast.bf16) == ("bf16", True, True)
    assert "400 GFLOP/s" in fast.reason and "5.00x" in fast.reason and "80 GFLOP/s" in fast.reason
    assert fast.record() == {
        "chosen": "bf16",
        "bf16_base": True,
        "reason": fast.reason,
        "matmul_gflops": {"fp32": 80.0, "bf16": 400.0},
    }
    pin(monkeypatch, SLOW_BF16)
    slow = choose_precision("auto", CPU)
    assert (slow.name, slow.bf16_base) == ("fp32", False)
    assert slow.reason.startswith("fp32 (auto)") and "0.50x" in slow.reason and "1.3x" in slow.reason
    pin(monkeypatch, {"fp32": 100.0, "bf16": 129.0})  # just under the threshold
    assert choose_precision("auto", CPU).name == "fp32"


def test_explicit_precisions_are_honoured_without_measuring(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "matmul_probe", lambda: pytest.fail("an explicit precision measured the host"))
    assert choose_precision("fp32", CPU).name == "fp32"
    bf16 = choose_precision("bf16", CPU)
    assert (bf16.name, bf16.bf16_base, bf16.probe) == ("bf16", False, None)
    with pytest.raises(ConfigError, match="'fp16' is not one of auto, fp32, bf16"):
        choose_precision("fp16", CPU)


def test_cuda_branch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "matmul_probe", lambda: pytest.fail("a GPU choice measured the CPU"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Fake GPU")
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_a, **_k: True)
    assert (choose_precision("auto", cuda).name, choose_precision("auto", cuda).bf16_base) == ("bf16", False)
    assert "Fake GPU supports bf16" in choose_precision("auto", cuda).reason
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *_a, **_k: False)
    assert choose_precision("auto", cuda).name == "fp32"
    assert choose_precision("fp32", cuda).name == "fp32"
    with pytest.raises(ConfigError, match="Fake GPU has no bf16 support"):
        choose_precision("bf16", cuda)


def test_config_switches(monkeypatch: pytest.MonkeyPatch) -> None:
    assert validate_config({}).training.precision == "auto"
    for key in ("bf16", "bf16_base"):
        with pytest.raises(ConfigError, match=rf"training\.{key}' = true asks for bf16.*training\.precision = 'fp32'"):
            validate_config({"training": {"precision": "fp32", key: True}})
    with pytest.raises(ConfigError, match="bf16_base"):
        validate_config({"training": {"bf16_base": True}})  # bf16_base alone still needs bf16
    validate_config({"training": {"precision": "bf16", "bf16_base": True}})
    pin(monkeypatch, SLOW_BF16)
    asked = decide(validate_config({"training": {"bf16": True}}).training)  # bf16: true asks for bf16 under auto
    assert (asked.name, asked.bf16_base) == ("bf16", False)
    pin(monkeypatch, FAST_BF16)
    kept = decide(validate_config({"training": {"bf16_base": False}}).training)
    assert (kept.name, kept.bf16_base) == ("bf16", False), "an explicit bf16_base: false stays"
    assert decide(validate_config({}).training).bf16_base


# -- the probe and its cache -------------------------------------------------------------------------------------
@pytest.fixture
def measuring(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """The real probe (not pinned), on a fake matmul that records its calls, with the cache in ``tmp_path``."""
    monkeypatch.delenv(PROBE_ENV)
    monkeypatch.setenv("ADAPTUNE_CACHE", str(tmp_path))
    calls: list[str] = []

    def fake_peak(precision: str, size: int = 1024, seconds: float = 1.5) -> float:
        calls.append(precision)
        return {"fp32": 90e9, "bf16": 45e9}[precision]

    monkeypatch.setattr(hardware, "matmul_peak", fake_peak)
    return calls


def test_the_probe_is_cached_per_host(measuring: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = matmul_probe()
    assert (first["fp32"], first["bf16"], first["source"]) == (90.0, 45.0, "measured")
    assert sorted(set(measuring)) == ["bf16", "fp32"]
    assert probe_path() == tmp_path / "matmul_probe.json"
    cached = json.loads(probe_path().read_text(encoding="utf-8"))
    assert list(cached) == [probe_key()] and cached[probe_key()]["fp32"] == 90.0
    calls = len(measuring)
    again = matmul_probe()
    assert (again["fp32"], again["bf16"]) == (90.0, 45.0) and len(measuring) == calls, "not measured twice"
    assert choose_precision("auto", CPU).name == "fp32" and len(measuring) == calls
    monkeypatch.setattr(torch, "get_num_threads", lambda: 977)  # another thread count: another entry
    assert "977 threads" in probe_key()
    matmul_probe()
    assert len(measuring) > calls and len(json.loads(probe_path().read_text(encoding="utf-8"))) == 2


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"KEY": {"fp32": "fast"}}', ""])
def test_a_corrupt_cache_is_measured_again(measuring: list[str], text: str) -> None:
    probe_path().write_text(text.replace("KEY", probe_key()), encoding="utf-8")
    assert matmul_probe()["source"] == "measured" and measuring
    assert json.loads(probe_path().read_text(encoding="utf-8"))[probe_key()]["bf16"] == 45.0, "rewritten"


def test_a_bad_pin_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PROBE_ENV, "fast")
    with pytest.raises(ConfigError, match=PROBE_ENV):
        matmul_probe()


def test_host_record_with_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    pin(monkeypatch, FAST_BF16)
    record = host_record(probe=True)
    assert record["matmul_gflops"] == {"fp32": 80.0, "bf16": 400.0}
    assert {"cpu", "cores", "avx512_bf16", "amx_bf16", "torch", "threads", "gpu"} <= set(record)
    assert "matmul_gflops" not in host_record()


# -- a training run under each choice -----------------------------------------------------------------------------
class Watch(Callback):
    """Records, at each step, whether the backbone's forward ran under CPU autocast and a frozen weight's dtype."""

    def __init__(self) -> None:
        self.autocast: list[bool] = []
        self.dtypes: set[torch.dtype] = set()
        self.norms: set[torch.dtype] = set()  # the LayerNorms' weights

    def on_fit_start(self, trainer: Trainer) -> None:
        trainer.model.backbone.register_forward_hook(
            lambda *_: self.autocast.append(torch.is_autocast_enabled("cpu")) if trainer.model.training else None
        )

    def on_step_end(self, trainer: Trainer, step: StepRecord) -> None:
        self.dtypes.add(trainer.model.backbone.get_input_embeddings().weight.dtype)
        norms = [m for m in trainer.model.backbone.modules() if isinstance(m, torch.nn.LayerNorm)]
        self.norms |= {m.weight.dtype for m in norms}


def run(tiny_bert: Path, data: Path, out: Path, method: str = "lora") -> tuple[dict[str, Any], Watch]:
    cfg = load_config(
        None,
        [
            f"model.name_or_path={tiny_bert}",
            "model.pooling=mean",
            f"method.name={method}",
            f"data.train={data / 'train.jsonl'}",
            f"data.dev={data / 'dev.jsonl'}",
            "data.max_train_examples=64",
            "data.max_eval_examples=8",
            "data.batch_size=8",
            "training.max_steps=3",
            "training.progress=false",
            f"training.output_dir={out}",
        ],
    )
    watch = Watch()
    train(cfg, callbacks=[watch])
    return json.loads((out / "results.json").read_text(encoding="utf-8")), watch


def test_fast_bf16_trains_under_bf16_with_a_bf16_base(
    tiny_bert: Path, bundled_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: Any
) -> None:
    pin(monkeypatch, FAST_BF16)
    results, watch = run(tiny_bert, bundled_data / "intents", tmp_path)
    assert watch.autocast and all(watch.autocast), "every training forward under bf16 autocast"
    assert watch.dtypes == watch.norms == {torch.bfloat16}, "the frozen base weights are stored in bf16"
    assert results["precision"]["chosen"] == "bf16" and results["precision"]["bf16_base"] is True
    assert results["precision"]["matmul_gflops"] == {"fp32": 80.0, "bf16": 400.0}
    assert results["host"]["cpu"] and "threads" in results["host"]
    note = next(n for n in results["notes"] if n.startswith("precision "))
    assert "bf16 (auto)" in note and "5.00x" in note and "stored in bf16" in note
    assert note in capfd.readouterr().err, "printed before training"
    config = (tmp_path / "config.yaml").read_text(encoding="utf-8")
    assert "precision: bf16" in config and "bf16: true" in config, "config.yaml holds the decided precision"


def test_a_bf16_base_keeps_modules_with_trained_parameters_fp32(
    tiny_bert: Path, bundled_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BitFit trains the LayerNorm biases: those LayerNorms (one kernel, one dtype) stay fp32, embeddings go bf16."""
    pin(monkeypatch, FAST_BF16)
    results, watch = run(tiny_bert, bundled_data / "intents", tmp_path, method="bitfit")
    assert results["precision"]["bf16_base"] and watch.dtypes == {torch.bfloat16} and all(watch.autocast)
    assert watch.norms == {torch.float32}, "LayerNorms with a trained bias keep their weight in fp32"


def test_slow_bf16_trains_in_fp32(tiny_bert: Path, bundled_data: Path, tmp_path: Path) -> None:
    results, watch = run(tiny_bert, bundled_data / "intents", tmp_path)  # the suite's pin: bf16 slower
    assert watch.autocast and not any(watch.autocast) and watch.dtypes == {torch.float32}
    assert results["precision"]["chosen"] == "fp32" and results["precision"]["bf16_base"] is False
    assert "fp32 (auto)" in results["precision"]["reason"]


def test_a_decoder_generates_under_its_bf16_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """causal_lm with generation metrics (before and after training) on a bf16 base: they run under autocast."""
    pin(monkeypatch, FAST_BF16)
    data = write_alpaca(tmp_path / "alpaca.json", 24)
    overrides = [
        f"model.name_or_path={make_tiny_causal_llama(tmp_path / 'lm')}",
        "method.name=lora",
        "task.name=causal_lm",
        "task.holdout=4",
        "task.eval_generate=2",
        "task.generation.max_new_tokens=3",
        f"data.train={data}",
        f"data.dev={data}",
        "data.max_length=48",
        "data.batch_size=8",
        "training.max_steps=2",
        "training.eval_at_start=true",
        "training.progress=false",
        f"training.output_dir={tmp_path / 'run'}",
    ]
    result = train(load_config(None, overrides))
    assert result.results["precision"]["bf16_base"] and "rouge_l" in result.results["splits"]["dev"]["headline"]
    assert "rouge_l" in result.results["at_start"]


# -- prediction ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapters(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("precision_adapters")
    make_adapter(root / "intents", tiny_bert, {"name": "lora", "r": 4}, "seq_cls", INTENTS, seed=0)
    return root


def test_predictor_auto_follows_the_probe(adapters: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = ["where is my order?", "refund please"]
    plain = Predictor.load(adapters / "intents")
    assert plain.precision is not None and plain.precision.name == "fp32" and not plain.bf16
    pin(monkeypatch, FAST_BF16)
    fast = Predictor.load(adapters / "intents")
    assert fast.precision is not None and fast.bf16 and fast.precision.name == "bf16"
    assert not fast.precision.bf16_base, "prediction keeps the base weights as loaded"
    assert fast.model.backbone.get_input_embeddings().weight.dtype == torch.float32
    torch.testing.assert_close(
        torch.stack(fast.logits(texts)).float(), torch.stack(plain.logits(texts)), atol=5e-2, rtol=5e-2
    )
    assert not Predictor.load(adapters / "intents", precision="fp32").bf16
    assert Predictor.load(adapters / "intents", bf16=True).bf16, "bf16=True still asks for bf16"
    with pytest.raises(ConfigError, match="precision = 'fp32'"):
        Predictor.load(adapters / "intents", bf16=True, precision="fp32")


def test_multi_predictor_auto_follows_the_probe(
    adapters: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = Predictor.load(adapters / "intents").predict(["refund please"])
    assert not MultiPredictor(str(tiny_bert), adapters).precision.bf16
    pin(monkeypatch, FAST_BF16)
    multi = MultiPredictor(str(tiny_bert), adapters)
    assert multi.precision.bf16 and "bf16 (auto)" in multi.precision.reason
    [answer] = multi.predict("intents", ["refund please"])
    assert answer["label"] == reference[0]["label"]
    assert not MultiPredictor(str(tiny_bert), adapters, precision="fp32").precision.bf16


def test_predict_command_takes_precision(adapters: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in.txt"
    inputs.write_text("refund please\n", encoding="utf-8")
    runner = CliRunner()
    for precision in ("bf16", "fp32", "auto"):
        done = runner.invoke(app, ["predict", str(adapters / "intents"), str(inputs), "--precision", precision])
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout.splitlines()[0])["label"] in INTENTS
    refused = runner.invoke(app, ["predict", str(adapters / "intents"), str(inputs), "--precision", "fp16"])
    assert refused.exit_code != 0
