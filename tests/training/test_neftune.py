"""NEFTune: uniform noise of scale alpha / sqrt(L * d) on the input embeddings while training only, the same scale
padded or padding-free, and a training switch that changes what is learned but not evaluation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptune import load_config, train
from adaptune.backbone import load_backbone
from adaptune.config import ModelConfig
from adaptune.errors import ConfigError
from adaptune.io import WEIGHTS_FILE
from adaptune.padding_free import packed_forward
from adaptune.training.neftune import noisy_embeddings

MASK = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]])


class Flag(torch.nn.Module):
    """Stands in for the adapted model: only its training flag matters to the hook."""


def _noise_seen(backbone: torch.nn.Module, run: object, alpha: float, training: bool) -> torch.Tensor:
    """What the hook added to the embeddings in one forward pass (``run``), as a flat tensor."""
    embeddings = backbone.get_input_embeddings()
    seen: list[torch.Tensor] = []

    def record(_module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen.append((output - torch.nn.functional.embedding(args[0], embeddings.weight)).detach().reshape(-1))

    flag = Flag().train(training)
    with noisy_embeddings(flag, embeddings, alpha):
        handle = embeddings.register_forward_hook(record)  # after NEFTune's hook: sees the noisy output
        try:
            with torch.no_grad():
                run()  # type: ignore[operator]
        finally:
            handle.remove()
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "padding_free"])
def test_noise_is_uniform_at_alpha_over_sqrt_length_times_width(tiny_llama: Path, packed: bool) -> None:
    backbone = load_backbone(ModelConfig(name_or_path=str(tiny_llama))).model.eval()
    ids = torch.randint(5, 90, MASK.shape, generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": MASK}

    def run() -> object:
        return packed_forward(backbone, inputs) if packed else backbone(**inputs)

    torch.manual_seed(0)
    alpha, width = 5.0, backbone.config.hidden_size
    bound = alpha / math.sqrt(MASK.shape[1] * width)  # L: the padded width in both layouts
    noise = _noise_seen(backbone, run, alpha, training=True)
    assert noise.numel() == (int(MASK.sum()) if packed else MASK.numel()) * width
    assert float(noise.abs().max()) <= bound * (1 + 1e-5)
    assert float(noise.abs().max()) > 0.95 * bound  # uniform over [-b, b]: some draws come close to b
    assert float(noise.std()) == pytest.approx(bound / math.sqrt(3), rel=0.1)
    assert not _noise_seen(backbone, run, alpha, training=False).any()  # evaluation: no noise


def _config(model: Path, data: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return load_config(
        None,
        [
            f"model.name_or_path={model}",
            "model.pooling=mean",
            "method.name=lora",
            f"data.train={data / 'train.jsonl'}",
            f"data.dev={data / 'dev.jsonl'}",
            "data.max_train_examples=64",
            "data.max_eval_examples=16",
            "data.batch_size=8",
            "training.max_steps=3",
            "training.progress=false",
            f"training.output_dir={out}",
            *extra,
        ],
    )


def test_neftune_changes_training_not_evaluation(tiny_bert: Path, bundled_data: Path, tmp_path: Path) -> None:
    data = bundled_data / "intents"
    runs = {}
    for alpha in (None, 5.0):
        extra = [f"training.neftune_noise_alpha={alpha}"] if alpha else []
        runs[alpha] = train(_config(tiny_bert, data, tmp_path / str(alpha), *extra))
    plain, noisy = (load_file(runs[a].adapter_dir / WEIGHTS_FILE) for a in (None, 5.0))
    assert any(not torch.equal(plain[k], noisy[k]) for k in plain)
    again = train(_config(tiny_bert, data, tmp_path / "again", "training.neftune_noise_alpha=5.0"))
    repeat = load_file(again.adapter_dir / WEIGHTS_FILE)
    assert all(torch.equal(noisy[k], repeat[k]) for k in noisy)  # seeded: reproducible
    assert runs[5.0].results["splits"] == again.results["splits"]


def test_neftune_refuses_the_activation_cache(tiny_bert: Path, bundled_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neftune_noise_alpha"):
        _config(
            tiny_bert,
            bundled_data / "intents",
            tmp_path,
            "method.layers=[-1]",
            "training.neftune_noise_alpha=5",
            "training.activation_cache=memory",
        )
