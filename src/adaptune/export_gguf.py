"""Export a causal_lm LoRA adapter as a GGUF LoRA adapter: the file llama.cpp applies to a base GGUF model
(``llama-cli -m base.gguf --lora adapter.gguf``; Ollama's ``ADAPTER adapter.gguf`` in a Modelfile).

``export_gguf(adapter_dir, out_path)`` (the CLI's ``adaptune export ADAPTER OUT.gguf --format gguf``) writes the
layout that llama.cpp's own converter writes (``convert_lora_to_gguf.py``, which reuses the per-architecture tensor
handling of ``convert_hf_to_gguf.py``, now ``conversion/llama.py``) and that its loader checks
(``llama_adapter_lora_init_impl`` in ``src/llama-adapter.cpp``; the scale is ``get_scale`` in
``src/llama-adapter.h``).

Metadata (GGUF key: type = value)::

    general.architecture: str = "llama" | "qwen2" | "qwen3"   must be the base GGUF's (llama.cpp refuses others)
    general.type: str         = "adapter"                      required by the loader
    adapter.type: str         = "lora"                         required by the loader
    adapter.lora.alpha: f32   = s * r                          the loader scales each update by alpha / rank
    general.name, general.file_type (0: all F32), general.quantization_version, general.base_model.count = 1,
    general.base_model.0.name (the base model's id), and adaptune.version, adaptune.lora.r, adaptune.lora.alpha,
    adaptune.lora.use_rslora, adaptune.base_model.fingerprint (records; llama.cpp ignores them)

Tensors: for every adapted linear map ``W0: (out, in)``, named as the base GGUF names that weight (gguf's tensor
name map of the architecture: HF ``model.layers.N.self_attn.q_proj.weight`` -> ``blk.N.attn_q.weight``)::

    blk.N.attn_q.weight.lora_a   A        (r, in)    row-major, as PyTorch stores it; GGUF dims ne = [in, r]
    blk.N.attn_q.weight.lora_b   P B      (out, r)   GGUF dims ne = [r, out]; P: the q/k row permutation below

so that llama.cpp computes ``W0 x + (alpha / r) B (A x)`` with ``r = ne[0]`` of ``lora_b``, and its shape check
holds: base ``ne[0] == lora_a.ne[0]`` (in), base ``ne[1] == lora_b.ne[1]`` (out), ``lora_a.ne[1] == lora_b.ne[0]``
(r). llama.cpp applies LoRA (``build_lora_mm``) to ``attn_q``, ``attn_k``, ``attn_v``, ``attn_output``,
``ffn_gate``, ``ffn_up`` and ``ffn_down`` of these architectures; other targets are refused. The tensors are F32,
the converter's default ``--outtype``: exact values (llama.cpp computes the update in F32 whatever the base's
quantisation), and at a few MB an adapter gains little from F16.

Scale: adaptune's update is ``s B A`` with ``s = alpha / r`` (``alpha / sqrt(r)`` with rsLoRA). The file stores
``adapter.lora.alpha = s * r`` (the trained alpha, or ``alpha * sqrt(r)`` with rsLoRA, which llama.cpp's converter
would get wrong), so ``alpha / r`` is ``s`` again. DoRA (a learned magnitude per output row, a non-linear
rescaling of ``W0 + s B A``) has no GGUF form and is refused, as are methods other than LoRA and tasks other than
causal_lm (llama.cpp has no classifier heads).

Permutation (Llama only, ``general.architecture == "llama"``): llama.cpp's HF->GGUF converter reorders the rows of
every ``q_proj`` (``n_head`` heads) and ``k_proj`` (``n_head_kv`` heads) weight from HF's rotary layout (each
head's first half rotated with its second half) to GGML's (consecutive pairs)::

    P W = W.reshape(heads, 2, rows // heads // 2, in).swapaxes(1, 2).reshape(rows, in)

and ``convert_lora_to_gguf.py`` applies the same ``P`` to ``lora_b`` (a row permutation commutes with ``B A``:
``P (W0 + s B A) = P W0 + s (P B) A``). transformers' GGUF loader undoes ``P`` when it dequantises a llama GGUF
(``LlamaTensorProcessor``), so an adapter trained on SmolLM2's GGUF saw HF-layout weights, like one trained on an
HF folder: both get ``P B``. Qwen2 and Qwen3 are converted without a permutation and exported without one.

When the base is a GGUF file (``base_model.gguf_file``), the export checks each tensor name and shape against it,
as llama.cpp's loader will; for an HF folder it reads the head counts from ``config.json`` (the base GGUF the user
converts from it must be that model). ``read_gguf_lora(path)`` reads a file back (metadata and tensors) for checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from adaptune import __version__
from adaptune.backbone import resolve_model
from adaptune.combine import lora_parts
from adaptune.errors import AdapterFileError, ConfigError
from adaptune.extras import as_missing_extra
from adaptune.io import AdapterFile, atomic_file, load_adapter, read_adapter_config
from adaptune.methods.lora import LoRAConfig

if TYPE_CHECKING:
    from types import ModuleType

    from gguf import ReaderField, TensorNameMap

FEATURE = "adaptune export --format gguf"
#: The GGUF tensors (``blk.N.<kind>.weight``) llama.cpp multiplies through ``build_lora_mm`` in these architectures.
LORA_KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
#: ``general.file_type`` of an all-F32 file (``LlamaFileType.ALL_F32``).
ALL_F32 = 0


@dataclass(frozen=True)
class GgufArch:
    """How llama.cpp names an architecture (``general.architecture``) and whether its converter permutes q/k rows."""

    name: str
    permute_qk: bool


#: transformers ``model_type`` -> llama.cpp's architecture (Mistral converts as ``llama``, ``LlamaModel``).
GGUF_ARCHES: dict[str, GgufArch] = {
    "llama": GgufArch("llama", True),
    "mistral": GgufArch("llama", True),
    "qwen2": GgufArch("qwen2", False),
    "qwen3": GgufArch("qwen3", False),
}
_BY_GGUF_NAME = {arch.name: arch for arch in GGUF_ARCHES.values()}


@dataclass(frozen=True)
class BaseFacts:
    """What the export needs from the base model: its GGUF architecture, head and block counts and, when the base
    is a GGUF file, its tensors' GGUF dims (``ne``, innermost first) by name."""

    arch: GgufArch
    n_head: int
    n_head_kv: int
    n_layers: int
    tensors: dict[str, list[int]] | None
    where: str


