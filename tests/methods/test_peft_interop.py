"""peft interop on tiny BERT and tiny Llama: our export loaded by peft itself computes our logits, a peft adapter
imported by us computes peft's logits in our Predictor, and what cannot be mapped fails clearly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from typer.testing import CliRunner

from adaptune import Predictor
from adaptune.backbone import fingerprint, load_backbone
from adaptune.cli import app
from adaptune.config import ModelConfig, validate_config
from adaptune.errors import AdapterFileError, ConfigError
from adaptune.inference import build_model
from adaptune.io import load_adapter, save_adapter
from adaptune.peft_interop import export_peft, import_peft
from adaptune.peft_interop.importer import describe_adapter
from adaptune.tasks.pooling import pool
from method_checks import randomise

peft = pytest.importorskip("peft", reason="peft is a test dependency (test extra)")
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning")]

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
INTENTS = ["order_status", "refund", "greeting"]
TEXTS = ["Bob ordered a Kindle in Paris", "where is my order A1024-77?"]
DORA = {"name": "lora", "r": 4, "use_dora": True, "use_rslora": True, "roles": ["query", "value", "ffn_out"]}
PREFIX = {"name": "prefix", "num_virtual_tokens": 4, "prefix_hidden": 16}


def make_adapter(folder: Path, base: Path, method: dict[str, Any], task: str = "token_cls", **model: Any) -> Path:
    """An adapter folder with every method and head tensor moved off its init (as training would)."""
    bb = load_backbone(ModelConfig(name_or_path=str(base), **model))
    base_fp, base_params = fingerprint(bb.model), sum(p.numel() for p in bb.model.parameters())
    run = validate_config({"method": method, "task": {"name": task}})
    adapted = build_model(bb, run.method, run.task, TAGS if task == "token_cls" else INTENTS)
    head = {f"head.{k}": p for k, p in adapted.head.named_parameters()}
    randomise({**adapted.adapter_parameters(), **head}, std=0.2)
    description = describe_adapter(
        adapted, name_or_path=str(base), base_fingerprint=base_fp, base_params=base_params, max_length=64
    )
    return save_adapter(folder, adapted.trainable_state(), description)


def load_in_peft(folder: Path, base: Path) -> nn.Module:
    """``PeftModel.from_pretrained`` on the transformers task class ``adaptune.json`` names."""
    import transformers

    load_with = json.loads((folder / "adaptune.json").read_text())["load_with"]
    auto = getattr(transformers, load_with["auto_class"])
    hf = auto.from_pretrained(base, num_labels=load_with["num_labels"], pad_token_id=load_with["pad_token_id"])
    return peft.PeftModel.from_pretrained(hf, folder).eval()  # type: ignore[no-any-return]


def ids_of(predictor: Predictor, text: str) -> dict[str, torch.Tensor]:
    """The inputs our Predictor feeds the model for ``text``, as a batch of one."""
    (encoded,) = predictor.encode(predictor.examples([text]))
    ids = torch.tensor([encoded.input_ids])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if encoded.token_type_ids is not None:  # GPT-2 embeds them too (with the word embeddings)
        inputs["token_type_ids"] = torch.tensor([encoded.token_type_ids])
    return inputs


def peft_forward(model: Any, inputs: dict[str, torch.Tensor]) -> Any:
    """peft's forward pass. For prefix tuning, what it computes: its prefixes (``get_prompt``) handed to the task
    model as the key/value cache, the attention mask extended by ``n`` ones; peft 0.21.2 itself refuses this
    with transformers 5.24 ("Model does not support past key values"), because it looks for a
    ``past_key_values`` parameter in the forward's signature, which 5.24 renamed to ``cache``."""
    config = model.active_peft_config
    if config.peft_type != peft.PeftType.PREFIX_TUNING:
        return model(**inputs)
    mask = inputs["attention_mask"]
    front = torch.ones(mask.shape[0], config.num_virtual_tokens, dtype=mask.dtype)
    extended = {**inputs, "attention_mask": torch.cat([front, mask], dim=1)}
    return model.base_model(**extended, past_key_values=model.get_prompt(batch_size=mask.shape[0]))


def peft_logits(model: nn.Module, inputs: dict[str, torch.Tensor], n_virtual: int = 0) -> torch.Tensor:
    with torch.no_grad():
        logits = peft_forward(model, inputs).logits[0]
    return logits[n_virtual:] if logits.dim() == 2 else logits  # type: ignore[no-any-return]


