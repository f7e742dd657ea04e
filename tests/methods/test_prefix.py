"""Prefix tuning on tiny BERT, DistilBERT and left-padding tiny Llama and GPT-2: the keys and masks every attention
layer gets, positions that do not move, SDPA against eager, padding, parameter counts (and peft's), and training
through ``adaptune.train``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import DistilBertConfig, DistilBertModel

from adaptune import Predictor
from adaptune.config import validate_config
from adaptune.errors import ConfigError
from adaptune.methods.base import AttachContext
from adaptune.methods.prefix import PrefixTuning
from adaptune.registry import build_method
from method_checks import HAS_PEFT, Run, assert_only_owned_changed, assert_round_trip, backbone, peft_model, train_tiny
from tiny import make_tiny_gpt2
from virtual_checks import (
    MIXED,
    NER_TEXTS,
    assert_batch_equals_single,
    assert_owned_trained,
    assert_tags_align_with_words,
    attach_full,
    make_left_padding,
    padded_batch,
)


@pytest.fixture(scope="module")
def llama_left(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_left_padding(tmp_path_factory.mktemp("prefix_llama"))


@pytest.fixture(scope="module")
def gpt2_left(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A decoder with learned absolute positions."""
    return make_left_padding(tmp_path_factory.mktemp("prefix_gpt2"), make_tiny_gpt2)


def _prefix(bb, **fields) -> PrefixTuning:  # type: ignore[no-untyped-def]
    method = attach_full(bb, name="prefix", **fields)
    assert isinstance(method, PrefixTuning)
    return method


def _plain_batch(bb, texts: list[str]) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """A padded batch without token type ids (peft drops them; they play no part here)."""
    return {k: v for k, v in padded_batch(bb, texts).items() if k != "token_type_ids"}


def _hidden(bb, inputs: dict) -> torch.Tensor:  # type: ignore[no-untyped-def,type-arg]
    with torch.no_grad():
        return bb.model(**inputs).last_hidden_state  # type: ignore[no-any-return]


