"""Typed configuration shared by the Python API, the CLI and YAML files.

A run is described by :class:`RunConfig` with five sections: ``model``, ``method``, ``task``, ``data``,
``training``. ``method`` and ``task`` are resolved through the registries, so a new method brings its own config
class. Every error names the key, the value given and what is allowed, and happens before any work starts.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from adaptune.errors import ConfigError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_NAMES = {"method": "bottleneck", "task": "seq_cls"}


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ModelConfig(StrictModel):
    """The frozen pretrained backbone."""

    name_or_path: str = Field(DEFAULT_MODEL, description="Hub id or local folder of a transformers model.")
    gguf_file: str | None = Field(None, description="GGUF file inside name_or_path, dequantised on load.")
    pooling: Literal["auto", "cls", "mean", "max", "last"] = Field(
        "auto",
        description="Sentence pooling for sequence tasks. 'auto' reads the model's own pooling config "
        "(sentence-transformers 1_Pooling/config.json), else CLS for encoders and last token for decoders.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(False, description="Allow custom modeling code from the hub.")


class MethodConfig(StrictModel):
    """Base of every method config; subclasses add their own fields and register with the method."""

    name: str = Field(description="Registered method name, e.g. 'head' or 'bottleneck'.")


class TaskConfig(StrictModel):
    """Base of every task config; subclasses add their own fields and register with the task."""

    name: str = Field(description="Registered task name, e.g. 'seq_cls' or 'token_cls'.")


#: Augmentation operations (:mod:`adaptune.data.augment`): EDA's for text rows, two label-safe ones for NER rows.
AugmentOp = Literal["swap", "delete", "insert", "replace_mention", "shuffle_segments"]


class AugmentConfig(StrictModel):
    """Data augmentation of the training rows, before tokenisation (:mod:`adaptune.data.augment`); dev and test
    are never augmented."""

    copies: int = Field(1, ge=1, le=64, description="Augmented copies made of each training row, added to it.")
    ops: list[AugmentOp] | None = Field(
        None,
        min_length=1,
        description="Operations a copy draws one of (uniformly, among those that can change the row). Text rows "
        "(seq_cls): swap, delete, insert (EDA without synonyms; per character for mostly-Chinese text). NER rows "
        "(token_cls): replace_mention (a mention for another of its type from the training set), "
        "shuffle_segments (entities and the runs between them reordered). None: every op of the task.",
    )
    p: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="EDA's rate alpha: swap and insert change max(1, int(p * words)) words, delete drops each word "
        "with probability p (never all); replace_mention replaces each mention with probability p (at least one).",
    )
    seed: int | None = Field(None, description="Seed of the augmentation draws; None: training.seed.")

    @field_validator("ops")
    @classmethod
    def _distinct_ops(cls, ops: list[str] | None) -> list[str] | None:
        if ops is not None and len(set(ops)) != len(ops):
            raise ConfigError(f"config key 'data.augment.ops' = {ops}: name each operation once")
        return ops


class DataConfig(StrictModel):
    """Where the examples are and how to read and batch them."""

    train: str | None = Field(None, description="Training file or folder.")
    dev: str | None = Field(None, description="Development file: evaluation during training, early stopping.")
    test: str | None = Field(None, description="Test file, evaluated once after training.")
    format: Literal["auto", "csv", "tsv", "jsonl", "json", "conll", "bmes", "hf", "semeval"] = Field(
        "auto",
        description="How the data files are read. auto: from the name (a folder is hf; .csv, .tsv/.tab, .jsonl, "
        ".json (an array or JSON Lines), .conll/.txt/.iob/.bio, .bmes/.bioes); relation_cls also recognises "
        "the SemEval-2010 release files (semeval).",
    )
    text_column: str = Field("text", description="Column/field with the text (sequence tasks).")
    text_pair_column: str | None = Field(None, description="Second text column for sentence-pair tasks.")
    label_column: str = Field("label", description="Column/field with the label (sequence tasks).")
    label_separator: str | None = Field(None, description="Separator of several labels in one cell (multi-label).")
    column_names: list[str] | None = Field(None, description="Column names for CSV/TSV files without a header.")
    token_column: int = Field(0, description="CoNLL: column index of the token.")
    tag_column: int = Field(-1, description="CoNLL: column index of the tag (default: last).")
    hf_split_train: str = "train"
    hf_split_dev: str = "validation"
    hf_split_test: str = "test"
    max_train_examples: int | None = Field(None, ge=1, description="Use only the first N training examples.")
    max_eval_examples: int | None = Field(None, ge=1, description="Use only the first N dev/test examples.")
    augment: AugmentConfig | None = Field(
        None,
        description="Augment the training rows before tokenisation (copies, ops, p, seed); dev and test are read "
        "as they are. None: off.",
    )
    max_length: int = Field(256, ge=8, le=32768, description="Tokens per example; longer inputs are truncated.")
    batch_size: int = Field(32, ge=1, le=65536)
    eval_batch_size: int = Field(64, ge=1, le=65536)
    bucket_by_length: bool = Field(True, description="Group examples of similar length into batches.")


class TrainingConfig(StrictModel):
    """The optimisation loop."""

    epochs: float = Field(5.0, gt=0, le=1000)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps.")
    learning_rate: float | None = Field(
        None, gt=0, lt=1, description="AdamW learning rate; None takes the method's recommended default."
    )
    weight_decay: float = Field(0.01, ge=0, lt=1)
    loraplus_lr_ratio: float | None = Field(
        None,
        gt=0,
        le=1000,
        description="LoRA+: LoRA's B matrices learn at learning_rate times this ratio (the paper suggests 16, "
        "with a lower base rate); None: one learning rate for everything. Needs a method with LoRA.",
    )
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    neftune_noise_alpha: float | None = Field(
        None,
        gt=0,
        le=1000,
        description="NEFTune: uniform noise of scale alpha / sqrt(L * d) on the input embeddings while training "
        "(5 is common for instruction tuning); None: off. Not with training.activation_cache or compile.",
    )
    scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Learning-rate schedule after the warm-up: linear or cosine decay to 0, or constant."
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping; None disables it.")
    grad_accum_steps: int = Field(1, ge=1, le=4096)
    eval_every: int | None = Field(None, ge=1, description="Evaluate every N optimiser steps; None: each epoch.")
    metric: str = Field("auto", description="Metric for model selection and early stopping ('auto': the task's).")
    early_stopping_patience: int | None = Field(None, ge=1, description="Stop after N evaluations without gain.")
    eval_at_start: bool = Field(
        False,
        description="Evaluate dev once before the first step (the base model with the freshly initialised "
        "adapter: for lora, the base itself), recorded as 'at_start' in results.json, with a "
        "generations_dev_start.jsonl for generation tasks: the before of a before/after comparison.",
    )
    seed: int = 42
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Numeric precision of the run. auto: bf16 autocast on a GPU that supports bf16, and on a CPU "
        "whose bf16 matmuls measure at least 1.3x its fp32 rate (AMX; a 0.5 s probe, cached per host), there with "
        "the frozen base weights in bf16 too; fp32 otherwise (CPUs with AVX512-BF16 but no AMX can be slower in "
        "bf16). fp32 / bf16: as asked. The choice and its figures are printed at the start and kept in "
        "results.json; training.bf16 = true asks for bf16 as well.",
    )
    bf16: bool = Field(
        False,
        description="bf16 autocast for the forward pass; weights stay fp32. Asks for bf16 like precision: bf16 "
        "(an error with precision: fp32).",
    )
    bf16_base: bool = Field(
        False,
        description="Store the frozen base weights in bf16 (needs bf16: precision bf16 or training.bf16): half the "
        "memory, and autocast no longer casts them every step; the adapter and head weights stay fp32 (master "
        "weights). precision auto turns it on where it picks bf16 on a CPU, unless set to false explicitly.",
    )
    frozen_prefix_no_grad: bool = Field(
        False,
        description="Run the embeddings and the blocks below the lowest trainable block without autograd and "
        "with dropout off (a fixed feature extractor); no effect when the method trains block 0.",
    )
    activation_cache: Literal["off", "memory", "mmap"] = Field(
        "off",
        description="Keep the frozen prefix's output per training example the first time it is computed and "
        "train later epochs on it ('memory', or 'mmap': a memory-mapped file in output_dir, deleted after "
        "training). Needs frozen bottom blocks (method 'head', or method.layers on the top blocks); implies "
        "frozen_prefix_no_grad.",
    )
    padding_free: bool = Field(
        False,
        description="Run the backbone on each batch's real tokens only, packed into one row (attention still per "
        "example): the same results with less work when batches carry padding (bucket_by_length: false, or "
        "lengths that vary a lot). Encoders and decoders; not with prompt/prefix tuning or the activation cache.",
    )
    fast_dropout: bool | Literal["auto"] = Field(
        "auto",
        description="Draw the training dropout masks (the backbone's, the adapter's and the head's, attention "
        "probabilities included when the backbone runs SDPA attention) from 16-bit random lanes instead of "
        "torch's per-element Bernoulli draws: same distribution, p rounded to a multiple of 1/65536, about 3x "
        "cheaper masks on CPU (adaptune.fast_dropout); torch.manual_seed still makes runs reproducible, with "
        "other masks than torch's. Eval is unchanged. auto: on when training on a CPU without padding_free or "
        "compile (which it cannot be combined with); true / false: as asked.",
    )
    compile: bool = Field(
        False,
        description="torch.compile the backbone (dynamic shapes). A one-off compile of minutes on CPU, then about "
        "1.3x faster LoRA steps on MiniLM (bf16, measured); pays on long runs. Not with the frozen-prefix switches.",
    )
    activation_checkpointing: int = Field(
        0,
        ge=0,
        description="Recompute the activations of every N-th transformer block in the backward pass instead of "
        "storing them (0: off, 1: every block): far less memory for about one more forward pass of those "
        "blocks. Backbones that support transformers' activation checkpointing.",
    )
    trim_memory: bool = Field(
        False,
        description="Return freed memory to the OS at once (glibc's malloc: fixed trim and mmap thresholds), so "
        "the peak resident memory follows the live tensors instead of the allocator's high-water mark; costs "
        "page faults when memory is reused. Process-wide; Linux with glibc only (a warning elsewhere).",
    )
    num_threads: int | None = Field(None, ge=1, description="torch intra-op threads; None keeps torch's default.")
    num_interop_threads: int | None = Field(
        None, ge=1, description="torch inter-op threads (set once per process, before any parallel work)."
    )
    output_dir: str = Field("runs/run", description="Where the adapter, checkpoints, logs and reports go.")
    progress: bool = Field(True, description="Show a live progress bar.")
    log_every: int = Field(10, ge=1, description="Log the training loss every N optimiser steps.")
    device: str = Field(
        "auto",
        description="Where to train: auto (CUDA when torch sees one, else the CPU), cpu, cuda or cuda:N; the "
        "--device option of train, eval, predict and serve.",
    )
    dist_timeout_s: float = Field(
        600.0,
        gt=0,
        description="Under torchrun: how long a rank waits for the others in a collective before the run fails "
        "(a rank that died is usually noticed at once).",
    )

    @model_validator(mode="after")
    def _compatible_speed_switches(self) -> TrainingConfig:
        if self.precision == "fp32" and (self.bf16 or self.bf16_base):
            key = "bf16" if self.bf16 else "bf16_base"
            raise ConfigError(
                f"config key 'training.{key}' = true asks for bf16, but training.precision = 'fp32'; set "
                "training.precision to bf16 (or auto), or drop the bf16 switch"
            )
        if self.bf16_base and not (self.bf16 or self.precision == "bf16"):
            raise ConfigError(
                "config key 'training.bf16_base' = true needs bf16 autocast: training.precision = bf16 or "
                "training.bf16 = true"
            )
        if self.padding_free and (self.compile or self.activation_cache != "off"):
            raise ConfigError(
                "config key 'training.padding_free' = true cannot be combined with training.compile or "
                "training.activation_cache (they need the padded batch layout); choose one"
            )
        if self.fast_dropout is True and (self.padding_free or self.compile):
            raise ConfigError(
                "config key 'training.fast_dropout' = true cannot be combined with training.padding_free (which "
                "sets its own attention implementation for packed batches) or training.compile (which generates "
                "its own dropout kernels); choose one"
            )
        if self.neftune_noise_alpha is not None and (self.compile or self.activation_cache != "off"):
            raise ConfigError(
                "config key 'training.neftune_noise_alpha' cannot be combined with training.activation_cache (the "
                "cache would keep one draw of the noise) or training.compile; choose one"
            )
        if self.compile and (self.frozen_prefix_no_grad or self.activation_cache != "off"):
            raise ConfigError(
                "config key 'training.compile' = true cannot be combined with training.frozen_prefix_no_grad or "
                "training.activation_cache (they re-route the backbone's forward); choose one"
            )
        if self.activation_checkpointing and (
            self.compile or self.frozen_prefix_no_grad or self.activation_cache != "off"
        ):
            raise ConfigError(
                "config key 'training.activation_checkpointing' cannot be combined with training.compile, "
                "training.frozen_prefix_no_grad or training.activation_cache (they re-route the blocks' forward); "
                "choose one"
            )
        return self


#: Config keys that never change what a run learns: a checkpoint made with other values resumes.
NOT_IN_FINGERPRINT = ("training.progress", "training.output_dir", "training.device", "training.dist_timeout_s")


class GenerationConfig(BaseModel):
    """Decoding options (the same for the Python API, the CLI, the server and evaluation)."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int = Field(256, ge=1, le=32768, description="Most tokens to generate per prompt.")
    do_sample: bool = Field(False, description="Sample (temperature, top-k, top-p) instead of greedy argmax.")
    temperature: float = Field(1.0, gt=0, le=100, description="Sampling: logits are divided by it.")
    top_p: float = Field(1.0, gt=0, le=1, description="Sampling: keep the smallest set of tokens with this mass.")
    top_k: int = Field(0, ge=0, description="Sampling: keep the k most likely tokens; 0 keeps all.")
    repetition_penalty: float = Field(
        1.0,
        gt=0,
        le=10,
        description="Tokens already in the prompt or the output get their logit divided by it when positive and "
        "multiplied by it when negative (transformers' repetition_penalty; greedy decoding too); 1.0 is off, "
        "1.1-1.3 curbs the loops of small models.",
    )
    stop: list[str] = Field(default_factory=list, description="Strings that end the generation (not included).")
    seed: int | None = Field(None, description="Seed of the sampler; None uses torch's global generator.")


