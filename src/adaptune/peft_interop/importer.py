"""Import a peft folder as an adaptune adapter (see :mod:`adaptune.peft_interop` for the mapping, what is exact
and what cannot be imported)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from adaptune.backbone import Backbone, BaseFingerprint, load_backbone
from adaptune.config import DataConfig, ModelConfig, validate_config
from adaptune.errors import AdapterFileError, ConfigError, DataError
from adaptune.evaluation.tagging import detect_scheme, normalise_scheme
from adaptune.inference import build_model
from adaptune.io import check_base, describe, save_adapter
from adaptune.model import AdaptedModel
from adaptune.peft_interop.common import (
    DECODER_POSITIONS,
    LM_PREFIX_POSITIONS,
    LM_TASK,
    PEFT_CONFIG,
    PEFT_PICKLE,
    PEFT_WEIGHTS,
    TASKS_BY_TYPE,
    InteropResult,
    check_out,
    read_sidecar,
    write_folder,
)
from adaptune.positions import position_limit

#: peft config values adaptune's methods have no equivalent for (key -> the only importable value)
_LORA_UNSUPPORTED: dict[str, Any] = {
    "rank_pattern": {},
    "alpha_pattern": {},
    "bias": "none",
    "lora_bias": False,
    "layer_replication": None,
    "use_qalora": False,
    "target_parameters": None,
    "trainable_token_indices": None,
}
_LORA_SUFFIXES = {"lora_A.weight": "lora.lora_a.weight", "lora_B.weight": "lora.lora_b.weight"}
_LORA_SUFFIXES["lora_magnitude_vector"] = "lora.magnitude"  # DoRA; older peft versions add ".weight"
_LORA_SUFFIXES["lora_magnitude_vector.weight"] = "lora.magnitude"

Tensors = dict[str, torch.Tensor]


def read_peft_config(folder: Path) -> dict[str, Any]:
    """``adapter_config.json`` of a peft folder, refused unless its ``peft_type`` is importable."""
    path = folder / PEFT_CONFIG
    if not folder.is_dir():
        raise AdapterFileError(f"peft folder {folder} does not exist")
    if not path.is_file():
        raise AdapterFileError(f"{path} is missing: {folder} is not a peft adapter folder")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AdapterFileError(f"{path} is corrupt: {err}") from None
    if not isinstance(config, dict):
        raise AdapterFileError(f"{path} is not a peft config (a JSON object)")
    kind = config.get("peft_type")
    if kind not in IMPORTERS:
        raise AdapterFileError(
            f"{path}: peft type {kind!r} cannot be imported; adaptune imports {', '.join(IMPORTERS)}"
        )
    return config


def read_peft_tensors(folder: Path) -> Tensors:
    """``adapter_model.safetensors``; a pickled ``adapter_model.bin`` is never loaded."""
    path = folder / PEFT_WEIGHTS
    if not path.is_file():
        if (folder / PEFT_PICKLE).is_file():
            raise AdapterFileError(
                f"{folder} has only {PEFT_PICKLE}, a pickle, which adaptune never loads; "
                "save the adapter again with peft's save_pretrained(..., safe_serialization=True)"
            )
        raise AdapterFileError(f"{path} is missing")
    try:
        return load_file(path)
    except SafetensorError as err:
        raise AdapterFileError(f"{path} is not a valid safetensors file: {err}") from None


def _strip(key: str) -> str:
    for prefix in ("base_model.model.", "base_model."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def split_head(config: dict[str, Any], tensors: Tensors) -> tuple[Tensors, Tensors]:
    """``(adapter tensors, head tensors)`` by peft's ``modules_to_save``, names without peft's prefixes."""
    saved = [str(m) for m in config.get("modules_to_save") or []]
    adapter, head = {}, {}
    for key, tensor in tensors.items():
        name = _strip(key)
        parts = name.split(".")[:-1]
        paths = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
        in_head = any(p == m or p.endswith("." + m) for p in paths for m in saved)
        (head if in_head else adapter)[name] = tensor
    return adapter, head


class _Hosts:
    """peft's module names (in a transformers task class, ``bert.encoder...``) -> the base model's."""

    def __init__(self, backbone: Backbone) -> None:
        self.names = {name for name, _ in backbone.model.named_modules()}

    def __call__(self, name: str) -> str:
        if name in self.names:
            return name
        rest = name.partition(".")[2]
        if rest in self.names:
            return rest
        raise AdapterFileError(f"peft adapter adapts module '{name}', which the base model does not have")


def _map(tensors: Tensors, suffixes: dict[str, str], host: _Hosts) -> tuple[Tensors, list[str]]:
    """Rename ``<module>.<peft suffix>`` to ``adapter.<base module>.<our suffix>``; refuse anything else."""
    ours, hosts, unknown = {}, set(), []
    for key, tensor in tensors.items():
        suffix = next((s for s in suffixes if key.endswith("." + s)), None)
        if suffix is None:
            unknown.append(key)
            continue
        name = host(key[: -len(suffix) - 1])
        hosts.add(name)
        ours[f"adapter.{name}.{suffixes[suffix]}"] = tensor
    if unknown:
        raise AdapterFileError(
            f"peft tensors adaptune has no equivalent for: {sorted(unknown)[:5]} (LoRA on embeddings or "
            "convolutions, trained biases, saved embedding or LM head weights (a resized vocabulary) and other "
            "variants cannot be imported)"
        )
    return ours, sorted(hosts)


def _lora(config: dict[str, Any], tensors: Tensors, host: _Hosts) -> tuple[dict[str, Any], Tensors]:
    for key, allowed in _LORA_UNSUPPORTED.items():
        if config.get(key) is not None and config[key] != allowed:
            raise AdapterFileError(
                f"peft LoRA option {key}={config[key]!r} has no adaptune equivalent (importable: {allowed!r})"
            )
    ours, hosts = _map(tensors, _LORA_SUFFIXES, host)
    fields = {
        "name": "lora",
        "r": int(config["r"]),
        "alpha": float(config.get("lora_alpha", 8)),
        "dropout": float(config.get("lora_dropout") or 0.0),
        "use_rslora": bool(config.get("use_rslora")),
        "use_dora": bool(config.get("use_dora")),
        "target_modules": hosts,
    }
    return fields, ours


def _ia3(config: dict[str, Any], tensors: Tensors, host: _Hosts) -> tuple[dict[str, Any], Tensors]:
    scales, hosts = _map(tensors, {"ia3_l": "ia3_l"}, host)
    ours, inputs = {}, []
    for key, tensor in scales.items():
        name = key[len("adapter.") : -len(".ia3_l")]
        on_input = tensor.dim() == 2 and tensor.shape[0] == 1 and tensor.shape[1] > 1  # peft: (1, in) vs (out, 1)
        ours[f"adapter.{name}.{'ia3_in' if on_input else 'ia3'}.scale"] = tensor.reshape(-1)
        if on_input:
            inputs.append(name)
    fields = {"name": "ia3", "target_modules": hosts, "feedforward_modules": sorted(inputs) or None}
    return fields, ours


def _prompt_tensor(config: dict[str, Any], tensors: Tensors) -> torch.Tensor:
    if set(tensors) != {"prompt_embeddings"}:
        raise AdapterFileError(f"peft prompt adapter has unexpected tensors {sorted(tensors)[:5]}")
    if int(config.get("num_transformer_submodules") or 1) != 1:
        raise AdapterFileError("peft prompts for encoder-decoder models (2 transformer submodules) cannot be imported")
    return tensors["prompt_embeddings"]


def _prompt(config: dict[str, Any], tensors: Tensors, host: _Hosts) -> tuple[dict[str, Any], Tensors]:
    weight = _prompt_tensor(config, tensors)
    fields = {"name": "prompt", "num_virtual_tokens": int(weight.shape[0]), "init": "random"}
    return fields, {"adapter.prompt.weight": weight}


def _prefix(config: dict[str, Any], tensors: Tensors, host: _Hosts) -> tuple[dict[str, Any], Tensors]:
    states = _prompt_tensor(config, tensors)  # (n, L * 2 * d_kv): the computed prefixes
    fields = {"name": "prefix", "num_virtual_tokens": int(states.shape[0]), "reparameterize": False}
    return fields, {"adapter.prefix.embedding.weight": states}


Importer = Callable[[dict[str, Any], Tensors, _Hosts], tuple[dict[str, Any], Tensors]]
IMPORTERS: dict[str, Importer] = {"LORA": _lora, "IA3": _ia3, "PREFIX_TUNING": _prefix, "PROMPT_TUNING": _prompt}


def _task(config: dict[str, Any], sidecar: dict[str, Any] | None, task: str | None) -> dict[str, Any]:
    """The task config: the caller's, or from peft's task type (with its settings when adaptune exported it)."""
    from_type = TASKS_BY_TYPE.get(str(config.get("task_type")))
    if task is not None and task not in TASKS_BY_TYPE.values():
        raise ConfigError(f"task '{task}' cannot be imported from peft; give one of {sorted(TASKS_BY_TYPE.values())}")
    if task and from_type and task != from_type:
        raise ConfigError(f"task '{task}' contradicts the peft folder's task_type {config['task_type']}")
    name = task or from_type
    if name is None:
        raise ConfigError(
            f"peft task_type {config.get('task_type')!r} names no adaptune task: give task='seq_cls', "
            "'token_cls' or 'causal_lm' (--task)"
        )
    if sidecar and sidecar["adapter"]["task"].get("name") == name:
        return dict(sidecar["adapter"]["task"])
    return {"name": name}


def _head(head: Tensors, hidden: int, sidecar: dict[str, Any] | None) -> Tensors | None:
    """``head.classifier.*`` from a single linear classifier ``(labels, hidden)`` in ``modules_to_save``."""
    if not head:
        return None
    modules = {key.rpartition(".")[0] for key in head}
    weight = next((t for k, t in head.items() if k.endswith(".weight")), None)
    leaves = {key.rpartition(".")[2] for key in head}
    if len(modules) != 1 or not leaves <= {"weight", "bias"} or weight is None or tuple(weight.shape[1:]) != (hidden,):
        shapes = {k: tuple(v.shape) for k, v in head.items()}
        raise AdapterFileError(
            f"the peft task head {shapes} is not one linear classifier (labels, {hidden}); adaptune's heads are "
            "a single linear layer, so this head cannot be imported"
        )
    bias = next((t for k, t in head.items() if k.endswith(".bias")), None)
    if bias is None:  # transformers' decoder heads (score) have no bias; adaptune's export keeps it aside
        stored = ((sidecar or {}).get("head") or {}).get("bias")
        bias = torch.tensor(stored, dtype=weight.dtype) if stored else torch.zeros(weight.shape[0], dtype=weight.dtype)
    return {"head.classifier.weight": weight, "head.classifier.bias": bias}


def _labels(task: str, given: list[str] | None, sidecar: dict[str, Any] | None, head: Tensors | None) -> list[str]:
    if task == LM_TASK:
        if given:
            raise ConfigError("task 'causal_lm' generates text and has no labels: give no label names")
        return []
    count = None if head is None else int(head["head.classifier.weight"].shape[0])
    labels = given or (sidecar["adapter"]["labels"] if sidecar else None)
    if labels is None:
        if count is None:
            raise ConfigError("the peft folder has no task head: give the label names (labels=[...], --labels a,b)")
        labels = [f"LABEL_{i}" for i in range(count)]
    if count is not None and len(labels) != count:
        raise ConfigError(f"{len(labels)} label names given, but the peft classifier has {count} outputs")
    return list(labels)


def _pooling(task: str, backbone: Backbone, sidecar: dict[str, Any] | None, notes: list[str]) -> str:
    if sidecar:
        return str(sidecar["adapter"]["pooling"])
    if task != "seq_cls":
        return backbone.pooling
    if backbone.is_decoder:
        return "last"  # transformers' decoder classifiers read the last non-padding token, as adaptune's 'last'
    notes.append(
        "transformers' sequence classifier puts the base model's pooler (dense + tanh on [CLS]) before the "
        "classifier; adaptune's head has no pooler, so it pools 'cls' and its logits differ: re-train the head"
    )
    return "cls"


def _notes(kind: str, task: str, backbone: Backbone, sidecar: dict[str, Any] | None) -> list[str]:
    """Where adaptune's outputs will differ from peft's for this adapter (an export says it itself)."""
    if sidecar:
        return list(sidecar.get("notes", []))
    notes = []
    if kind == "PREFIX_TUNING" and not backbone.is_decoder:
        notes.append("peft numbered an encoder's positions after the prefix, adaptune from 0: outputs differ")
    if kind == "PREFIX_TUNING" and task == LM_TASK:
        notes.append(LM_PREFIX_POSITIONS)
    elif kind in ("PREFIX_TUNING", "PROMPT_TUNING") and backbone.is_decoder:
        notes.append(DECODER_POSITIONS)
    return notes


def _chat_template(folder: Path, backbone: Backbone) -> str | None:
    """The chat template of the tokenizer saved beside the adapter (LLaMA-Factory and many peft scripts save the
    one they trained with) when it differs from the base tokenizer's; None: the base's (or adaptune's fallback)."""
    jinja, config_path = folder / "chat_template.jinja", folder / "tokenizer_config.json"
    found: Any = None
    if jinja.is_file():
        found = jinja.read_text(encoding="utf-8")
    elif config_path.is_file():
        try:
            data = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise AdapterFileError(f"{config_path} is corrupt: {err}") from None
        found = data.get("chat_template") if isinstance(data, dict) else None
        if isinstance(found, list):  # named templates: [{"name": "default", "template": ...}, ...]
            found = next((t.get("template") for t in found if isinstance(t, dict) and t.get("name") == "default"), None)
    if not isinstance(found, str) or not found.strip() or found == backbone.tokenizer.chat_template:
        return None
    return found


def _tag_scheme(labels: list[str]) -> str | None:
    try:
        return normalise_scheme(detect_scheme([labels]))
    except DataError:
        return None


def describe_adapter(
    model: AdaptedModel,
    *,
    name_or_path: str,
    base_fingerprint: str,
    base_params: int,
    max_length: int,
    data: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The adapter file's description (as :func:`adaptune.api.train` writes it) for a model built outside a run."""
    from adaptune.api import READ_OPTIONS

    return describe(
        model,
        name_or_path=name_or_path,
        base_fingerprint=base_fingerprint,
        base_params=base_params,
        max_length=max_length,
        data=data if data is not None else DataConfig().model_dump(mode="json", include=READ_OPTIONS),
        **(extra or {}),
    ).as_json()


def _max_length(backbone: Backbone, model: AdaptedModel) -> int:
    """The default ``data.max_length`` within the model's positions, leaving room for a prompt's."""
    from adaptune.api import effective_max_length

    length = effective_max_length(DataConfig().max_length, backbone)
    limit = position_limit(backbone.model)
    virtual = getattr(model.method.config, "num_virtual_tokens", 0)
    if model.method.config.name == "prompt" and limit is not None:
        length = min(length, limit - int(virtual))
    return length


def _load_base(name: str | None, sidecar: dict[str, Any] | None) -> tuple[Backbone, str, str]:
    """The base model, its name and fingerprint, checked against an adaptune export's record of it."""
    if not name:
        raise ConfigError("the peft config names no base_model_name_or_path: give base=... (--base)")
    try:
        backbone = load_backbone(ModelConfig(name_or_path=name))
    except ConfigError as err:
        raise ConfigError(f"cannot load the peft adapter's base model: {err}; give base=... (--base)") from None
    found = BaseFingerprint(backbone.model)
    if sidecar:  # an adaptune export records its base; a plain peft folder does not
        check_base(
            sidecar["adapter"], found, where="the exported adapter", this=f"'{name}'", advice="import it onto that base"
        )
    return backbone, name, found()


def _build(
    folder: Path, backbone: Backbone, sidecar: dict[str, Any] | None, task: str | None, labels: list[str] | None
) -> tuple[AdaptedModel, list[str]]:
    """The adapted model with the peft folder's tensors in it, and the notes on what differs from peft."""
    config, tensors = read_peft_config(folder), read_peft_tensors(folder)
    task_fields = _task(config, sidecar, task)
    kind, name = config["peft_type"], task_fields["name"]
    adapter_tensors, head_tensors = split_head(config, tensors)
    if name == LM_TASK and head_tensors:
        raise AdapterFileError(
            f"{folder / PEFT_CONFIG}: modules_to_save {config['modules_to_save']} trains copies of base modules (LM "
            "head, embeddings ...); adaptune's causal_lm keeps them frozen, so this adapter cannot be imported"
        )
    if name == LM_TASK and "chat_template" not in task_fields:
        task_fields["chat_template"] = _chat_template(folder, backbone)
    method_fields, state = IMPORTERS[kind](config, adapter_tensors, _Hosts(backbone))
    notes = _notes(kind, name, backbone, sidecar)
    head = _head(head_tensors, backbone.hidden_size, sidecar)
    names = _labels(name, labels, sidecar, head)
    backbone.pooling = _pooling(name, backbone, sidecar, notes)
    try:
        run = validate_config({"method": method_fields, "task": task_fields})
        model = build_model(backbone, run.method, run.task, names)
    except ConfigError as err:
        raise AdapterFileError(f"{folder} cannot be imported: {err}") from None
    if head is None and name != LM_TASK:
        notes.append("the peft folder has no task head: the imported head is untrained (random)")
    state.update(head if head is not None else {f"head.{k}": v for k, v in model.head.state_dict().items()})
    if sidecar:
        model.task.load_learned_state(sidecar["adapter"].get("task_state", {}))
    elif name == "token_cls":
        model.task.load_learned_state({"tag_scheme": _tag_scheme(names)})
    try:
        model.load_trainable_state(state)
    except (KeyError, RuntimeError) as err:
        raise AdapterFileError(f"{folder} does not match the adapter its config describes: {err}") from None
    return model, notes


def import_peft(
    peft_dir: str | Path,
    out_dir: str | Path,
    *,
    base: str | None = None,
    task: str | None = None,
    labels: list[str] | None = None,
    overwrite: bool = False,
) -> InteropResult:
    """Read a peft folder and write an adaptune adapter folder that :class:`~adaptune.Predictor` loads.

    ``base``: the base model (default: the peft config's ``base_model_name_or_path``). ``task``: seq_cls,
    token_cls or causal_lm, needed when peft's ``task_type`` names none. ``labels``: the label names (default:
    those an adaptune export recorded, else ``LABEL_0..``; required without a head; none for causal_lm). See
    :mod:`adaptune.peft_interop`.
    """
    folder, out = Path(peft_dir), check_out(out_dir, overwrite)
    config, sidecar = read_peft_config(folder), read_sidecar(folder)
    recorded = sidecar["adapter"]["base_model"]["name_or_path"] if sidecar else None
    backbone, name, base_fp = _load_base(base or config.get("base_model_name_or_path") or recorded, sidecar)
    base_params = sum(p.numel() for p in backbone.model.parameters())
    model, notes = _build(folder, backbone, sidecar, task, labels)
    source = {"format": "peft", "path": str(folder), "peft_type": config["peft_type"], "notes": notes}
    description = describe_adapter(
        model,
        name_or_path=name,
        base_fingerprint=base_fp,
        base_params=base_params,
        max_length=int(sidecar["adapter"]["max_length"]) if sidecar else _max_length(backbone, model),
        data=sidecar["adapter"].get("data") if sidecar else None,
        extra={"imported_from": source},
    )
    write_folder(out, lambda staging: save_adapter(staging, model.trainable_state(), description))
    return InteropResult(out, not notes, notes)
