"""The shared method x task matrix: every registered method on every task, on a tiny BERT and a tiny Llama.

Each case trains through the public API (``adaptune.train``) on the bundled bilingual data (48 intents or NER
sentences, 40 steps) and checks what every method promises: only the method's tensors and the head change (and
all of them train), the training loss on those examples goes down, save -> load gives bit-identical logits,
merged and unmerged outputs agree (mergeable methods), and the trainable parameter count equals peft's for the same
config (lora, ia3, prefix, prompt). A new method is covered by registering it: it runs with its defaults unless
:data:`SETTINGS` says otherwise, and architectures it declares unsupported (:attr:`Method.unsupported_model_types`)
must be refused with a ConfigError.

One training run per case, shared by the checks (module-scoped), on one torch thread: the whole matrix takes
about 35 s on 2 CPU cores.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch

from adaptune import Predictor
from adaptune.config import DataConfig, validate_config
from adaptune.errors import ConfigError
from adaptune.io import load_adapter
from adaptune.methods.base import Mergeable
from adaptune.registry import build_method, method_names
from method_checks import TEXTS, Run, assert_only_owned_changed, assert_round_trip, backbone, peft_model, train_tiny
from tiny import make_tiny_llama
from virtual_checks import attach_full, initial_state, make_left_padding

#: Method settings small enough for tiny models (hidden 32); a method not listed runs with its defaults.
SETTINGS: dict[str, dict[str, Any]] = {
    "bottleneck": {"reduction_factor": 4},
    "lora": {"r": 4, "alpha": 8},
    "prefix": {"num_virtual_tokens": 8, "prefix_hidden": 16},
    "prompt": {"num_virtual_tokens": 8},
    "stack": {
        "members": [
            {"name": "lang", "method": {"name": "bottleneck", "reduction_factor": 4}},
            {"name": "task", "method": {"name": "lora", "r": 4, "alpha": 8}},
        ]
    },
}
#: One learning rate for every method (the head shares it): 40 steps lower the loss by 20% or more (the check
#: asks for 10%).
LEARNING_RATE = 3e-2
STEPS, EXAMPLES = 40, 48
#: Tiny model -> (its fixture, model_type, pooling). Mean pooling on both, as the core tests do: a random model's
#: [CLS] or last token says little about the text, a mean of its tokens does (last-token pooling and left padding
#: are tested with prompt and prefix tuning). The Llama pads on the left, as real decoders do.
MODELS = {"bert": ("tiny_bert", "bert", "mean"), "llama": ("llama_left", "llama", "mean")}
TASK_DATA = {"seq_cls": ("intents", "train.jsonl"), "token_cls": ("ner", "train.conll")}


class Case(NamedTuple):
    """One cell of the matrix."""

    method: str
    model: str
    task: str

    def __str__(self) -> str:
        return f"{self.method}-{self.model}-{self.task}"


def method_fields(name: str) -> dict[str, Any]:
    """The method config of ``name`` in the matrix."""
    return {"name": name, **SETTINGS.get(name, {})}


def unsupported(case: Case) -> bool:
    """True when the method declares the case's architecture unsupported."""
    method = build_method(validate_config({"method": method_fields(case.method)}).method)
    return MODELS[case.model][1] in method.unsupported_model_types


ALL = [Case(m, model, task) for m in method_names() for model in MODELS for task in TASK_DATA]
CASES = [case for case in ALL if not unsupported(case)]
REFUSED = [case for case in ALL if unsupported(case) and case.task == "seq_cls"]


@dataclass
class Trained:
    """A finished run of one case, with the trainable state it started from and its loss before and after."""

    run: Run
    base_dir: Path
    initial: dict[str, torch.Tensor]
    loss_before: float
    loss_after: float


def _loss(run: Run, examples: list[Any]) -> float:
    """Mean loss of the run's model on ``examples`` (eval mode, no dropout)."""
    predictor = Predictor(run.model, load_adapter(run.result.adapter_dir).config)
    return predictor.evaluate_examples(examples)[0].headline["loss"]


