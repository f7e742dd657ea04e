"""``merge_to_hf`` / ``adaptune merge``: a plain transformers folder plus the head reproduces the adapter's logits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer
from typer.testing import CliRunner

from adaptune import Predictor
from adaptune.cli import app
from adaptune.errors import ConfigError
from adaptune.export import HEAD_CONFIG, HEAD_WEIGHTS, merge_to_hf
from adaptune.tasks.pooling import pool
from method_checks import TEXTS, train_tiny

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "lora": ("tiny_bert", {"name": "lora", "r": 4}),
    "dora": ("tiny_bert", {"name": "lora", "r": 4, "use_dora": "true", "roles": "[query, value, ffn_in]"}),
    "dora-gpt2": ("tiny_gpt2", {"name": "lora", "r": 4, "use_dora": "true"}),
    "ia3": ("tiny_bert", {"name": "ia3"}),
    "ia3-llama": ("tiny_llama", {"name": "ia3"}),
    "bitfit": ("tiny_bert", {"name": "bitfit"}),
    "head": ("tiny_bert", {"name": "head"}),
}


@pytest.fixture(scope="module")
def adapters(request: pytest.FixtureRequest, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:  # type: ignore[type-arg]
    """One trained adapter per case (3 steps at a learning rate high enough to move far from the init)."""
    out = {}
    for case, (model_name, method) in CASES.items():
        folder = request.getfixturevalue(model_name)
        run = train_tiny(tmp_path_factory.mktemp(case), folder, bundled_data, method, "training.learning_rate=0.05")
        out[case] = run.result.adapter_dir
    return out


def _transformers_logits(folder: Path, texts: list[str]) -> list[torch.Tensor]:
    """Logits from the exported folder with transformers, safetensors and the documented head formula only."""
    model, tokenizer = AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    head, info = load_file(folder / HEAD_WEIGHTS), json.loads((folder / HEAD_CONFIG).read_text(encoding="utf-8"))
    assert info["head"]["input"] == "pooled" and info["labels"]
    out = []
    for text in texts:  # one at a time: no padding, like Predictor's per-example logits
        enc = tokenizer(text, truncation=True, max_length=info["max_length"], return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state
        pooled = pool(hidden, enc["attention_mask"], info["pooling"])
        out.append((pooled @ head["classifier.weight"].T + head["classifier.bias"])[0])
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_merged_folder_reproduces_the_adapter(case: str, adapters: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    folder = merge_to_hf(adapters[case], tmp_path / "merged")
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert not list(folder.glob("*.bin")), "safetensors only"
    expected = Predictor.load(adapters[case]).logits(TEXTS)
    got = _transformers_logits(folder, TEXTS)
    for a, b in zip(expected, got, strict=True):
        assert torch.allclose(a, b, atol=1e-5), (a, b)
    names = load_file(folder / "model.safetensors").keys()
    assert not any(".lora." in n or ".ia3" in n for n in names), "a plain base model"


def test_merge_changes_the_base_weights(adapters: dict, tiny_bert: Path, tmp_path: Path) -> None:  # type: ignore[type-arg]
    merged = load_file(merge_to_hf(adapters["lora"], tmp_path / "m") / "model.safetensors")
    base = load_file(tiny_bert / "model.safetensors")
    changed = sorted(k for k in base if not torch.equal(base[k], merged[k]))
    assert changed == [f"encoder.layer.{i}.attention.self.{m}.weight" for i in (0, 1) for m in ("query", "value")]


def test_bottleneck_cannot_be_merged(tiny_bert: Path, bundled_data: Path, tmp_path: Path) -> None:
    run = train_tiny(tmp_path / "run", tiny_bert, bundled_data, {"name": "bottleneck", "reduction_factor": 4})
    with pytest.raises(ConfigError, match="method 'bottleneck' cannot be merged"):
        merge_to_hf(run.result.adapter_dir, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_cli_merge(adapters: dict, tmp_path: Path) -> None:  # type: ignore[type-arg]
    runner = CliRunner()
    out = tmp_path / "merged"
    result = runner.invoke(app, ["merge", str(adapters["ia3"]), str(out)])
    assert result.exit_code == 0, result.output
    assert "merged model:" in result.output and (out / HEAD_CONFIG).is_file()
    again = runner.invoke(app, ["merge", str(adapters["ia3"]), str(out)])
    assert again.exit_code == 2 and "not empty" in again.output
    assert runner.invoke(app, ["merge", str(adapters["ia3"]), str(out), "--overwrite"]).exit_code == 0
