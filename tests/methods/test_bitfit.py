"""BitFit on a tiny BERT: which biases it owns, that detach restores them, training and the adapter round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adaptune.errors import ConfigError
from adaptune.io import load_adapter
from adaptune.methods.bitfit import BitFit
from method_checks import Run, assert_only_owned_changed, assert_round_trip, attach, backbone, hidden, train_tiny


@pytest.fixture(scope="module")
def bitfit_run(tiny_bert: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return train_tiny(tmp_path_factory.mktemp("bitfit"), tiny_bert, bundled_data, {"name": "bitfit"})


def test_owns_every_bias_by_its_base_name(tiny_bert: Path) -> None:
    bb = backbone(tiny_bert)
    biases = {n: p for n, p in bb.model.named_parameters() if n.endswith(".bias")}
    method = attach(bb, name="bitfit")
    owned = method.owned_parameters(bb.model)
    assert owned.keys() == biases.keys()
    assert all(owned[n] is biases[n] and p.requires_grad for n, p in owned.items())
    # per layer: q, k, v, attention output (4 x 32), two LayerNorms (2 x 32), FFN in (64) and out (32);
    # plus the embeddings' LayerNorm
    assert sum(p.numel() for p in owned.values()) == 2 * (4 * 32 + 2 * 32 + 64 + 32) + 32
    assert not any(p.requires_grad for n, p in bb.model.named_parameters() if n not in owned)


def test_bias_filter(tiny_bert: Path) -> None:
    bb = backbone(tiny_bert)
    owned = attach(bb, name="bitfit", bias_filter=["attention.self.query", "intermediate"]).owned_parameters(bb.model)
    assert sorted(owned) == [
        f"encoder.layer.{i}.{m}.bias" for i in (0, 1) for m in ("attention.self.query", "intermediate.dense")
    ]
    with pytest.raises(ConfigError, match="no bias parameters whose name contains"):
        attach(backbone(tiny_bert), name="bitfit", bias_filter=["nothing_like_this"])


def test_models_without_biases_are_refused(tiny_llama: Path) -> None:
    with pytest.raises(ConfigError, match="model type 'llama' has no bias parameters"):
        attach(backbone(tiny_llama), name="bitfit")


def test_detach_restores_the_pretrained_biases(tiny_bert: Path) -> None:
    bb = backbone(tiny_bert)
    before = hidden(bb.model)
    method = attach(bb, name="bitfit")
    with torch.no_grad():
        for param in method.owned_parameters(bb.model).values():
            param.add_(0.5)
    assert not torch.allclose(hidden(bb.model), before)
    method.detach(bb.model)
    assert torch.equal(hidden(bb.model), before)
    assert not any(p.requires_grad for p in bb.model.parameters())


def test_merge_is_trivial_and_unload_keeps_the_trained_biases(tiny_bert: Path) -> None:
    bb = backbone(tiny_bert)
    method = attach(bb, name="bitfit")
    assert isinstance(method, BitFit)
    with torch.no_grad():
        for param in method.owned_parameters(bb.model).values():
            param.add_(0.5)
    trained = hidden(bb.model)
    method.merge(bb.model)
    method.unmerge(bb.model)
    assert torch.equal(hidden(bb.model), trained)
    method.merge_and_unload(bb.model)
    assert torch.equal(hidden(bb.model), trained)
    assert method.owned_parameters(bb.model) == {}
    assert not any(p.requires_grad for p in bb.model.parameters())


def test_training_changes_only_biases_and_round_trips(bitfit_run: Run, tiny_bert: Path) -> None:
    owned = assert_only_owned_changed(bitfit_run, tiny_bert)
    base = backbone(tiny_bert).model.state_dict()
    assert all(not torch.equal(p, base[n]) for n, p in owned.items()), "every bias trained"
    tensors = load_adapter(bitfit_run.result.adapter_dir).tensors
    assert {k for k in tensors if k.startswith("adapter.")} == {f"adapter.{n}" for n in owned}
    assert_round_trip(bitfit_run)