def train_case(case: Case, base_dir: Path, data: Path, tmp: Path) -> Trained:
    """Train ``case`` through ``adaptune.train``; measure the loss on its training examples before and after."""
    folder, file = TASK_DATA[case.task]
    fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in method_fields(case.method).items()}
    run = train_tiny(
        tmp,
        base_dir,
        data,
        fields,
        f"task.name={case.task}",
        f"data.train={data / folder / file}",
        f"data.max_train_examples={EXAMPLES}",
        f"model.pooling={MODELS[case.model][2]}",
        f"training.max_steps={STEPS}",
        f"training.learning_rate={LEARNING_RATE}",
    )
    task = run.model.task
    examples = task.read(str(data / folder / file), DataConfig(), split="train")[:EXAMPLES]
    initial = initial_state(run, base_dir)
    trained = {k: v.clone() for k, v in run.model.trainable_state().items()}
    after = _loss(run, examples)
    run.model.load_trainable_state(initial)
    before = _loss(run, examples)
    run.model.load_trainable_state(trained)
    return Trained(run, base_dir, initial, before, after)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run several times faster on one thread, and far faster when other work shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def llama_left(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A left-padding tiny Llama whose residual stream has a trained model's size (see ``make_tiny_llama``)."""
    return make_left_padding(tmp_path_factory.mktemp("matrix_llama"), partial(make_tiny_llama, embed_std=1.0))


@pytest.fixture(scope="module")
def trained(
    tiny_bert: Path, llama_left: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[Case], Trained]:
    """Trains each case once, on first use, and hands out the same run to every check."""
    folders = {"tiny_bert": tiny_bert, "llama_left": llama_left}
    cache: dict[Case, Trained] = {}

    def get(case: Case) -> Trained:
        if case not in cache:
            base_dir = folders[MODELS[case.model][0]]
            cache[case] = train_case(case, base_dir, bundled_data, tmp_path_factory.mktemp(str(case)))
        return cache[case]

    return get


@pytest.mark.parametrize("case", CASES, ids=str)
def test_only_the_method_and_the_head_change(case: Case, trained: Callable[[Case], Trained]) -> None:
    done = trained(case)
    owned = assert_only_owned_changed(done.run, done.base_dir)
    after = done.run.model.trainable_state()
    assert after.keys() == done.initial.keys()
    trainable = {f"adapter.{name}" for name in owned} | {k for k in after if k.startswith("head.")}
    for key, tensor in after.items():
        if key in trainable:
            assert not torch.equal(tensor, done.initial[key]), f"{key} did not train"
        else:
            assert torch.equal(tensor, done.initial[key]), f"{key} is frozen, yet it changed"
    head = sum(p.numel() for p in done.run.model.head.parameters())
    assert done.run.result.trainable_params == sum(p.numel() for p in owned.values()) + head


@pytest.mark.parametrize("case", CASES, ids=str)
def test_loss_goes_down(case: Case, trained: Callable[[Case], Trained]) -> None:
    done = trained(case)
    assert done.loss_after < 0.9 * done.loss_before, (done.loss_before, done.loss_after)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_save_load_round_trip_is_exact(case: Case, trained: Callable[[Case], Trained]) -> None:
    assert_round_trip(trained(case).run)


def mergeable(case: Case) -> bool:
    """True when the case's method can be folded into the base weights."""
    return isinstance(build_method(validate_config({"method": method_fields(case.method)}).method), Mergeable)


@pytest.mark.parametrize("case", [c for c in CASES if mergeable(c)], ids=str)
def test_merged_equals_unmerged(case: Case, trained: Callable[[Case], Trained]) -> None:
    predictor = Predictor.load(trained(case).run.result.adapter_dir)
    method, backbone_model = predictor.model.method, predictor.model.backbone
    assert isinstance(method, Mergeable)
    unmerged = predictor.logits(TEXTS)
    method.merge(backbone_model)
    merged = predictor.logits(TEXTS)
    method.unmerge(backbone_model)
    again = predictor.logits(TEXTS)
    for a, b, c in zip(unmerged, merged, again, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=0)
        torch.testing.assert_close(c, a, atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", REFUSED, ids=str)
def test_declared_unsupported_architectures_are_refused(case: Case, request: pytest.FixtureRequest) -> None:
    fixture, model_type, _ = MODELS[case.model]
    with pytest.raises(ConfigError, match=model_type):
        attach_full(backbone(request.getfixturevalue(fixture)), **method_fields(case.method))


def _hosts(names: list[str], marker: str) -> list[str]:
    """Full names of the modules that carry an injected module: ``<host>.<marker>.<param>`` -> ``<host>``."""
    return sorted({name.split(marker)[0] for name in names if marker in name})


def peft_config(config: Any, owned: list[str]) -> Any:
    """peft's config for our method config; target modules by full name, as our run adapted them."""
    peft = pytest.importorskip("peft")
    if config.name == "lora":
        targets = _hosts(owned, ".lora.")
        return peft.LoraConfig(r=config.r, lora_alpha=config.alpha, target_modules=targets, use_dora=config.use_dora)
    if config.name == "ia3":
        feedforward = _hosts(owned, ".ia3_in.")
        return peft.IA3Config(target_modules=_hosts(owned, ".ia3.") + feedforward, feedforward_modules=feedforward)
    if config.name == "prefix":
        return peft.PrefixTuningConfig(
            task_type="FEATURE_EXTRACTION",
            num_virtual_tokens=config.num_virtual_tokens,
            prefix_projection=config.reparameterize,
            encoder_hidden_size=config.prefix_hidden,
        )
    assert config.name == "prompt"
    return peft.PromptTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=config.num_virtual_tokens)


PEFT_CASES = [c for c in CASES if c.method in ("lora", "ia3", "prefix", "prompt") and c.task == "seq_cls"]


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("case", PEFT_CASES, ids=str)
def test_trainable_parameters_equal_peft(case: Case, trained: Callable[[Case], Trained]) -> None:
    done = trained(case)
    owned = done.run.model.adapter_parameters()
    reference = peft_model(done.base_dir, peft_config(done.run.model.method.config, list(owned)))
    assert sum(p.numel() for p in owned.values()) == reference.get_nb_trainable_parameters()[0]
