"""Dynamic int8 inference (:mod:`adaptune.quantize`): ``Predictor.load(quantize="int8")``, the multi-adapter
predictor, ``adaptune predict/eval --quantize int8`` and ``adaptune serve --quantize int8`` over loopback.

Tolerance: int8 rounds each weight to 1/254 of its row's range and each activation to 1/255 of the call's input
range, about 0.2-0.4 % of each product's scale per linear layer; through the two blocks of the tiny models the
logits moved by at most 1.3 % of their largest magnitude across every method here (Llama + LoRA the most). We allow
5 % of it, and the argmax must agree wherever the float margin is above twice that: int8 must not change a
confident prediction. Every comparison is fp32 against fp32 (``precision="fp32"``), so only int8 differs.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from adaptune.cli import app
from adaptune.inference import Predictor, merge_in_place
from adaptune.inference.multi import MultiPredictor
from adaptune.model import AdaptedModel
from adaptune.quantize import Int8Linear, QuantizeError, check_quantize, int8_layers, pack_int8, reduce_range
from decoders.lm_tools import make_tiny_causal_llama
from serving_kit import INTENTS, TAGS, assert_same, make_adapter, serving

TEXTS = [
    "where is my parcel?",
    "I want my money back",
    "hello there",
    "the film was great fun",
    "track order 1234 for me",
    "refund please, now",
    "good morning to you all",
    "when will it arrive at Paris",
]
METHODS: dict[str, dict[str, Any]] = {
    "lora": {"name": "lora", "r": 4, "roles": ["query", "value", "ffn_out"]},
    "bottleneck": {"name": "bottleneck", "reduction_factor": 4},
    "ia3": {"name": "ia3"},
    "bitfit": {"name": "bitfit"},
    "prompt": {"name": "prompt", "num_virtual_tokens": 4},
    "prefix": {"name": "prefix", "num_virtual_tokens": 4},
    "head": {"name": "head"},
}
#: (base fixture, method, task): every method on the tiny BERT, the decoder-capable ones on the tiny Llama.
CASES = [
    *[("tiny_bert", method, "seq_cls") for method in METHODS],
    ("tiny_bert", "lora", "token_cls"),
    *[("tiny_llama", method, "seq_cls") for method in ("lora", "bottleneck", "ia3", "prompt", "prefix", "head")],
]
Make = Callable[[str, str, str], Path]


@pytest.fixture(scope="module")
def make(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Make:
    """``make(base fixture, method, task)``: an adapter folder (built once) with its tensors moved off their init."""
    made: dict[tuple[str, str, str], Path] = {}
    root = tmp_path_factory.mktemp("int8")

    def build(base: str, method: str, task: str) -> Path:
        key = (base, method, task)
        if key not in made:
            labels = TAGS if task == "token_cls" else INTENTS
            pooling = "last" if base == "tiny_llama" else "mean"
            made[key] = make_adapter(
                root / "-".join(key),
                request.getfixturevalue(base),
                METHODS[method],
                task,
                labels,
                seed=5,
                pooling=pooling,
            )
        return made[key]

    return build


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def assert_close(want: torch.Tensor, got: torch.Tensor) -> None:
    """Logits ``(N, k)`` within 5 % of the float logits' largest magnitude; argmax equal where the margin is clear."""
    tol = 0.05 * float(want.abs().max())
    assert float((want - got).abs().max()) <= tol
    top2 = want.topk(2, dim=-1).values
    clear = (top2[..., 0] - top2[..., 1]) > 2 * tol
    assert bool((want.argmax(-1) == got.argmax(-1))[clear].all())


def base_linears(model: AdaptedModel) -> list[str]:
    """The float model's base ``nn.Linear`` layers: all but the adapter's own (whose weights the file stores)."""
    own = {id(p) for p in model.stored_parameters().values()}
    return [n for n, m in model.backbone.named_modules() if type(m) is nn.Linear and id(m.weight) not in own]