def _spy_sdpa(monkeypatch: pytest.MonkeyPatch, change: Any = None) -> list[tuple[int, torch.Tensor, Any]]:
    """Record (layer, keys, mask) of every SDPA call the prefix wrapper makes; ``change(mask, n)`` may replace
    the mask first."""
    from transformers import AttentionInterface

    real = AttentionInterface._global_mapping["sdpa"]
    calls: list[tuple[int, torch.Tensor, Any]] = []

    def spy(module, query, key, value, mask, **kwargs):  # type: ignore[no-untyped-def]
        if change is not None:
            mask = change(mask, key.shape[-2] - query.shape[-2])
        calls.append((int(module.layer_idx), key, mask))
        return real(module, query, key, value, mask, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", spy)
    return calls


def test_every_attention_layer_gets_its_prefix(llama_left: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bb = backbone(llama_left)  # 2 layers, 1 key/value head of width 16 (grouped-query attention)
    assert bb.model.config._attn_implementation == "sdpa"
    method = _prefix(bb, num_virtual_tokens=5)
    assert bb.model.config._attn_implementation == "adaptune_prefix:sdpa"
    batch = padded_batch(bb, ["a longer text than the other one", "hi"])
    prep = method.prepare_inputs(bb.model, dict(batch))
    assert prep.n_virtual == 0 and prep.kv_prefix == 5
    assert set(prep.inputs) == {*batch, "position_ids"}  # no cache handed to the model
    assert torch.equal(prep.inputs["input_ids"], batch["input_ids"])
    assert torch.equal(prep.inputs["attention_mask"], batch["attention_mask"])
    positions = prep.inputs["position_ids"]  # decoders continue after the prefix, counted from the mask
    for row in range(2):
        real = batch["attention_mask"][row].bool()
        assert positions[row][real].tolist() == list(range(5, 5 + int(real.sum())))
    calls = _spy_sdpa(monkeypatch)
    _hidden(bb, prep.inputs)
    states = method.prefix_states().detach().view(5, 2, 2, 1, 16)  # (n, L, 2, H_kv, d_head), peft's layout
    width = batch["input_ids"].shape[1]
    assert [layer for layer, _, _ in calls] == [0, 1]
    for layer, keys, mask in calls:
        assert keys.shape == (2, 1, 5 + width, 16)
        for row in range(2):
            assert torch.equal(keys[row, :, :5], states[:, layer, 0].transpose(0, 1))
        assert mask.dtype == torch.bool and mask.shape[-1] == 5 + width
        assert bool(mask[..., :5].all()), "every query sees the whole prefix, padding rows included"
        last_query = mask[..., 5:].expand(2, 1, width, width)[1, 0, -1]  # the padded row's text: its own keys
        assert torch.equal(last_query, batch["attention_mask"][1].bool())


def _blind(mask: torch.Tensor | None, n: int) -> torch.Tensor:
    """The mask with the prefix columns masked out (nobody attends to the prefix)."""
    assert mask is not None and mask.dtype == torch.bool
    mask = mask.clone()
    mask[..., :n] = False
    return mask


@pytest.mark.parametrize(("model_name", "atol"), [("tiny_bert", 1e-6), ("llama_left", 1e-5)])
def test_masked_prefix_gives_the_base_output(
    model_name: str, atol: float, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the prefix attended to by nobody, the output is the base model's: positions are not shifted.

    Both match to rounding (the attention is over n + T keys instead of T). A shift would move BERT to other
    learned position embeddings (see the next test); rotary Llama is immune to shifting every position alike."""
    bb = backbone(request.getfixturevalue(model_name))
    batch = _plain_batch(bb, MIXED)
    base = _hidden(bb, batch)
    method = _prefix(bb, num_virtual_tokens=6)
    real = batch["attention_mask"].bool()
    prep = method.prepare_inputs(bb.model, dict(batch))
    assert not torch.allclose(_hidden(bb, prep.inputs)[real], base[real], atol=1e-3), "the prefix acts"
    with monkeypatch.context() as patch:
        calls = _spy_sdpa(patch, _blind)
        torch.testing.assert_close(_hidden(bb, prep.inputs)[real], base[real], atol=atol, rtol=0)
        assert len(calls) == 2
    method.detach(bb.model)
    assert bb.model.config._attn_implementation == "sdpa"
    assert torch.equal(_hidden(bb, batch), base) and not hasattr(bb.model, "prefix")


def test_bert_positions_start_at_zero(tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: numbered after the prefix (as peft's cache does), BERT gives other outputs."""
    bb = backbone(tiny_bert)
    batch = _plain_batch(bb, ["hello there", "hi"])
    base = _hidden(bb, batch)
    method = _prefix(bb, num_virtual_tokens=6)
    shifted = {**batch, "position_ids": torch.arange(6, 6 + batch["input_ids"].shape[1])[None]}
    _spy_sdpa(monkeypatch, _blind)
    assert torch.allclose(_hidden(bb, method.prepare_inputs(bb.model, dict(batch)).inputs), base, atol=1e-5)
    assert not torch.allclose(_hidden(bb, method.prepare_inputs(bb.model, shifted).inputs), base, atol=1e-3)


@pytest.mark.parametrize("model_name", ["tiny_bert", "llama_left", "gpt2_left"])
@pytest.mark.parametrize("texts", [MIXED, ["one text alone, with no padding at all"]])
def test_eager_attention_gives_what_sdpa_gives(model_name: str, texts: list[str], request) -> None:  # type: ignore[no-untyped-def]
    """The eager path (additive float masks) and SDPA (boolean masks, or none without padding, where causal
    models need the explicit triangle that sees the prefix) agree."""
    bb = backbone(request.getfixturevalue(model_name))
    method = _prefix(bb, num_virtual_tokens=3, prefix_hidden=8)
    inputs = method.prepare_inputs(bb.model, _plain_batch(bb, texts)).inputs
    sdpa = _hidden(bb, inputs)
    assert method._encoder is not None
    trained = {k: v.clone() for k, v in method._encoder.state_dict().items()}
    method.detach(bb.model)
    bb.model.config._attn_implementation = "eager"
    eager = _prefix(bb, num_virtual_tokens=3, prefix_hidden=8)
    assert bb.model.config._attn_implementation == "adaptune_prefix:eager" and eager._encoder is not None
    eager._encoder.load_state_dict(trained)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(_hidden(bb, inputs)[real], sdpa[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_name", ["tiny_bert", "llama_left", "gpt2_left"])
def test_padding_changes_nothing(model_name: str, request: pytest.FixtureRequest) -> None:
    bb = backbone(request.getfixturevalue(model_name))
    assert_batch_equals_single(bb, _prefix(bb, num_virtual_tokens=4), MIXED)


def _formula(n: int, layers: int, d_kv: int, hidden: int | None) -> int:
    if hidden is None:
        return n * layers * 2 * d_kv
    return n * d_kv + (d_kv * hidden + hidden) + (hidden * layers * 2 * d_kv + layers * 2 * d_kv)


@pytest.mark.parametrize(("model_name", "d_kv"), [("tiny_bert", 32), ("llama_left", 16)])
@pytest.mark.parametrize("hidden", [None, 24])
def test_parameter_count_is_the_formula(model_name: str, d_kv: int, hidden: int | None, request) -> None:  # type: ignore[no-untyped-def]
    path = request.getfixturevalue(model_name)
    bb = backbone(path)
    fields = {"reparameterize": hidden is not None, "prefix_hidden": hidden or 512}
    owned = _prefix(bb, num_virtual_tokens=5, **fields).owned_parameters(bb.model)
    ours = sum(p.numel() for p in owned.values())
    assert ours == _formula(5, 2, d_kv, hidden)
    if HAS_PEFT:
        from peft import PrefixTuningConfig

        config = PrefixTuningConfig(
            task_type="FEATURE_EXTRACTION",
            num_virtual_tokens=5,
            prefix_projection=hidden is not None,
            encoder_hidden_size=hidden,
        )
        assert peft_model(path, config).get_nb_trainable_parameters()[0] == ours


@pytest.mark.skipif(not HAS_PEFT, reason="peft is not installed (test extra)")
@pytest.mark.parametrize("model_name", ["tiny_bert", "llama_left"])
def test_outputs_against_peft(model_name: str, request: pytest.FixtureRequest) -> None:
    """Same tensors, same outputs as peft for Llama; for BERT only when given the positions peft's cache gives it
    (after the prefix), since adaptune numbers BERT's text from 0."""
    from peft import PrefixTuningConfig

    path = request.getfixturevalue(model_name)
    bb = backbone(path)
    method = _prefix(bb, num_virtual_tokens=4, prefix_hidden=24)
    config = PrefixTuningConfig(
        task_type="FEATURE_EXTRACTION", num_virtual_tokens=4, prefix_projection=True, encoder_hidden_size=24
    )
    peft = peft_model(path, config)
    owned = {k[len("prefix.") :]: v for k, v in method.owned_parameters(bb.model).items()}
    peft.prompt_encoder["default"].load_state_dict(owned)
    batch = _plain_batch(bb, ["where is my order A1024-77?"])
    with torch.no_grad():
        theirs = peft(**batch).last_hidden_state
    ours = _hidden(bb, method.prepare_inputs(bb.model, dict(batch)).inputs)
    if model_name == "tiny_bert":
        assert not torch.allclose(ours, theirs, atol=1e-3)
        shifted = {**batch, "position_ids": torch.arange(4, 4 + batch["input_ids"].shape[1])[None]}
        ours = _hidden(bb, method.prepare_inputs(bb.model, shifted).inputs)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_distilbert_takes_a_prefix_and_gives_it_back() -> None:
    """A model whose layers know no index and whose forward takes no cache: the layers are found by the probe."""
    model = DistilBertModel(DistilBertConfig(vocab_size=50, dim=16, n_layers=2, n_heads=2, hidden_dim=32)).eval()
    ids = torch.tensor([[1, 5, 7, 2]])
    with torch.no_grad():
        base = model(input_ids=ids).last_hidden_state
    method = build_method(validate_config({"method": {"name": "prefix", "num_virtual_tokens": 3}}).method)
    method.attach(model, AttachContext("distilbert", None, 16, 2))
    assert isinstance(method, PrefixTuning) and len(method._layers) == 2
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).last_hidden_state, base, atol=1e-3)
    method.detach(model)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).last_hidden_state, base)


def test_attention_without_per_layer_masks_is_refused(tiny_bert: Path) -> None:
    bb = backbone(tiny_bert)
    bb.model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ConfigError, match="attn_implementation='flash_attention_2' uses another format"):
        attach_full(bb, name="prefix")
    assert bb.model.config._attn_implementation == "flash_attention_2" and not hasattr(bb.model, "prefix")


