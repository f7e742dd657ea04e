"""peft interop for causal_lm (instruction tuning of decoders) on tiny Llama and GPT-2 LMs: our export loaded with
``PeftModel.from_pretrained(AutoModelForCausalLM...)`` computes our LM logits and greedy generations, a peft
CAUSAL_LM adapter imported by us computes peft's, and what cannot be mapped fails clearly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel
from typer.testing import CliRunner

from adaptune import Predictor
from adaptune.backbone import fingerprint, load_backbone
from adaptune.cli import app
from adaptune.config import ModelConfig, validate_config
from adaptune.errors import AdapterFileError, ConfigError
from adaptune.generation import GenerationConfig, generate
from adaptune.inference import build_model
from adaptune.io import load_adapter, save_adapter
from adaptune.model import AdaptedModel
from adaptune.peft_interop import export_peft, import_peft
from adaptune.peft_interop.importer import describe_adapter
from adaptune.positions import positions_from_mask
from decoders.lm_tools import CHATML, make_tiny_causal_llama, randomise_adapter
from method_checks import randomise
from tiny import minilm_dir

peft = pytest.importorskip("peft", reason="peft is a test dependency (test extra)")
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning")]

TEXTS = ["hello there , how are you", "tell me about the weather today in the city", "one"]
STEPS = 8
METHODS = {
    "lora": {"name": "lora", "r": 4, "alpha": 8, "roles": ["query", "value", "ffn_gate"]},
    "dora": {"name": "lora", "r": 4, "use_dora": True, "use_rslora": True},
    "ia3": {"name": "ia3"},
    "prefix": {"name": "prefix", "num_virtual_tokens": 3, "prefix_hidden": 16},
    "prompt": {"name": "prompt", "num_virtual_tokens": 3},
}
#: a template other than the tokenizer's ChatML (an adapter trained with task.chat_template set)
PLAIN = (
    "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '<|im_end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random LlamaForCausalLM with a ChatML tokenizer (``<|im_end|>`` is the EOS)."""
    return make_tiny_causal_llama(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="module")
def tiny_gpt2_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random GPT2LMHeadModel (``Conv1D`` weights, LM head tied to the word embeddings, learned positions)
    with the same ChatML tokenizer."""
    folder = tmp_path_factory.mktemp("tiny_gpt2_lm")
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = CHATML
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=128)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        model.transformer.wte.weight.mul_(1.0 / model.transformer.wte.weight.std())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_lm_adapter(folder: Path, base: Path, method: dict[str, Any], **task: Any) -> Path:
    """A causal_lm adapter folder with every method tensor moved off its init (as training would)."""
    bb = load_backbone(ModelConfig(name_or_path=str(base)))
    base_fp, base_params = fingerprint(bb.model), sum(p.numel() for p in bb.model.parameters())
    run = validate_config({"method": method, "task": {"name": "causal_lm", **task}})
    torch.manual_seed(0)
    model = build_model(bb, run.method, run.task, []).eval()
    randomise_adapter(model, scale=2.0)
    description = describe_adapter(
        model, name_or_path=str(base), base_fingerprint=base_fp, base_params=base_params, max_length=64
    )
    return save_adapter(folder, model.trainable_state(), description)


def load_with(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "adaptune.json").read_text())["load_with"]  # type: ignore[no-any-return]


def load_in_peft(folder: Path, base: Path) -> nn.Module:
    """``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder)``, as ``load_with`` says."""
    how = load_with(folder)
    assert (how["auto_class"], how["peft_class"]) == ("AutoModelForCausalLM", "PeftModel")
    hf = getattr(transformers, how["auto_class"]).from_pretrained(base)
    model = peft.PeftModel.from_pretrained(hf, folder).eval()
    assert isinstance(model, peft.PeftModelForCausalLM)
    return model  # type: ignore[no-any-return]


def batch(tokenizer: Any, texts: list[str], side: str) -> dict[str, torch.Tensor]:
    """``texts`` tokenized and padded on ``side``."""
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span], mask[i, span] = torch.tensor(row), 1
    return {"input_ids": ids, "attention_mask": mask}


def our_lm_logits(model: AdaptedModel, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Full-vocabulary logits ``(B, T, V)`` of the adapted model: every position's state (a labelled batch whose
    labels score all positions), through the frozen LM head."""
    labels = torch.zeros_like(inputs["input_ids"])
    with torch.no_grad():
        states = model({**inputs, "labels": labels})
        assert model.lm_head is not None
        return model.lm_head(states).view(*labels.shape, -1)  # type: ignore[no-any-return]