@pytest.mark.parametrize(("base", "method", "task"), CASES, ids=["-".join(c) for c in CASES])
def test_int8_predictions_match_float(make: Make, base: str, method: str, task: str) -> None:
    folder = make(base, method, task)
    before = digest(folder)
    full = Predictor.load(folder, precision="fp32")
    int8 = Predictor.load(folder, precision="fp32", quantize="int8")
    assert_close(torch.cat(full.logits(TEXTS)), torch.cat(int8.logits(TEXTS)))
    # every float linear layer of the base is int8 now (the adapter's own layers are added after, in float)
    assert int8_layers(int8.model.backbone) == base_linears(full.model) != []
    assert not int8_layers(int8.model.head)
    # the adapter's tensors and the head are float and exactly the file's; the folder is untouched
    state, wanted = int8.model.trainable_state(), full.model.trainable_state()
    assert state.keys() == wanted.keys()
    assert all(state[k].dtype == torch.float32 and torch.equal(state[k], wanted[k]) for k in state)
    assert digest(folder) == before


def test_adapter_modules_stay_float(make: Make) -> None:
    """LoRA's A/B and a bottleneck's down/up are ``nn.Linear`` under int8 hosts; they and the head stay float."""
    for method in ("lora", "bottleneck"):
        model = Predictor.load(make("tiny_bert", method, "seq_cls"), quantize="int8").model
        owned = model.adapter_parameters()
        assert owned and all(p.dtype == torch.float32 for p in owned.values())
        hosts = {name.rsplit(f".{method}.", 1)[0] for name in owned}
        assert hosts <= set(int8_layers(model.backbone))  # the adapted layers themselves are int8
        assert not any(isinstance(m, Int8Linear) for m in model.head.modules())


def test_full_range_activations_do_not_saturate() -> None:
    """The worst case for 8-bit activations without VNNI (u8 255 x s8 127 pairs overflow int16): with the activation
    bits :func:`reduce_range` picks for this CPU the product is still exact."""
    weight = torch.ones(16, 384)
    weight[1::2] *= -1
    out = torch.ops.quantized.linear_dynamic(torch.ones(4, 384), pack_int8(weight).params, reduce_range())
    assert torch.allclose(out, torch.ones(4, 1) @ weight.sum(1, keepdim=True).T)


def test_int8_under_bf16_autocast(make: Make) -> None:
    """``precision="bf16"`` autocasts the float parts; the int8 layers compute in float32 and hand on their input's
    dtype. bf16 rounding adds to int8's, so the margin is looser here (still far below a label's)."""
    folder = make("tiny_llama", "lora", "seq_cls")
    full = torch.stack(Predictor.load(folder, precision="fp32").logits(TEXTS))
    both = torch.stack(Predictor.load(folder, precision="bf16", quantize="int8").logits(TEXTS))
    assert both.dtype == torch.float32 and float((full - both).abs().max()) <= 0.1 * float(full.abs().max())


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_merged_then_quantised(make: Make, method: str) -> None:
    folder = make("tiny_bert", method, "seq_cls")
    merged = Predictor.load(folder, precision="fp32", merge=True)
    both = Predictor.load(folder, precision="fp32", merge=True, quantize="int8")
    assert_close(torch.stack(merged.logits(TEXTS)), torch.stack(both.logits(TEXTS)))
    assert int8_layers(both.model.backbone) == base_linears(merged.model)  # LoRA's A and B stay float


def test_refusals(make: Make, tiny_bert: Path, tiny_gpt2: Path, tmp_path: Path) -> None:
    dora = make_adapter(
        tmp_path / "dora", tiny_bert, {"name": "lora", "r": 2, "use_dora": True}, "seq_cls", INTENTS, seed=1
    )
    with pytest.raises(QuantizeError, match="DoRA"):
        Predictor.load(dora, quantize="int8")
    assert len(Predictor.load(dora, merge=True, quantize="int8").predict(TEXTS[:1])) == 1  # merged first: fine
    with pytest.raises(QuantizeError, match="int4"):
        Predictor.load(make("tiny_bert", "lora", "seq_cls"), quantize="int4")
    with pytest.raises(QuantizeError, match="CPU"):
        check_quantize("int8", "cuda")
    int8 = Predictor.load(make("tiny_bert", "ia3", "seq_cls"), quantize="int8")
    with pytest.raises(QuantizeError, match="merg"):
        merge_in_place(int8.model)  # the float weights are gone: merge before quantising
    int8.model.train()
    batch = int8.task.collate(int8.encode(int8.examples(TEXTS[:2])), int8.pad_id)
    with pytest.raises(QuantizeError, match="inference only"):
        int8.model(batch)
    gpt2 = make_adapter(tmp_path / "gpt2", tiny_gpt2, {"name": "lora", "r": 2}, "seq_cls", INTENTS, seed=1)
    with pytest.raises(QuantizeError, match="Conv1D"):
        Predictor.load(gpt2, quantize="int8")


