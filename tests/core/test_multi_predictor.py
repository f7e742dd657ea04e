"""The core multi-adapter predictor, without HTTP: per-row and grouped adapters mixed in one run answer exactly as
each adapter's own Predictor does; routing by task kind; refusals as the core's exception types."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adaptune.generation import GenerationConfig, generate
from adaptune.inference import Predictor
from adaptune.inference.errors import AdapterNotFound, AdapterUnloaded, LimitExceeded, PredictorError, WrongTask
from adaptune.inference.jobs import GenerationJob
from adaptune.inference.multi import MultiPredictor
from adaptune.methods.base import PerRowBatched
from decoders.lm_tools import make_tiny_causal_llama
from serving_kit import INTENTS, TAGS, assert_same, make_adapter
from tiny import make_tiny_gpt2, make_tiny_llama
from virtual_checks import make_left_padding

TEXTS = ["Bob ordered a Kindle in Paris", "where is my order A1024-77?", "hello", "refund please", "ok"]

#: name -> (method, task, labels, how the predictor batches it)
ADAPTERS = {
    "lora": ({"name": "lora", "r": 4, "roles": ["query", "value"]}, "seq_cls", INTENTS, "per-row"),
    "bottleneck": ({"name": "bottleneck", "reduction_factor": 4}, "seq_cls", INTENTS, "per-row"),
    "head": ({"name": "head"}, "seq_cls", INTENTS, "per-row"),
    "ner": ({"name": "lora", "r": 2, "roles": ["ffn_in", "ffn_out"]}, "token_cls", TAGS, "per-row"),
    "dora": ({"name": "lora", "r": 2, "use_dora": True}, "seq_cls", INTENTS, "grouped"),
    "ia3": ({"name": "ia3"}, "seq_cls", INTENTS, "grouped"),
    "prompt": ({"name": "prompt", "num_virtual_tokens": 3}, "seq_cls", INTENTS, "grouped"),
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    root = tmp_path_factory.mktemp("multi")
    for seed, (name, (method, task, labels, _)) in enumerate(ADAPTERS.items()):
        make_adapter(root / name, tiny_bert, method, task, labels, seed=seed)
    return root


@pytest.fixture(scope="module")
def predictor(folder: Path, tiny_bert: Path) -> MultiPredictor:
    return MultiPredictor(str(tiny_bert), folder, max_input_tokens=40)


def test_batching_follows_the_methods_capabilities(predictor: MultiPredictor) -> None:
    batching = {a["name"]: a["batching"] for a in predictor.describe()["adapters"]}
    assert batching == {name: spec[3] for name, spec in ADAPTERS.items()}
    assert predictor.describe()["refused"] == []
    for name in ["lora", "bottleneck", "head"]:
        assert predictor.get(name).kind == "classify"
    dora = predictor.get("dora").model
    assert dora is not None and isinstance(dora.method, PerRowBatched)  # LoRA has a per-row form, DoRA has not
    assert dora.method.per_row_parts(dora.backbone) is None


def test_one_mixed_run_equals_each_predictor(predictor: MultiPredictor, folder: Path, tiny_bert: Path) -> None:
    rows = [row for name in ADAPTERS for row in predictor.prepare(name, TEXTS)]
    order = list(range(len(rows)))
    order = order[1::3] + order[::3] + order[2::3]  # interleave per-row and grouped adapters
    answers = dict(zip(order, predictor.run([rows[i] for i in order]), strict=True))
    for k, name in enumerate(ADAPTERS):
        want = Predictor.load(folder / name, base=str(tiny_bert)).predict(TEXTS)
        for j, expected in enumerate(want):
            got = answers[k * len(TEXTS) + j]
            assert isinstance(got, dict), got
            assert_same(got, expected)


def test_per_row_adapters_share_one_forward(predictor: MultiPredictor) -> None:
    calls: list[int] = []
    handle = predictor.backbone.model.register_forward_hook(lambda _m, _a, _o: calls.append(1))
    try:
        predictor.run([r for name in ["lora", "bottleneck", "head", "ner"] for r in predictor.prepare(name, TEXTS)])
    finally:
        handle.remove()
    assert calls == [1]


def test_routing_by_kind_and_refusals(predictor: MultiPredictor) -> None:
    with pytest.raises(WrongTask):
        predictor.prepare("ner", ["a text"], "classify")
    with pytest.raises(WrongTask):
        predictor.prepare("lora", ["a text"], "tag")
    assert predictor.prepare("ner", ["a text"], "tag")
    with pytest.raises(WrongTask):
        predictor.stream("lora", "hi", GenerationConfig())  # a classifier does not generate
    with pytest.raises(LimitExceeded) as err:
        predictor.prepare("lora", ["word " * 60])
    assert err.value.limit == "max_input_tokens" and err.value.kind == "limit_exceeded"
    with pytest.raises(AdapterNotFound):
        predictor.prepare("nope", ["hi"])
    with pytest.raises(PredictorError) as refused:
        predictor.prepare("../lora", ["hi"])
    assert refused.value.kind == "invalid_adapter_name"


def test_queued_rows_of_an_unloaded_adapter(folder: Path, tiny_bert: Path) -> None:
    predictor = MultiPredictor(str(tiny_bert), folder)
    queued = predictor.prepare("bottleneck", TEXTS[:2]) + predictor.prepare("ia3", TEXTS[:1])
    predictor.unload("bottleneck")
    results = predictor.run(queued)
    assert [type(r) for r in results[:2]] == [AdapterUnloaded, AdapterUnloaded]
    assert isinstance(results[2], dict)
    predictor.load("bottleneck")
    assert predictor.get("bottleneck").per_row


def test_merged_lora_has_no_per_row_form(predictor: MultiPredictor, folder: Path, tiny_bert: Path) -> None:
    model = Predictor.load(folder / "lora", base=str(tiny_bert), merge=True).model
    assert model.method.per_row_parts(model.backbone) is None  # type: ignore[attr-defined]


def test_generation_adapters_run_on_their_own_model(tmp_path: Path) -> None:
    base = make_tiny_causal_llama(tmp_path / "llama")
    folder = tmp_path / "adapters"
    make_adapter(folder / "chat", base, {"name": "lora", "r": 4}, "causal_lm", [], seed=1, pooling="last")
    predictor = MultiPredictor(str(base), folder, max_input_tokens=30)
    assert predictor.describe()["adapters"][0]["batching"] == "grouped"  # generation: per adapter
    with pytest.raises(WrongTask):
        predictor.prepare("chat", ["hi"])
    config = GenerationConfig(max_new_tokens=3)
    jobs = [GenerationJob("chat", ["hello there"], config, True), GenerationJob("chat", ["word " * 40], config, True)]
    first, second = predictor.generate_jobs(jobs, max_prompts=4)
    alone = Predictor.load(folder / "chat", base=str(base)).model
    assert first == generate(alone, ["hello there"], config)
    assert isinstance(second, LimitExceeded) and second.limit == "max_input_tokens"
    assert "".join(predictor.stream("chat", "hello there", config)) == generate(alone, ["hello there"], config)[0].text
    assert torch.is_grad_enabled()


def test_per_row_rows_on_a_left_padded_decoder_equal_the_predictor(tmp_path: Path) -> None:
    """Decoders pad on the left; the shared pass numbers positions from the mask as ``AdaptedModel.forward``
    does, so absolute positions (GPT-2) and rotary ones (Llama) give each row what it gets alone."""
    texts = ["a short one", "this sentence is quite a bit longer than the first one", "mid length"]
    for make in (make_tiny_gpt2, make_tiny_llama):
        base = make_left_padding(tmp_path / make.__name__, make)
        root = tmp_path / f"{make.__name__}_adapters"
        make_adapter(root / "lora", base, {"name": "lora", "r": 4}, "seq_cls", INTENTS, seed=3, pooling="last")
        multi = MultiPredictor(str(base), root)
        assert multi.describe()["adapters"][0]["batching"] == "per-row"
        want = Predictor.load(root / "lora", base=str(base)).predict(texts)
        for got, expected in zip(multi.predict("lora", texts), want, strict=True):
            assert_same(got, expected)


def test_packed_lora_batches_many_adapters_as_one_matmul_pair() -> None:
    """A padding-free batch of many adapters at one LoRA host: the batched path (all token ranges side by side in
    one pair of bmm) adds exactly what each adapter's own two matmuls on its range add, and padding adds nothing."""
    from adaptune.methods.lora import MultiLoRA
    from adaptune.padding_free import Packing

    torch.manual_seed(0)
    d_in, d_out, ranks = 6, 5, [2, 3, 1, 2]
    kernel = MultiLoRA(d_in, d_out)
    weights = {i + 1: (torch.randn(d_in, r), torch.randn(r, d_out)) for i, r in enumerate(ranks)}
    for index, pair in weights.items():
        kernel.add_weights(index, pair)
    kernel.rebuild()
    rows = torch.tensor([1, 0, 3, 2, 4, 1, 2])  # adapter 0 (no LoRA) in the middle; 1 and 2 twice, apart
    lengths = [3, 2, 4, 1, 2, 5, 1]
    starts = [0, *torch.tensor(lengths).cumsum(0).tolist()]
    packing = Packing(torch.arange(starts[-1]), (len(rows), max(lengths)), starts, torch.ones(1))
    kernel.bind(rows, packing)
    x, out = torch.randn(1, starts[-1], d_in), torch.randn(1, starts[-1], d_out)
    assert len(kernel.slots.segments or []) > MultiLoRA.LOOP_SEGMENTS
    with torch.no_grad():
        got = kernel.apply(x, out.clone())  # in place, as in the server's no-grad forward
    want = out[0].clone()
    for row, adapter in enumerate(rows.tolist()):
        if adapter:
            a, b = weights[adapter]
            want[starts[row] : starts[row + 1]] += x[0, starts[row] : starts[row + 1]] @ a @ b
    torch.testing.assert_close(got[0], want)
    kernel.clear()


