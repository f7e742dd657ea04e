"""Export an adaptune adapter as a peft folder (see :mod:`adaptune.peft_interop` for the mapping and what is
exact)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from adaptune.data.chat import stop_token_ids
from adaptune.errors import ConfigError
from adaptune.inference import model_from_adapter
from adaptune.io import atomic_write_json, load_adapter
from adaptune.methods.linear import linear_shape
from adaptune.methods.lora import LoRAConfig
from adaptune.model import AdaptedModel
from adaptune.peft_interop.common import (
    AUTO_CLASSES,
    DECODER_POSITIONS,
    LM_PREFIX_POSITIONS,
    LM_TASK,
    PEFT_CONFIG,
    PEFT_WEIGHTS,
    SIDECAR,
    SIDECAR_FORMAT,
    TASK_TYPES,
    InteropResult,
    check_out,
    head_prefix,
    write_folder,
)
from adaptune.tasks.base import chat_template

PROMPT_LEARNING = {"prompt", "prefix"}
_LORA_NAMES = {"lora_a.weight": "lora_A.weight", "lora_b.weight": "lora_B.weight", "magnitude": "lora_magnitude_vector"}


@dataclass(frozen=True)
class HfHead:
    """Where transformers' task class keeps things: ``prefix`` of the base model (``bert.``), every module name and,
    for classifiers, ``module`` (the top-level head child, named in ``modules_to_save``) and ``linear`` (its last
    linear layer). causal_lm has neither: the LM head stays as transformers loads it."""

    auto_class: str
    prefix: str
    names: frozenset[str]
    module: str | None = None
    linear: str | None = None
    has_bias: bool = False
    single_linear: bool = True


def hf_head(config: Any, task: str, num_labels: int) -> HfHead:
    """Build transformers' task class for ``config`` on the meta device (no memory, no weights) and read it."""
    import transformers

    auto = getattr(transformers, AUTO_CLASSES[task])
    config = copy.deepcopy(config)
    if task != LM_TASK:
        config.num_labels = num_labels
    try:
        with torch.device("meta"):
            model = auto.from_config(config)
    except ValueError as err:
        raise ConfigError(f"peft export needs transformers' {AUTO_CLASSES[task]} for this model: {err}") from None
    prefix = str(model.base_model_prefix)
    names = frozenset(name for name, _ in model.named_modules())
    base = f"{prefix}." if hasattr(model, prefix) else ""
    if task == LM_TASK:
        return HfHead(auto_class=AUTO_CLASSES[task], prefix=base, names=names)
    linears = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and module.out_features == num_labels and not name.startswith(prefix + ".")
    ]
    if not linears:
        raise ConfigError(f"{type(model).__name__} has no linear classifier with {num_labels} outputs")
    linear, layer = linears[-1]
    top = linear.split(".")[0]
    head_params = sum(1 for _ in model.get_submodule(top).parameters())
    return HfHead(
        auto_class=AUTO_CLASSES[task],
        prefix=base,
        names=names,
        module=top,
        linear=linear,
        has_bias=layer.bias is not None,
        single_linear=top == linear and head_params == (2 if layer.bias is not None else 1),
    )


def short_names(hosts: list[str], names: frozenset[str]) -> list[str]:
    """The shortest name suffixes that select exactly ``hosts`` among ``names`` (peft's ``target_modules``), else
    the full names (also when a suffix would start with a layer number). A suffix matches every name that ends
    with it (peft's feed-forward rule, looser than its target rule), so the choice is safe under both."""
    wanted = set(hosts)
    for parts in range(1, max(h.count(".") for h in hosts) + 1):
        suffixes = {".".join(h.split(".")[-parts:]) for h in hosts}
        if any(s.split(".")[0].isdigit() for s in suffixes):
            break
        if {n for n in names if any(n.endswith(s) for s in suffixes)} == wanted:
            return sorted(suffixes)
    return sorted(wanted)


# -- export -----------------------------------------------------------------------------------------------------------
def _hosts(owned: dict[str, nn.Parameter], marker: str, head: HfHead) -> list[str]:
    """The base-model names of the modules whose parameters contain ``marker``, checked to exist (behind
    ``head.prefix``) in transformers' task class."""
    hosts = sorted({name.split(marker)[0] for name in owned if marker in name})
    missing = [h for h in hosts if head.prefix + h not in head.names]
    if missing:
        raise ConfigError(f"{head.auto_class} has no module {head.prefix}{missing[0]}: cannot name it for peft")
    return hosts