# -- export: peft reproduces our logits -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("base_name", "method", "n_virtual"),
    [
        ("tiny_bert", {"name": "lora", "r": 4, "alpha": 8}, 0),
        ("tiny_bert", DORA, 0),
        ("tiny_bert", {"name": "ia3"}, 0),
        ("tiny_bert", {"name": "prompt", "num_virtual_tokens": 4}, 4),
        ("tiny_llama", PREFIX, 0),  # BERT's prefix positions differ in peft (methods/prefix.py)
        ("tiny_llama", {"name": "lora", "r": 4, "roles": ["query", "value", "ffn_gate"]}, 0),
        ("tiny_gpt2", {"name": "lora", "r": 4, "use_dora": True}, 0),  # Conv1D: fan_in_fan_out
    ],
)
def test_peft_loads_our_token_export_exactly(
    base_name: str, method: dict[str, Any], n_virtual: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    base = request.getfixturevalue(base_name)
    adapter = make_adapter(tmp_path / "ours", base, method)
    result = export_peft(adapter, tmp_path / "peft")
    assert result.exact == (method["name"] != "prefix"), result.notes  # prefix: exact for unpadded inputs only
    theirs, ours = load_in_peft(result.path, base), Predictor.load(adapter)
    for text, logits in zip(TEXTS, ours.logits(TEXTS), strict=True):
        torch.testing.assert_close(peft_logits(theirs, ids_of(ours, text), n_virtual), logits, atol=1e-5, rtol=0)


def test_export_files_use_peft_names(tiny_bert: Path, tmp_path: Path) -> None:
    result = export_peft(make_adapter(tmp_path / "ours", tiny_bert, DORA), tmp_path / "peft")
    config = json.loads((result.path / "adapter_config.json").read_text())
    kind = (config["peft_type"], config["task_type"], config["modules_to_save"])
    assert kind == ("LORA", "TOKEN_CLS", ["classifier"])
    assert config["use_dora"] and config["use_rslora"] and config["lora_alpha"] == 16
    names = set(load_file(result.path / "adapter_model.safetensors"))
    layer = "base_model.model.bert.encoder.layer.0."
    assert f"{layer}attention.self.query.lora_A.weight" in names
    assert f"{layer}output.dense.lora_magnitude_vector" in names
    assert {"base_model.model.classifier.weight", "base_model.model.classifier.bias"} <= names
    assert peft.PeftConfig.from_pretrained(result.path).target_modules  # peft reads its own schema back


def test_bert_seq_cls_is_exact_below_the_pooler(tiny_bert: Path, tmp_path: Path) -> None:
    """BertForSequenceClassification pools with its pooler layer; adaptune pools 'mean' with none. The hidden
    states through peft and our head on them (the classifier peft loaded from modules_to_save) are exact."""
    adapter = make_adapter(tmp_path / "ours", tiny_bert, {"name": "lora", "r": 4}, "seq_cls", pooling="mean")
    result = export_peft(adapter, tmp_path / "peft")
    assert not result.exact and "pooler" in result.notes[0]
    theirs, ours = load_in_peft(result.path, tiny_bert), Predictor.load(adapter)
    hf = theirs.get_base_model()
    seen: list[torch.Tensor] = []
    hf.base_model.register_forward_hook(lambda _m, _a, out: seen.append(out.last_hidden_state))
    for text, logits in zip(TEXTS, ours.logits(TEXTS), strict=True):
        inputs = ids_of(ours, text)
        peft_logits(theirs, inputs)
        with torch.no_grad():
            manual = hf.classifier(pool(seen[-1], inputs["attention_mask"], "mean"))[0]
        torch.testing.assert_close(manual, logits, atol=1e-5, rtol=0)


def test_llama_seq_cls_is_exact_plus_the_bias(tiny_llama: Path, tmp_path: Path) -> None:
    """Decoders: transformers reads the last non-padding token as adaptune's 'last' pooling; its score layer has
    no bias, so adaptune.json carries ours."""
    adapter = make_adapter(tmp_path / "ours", tiny_llama, {"name": "lora", "r": 4}, "seq_cls", pooling="last")
    result = export_peft(adapter, tmp_path / "peft")
    bias = torch.tensor(json.loads((result.path / "adaptune.json").read_text())["head"]["bias"])
    theirs, ours = load_in_peft(result.path, tiny_llama), Predictor.load(adapter)
    inputs = ours.tokenizer(TEXTS, padding=True, return_tensors="pt")  # padded: the last real token is found
    with torch.no_grad():
        batch_logits = theirs(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    torch.testing.assert_close(batch_logits + bias, torch.stack(ours.logits(TEXTS)), atol=1e-5, rtol=0)


# -- import: our Predictor reproduces peft's logits -------------------------------------------------------------------
def peft_folder(folder: Path, base: Path, config: Any, auto: str = "AutoModelForTokenClassification") -> nn.Module:
    """A peft adapter with every trainable tensor (head included) moved off its init, saved by peft itself."""
    import transformers

    hf = getattr(transformers, auto).from_pretrained(base, num_labels=len(TAGS), pad_token_id=0)
    model = peft.get_peft_model(hf, config)
    randomise({name: p for name, p in model.named_parameters() if p.requires_grad}, std=0.2, seed=1)
    model.save_pretrained(folder)
    return model.eval()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("base_name", "config", "n_virtual"),
    [
        ("tiny_bert", {"kind": "LoraConfig", "r": 4, "use_dora": True, "target_modules": ["query", "key"]}, 0),
        ("tiny_bert", {"kind": "IA3Config"}, 0),  # peft's BERT defaults: attention.output.dense input-scaled too
        ("tiny_bert", {"kind": "PromptTuningConfig", "num_virtual_tokens": 3}, 3),
        ("tiny_llama", {"kind": "LoraConfig", "r": 2, "target_modules": ["q_proj", "down_proj"]}, 0),
    ],
)
def test_we_reproduce_a_peft_token_adapter(
    base_name: str, config: dict[str, Any], n_virtual: int, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    base = request.getfixturevalue(base_name)
    fields = {k: v for k, v in config.items() if k != "kind"}
    theirs = peft_folder(tmp_path / "peft", base, getattr(peft, config["kind"])(task_type="TOKEN_CLS", **fields))
    result = import_peft(tmp_path / "peft", tmp_path / "ours", labels=TAGS)
    assert result.exact, result.notes
    ours = Predictor.load(result.path)
    assert ours.labels == TAGS and load_adapter(result.path).config["imported_from"]["format"] == "peft"
    for text, logits in zip(TEXTS, ours.logits(TEXTS), strict=True):
        torch.testing.assert_close(logits, peft_logits(theirs, ids_of(ours, text), n_virtual), atol=1e-5, rtol=0)


def test_we_reproduce_a_peft_prefix_classifier_on_llama(tiny_llama: Path, tmp_path: Path) -> None:
    """peft stores the prefixes its MLP computes; its Llama classifier has no bias (imported as zero)."""
    config = peft.PrefixTuningConfig(
        task_type="SEQ_CLS", num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=8
    )
    theirs = peft_folder(tmp_path / "peft", tiny_llama, config, "AutoModelForSequenceClassification")
    result = import_peft(tmp_path / "peft", tmp_path / "ours")
    ours = Predictor.load(result.path)
    assert ours.labels == [f"LABEL_{i}" for i in range(len(TAGS))] and ours.description["pooling"] == "last"
    assert ours.model.method.config.reparameterize is False  # type: ignore[attr-defined]
    for text, logits in zip(TEXTS, ours.logits(TEXTS), strict=True):
        torch.testing.assert_close(logits, peft_logits(theirs, ids_of(ours, text)), atol=1e-5, rtol=0)


def test_bert_seq_cls_import_keeps_the_classifier_and_says_why_it_differs(tiny_bert: Path, tmp_path: Path) -> None:
    config = peft.LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"])
    theirs = peft_folder(tmp_path / "peft", tiny_bert, config, "AutoModelForSequenceClassification")
    result = import_peft(tmp_path / "peft", tmp_path / "ours")
    assert not result.exact and "pooler" in result.notes[0]
    tensors = load_adapter(result.path).tensors
    classifier = theirs.get_base_model().classifier.modules_to_save["default"]
    assert torch.equal(tensors["head.classifier.weight"], classifier.weight.detach())
    assert Predictor.load(result.path).description["pooling"] == "cls"


@pytest.mark.parametrize(
    ("method", "task", "base_name", "model"),
    [
        (DORA, "token_cls", "tiny_bert", {}),
        ({"name": "ia3"}, "seq_cls", "tiny_bert", {"pooling": "mean"}),
        ({"name": "prompt", "num_virtual_tokens": 4}, "seq_cls", "tiny_bert", {"pooling": "cls"}),
        (PREFIX, "token_cls", "tiny_bert", {}),  # not exact in peft, yet exact there and back
        (PREFIX, "seq_cls", "tiny_llama", {"pooling": "last"}),
    ],
)
def test_export_then_import_gives_our_logits(
    method: dict[str, Any], task: str, base_name: str, model: dict[str, Any], tmp_path: Path, request: Any
) -> None:
    adapter = make_adapter(tmp_path / "ours", request.getfixturevalue(base_name), method, task, **model)
    export_peft(adapter, tmp_path / "peft")
    back = import_peft(tmp_path / "peft", tmp_path / "back").path
    before, after = Predictor.load(adapter), Predictor.load(back)
    assert (after.labels, after.description["pooling"]) == (before.labels, before.description["pooling"])
    for a, b in zip(before.logits(TEXTS), after.logits(TEXTS), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# -- what cannot be mapped --------------------------------------------------------------------------------------------
def test_methods_and_tasks_without_a_peft_equivalent(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="method 'bitfit' has no peft equivalent"):
        export_peft(make_adapter(tmp_path / "bitfit", tiny_bert, {"name": "bitfit"}), tmp_path / "out")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        export_peft(tmp_path / "bitfit", tmp_path / "bitfit")


def test_unimportable_peft_folders(tiny_bert: Path, tmp_path: Path) -> None:
    config = peft.LoraConfig(task_type="TOKEN_CLS", r=2, target_modules=["query"])
    folder = tmp_path / "peft"
    peft_folder(folder, tiny_bert, config)
    config_path, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    original = json.loads(config_path.read_text())
    tensors = load_file(weights)

    def rewrite(**changes: Any) -> None:
        config_path.write_text(json.dumps({**original, **changes}))

    rewrite(peft_type="LOHA")
    with pytest.raises(AdapterFileError, match="peft type 'LOHA' cannot be imported"):
        import_peft(folder, tmp_path / "a")
    rewrite(rank_pattern={"query": 8})
    with pytest.raises(AdapterFileError, match="rank_pattern"):
        import_peft(folder, tmp_path / "b")
    rewrite(task_type="FEATURE_EXTRACTION", modules_to_save=None)
    with pytest.raises(ConfigError, match="give task='seq_cls', 'token_cls' or 'causal_lm'"):
        import_peft(folder, tmp_path / "c")
    rewrite()
    save_file({**tensors, "base_model.model.classifier.extra.weight": torch.zeros(2, 32)}, weights)
    with pytest.raises(AdapterFileError, match="not one linear classifier"):
        import_peft(folder, tmp_path / "d")
    weights.rename(folder / "adapter_model.bin")
    with pytest.raises(AdapterFileError, match="a pickle, which adaptune never loads"):
        import_peft(folder, tmp_path / "e")


def test_a_headless_peft_adapter_needs_a_task_and_labels(tiny_bert: Path, tmp_path: Path) -> None:
    hf = load_backbone(ModelConfig(name_or_path=str(tiny_bert))).model
    model = peft.get_peft_model(hf, peft.LoraConfig(r=2, target_modules=["value"]))
    model.save_pretrained(tmp_path / "peft")
    with pytest.raises(ConfigError, match="no task head: give the label names"):
        import_peft(tmp_path / "peft", tmp_path / "a", task="seq_cls")
    result = import_peft(tmp_path / "peft", tmp_path / "b", task="seq_cls", labels=INTENTS)
    assert "untrained" in result.notes[-1] and Predictor.load(result.path).labels == INTENTS


# -- command line -----------------------------------------------------------------------------------------------------
def test_cli_export_and_import(tiny_bert: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tmp_path / "ours", tiny_bert, {"name": "ia3"})
    runner = CliRunner()
    done = runner.invoke(app, ["export", str(adapter), str(tmp_path / "peft"), "--format", "peft"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "peft" / "adapter_model.safetensors").is_file()
    done = runner.invoke(app, ["import", str(tmp_path / "peft"), str(tmp_path / "back"), "--base", str(tiny_bert)])
    assert done.exit_code == 0, done.output
    assert Predictor.load(tmp_path / "back").labels == TAGS
    wrong = runner.invoke(app, ["export", str(adapter), str(tmp_path / "x"), "--format", "tflite"])
    assert wrong.exit_code == 2 and "--format 'tflite': the export formats are 'peft'" in wrong.output
    missing = runner.invoke(app, ["import", str(tmp_path / "nothing"), str(tmp_path / "y"), "--task", "token_cls"])
    assert missing.exit_code == 2 and "does not exist" in missing.output