@dataclass
class GgufLoRA:
    """A GGUF LoRA file read back: its metadata (key -> value, arrays as lists), its tensors as stored (``lora_a``
    ``(r, in)``, ``lora_b`` ``(out, r)``, as torch tensors), their GGUF dims (``ne``) and GGML type names."""

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    shapes: dict[str, list[int]]
    types: dict[str, str]


def _gguf() -> ModuleType:
    """The ``gguf`` package, or a :class:`~adaptune.extras.MissingExtraError` naming the extra that installs it."""
    try:
        import gguf
    except ImportError as err:
        missing = as_missing_extra(err, FEATURE)
        if missing is None:
            raise
        raise missing from None
    return gguf


def export_gguf(
    adapter_dir: str | Path, out_path: str | Path, *, base: str | None = None, overwrite: bool = False
) -> Path:
    """Write the adapter at ``adapter_dir`` as the GGUF LoRA file ``out_path`` (see the module docstring).

    ``base`` names another copy of the base model (a folder or hub id) to read its config or GGUF file from. The
    file is written beside ``out_path`` and renamed into place, so a crash never leaves a half-written file; an
    existing ``out_path`` is an error unless ``overwrite``. Refused in one line: another task than causal_lm,
    another method than LoRA, DoRA, an architecture llama.cpp's LoRA loader is not mapped for here, and targets
    llama.cpp applies no LoRA to.
    """
    out = _check_out(Path(out_path), overwrite)
    lora = check_exportable(read_adapter_config(adapter_dir), Path(adapter_dir))
    adapter = load_adapter(adapter_dir)
    facts = base_facts(adapter, base)
    tensors = gguf_tensors(adapter, lora, facts)
    alpha = _scaling(lora) * lora.r
    _write(out, facts.arch.name, _metadata(adapter, lora, alpha, out), tensors)
    return out


def _check_out(out: Path, overwrite: bool) -> Path:
    if out.suffix != ".gguf":
        raise ConfigError(f"output {out}: a GGUF adapter is one file, give a path ending in .gguf")
    if out.is_dir():
        raise ConfigError(f"output {out} is a folder; give the path of the .gguf file to write")
    if out.exists() and not overwrite:
        raise ConfigError(f"output file {out} exists; pass overwrite=True (--overwrite)")
    return out


def check_exportable(config: dict[str, Any], where: Path) -> LoRAConfig:
    """The adapter's LoRA config, or a one-line :class:`ConfigError` for a task, method or variant without a GGUF
    form."""
    task = config.get("task", {}).get("name")
    method = config.get("method", {}).get("name")
    supported = "it exports plain LoRA adapters (method lora, no DoRA) of causal_lm tasks"
    if task != "causal_lm":
        raise ConfigError(
            f"adapter {where}: task '{task}' has no GGUF form (llama.cpp runs language models, not task heads); "
            f"{FEATURE}: {supported}; --format peft or onnx export other tasks"
        )
    if method != "lora":
        raise ConfigError(
            f"adapter {where}: method '{method}' has no GGUF form (llama.cpp applies LoRA adapters only); "
            f"{FEATURE}: {supported}; --format peft exports {method}"
        )
    lora = LoRAConfig.model_validate(config["method"])
    if lora.use_dora:
        raise ConfigError(
            f"adapter {where}: DoRA (method.use_dora) has no GGUF form (llama.cpp applies plain LoRA, without "
            f"DoRA's magnitude); {FEATURE}: {supported}; adaptune merge folds DoRA into the weights"
        )
    return lora