class RunConfig(StrictModel):
    """Everything that defines one training run."""

    model: ModelConfig = ModelConfig()
    method: SerializeAsAny[MethodConfig] = Field(default_factory=lambda: _method_config({}))
    task: SerializeAsAny[TaskConfig] = Field(default_factory=lambda: _task_config({}))
    data: DataConfig = DataConfig()
    training: TrainingConfig = TrainingConfig()
    search: dict[str, Any] | None = Field(
        None,
        exclude=True,
        description="A hyper-parameter search over this config for adaptune tune (metric, space: dotted key -> "
        "{low, high, log, step} or {choices}; adaptune.tuning.space.SearchConfig). adaptune train ignores it; it "
        "is left out of the run's config.yaml and fingerprint.",
    )

    @field_validator("method", mode="before")
    @classmethod
    def _resolve_method(cls, value: Any) -> MethodConfig:
        return value if isinstance(value, MethodConfig) else _method_config(value)

    @field_validator("task", mode="before")
    @classmethod
    def _resolve_task(cls, value: Any) -> TaskConfig:
        return value if isinstance(value, TaskConfig) else _task_config(value)

    def fingerprint(self, *, ignore: tuple[str, ...] = NOT_IN_FINGERPRINT) -> str:
        """A short hash of the settings that change results (used to match checkpoints to configs)."""
        flat = {k: v for k, v in flatten(self.model_dump(mode="json")).items() if k not in ignore}
        return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]