def test_multi_predictor_quantises_the_base_once(make: Make, tiny_bert: Path, tmp_path: Path) -> None:
    """Adapters loaded later (lazily) attach to the int8 base: per-row ones to its layers, grouped ones to copies
    that share its packed weights (and BitFit gets private float biases); answers match the int8 Predictor."""
    folder = tmp_path / "adapters"
    for method in ("lora", "bottleneck", "ia3", "bitfit", "prompt"):
        shutil.copytree(make("tiny_bert", method, "seq_cls"), folder / method)
    multi = MultiPredictor(str(tiny_bert), folder, load_all=False, quantize="int8", precision="fp32")
    assert multi.quantized == int8_layers(multi.backbone.model) != []
    query = "encoder.layer.0.attention.self.query"
    for name in ("lora", "bottleneck", "ia3", "bitfit", "prompt"):
        got = multi.predict(name, TEXTS[:3])
        want = Predictor.load(folder / name, quantize="int8", precision="fp32").predict(TEXTS[:3])
        for g, w in zip(got, want, strict=True):
            assert_same(g, w, tol=0.02)
        entry = multi.get(name)
        if entry.model is not None:  # grouped: a private module tree over the same int8 weights
            mine = entry.model.backbone.get_submodule(query)
            assert isinstance(mine, Int8Linear) and mine.packed is multi.backbone.model.get_submodule(query).packed


def test_generation_keeps_the_lm_head_float(tmp_path: Path) -> None:
    """A causal LM's base layers are int8, its LM head (outside the base model) stays float; generation runs."""
    base = make_tiny_causal_llama(tmp_path / "llama")
    folder = make_adapter(tmp_path / "chat", base, {"name": "lora", "r": 4}, "causal_lm", [], seed=1, pooling="last")
    int8 = Predictor.load(folder, quantize="int8", precision="fp32")
    assert int8_layers(int8.model.backbone) and type(int8.model.lm_head) is nn.Linear
    (out,) = int8.generate(["hello"], max_new_tokens=3)
    assert 1 <= out.completion_tokens <= 3


def test_predict_and_eval_commands(make: Make, tmp_path: Path) -> None:
    folder = make("tiny_bert", "lora", "seq_cls")
    runner = CliRunner()
    result = runner.invoke(app, ["predict", str(folder), "-", "--quantize", "int8"], input="\n".join(TEXTS) + "\n")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    want = Predictor.load(folder, quantize="int8").predict(TEXTS)
    assert [line["label"] for line in lines] == [w["label"] for w in want]
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": INTENTS[i % 3]}) + "\n" for i, t in enumerate(TEXTS)))
    result = runner.invoke(app, ["eval", str(folder), str(data), "--quantize", "int8"])
    assert result.exit_code == 0 and "accuracy" in result.stdout.splitlines()[-1], result.output
    result = runner.invoke(app, ["predict", str(folder), "-", "--quantize", "int4"], input="hi\n")
    assert result.exit_code == 2 and "int4" in result.output


def test_serve_command_with_int8(make: Make, tiny_bert: Path, tmp_path: Path) -> None:
    folder = tmp_path / "adapters"
    for method in ("lora", "bottleneck"):
        shutil.copytree(make("tiny_bert", method, "seq_cls"), folder / method)
    with serving([str(tiny_bert)], folder, "--quantize", "int8", "--precision", "fp32") as url:
        for name in ("lora", "bottleneck"):
            body = {"adapter": name, "inputs": [TEXTS[0]]}
            got = httpx.post(f"{url}/v1/classify", json=body, timeout=60).json()["predictions"][0]
            want = Predictor.load(folder / name, quantize="int8", precision="fp32").predict([TEXTS[0]])[0]
            assert_same(got, want, tol=1e-3)