def test_lora_slots_are_reused_and_the_stack_grows_by_doubling() -> None:
    """Loading writes one slot, unloading zeroes it for the next load; the stack doubles when full and re-pads for
    a larger rank; every member's update stays its own throughout."""
    from adaptune.methods.lora import MultiLoRA

    torch.manual_seed(1)
    kernel = MultiLoRA(4, 3)
    weights = {i: (torch.randn(4, 2), torch.randn(2, 3)) for i in range(1, 6)}

    def check() -> None:
        for index in kernel.members:
            slot = kernel.slot_of[index]
            assert int(kernel.slots.slot_of[index]) == slot
            a, b = weights[index]
            torch.testing.assert_close(kernel.a_t[slot, :, : a.shape[1]] @ kernel.b_t[slot, : a.shape[1]], a @ b)
        assert len(set(kernel.slot_of.values())) == len(kernel.slot_of)

    for index in (1, 2, 3):
        kernel.add_weights(index, weights[index])
        kernel.rebuild()
    assert kernel.a_t.shape[0] - 1 == 4  # capacity 2, then doubled to 4 by the third
    check()
    slot = kernel.slot_of[2]
    assert kernel.remove(2)
    kernel.rebuild()
    assert not kernel.a_t[slot].any() and 2 not in kernel.slot_of
    kernel.add_weights(4, weights[4])
    kernel.rebuild()
    assert kernel.slot_of[4] == slot, "a freed slot is reused"
    weights[5] = (torch.randn(4, 6), torch.randn(6, 3))  # a larger rank: the stack re-pads
    kernel.add_weights(5, weights[5])
    kernel.rebuild()
    assert kernel.a_t.shape[2] == 6
    check()