def _lora(model: AdaptedModel, head: HfHead) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    cfg = model.method.config
    assert isinstance(cfg, LoRAConfig)
    owned = model.adapter_parameters()
    tensors = {}
    for name, param in owned.items():
        host, _, rest = name.partition(".lora.")
        tensors[f"base_model.model.{head.prefix}{host}.{_LORA_NAMES[rest]}"] = param
    ours = _hosts(owned, ".lora.", head)
    hosts = [head.prefix + h for h in ours]
    transposed = any(linear_shape(h, model.backbone.get_submodule(h)).transposed for h in ours)
    config = {
        "peft_type": "LORA",
        "r": cfg.r,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "use_rslora": cfg.use_rslora,
        "use_dora": cfg.use_dora,
        "target_modules": short_names(hosts, head.names),
        "fan_in_fan_out": transposed,
        "bias": "none",
        "init_lora_weights": True,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    return config, tensors


def _ia3(model: AdaptedModel, head: HfHead) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    owned = model.adapter_parameters()
    tensors: dict[str, torch.Tensor] = {}
    outputs, inputs = _hosts(owned, ".ia3.scale", head), _hosts(owned, ".ia3_in.scale", head)
    for host in outputs:
        tensors[f"base_model.model.{head.prefix}{host}.ia3_l"] = owned[f"{host}.ia3.scale"].unsqueeze(1)
    for host in inputs:
        tensors[f"base_model.model.{head.prefix}{host}.ia3_l"] = owned[f"{host}.ia3_in.scale"].unsqueeze(0)
    hosts = [head.prefix + h for h in outputs + inputs]
    transposed = any(linear_shape(h, model.backbone.get_submodule(h)).transposed for h in outputs + inputs)
    config = {
        "peft_type": "IA3",
        "target_modules": short_names(hosts, head.names),
        "feedforward_modules": short_names([head.prefix + h for h in inputs], head.names) if inputs else [],
        "fan_in_fan_out": transposed,
        "init_ia3_weights": True,
    }
    return config, tensors


def _shape_fields(model: AdaptedModel) -> dict[str, int]:
    hf = model.backbone.config
    return {"num_layers": int(hf.num_hidden_layers), "num_transformer_submodules": 1}


def _prompt(model: AdaptedModel, head: HfHead) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    weight = model.adapter_parameters()["prompt.weight"]
    config = {
        "peft_type": "PROMPT_TUNING",
        "num_virtual_tokens": int(weight.shape[0]),
        "token_dim": int(weight.shape[1]),
        "num_attention_heads": int(model.backbone.config.num_attention_heads),
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": None,
        **_shape_fields(model),
    }
    return config, {"prompt_embeddings": weight}


def _prefix(model: AdaptedModel, head: HfHead) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from adaptune.methods.prefix import PrefixTuning, attention_shape

    method = model.method
    assert isinstance(method, PrefixTuning)
    _, kv_heads, head_dim = attention_shape(model.backbone.config)
    with torch.no_grad():
        states = method.prefix_states()
    config = {
        "peft_type": "PREFIX_TUNING",
        "num_virtual_tokens": method.config.num_virtual_tokens,
        "token_dim": kv_heads * head_dim,  # peft's value after its grouped-query adjustment
        "num_attention_heads": kv_heads,
        "encoder_hidden_size": method.config.prefix_hidden,
        "prefix_projection": False,  # the file holds the computed prefixes, not the MLP
        **_shape_fields(model),
    }
    return config, {"prompt_embeddings": states}


EXPORTERS = {"lora": _lora, "ia3": _ia3, "prompt": _prompt, "prefix": _prefix}


def _notes(model: AdaptedModel, head: HfHead, task: str, method: str) -> list[str]:
    """Why peft's logits would differ from ours (empty: they are equal)."""
    notes = []
    pooling, decoder = model.info.pooling, model.info.is_decoder
    if not head.single_linear:
        notes.append(
            f"{head.auto_class}'s head '{head.module}' has more layers than adaptune's one linear classifier; only "
            f"'{head.linear}' is exported, the rest stays as transformers initialises it: re-train the head in peft"
        )
    if task == "seq_cls" and not (decoder and pooling == "last"):
        notes.append(
            f"{head.auto_class} does not pool as adaptune's '{pooling}' (encoders: their pooler, dense + tanh on "
            "[CLS]; decoders: the last token): for adaptune's logits pool the last hidden states of "
            f"peft_model.get_base_model().base_model yourself ('{pooling}', attention mask) and apply the exported "
            f"'{head.linear}'"
        )
    if head.linear is not None and not head.has_bias:
        notes.append(f"'{head.linear}' has no bias in transformers: add adaptune.json head.bias to peft's logits")
    if method == "prefix" and not decoder:
        notes.append("peft numbers an encoder's positions after the prefix (adaptune: from 0): outputs differ")
    if method == "prefix" and task == LM_TASK:
        notes.append(LM_PREFIX_POSITIONS)
    elif method in PROMPT_LEARNING and decoder:
        notes.append(DECODER_POSITIONS)
    return notes


def _classifier(
    model: AdaptedModel, head: HfHead, peft_type: str
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """The classifier's tensors under peft's ``modules_to_save`` names, and the bias transformers' layer lacks
    (None: it has one)."""
    if head.linear is None:
        return {}, None
    where = head_prefix(peft_type) + head.linear
    classifier = model.head.classifier
    if head.has_bias:
        return {f"{where}.weight": classifier.weight, f"{where}.bias": classifier.bias}, None
    return {f"{where}.weight": classifier.weight}, classifier.bias.detach()


def _load_with(model: AdaptedModel, head: HfHead) -> dict[str, Any]:
    """How a peft user loads the export: the classes and their arguments; for causal_lm the chat template adaptune
    renders prompts with and the tokens that end a reply (``generate(..., eos_token_id=...)``)."""
    tokenizer = model.info.tokenizer
    pad = tokenizer.pad_token_id
    load = {"auto_class": head.auto_class, "peft_class": "PeftModel", "pad_token_id": pad}
    if head.module is None:
        template = chat_template(model.task, tokenizer)
        load["python"] = f"PeftModel.from_pretrained({head.auto_class}.from_pretrained(base), out)"
        return {**load, "chat_template": template, "eos_token_id": sorted(stop_token_ids(tokenizer, template))}
    labels = list(model.labels)
    load["python"] = (
        f"PeftModel.from_pretrained({head.auto_class}.from_pretrained(base, num_labels={len(labels)}, "
        f"pad_token_id={pad}), out)"
    )
    return {**load, "num_labels": len(labels), "id2label": dict(enumerate(labels))}


def _sidecar(
    model: AdaptedModel, description: dict[str, Any], head: HfHead, notes: list[str], bias: torch.Tensor | None
) -> dict[str, Any]:
    adapter = {k: v for k, v in description.items() if k not in ("format", "format_version", "weights")}
    classifier = {
        "module": head.module,
        "linear": head.linear,
        "pooling": model.info.pooling if hasattr(model.head, "pooling") else None,
        "bias": None if bias is None else bias.tolist(),
    }
    return {
        "format": SIDECAR_FORMAT,
        "format_version": 1,
        "load_with": _load_with(model, head),
        "head": None if head.module is None else classifier,  # causal_lm: the base model's own LM head
        "exact": not notes,
        "notes": notes,
        "adapter": adapter,
    }


def export_peft(
    adapter_dir: str | Path, out_dir: str | Path, *, base: str | None = None, overwrite: bool = False
) -> InteropResult:
    """Write the adapter in ``adapter_dir`` as a peft folder in ``out_dir`` (see the module docstring).

    ``base`` loads the adapter onto another copy of its base model (same weights). Methods peft has no type for
    (bottleneck, bitfit, head) and tasks other than seq_cls/token_cls/causal_lm raise a :class:`ConfigError`.
    """
    out = check_out(out_dir, overwrite)
    adapter = load_adapter(adapter_dir)
    desc = adapter.config
    method, task = desc["method"]["name"], desc["task"]["name"]
    if method not in EXPORTERS:
        raise ConfigError(f"method '{method}' has no peft equivalent; peft export supports {sorted(EXPORTERS)}")
    if task not in TASK_TYPES:
        raise ConfigError(f"task '{task}' has no peft task type; peft export supports {sorted(TASK_TYPES)}")
    model = model_from_adapter(adapter, base=base).eval()
    head = hf_head(model.backbone.config, task, len(model.labels))
    config, tensors = EXPORTERS[method](model, head)
    classifier, bias = _classifier(model, head, config["peft_type"])
    tensors.update(classifier)
    peft_config = {
        "base_model_name_or_path": desc["base_model"]["name_or_path"],
        "revision": None,
        "task_type": TASK_TYPES[task],
        "inference_mode": True,
        "modules_to_save": None if head.module is None else [head.module],
        **config,
    }
    notes = _notes(model, head, task, method)
    sidecar = _sidecar(model, desc, head, notes, bias)

    def write(folder: Path) -> None:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, folder / PEFT_WEIGHTS)
        atomic_write_json(folder / SIDECAR, sidecar)
        atomic_write_json(folder / PEFT_CONFIG, peft_config)

    write_folder(out, write)
    return InteropResult(out, not notes, notes)