def _scaling(lora: LoRAConfig) -> float:
    return lora.alpha / math.sqrt(lora.r) if lora.use_rslora else lora.alpha / lora.r


def base_facts(adapter: AdapterFile, base: str | None = None) -> BaseFacts:
    """Architecture, head counts and (for a GGUF base) tensor dims of the adapter's base model (or of ``base``)."""
    record = adapter.config["base_model"]
    name = base or record["name_or_path"]
    where = resolve_model(name, record.get("gguf_file"))
    if where.gguf_file:
        return _gguf_base_facts(Path(where.path) / where.gguf_file, adapter)
    from transformers import AutoConfig

    try:
        hf = AutoConfig.from_pretrained(where.path)
    except (OSError, ValueError) as err:
        raise AdapterFileError(
            f"adapter {adapter.path} needs its base model's config ('{name}') to name and lay out the GGUF tensors, "
            f"which cannot be read ({' '.join(str(err).split())}); pass the base model's folder as base=... (--base)"
        ) from None
    arch = _arch(str(hf.model_type), f"model type '{hf.model_type}'")
    n_head = int(hf.num_attention_heads)
    n_kv = int(getattr(hf, "num_key_value_heads", None) or n_head)
    return BaseFacts(arch, n_head, n_kv, int(hf.num_hidden_layers), None, where.path)


def _arch(key: str, what: str, table: dict[str, GgufArch] = GGUF_ARCHES) -> GgufArch:
    arch = table.get(key)
    if arch is None:
        known = ", ".join(sorted(table))
        raise ConfigError(f"{FEATURE}: {what} has no GGUF LoRA mapping here (mapped: {known})")
    return arch