def test_bottleneck_slots_are_reused_and_each_slot_serves_its_own_adapter() -> None:
    """MultiBottleneck keeps the members' weights in its stack only: unloading one zeroes its slot to the identity
    and the next load reuses it; a wider bottleneck re-pads the stack; every row still gets its own adapter's output
    (a non-residual adapter's too) and rows of slot 0 pass unchanged."""
    from adaptune.methods.bottleneck import BottleneckAdapter, MultiBottleneck

    torch.manual_seed(2)
    d = 6

    def adapter(k: int, act: str = "relu", residual: bool = True) -> BottleneckAdapter:
        module = BottleneckAdapter(d, k, act, residual=residual)
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.5)
        return module.eval()

    adapters = {1: adapter(2), 2: adapter(3, "gelu"), 3: adapter(2, "tanh", residual=False)}
    kernel = MultiBottleneck(d)
    for index, module in adapters.items():
        kernel.add(index, module)
        kernel.rebuild()
    assert not any(isinstance(v, torch.nn.Module) for v in kernel.members.values()), "no module is kept"

    def check(indices: list[int]) -> None:
        h = torch.randn(len(indices), 4, d)
        kernel.bind(torch.tensor(indices), None)
        with torch.no_grad():
            got = kernel.apply(h)
            for row, index in enumerate(indices):
                want = adapters[index](h[row : row + 1]) if index else h[row : row + 1]
                torch.testing.assert_close(got[row : row + 1], want)
        kernel.clear()

    check([1, 0, 2, 3, 1])
    slot = kernel.slot_of[2]
    assert kernel.remove(2)
    kernel.rebuild()
    assert not kernel.down_t[slot].any() and float(kernel.keep[slot]) == 1.0
    adapters[4] = adapter(5, "swish")  # wider than any before: the stack re-pads
    kernel.add(4, adapters[4])
    kernel.rebuild()
    assert kernel.slot_of[4] == slot and kernel.down_t.shape[2] == 5
    check([4, 3, 0, 1, 4])