def _registered_config(kind: str, value: Any) -> Any:
    from adaptune.registry import method_registration, task_registration

    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(f"config key '{kind}' needs a mapping with a 'name', got {value!r}")
    value = {"name": DEFAULT_NAMES[kind], **value}
    lookup = method_registration if kind == "method" else task_registration
    config_cls = lookup(str(value["name"])).config_cls
    try:
        return config_cls.model_validate(value)
    except ValidationError as err:
        raise ConfigError(_describe_validation(err, prefix=kind, model=config_cls)) from None


def _method_config(value: Any) -> MethodConfig:
    return _registered_config("method", value)  # type: ignore[no-any-return]


def _task_config(value: Any) -> TaskConfig:
    return _registered_config("task", value)  # type: ignore[no-any-return]


def _allowed_keys(model: type[BaseModel] | None, path: tuple[str, ...]) -> list[str]:
    """Field names allowed at ``path`` inside ``model`` (for 'did you mean' hints)."""
    for part in path:
        if model is None or part not in model.model_fields:
            return []
        annotation = model.model_fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return sorted(model.model_fields) if model is not None else []


def _describe_validation(err: ValidationError, *, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    lines = []
    for item in err.errors():
        loc = tuple(str(p) for p in item["loc"])
        key = ".".join((prefix, *loc) if prefix else loc)
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc[:-1])
            hint = difflib.get_close_matches(loc[-1], allowed, n=1)
            msg = f"config key '{key}' is not allowed"
            if hint:
                msg += f"; did you mean '{hint[0]}'?"
            if allowed:
                msg += f" Allowed keys here: {', '.join(allowed)}"
            lines.append(msg)
        elif item["type"] == "value_error" and isinstance(item.get("ctx", {}).get("error"), ConfigError):
            lines.append(str(item["ctx"]["error"]))
        else:
            lines.append(f"config key '{key}' = {item.get('input')!r}: {item['msg']}")
    return "\n".join(lines)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def apply_override(tree: dict[str, Any], assignment: str) -> None:
    """Apply one ``a.b.c=value`` override in place; the value is parsed as YAML (numbers, lists, null ...)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.path=value")
    key, raw = assignment.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {assignment!r} has an empty key")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {assignment!r}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = parse_override_value(raw, assignment)


def parse_override_value(raw: str, assignment: str = "") -> Any:
    """Parse an override value as YAML (``3``, ``true``, ``null``, ``[a, b]``), except that a value starting
    with a YAML indicator (``|``, ``>``, ``*``, ``&``, ``!``, ``%``, ``@``) is taken literally, so
    ``data.label_separator=|`` means the character ``|``."""
    text = raw.strip()
    if not text:
        return None
    if text[0] in "|>*&!%@`":
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {assignment or raw!r}: value is not valid YAML ({err})") from None


def validate_config(tree: dict[str, Any]) -> RunConfig:
    """Build a :class:`RunConfig` from plain data; a :class:`ConfigError` lists every problem."""
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_describe_validation(err, model=RunConfig)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config (or start from defaults when ``path`` is None) and apply ``--set`` overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(loaded).__name__}")
        tree = loaded or {}
        _resolve_relative_paths(tree, path.parent)
    for assignment in overrides:
        apply_override(tree, assignment)
    try:
        return validate_config(tree)
    except ConfigError as err:
        if path is None:
            raise
        raise ConfigError(f"{path}{' with --set overrides' if overrides else ''}: {err}") from None


def _resolve_relative_paths(tree: dict[str, Any], base: Path) -> None:
    """Paths in a YAML file (data files, a stack's member adapter folders) are relative to that file, like
    includes in most build tools."""
    data = tree.get("data")
    if isinstance(data, dict):
        for key in ("train", "dev", "test"):
            _resolve_key(data, key, base)
    method = tree.get("method")
    members = method.get("members") if isinstance(method, dict) else None
    for member in members if isinstance(members, list) else []:
        if isinstance(member, dict):
            _resolve_key(member, "adapter", base)


def _resolve_key(section: dict[str, Any], key: str, base: Path) -> None:
    value = section.get(key)
    if isinstance(value, str) and value and not Path(value).is_absolute():
        section[key] = str((base / value).resolve())
