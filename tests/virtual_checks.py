"""Checks shared by the tests of the methods that reach the model through its inputs (``prompt``, ``prefix``):
a left-padding tiny Llama, attaching with the full context, hidden states of a padded batch against one-by-one,
the initial trainable state of a run, and word alignment of token predictions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from adaptune import Predictor
from adaptune.backbone import Backbone
from adaptune.config import validate_config
from adaptune.io import load_adapter
from adaptune.methods.base import AttachContext, Method
from adaptune.model import AdaptedModel
from adaptune.registry import build_method, build_task
from adaptune.tasks.base import Encoded
from adaptune.training.loop import seed_everything
from method_checks import Run, backbone
from tiny import make_tiny_llama

#: Texts of very different lengths, so that batches carry a lot of padding.
MIXED = ["where is my order A1024-77? it was due last week and nothing came", "我想退款", "hi", "cancel it"]
NER_TEXTS = ["Bob ordered a Kindle in Paris", "张三在北京", "Laura placed order 202410017821 yesterday"]


def make_left_padding(folder: Path, make: Callable[[Path], Path] = make_tiny_llama) -> Path:
    """A tiny decoder (Llama unless ``make`` says otherwise) whose tokenizer pads on the left, as decoders' do."""
    make(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(folder)
    return folder


def context(bb: Backbone) -> AttachContext:
    """Everything :class:`AdaptedModel` tells a method, tokenizer and decoder flag included."""
    return AttachContext(
        bb.model_type, bb.anatomy, bb.hidden_size, bb.num_layers, is_decoder=bb.is_decoder, tokenizer=bb.tokenizer
    )


def attach_full(bb: Backbone, **fields: Any) -> Method:
    """Build the method ``fields`` describe and attach it with the full context."""
    method = build_method(validate_config({"method": fields}).method)
    method.attach(bb.model, context(bb))
    return method


def padded_batch(bb: Backbone, texts: list[str]) -> dict[str, torch.Tensor]:
    """``texts`` tokenised and padded on the tokenizer's side, as the tasks collate them."""
    task = build_task(validate_config({"task": {"name": "seq_cls"}}).task)
    encodings = [bb.tokenizer(t) for t in texts]
    encoded = [Encoded(input_ids=e["input_ids"], token_type_ids=e.get("token_type_ids")) for e in encodings]
    return task.collate(encoded, int(bb.tokenizer.pad_token_id), bb.tokenizer.padding_side)


def method_hidden(bb: Backbone, method: Method, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Hidden states ``(B, T, d)`` the head would see: through the method's input hook, virtual positions dropped."""
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    prep = method.prepare_inputs(bb.model, inputs)
    with torch.no_grad():
        hidden = bb.model(**prep.inputs).last_hidden_state
    return hidden[:, prep.n_virtual :]


def assert_batch_equals_single(bb: Backbone, method: Method, texts: list[str], atol: float = 1e-5) -> None:
    """Each text's real-token states in a padded batch equal its states alone (padding changes nothing)."""
    batch = padded_batch(bb, texts)
    together = method_hidden(bb, method, batch)
    for row, text in enumerate(texts):
        alone = method_hidden(bb, method, padded_batch(bb, [text]))[0]
        real = batch["attention_mask"][row].bool()
        torch.testing.assert_close(together[row][real], alone, atol=atol, rtol=0)


def initial_state(run: Run, base_dir: Path) -> dict[str, torch.Tensor]:
    """The trainable tensors as ``adaptune.train`` initialised them (same seed, same order of draws)."""
    cfg = run.model.method.config
    bb = backbone(base_dir)
    seed_everything(42)
    model = AdaptedModel(bb, build_method(cfg), run.model.task, list(run.model.labels))
    return {k: v.clone() for k, v in model.trainable_state().items()}


def assert_owned_trained(run: Run, base_dir: Path) -> None:
    """Every tensor the method owns moved away from its initial value."""
    before = initial_state(run, base_dir)
    after = run.model.trainable_state()
    assert before.keys() == after.keys()
    for key in (k for k in after if k.startswith("adapter.")):
        assert not torch.equal(before[key], after[key]), f"{key} did not train"


def assert_tags_align_with_words(run: Run, texts: list[str]) -> None:
    """Predicted tags are the argmax of the logits at each word's first sub-token; entities slice the text."""
    predictor = Predictor(run.model, load_adapter(run.result.adapter_dir).config)
    outputs, logits = predictor.predict(texts), predictor.logits(texts)
    for example, output, row_logits in zip(predictor.examples(texts), outputs, logits, strict=True):
        (encoded,) = predictor.encode([example])
        assert encoded.word_index is not None and row_logits.shape[0] == len(encoded.input_ids)
        best = row_logits.argmax(-1)
        expected = ["O"] * len(example.tokens)
        for position, word in enumerate(encoded.word_index):
            if word >= 0:
                expected[word] = predictor.labels[int(best[position])]
        assert output["tags"] == expected
        for entity in output["entities"]:
            assert output["text"][entity["start"] : entity["end"]] == entity["text"]