def peft_lm_logits(model: nn.Module, inputs: dict[str, torch.Tensor], n_virtual: int = 0, **extra: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, **extra).logits[:, n_virtual:]  # type: ignore[no-any-return]


def assert_same_logits(ours: torch.Tensor, theirs: torch.Tensor, mask: torch.Tensor) -> None:
    """Equal at the real tokens (padding positions are never read)."""
    keep = mask.bool()
    torch.testing.assert_close(ours[keep], theirs[keep], atol=1e-5, rtol=0)


def peft_greedy(model: nn.Module, prompts: list[list[int]], eos: list[int]) -> tuple[list[list[int]], Any]:
    """peft's greedy continuation of each prompt, one forward pass of peft's model per step over the whole
    sequence so far (no cache): per row the new tokens up to and including a stop token, and the logits ``(V,)``
    of every step as ``logits[step][row]``.

    peft's ``generate`` is not the reference: with transformers 5.24, peft 0.21.2's ``generate`` for prompt and
    prefix tuning picks other tokens than its own forward pass does (it hands the virtual tokens' cache over
    under the old ``past_key_values`` name)."""
    rows: list[list[int]] = []
    per_row: list[list[torch.Tensor]] = []
    for prompt in prompts:
        new: list[int] = []
        per_row.append([])
        for _ in range(STEPS):
            ids = torch.tensor([prompt + new])
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1]
            per_row[-1].append(logits)
            new.append(int(logits.argmax()))
            if new[-1] in eos:
                break
        rows.append(new)
    steps = [[r[step] if step < len(r) else None for r in per_row] for step in range(STEPS)]
    return rows, steps


def chat_prompt(tokenizer: Any, template: str, text: str) -> list[int]:
    """What a peft user feeds ``generate``: the user message rendered with the export's chat template."""
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], chat_template=template, add_generation_prompt=True, tokenize=False
    )
    return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])


