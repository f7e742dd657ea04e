"""Prompt tuning on tiny BERT and left-padding tiny Llama and GPT-2: shapes, initialisations, positions and
padding, parameter counts (and peft's), and training through ``adaptune.train`` for sequence and token tasks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adaptune import Predictor
from adaptune.config import validate_config
from adaptune.errors import ConfigError
from adaptune.methods.prompt import PromptTuning, vocabulary_candidates
from adaptune.model import AdaptedModel
from adaptune.positions import position_limit
from adaptune.registry import build_method, build_task
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
    method_hidden,
    padded_batch,
)


@pytest.fixture(scope="module")
def llama_left(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_left_padding(tmp_path_factory.mktemp("prompt_llama"))


@pytest.fixture(scope="module")
def gpt2_left(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A decoder with learned absolute positions."""
    return make_left_padding(tmp_path_factory.mktemp("prompt_gpt2"), make_tiny_gpt2)


def test_inputs_get_the_prompt_in_front(tiny_bert: Path) -> None:
    bb = backbone(tiny_bert)
    method = attach_full(bb, name="prompt", num_virtual_tokens=5)
    batch = padded_batch(bb, ["a longer sentence here", "hi"])
    prep = method.prepare_inputs(bb.model, dict(batch))
    n, (b, t) = 5, batch["input_ids"].shape
    assert prep.n_virtual == n and "input_ids" not in prep.inputs
    embeds = prep.inputs["inputs_embeds"]
    assert embeds.shape == (b, n + t, 32)
    prompt = method.owned_parameters(bb.model)["prompt.weight"]
    assert torch.equal(embeds[0, :n], prompt) and torch.equal(embeds[1, :n], prompt)
    assert torch.equal(embeds[:, n:], bb.model.get_input_embeddings()(batch["input_ids"]))
    assert torch.equal(
        prep.inputs["attention_mask"], torch.cat([torch.ones(b, n, dtype=torch.long), batch["attention_mask"]], 1)
    )
    assert torch.equal(prep.inputs["token_type_ids"][:, :n], torch.zeros(b, n, dtype=torch.long))
    assert "position_ids" not in prep.inputs, "encoders number positions themselves"
    method.detach(bb.model)
    assert not hasattr(bb.model, "prompt") and method.owned_parameters(bb.model) == {}


def test_decoders_count_positions_from_the_mask(llama_left: Path) -> None:
    bb = backbone(llama_left)
    method = attach_full(bb, name="prompt", num_virtual_tokens=3)
    batch = padded_batch(bb, ["a much longer text than the other", "hi"])
    assert batch["attention_mask"][1, 0] == 0, "the Llama tokenizer pads on the left"
    positions = method.prepare_inputs(bb.model, dict(batch)).inputs["position_ids"]
    real = torch.cat([torch.ones(2, 3, dtype=torch.long), batch["attention_mask"]], 1).bool()
    for row in range(2):
        assert positions[row][real[row]].tolist() == list(range(int(real[row].sum())))


@pytest.mark.parametrize("model_name", ["tiny_bert", "llama_left", "gpt2_left"])
def test_padding_changes_nothing(model_name: str, request: pytest.FixtureRequest) -> None:
    bb = backbone(request.getfixturevalue(model_name))
    assert_batch_equals_single(bb, attach_full(bb, name="prompt", num_virtual_tokens=4), MIXED)


def test_head_sees_the_text_positions_only(tiny_bert: Path) -> None:
    """AdaptedModel drops the n prompt states: CLS pooling reads [CLS], not a virtual token."""
    bb = backbone(tiny_bert)
    prompt = build_method(validate_config({"method": {"name": "prompt", "num_virtual_tokens": 4}}).method)
    model = AdaptedModel(bb, prompt, build_task(validate_config({}).task), ["a", "b"]).eval()
    seen: list[torch.Tensor] = []
    model.head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    batch = padded_batch(bb, ["hello world", "a longer text than that"])
    model(batch)
    prep = prompt.prepare_inputs(bb.model, {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
    with torch.no_grad():
        full = bb.model(**prep.inputs).last_hidden_state
    assert seen[0].shape[:2] == batch["input_ids"].shape
    assert torch.equal(seen[0], full[:, 4:])


def test_parameter_count_is_n_times_d(tiny_bert: Path) -> None:
    bb = backbone(tiny_bert)
    owned = attach_full(bb, name="prompt", num_virtual_tokens=7).owned_parameters(bb.model)
    assert {k: tuple(v.shape) for k, v in owned.items()} == {"prompt.weight": (7, 32)}


@pytest.mark.skipif(not HAS_PEFT, reason="peft is not installed (test extra)")
@pytest.mark.parametrize("model_name", ["tiny_bert", "llama_left"])
def test_parameter_count_equals_peft(model_name: str, request: pytest.FixtureRequest) -> None:
    from peft import PromptTuningConfig

    path = request.getfixturevalue(model_name)
    bb = backbone(path)
    ours = sum(
        p.numel() for p in attach_full(bb, name="prompt", num_virtual_tokens=7).owned_parameters(bb.model).values()
    )
    peft = peft_model(path, PromptTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=7))
    assert peft.get_nb_trainable_parameters()[0] == ours == 7 * 32


@pytest.mark.skipif(not HAS_PEFT, reason="peft is not installed (test extra)")
@pytest.mark.parametrize("model_name", ["tiny_bert", "llama_left"])
def test_same_outputs_as_peft(model_name: str, request: pytest.FixtureRequest) -> None:
    from peft import PromptTuningConfig

    path = request.getfixturevalue(model_name)
    bb = backbone(path)
    method = attach_full(bb, name="prompt", num_virtual_tokens=6, init="random")
    peft = peft_model(path, PromptTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=6))
    with torch.no_grad():
        peft.prompt_encoder["default"].embedding.weight.copy_(method.owned_parameters(bb.model)["prompt.weight"])
    batch = padded_batch(bb, ["where is my order A1024-77?"])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        theirs = peft(**inputs).last_hidden_state[:, 6:]
    torch.testing.assert_close(method_hidden(bb, method, batch), theirs, atol=1e-5, rtol=0)