def test_lr_default_follows_the_parameterisation() -> None:
    assert build_method(validate_config({"method": {"name": "prefix"}}).method).default_learning_rate == 1e-3
    raw = build_method(validate_config({"method": {"name": "prefix", "reparameterize": False}}).method)
    assert raw.default_learning_rate == 1e-2


# -- training through adaptune.train --------------------------------------------------------------------------------
def _train(tmp: pytest.TempPathFactory, model: Path, data: Path, *extra: str) -> Run:
    method = {"name": "prefix", "num_virtual_tokens": 8, "prefix_hidden": 16}
    return train_tiny(tmp.mktemp("prefix_run"), model, data, method, *extra)


@pytest.fixture(scope="module")
def cls_run(tiny_bert: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _train(tmp_path_factory, tiny_bert, bundled_data, "model.pooling=cls")


@pytest.fixture(scope="module")
def mean_run(tiny_bert: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _train(tmp_path_factory, tiny_bert, bundled_data)


@pytest.fixture(scope="module")
def ner_run(tiny_bert: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    ner = f"data.train={bundled_data / 'ner' / 'train.conll'}"
    return _train(tmp_path_factory, tiny_bert, bundled_data, "task.name=token_cls", ner)


@pytest.fixture(scope="module")
def llama_run(llama_left: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    return _train(tmp_path_factory, llama_left, bundled_data, "model.pooling=last")


RUNS = [("cls_run", "tiny_bert", 32), ("mean_run", "tiny_bert", 32), ("ner_run", "tiny_bert", 32)]
RUNS += [("llama_run", "llama_left", 16)]


@pytest.mark.parametrize(("run_name", "model_name", "d_kv"), RUNS)
def test_training_moves_the_prefix_and_nothing_of_the_base(
    run_name: str, model_name: str, d_kv: int, request: pytest.FixtureRequest
) -> None:
    run: Run = request.getfixturevalue(run_name)
    base_dir = request.getfixturevalue(model_name)
    owned = assert_only_owned_changed(run, base_dir)
    assert all(name.startswith("prefix.") for name in owned)
    assert_owned_trained(run, base_dir)
    head = sum(p.numel() for p in run.model.head.parameters())
    assert run.result.trainable_params == _formula(8, 2, d_kv, 16) + head


@pytest.mark.parametrize("run_name", [name for name, _, _ in RUNS])
def test_save_load_gives_the_trained_logits(run_name: str, request: pytest.FixtureRequest) -> None:
    assert_round_trip(request.getfixturevalue(run_name))


@pytest.mark.parametrize("run_name", ["cls_run", "llama_run", "ner_run"])
def test_batched_prediction_equals_one_by_one(run_name: str, request: pytest.FixtureRequest) -> None:
    run: Run = request.getfixturevalue(run_name)
    predictor = Predictor.load(run.result.adapter_dir)
    texts = NER_TEXTS if run_name == "ner_run" else MIXED
    together = predictor.logits(texts)
    for text, batched in zip(texts, together, strict=True):
        torch.testing.assert_close(predictor.logits([text])[0], batched, atol=1e-5, rtol=0)


def test_token_predictions_align_with_words(ner_run: Run) -> None:
    assert_tags_align_with_words(ner_run, NER_TEXTS)