def assert_same_generation(
    ours: AdaptedModel, theirs: nn.Module, texts: list[str], template: str, eos: list[int]
) -> None:
    """peft's greedy tokens for the user messages ``texts`` rendered with ``template``, stopping at ``eos``, are
    adaptune's generation, and each step's logits are our model's on the sequence so far."""
    tokenizer = ours.info.tokenizer
    prompts = [chat_prompt(tokenizer, template, text) for text in texts]
    tokens, step_logits = peft_greedy(theirs, prompts, eos)
    generated = generate(ours, texts, GenerationConfig(max_new_tokens=STEPS))
    for row, (prompt, new, gen) in enumerate(zip(prompts, tokens, generated, strict=True)):
        assert gen.prompt_tokens == len(prompt) and gen.completion_tokens == len(new)
        assert gen.text == tokenizer.decode(new, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        for step in range(len(new)):
            ids = torch.tensor([prompt + new[:step]])
            with torch.no_grad():
                logits = ours({"input_ids": ids, "attention_mask": torch.ones_like(ids)})[0]
            torch.testing.assert_close(logits, step_logits[step][row], atol=1e-4, rtol=0)


def assert_peft_parity(ours: AdaptedModel, theirs: nn.Module, template: str, eos: list[int]) -> None:
    """Our LM logits are peft's over a right-padded batch and, given position ids counted from the mask, a
    left-padded one; greedy generation gives the same tokens. Prompt tuning: peft drops position ids and numbers a
    left-padded row's text after the padding, so no left padding (and one prompt at a time)."""
    method, tokenizer = ours.method.config, ours.info.tokenizer
    n_virtual = getattr(method, "num_virtual_tokens", 0) if method.name == "prompt" else 0
    right = batch(tokenizer, TEXTS, "right")
    assert_same_logits(our_lm_logits(ours, right), peft_lm_logits(theirs, right, n_virtual), right["attention_mask"])
    if method.name == "prompt":
        for text in TEXTS:
            assert_same_generation(ours, theirs, [text], template, eos)
        return
    left = batch(tokenizer, TEXTS, "left")
    theirs_left = peft_lm_logits(theirs, left, position_ids=positions_from_mask(left["attention_mask"]))
    assert_same_logits(our_lm_logits(ours, left), theirs_left, left["attention_mask"])
    assert_same_generation(ours, theirs, TEXTS, template, eos)


# -- export: peft reproduces our logits and generations ---------------------------------------------------------------
@pytest.mark.parametrize("method", ["lora", "dora", "ia3", "prefix", "prompt"])
def test_peft_loads_our_causal_export_exactly(method: str, tiny_lm: Path, tmp_path: Path) -> None:
    adapter = make_lm_adapter(tmp_path / "ours", tiny_lm, METHODS[method])
    result = export_peft(adapter, tmp_path / "peft")
    assert result.exact == (method not in ("prefix", "prompt")), result.notes  # positions: see the notes
    theirs, ours = load_in_peft(result.path, tiny_lm), Predictor.load(adapter).model
    how = load_with(result.path)
    assert how["pad_token_id"] == ours.info.tokenizer.pad_token_id
    assert_peft_parity(ours, theirs, how["chat_template"], how["eos_token_id"])


def test_causal_export_files_use_peft_names(tiny_lm: Path, tmp_path: Path) -> None:
    adapter = make_lm_adapter(tmp_path / "ours", tiny_lm, METHODS["dora"])
    result = export_peft(adapter, tmp_path / "peft")
    config = json.loads((result.path / "adapter_config.json").read_text())
    assert (config["peft_type"], config["task_type"], config["modules_to_save"]) == ("LORA", "CAUSAL_LM", None)
    names = set(load_file(result.path / "adapter_model.safetensors"))
    layer = "base_model.model.model.layers.0."  # LlamaForCausalLM keeps the base model under "model."
    assert f"{layer}self_attn.q_proj.lora_A.weight" in names
    assert f"{layer}self_attn.v_proj.lora_magnitude_vector" in names
    assert not any("lm_head" in name or "embed_tokens" in name for name in names)
    sidecar = json.loads((result.path / "adaptune.json").read_text())
    how, eos = sidecar["load_with"], AutoTokenizer.from_pretrained(tiny_lm).eos_token_id
    assert how["python"] == "PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out)"
    assert (how["chat_template"], how["eos_token_id"]) == (CHATML, [eos]) and "num_labels" not in how
    assert sidecar["head"] is None and sidecar["exact"] and sidecar["notes"] == []
    assert peft.PeftConfig.from_pretrained(result.path).task_type == "CAUSAL_LM"


@pytest.mark.parametrize("method", ["lora", "dora", "prefix"])
def test_gpt2_causal_export_is_exact(method: str, tiny_gpt2_lm: Path, tmp_path: Path) -> None:
    """GPT2LMHeadModel: base model under ``transformer.``, ``Conv1D`` (fan_in_fan_out), learned positions, a tied
    LM head."""
    spec = {**METHODS[method], "roles": None} if method == "lora" else METHODS[method]
    adapter = make_lm_adapter(tmp_path / "ours", tiny_gpt2_lm, spec)
    result = export_peft(adapter, tmp_path / "peft")
    config = json.loads((result.path / "adapter_config.json").read_text())
    assert method == "prefix" or config["fan_in_fan_out"]
    names = set(load_file(result.path / "adapter_model.safetensors"))
    assert names == {"prompt_embeddings"} or all(k.startswith("base_model.model.transformer.h.") for k in names)
    theirs, ours = load_in_peft(result.path, tiny_gpt2_lm), Predictor.load(adapter).model
    how = load_with(result.path)
    assert_peft_parity(ours, theirs, how["chat_template"], how["eos_token_id"])


# -- import: our Predictor reproduces peft's logits -------------------------------------------------------------------
def peft_lm_folder(folder: Path, base: Path, config: Any) -> nn.Module:
    """A peft CAUSAL_LM adapter with every trainable tensor moved off its init, saved by peft itself."""
    hf = transformers.AutoModelForCausalLM.from_pretrained(base)
    model = peft.get_peft_model(hf, config)
    randomise({name: p for name, p in model.named_parameters() if p.requires_grad}, std=1.0, seed=1)
    model.save_pretrained(folder)
    return model.eval()  # type: ignore[no-any-return]


PEFT_CONFIGS = {
    "lora": lambda: peft.LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["q_proj", "v_proj", "down_proj"]),
    "dora": lambda: peft.LoraConfig(task_type="CAUSAL_LM", r=2, use_dora=True, target_modules=["k_proj", "up_proj"]),
    "ia3": lambda: peft.IA3Config(task_type="CAUSAL_LM"),  # Llama: k_proj, v_proj and down_proj's input
    "prefix": lambda: peft.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=8
    ),
    "prompt": lambda: peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3),
}