def test_vocab_init_uses_embeddings_of_ordinary_tokens(tiny_bert: Path) -> None:
    bb = backbone(tiny_bert)
    prompt = attach_full(bb, name="prompt", num_virtual_tokens=10).owned_parameters(bb.model)["prompt.weight"]
    words = bb.model.get_input_embeddings().weight
    rows = [int((words - row).abs().sum(-1).argmin()) for row in prompt]
    assert all(torch.equal(words[i], prompt[k]) for k, i in enumerate(rows))
    assert not set(rows) & set(bb.tokenizer.all_special_ids) and len(set(rows)) == 10
    assert not set(bb.tokenizer.all_special_ids) & set(vocabulary_candidates(words.shape[0], bb.tokenizer).tolist())


def test_text_init_repeats_the_text_tokens(tiny_bert: Path) -> None:
    bb = backbone(tiny_bert)
    method = attach_full(bb, name="prompt", num_virtual_tokens=5, init="text", init_text="classify the intent")
    ids = bb.tokenizer("classify the intent", add_special_tokens=False)["input_ids"]
    assert len(ids) == 3
    expected = bb.model.get_input_embeddings()(torch.tensor((ids * 2)[:5]))
    assert torch.equal(method.owned_parameters(bb.model)["prompt.weight"], expected)


def test_random_init_matches_the_embedding_scale(tiny_bert: Path) -> None:
    bb = backbone(tiny_bert)
    torch.manual_seed(0)
    prompt = attach_full(bb, name="prompt", num_virtual_tokens=200, init="random").owned_parameters(bb.model)
    scale = float(bb.model.get_input_embeddings().weight.std())
    assert abs(float(prompt["prompt.weight"].detach().std()) / scale - 1) < 0.1


def test_position_limit_reads_the_position_table(tiny_bert: Path, llama_left: Path, gpt2_left: Path) -> None:
    from transformers import RobertaConfig, RobertaModel

    roberta = RobertaModel(
        RobertaConfig(
            vocab_size=50,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=66,
            pad_token_id=1,
        )
    )
    assert position_limit(roberta) == 64, "RoBERTa numbers positions from padding_idx + 1"
    assert position_limit(backbone(tiny_bert).model) == 128
    assert position_limit(backbone(gpt2_left).model) == 128
    assert position_limit(backbone(llama_left).model) is None, "rotary positions have no table"


def test_config_errors(tiny_bert: Path) -> None:
    with pytest.raises(ConfigError, match="method.init_text' is required"):
        attach_full(backbone(tiny_bert), name="prompt", init="text")
    bb = backbone(tiny_bert)  # 128 learned positions
    method = attach_full(bb, name="prompt", num_virtual_tokens=20)
    assert isinstance(method, PromptTuning)
    ids = torch.full((1, 120), 2023)
    with pytest.raises(ConfigError, match=r"only 128 positions; set data.max_length to at most 108"):
        method.prepare_inputs(bb.model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})


# -- training through adaptune.train --------------------------------------------------------------------------------
def _train(tmp: pytest.TempPathFactory, model: Path, data: Path, *extra: str) -> Run:
    return train_tiny(tmp.mktemp("prompt_run"), model, data, {"name": "prompt", "num_virtual_tokens": 8}, *extra)


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


RUNS = [("cls_run", "tiny_bert"), ("mean_run", "tiny_bert"), ("ner_run", "tiny_bert"), ("llama_run", "llama_left")]


@pytest.mark.parametrize(("run_name", "model_name"), RUNS)
def test_training_moves_the_prompt_and_nothing_of_the_base(
    run_name: str, model_name: str, request: pytest.FixtureRequest
) -> None:
    run: Run = request.getfixturevalue(run_name)
    base_dir = request.getfixturevalue(model_name)
    owned = assert_only_owned_changed(run, base_dir)
    assert set(owned) == {"prompt.weight"}
    assert_owned_trained(run, base_dir)
    assert run.result.trainable_params == 8 * 32 + sum(p.numel() for p in run.model.head.parameters())


@pytest.mark.parametrize("run_name", [name for name, _ in RUNS])
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