def _gguf_base_facts(path: Path, adapter: AdapterFile) -> BaseFacts:
    """:class:`BaseFacts` from a base GGUF file's metadata and tensor table."""
    if not path.is_file():
        raise AdapterFileError(
            f"adapter {adapter.path}: its base GGUF file {path} is missing; pass the folder that has it as base=..."
        )
    reader = _gguf().GGUFReader(path)
    meta = {name: _field_value(field) for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    name = str(meta.get("general.architecture"))
    arch = _arch(name, f"the base GGUF file's architecture '{name}'", _BY_GGUF_NAME)
    n_head = _count(meta.get(f"{name}.attention.head_count"))
    n_kv = _count(meta.get(f"{name}.attention.head_count_kv", n_head))
    tensors = {t.name: [int(d) for d in t.shape] for t in reader.tensors}
    return BaseFacts(arch, n_head, n_kv, _count(meta.get(f"{name}.block_count")), tensors, str(path))


def _count(value: Any) -> int:
    """A head or block count: an integer, or a per-layer list of one repeated value."""
    values = set(value) if isinstance(value, list) else {value}
    if len(values) != 1 or not isinstance(next(iter(values)), int):
        raise ConfigError(f"{FEATURE}: the base GGUF file has per-layer head counts {value}, which is not mapped here")
    return int(next(iter(values)))


def gguf_tensors(adapter: AdapterFile, lora: LoRAConfig, facts: BaseFacts) -> dict[str, np.ndarray]:
    """GGUF tensor name -> float32 array as stored (``lora_a`` ``(r, in)``, ``lora_b`` ``(out, r)``, permuted)."""
    gguf = _gguf()
    arch_enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[facts.arch.name]
    names = gguf.get_tensor_name_map(arch_enum, facts.n_layers)
    out: dict[str, np.ndarray] = {}
    for host, part in sorted(lora_parts(adapter).items()):
        name = _gguf_name(names, host, facts.arch.name)
        kind = name.split(".")[2]
        # llama.cpp scales by alpha / rank with rank read from each lora_b: keep s for a host of another rank
        b = part.b * (part.b.shape[1] / lora.r)
        if facts.arch.permute_qk and kind in ("attn_q", "attn_k"):
            b = permute_rows(b, facts.n_head if kind == "attn_q" else facts.n_head_kv)
        a = part.a
        _check_base_shape(facts, name, a, b)
        out[f"{name}.lora_a"] = a.contiguous().numpy().astype(np.float32)
        out[f"{name}.lora_b"] = b.contiguous().numpy().astype(np.float32)
    if not out:
        raise AdapterFileError(f"adapter {adapter.path} has no LoRA tensors")
    return out


def _gguf_name(names: TensorNameMap, host: str, arch: str) -> str:
    """``blk.N.<kind>.weight`` for the HF module ``host`` (``layers.N.self_attn.q_proj``), or a one-line refusal."""
    name = names.get_name(f"model.{host}.weight", try_suffixes=(".weight",))
    if name is None:
        raise ConfigError(f"{FEATURE}: module '{host}' has no GGUF tensor in architecture '{arch}'")
    parts = name.split(".")
    if len(parts) != 4 or parts[0] != "blk" or parts[2] not in LORA_KINDS:
        raise ConfigError(
            f"{FEATURE}: module '{host}' is GGUF tensor '{name}', which llama.cpp applies no LoRA to "
            f"(it does to blk.N.{{{', '.join(LORA_KINDS)}}}.weight)"
        )
    return name


def permute_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's q/k row order from HF's: ``(rows, ...) -> (rows, ...)``, rows grouped as ``(heads, 2, half)``
    and the last two swapped (``LlamaModel.permute`` in llama.cpp's converter; transformers' GGUF loader undoes it)."""
    rows = weight.shape[0]
    if rows % (2 * heads):
        raise ConfigError(f"{FEATURE}: {rows} rows do not split into {heads} heads of rotary pairs")
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _check_base_shape(facts: BaseFacts, name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    """llama.cpp's own check, made now: the base has ``name`` and its dims ``[in, out]`` fit ``A``, ``B``."""
    if facts.tensors is None:
        return
    dims = facts.tensors.get(name)
    if dims is None:
        raise AdapterFileError(f"{FEATURE}: the base GGUF file {facts.where} has no tensor '{name}'")
    if dims[:2] != [a.shape[1], b.shape[0]]:
        raise AdapterFileError(
            f"{FEATURE}: base tensor '{name}' has dims {dims} in {facts.where}, the adapter's update is "
            f"[{a.shape[1]}, {b.shape[0]}] (in, out): another base model"
        )


def _metadata(adapter: AdapterFile, lora: LoRAConfig, alpha: float, out: Path) -> dict[str, tuple[str, Any]]:
    """GGUF key -> (value type, value): the keys llama.cpp reads, then records (see the module docstring)."""
    record = adapter.config["base_model"]
    return {
        "general.type": ("string", "adapter"),
        "adapter.type": ("string", "lora"),
        "adapter.lora.alpha": ("float32", alpha),
        "general.name": ("string", out.stem),
        "general.file_type": ("uint32", ALL_F32),
        "general.quantization_version": ("uint32", _gguf().GGML_QUANT_VERSION),
        "general.base_model.count": ("uint32", 1),
        "general.base_model.0.name": ("string", str(record["name_or_path"])),
        "adaptune.version": ("string", __version__),
        "adaptune.lora.r": ("uint32", lora.r),
        "adaptune.lora.alpha": ("float32", lora.alpha),
        "adaptune.lora.use_rslora": ("bool", lora.use_rslora),
        "adaptune.base_model.fingerprint": ("string", str(record["fingerprint"])),
    }


def _write(out: Path, arch: str, metadata: dict[str, tuple[str, Any]], tensors: dict[str, np.ndarray]) -> None:
    """Write the GGUF file atomically (:func:`~adaptune.io.atomic_file`: a temporary file beside ``out``,
    fsynced and renamed into place)."""
    gguf = _gguf()
    with atomic_file(out) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        for key, (kind, value) in metadata.items():
            getattr(writer, f"add_{kind}")(key, value)
        for name, array in tensors.items():
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def read_gguf_lora(path: str | Path) -> GgufLoRA:
    """Read a GGUF (LoRA) file back: metadata without the ``GGUF.*`` header fields, and every tensor as stored."""
    reader = _gguf().GGUFReader(Path(path))
    metadata = {name: _field_value(field) for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    return GgufLoRA(
        path=Path(path),
        metadata=metadata,
        tensors={t.name: torch.from_numpy(np.array(t.data)) for t in reader.tensors},
        shapes={t.name: [int(d) for d in t.shape] for t in reader.tensors},
        types={t.name: t.tensor_type.name for t in reader.tensors},
    )


def _field_value(field: ReaderField) -> Any:
    """A GGUF metadata field's value: a string, number or bool, or a list of them for an array."""
    value_type = _gguf().GGUFValueType
    element = field.types[-1]
    values = [
        bytes(field.parts[i]).decode("utf-8") if element == value_type.STRING else field.parts[i].tolist()[0]
        for i in field.data
    ]
    return values if field.types[0] == value_type.ARRAY else values[0]