@pytest.mark.parametrize("kind", list(PEFT_CONFIGS))
def test_we_reproduce_a_peft_causal_adapter(kind: str, tiny_lm: Path, tmp_path: Path) -> None:
    theirs = peft_lm_folder(tmp_path / "peft", tiny_lm, PEFT_CONFIGS[kind]())
    result = import_peft(tmp_path / "peft", tmp_path / "ours")
    assert result.exact == (kind not in ("prefix", "prompt")), result.notes
    predictor = Predictor.load(result.path)
    description = predictor.description
    assert (description["task"]["name"], description["task"]["chat_template"], predictor.labels) == (
        "causal_lm",
        None,
        [],
    )
    assert description["imported_from"]["peft_type"] == theirs.active_peft_config.peft_type
    tokenizer = predictor.tokenizer
    assert_peft_parity(predictor.model, theirs, tokenizer.chat_template, [tokenizer.eos_token_id])
    (answer,) = predictor.predict([TEXTS[0]])  # generates with the task's settings (128 new tokens at most)
    assert answer["completion_tokens"] >= 1
    assert answer["text"] == predictor.generate([TEXTS[0]], max_new_tokens=128)[0].text


def test_import_takes_the_chat_template_saved_beside_the_adapter(tiny_lm: Path, tmp_path: Path) -> None:
    """LLaMA-Factory and many peft scripts save the tokenizer they trained with next to the adapter: its template
    renders our prompts; the base's own template is not copied."""
    peft_lm_folder(tmp_path / "peft", tiny_lm, PEFT_CONFIGS["lora"]())
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    tokenizer.save_pretrained(tmp_path / "peft")  # the base's template
    assert load_adapter(import_peft(tmp_path / "peft", tmp_path / "a").path).config["task"]["chat_template"] is None
    tokenizer.chat_template = PLAIN
    tokenizer.save_pretrained(tmp_path / "peft")
    predictor = Predictor.load(import_peft(tmp_path / "peft", tmp_path / "b").path)
    assert predictor.description["task"]["chat_template"] == PLAIN
    expected = tokenizer("user: hi<|im_end|>assistant: ", add_special_tokens=False)["input_ids"]
    assert predictor.generate(["hi"], max_new_tokens=1)[0].prompt_tokens == len(expected)


@pytest.mark.parametrize("method", ["lora", "ia3", "prefix", "prompt"])
def test_causal_export_then_import_gives_our_logits(method: str, tiny_lm: Path, tmp_path: Path) -> None:
    adapter = make_lm_adapter(tmp_path / "ours", tiny_lm, METHODS[method], chat_template=PLAIN)
    result = export_peft(adapter, tmp_path / "peft")
    assert load_with(result.path)["chat_template"] == PLAIN
    back = import_peft(tmp_path / "peft", tmp_path / "back")
    assert back.notes == result.notes
    before, after = Predictor.load(adapter), Predictor.load(back.path)
    assert after.description["task"] == before.description["task"]
    inputs = batch(before.tokenizer, TEXTS, "left")
    assert_same_logits(
        our_lm_logits(before.model, inputs), our_lm_logits(after.model, inputs), inputs["attention_mask"]
    )
    assert before.generate(TEXTS, max_new_tokens=STEPS) == after.generate(TEXTS, max_new_tokens=STEPS)


def test_a_peft_lora_without_task_type_imports_as_causal_lm_when_told(tiny_lm: Path, tmp_path: Path) -> None:
    """``get_peft_model`` without a task_type saves ``task_type: null``: the caller names the task."""
    theirs = peft_lm_folder(tmp_path / "peft", tiny_lm, peft.LoraConfig(r=2, target_modules=["q_proj", "o_proj"]))
    with pytest.raises(ConfigError, match="'causal_lm'"):
        import_peft(tmp_path / "peft", tmp_path / "a")
    predictor = Predictor.load(import_peft(tmp_path / "peft", tmp_path / "b", task="causal_lm").path)
    inputs = batch(predictor.tokenizer, TEXTS, "right")
    theirs_logits = peft_lm_logits(theirs, inputs)
    assert_same_logits(our_lm_logits(predictor.model, inputs), theirs_logits, inputs["attention_mask"])


# -- what cannot be mapped --------------------------------------------------------------------------------------------
def test_causal_methods_without_a_peft_equivalent(tiny_lm: Path, tmp_path: Path) -> None:
    adapter = make_lm_adapter(tmp_path / "bottleneck", tiny_lm, {"name": "bottleneck"})
    with pytest.raises(ConfigError, match="method 'bottleneck' has no peft equivalent"):
        export_peft(adapter, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unimportable_causal_peft_folders(tiny_lm: Path, tiny_llama: Path, tmp_path: Path) -> None:
    folder = tmp_path / "peft"
    peft_lm_folder(folder, tiny_lm, PEFT_CONFIGS["lora"]())
    config_path, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    original, tensors = json.loads(config_path.read_text()), load_file(weights)
    with pytest.raises(ConfigError, match="causal_lm' generates text and has no labels"):
        import_peft(folder, tmp_path / "a", labels=["x"])
    with pytest.raises(AdapterFileError, match="needs a language model with an LM head"):
        import_peft(folder, tmp_path / "b", base=str(tiny_llama))  # a bare LlamaModel: nothing to generate with
    config_path.write_text(json.dumps({**original, "modules_to_save": ["lm_head"]}))
    lm_head = torch.zeros(len(AutoTokenizer.from_pretrained(tiny_lm)), 32)
    save_file({**tensors, "base_model.model.lm_head.modules_to_save.default.weight": lm_head}, weights)
    with pytest.raises(AdapterFileError, match=r"adapter_config.json: modules_to_save \['lm_head'\].*frozen"):
        import_peft(folder, tmp_path / "c")
    config_path.write_text(json.dumps(original))
    save_file({**tensors, "base_model.model.model.embed_tokens.weight": torch.zeros(8, 32)}, weights)
    with pytest.raises(AdapterFileError, match="resized vocabulary"):
        import_peft(folder, tmp_path / "d")
    assert not any((tmp_path / name).exists() for name in "abcd")


# -- command line -----------------------------------------------------------------------------------------------------
def test_cli_export_and_import_causal(tiny_lm: Path, tmp_path: Path) -> None:
    adapter = make_lm_adapter(tmp_path / "ours", tiny_lm, METHODS["lora"])
    runner = CliRunner()
    done = runner.invoke(app, ["export", str(adapter), str(tmp_path / "peft"), "--format", "peft"])
    assert done.exit_code == 0, done.output
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    done = runner.invoke(app, ["import", str(tmp_path / "peft"), str(tmp_path / "back")])
    assert done.exit_code == 0, done.output
    before, after = Predictor.load(adapter), Predictor.load(tmp_path / "back")
    assert after.generate(TEXTS, max_new_tokens=STEPS) == before.generate(TEXTS, max_new_tokens=STEPS)
    wrong = runner.invoke(app, ["import", str(tmp_path / "peft"), str(tmp_path / "x"), "--labels", "a,b"])
    assert wrong.exit_code != 0 and "has no labels" in wrong.output
