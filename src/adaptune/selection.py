"""Data selection: which rows of an unlabelled pool to label (or train on) next, for ``adaptune select``.

Three strategies, each giving ``n`` pool rows with a ``score`` and a ``rank`` (1 = first pick):

``centroid`` (target similarity)
    Every text is embedded by the base model (:class:`Embedder`: its own pooling, L2-normalised), the target
    sample's mean embedding ``c = mean_t e_t`` is normalised, and pool rows are ranked by ``cos(e_i, c)``; the
    top ``n`` are picked. Cheap, and close to the target, but the picks may be near-duplicates of each other.
``kcenter`` (coverage of the target region)
    The ``candidates * n`` pool rows most similar to the target centroid (default 3n) are kept, and greedy
    k-center (farthest-first traversal; Gonzalez 1985, used for active learning as the "core-set" of Sener &
    Savarese 2018) picks among them: start from the most target-like candidate, then repeatedly take the
    candidate farthest (cosine distance ``1 - e_i . e_j``) from every pick so far. The ``n`` picks spread over the
    target-like region instead of piling up at its centre, so near-duplicates are picked last. ``score`` is the
    cosine to the target centroid; ``rank`` is the pick order.
``uncertainty`` (active learning)
    A trained adaptune adapter (:class:`~adaptune.inference.Predictor`) predicts every pool row, and rows are
    ranked by the entropy of the predicted class distribution ``H(p) = -sum_j p_j log p_j`` (uncertainty
    sampling; Lewis & Gale 1994, Settles 2009), highest first. Multi-label adapters: the mean binary entropy over
    labels. Token (tagging) adapters: the mean entropy over the words of the sentence (each word's first
    sub-token). The target sample is not used.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from adaptune.backbone import Backbone, load_backbone
from adaptune.config import ModelConfig
from adaptune.data.batching import eval_batches
from adaptune.data.review import SourceRow, read_rows, with_columns, write_rows
from adaptune.errors import ConfigError
from adaptune.tasks.pooling import pool

__all__ = [
    "DEFAULT_MODEL",
    "Embedder",
    "Selection",
    "centroid_scores",
    "entropy",
    "k_center_greedy",
    "select_file",
    "select_rows",
    "uncertainty_scores",
]

#: The embedding model when none is given (installed as a package: loads offline).
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
Strategy = Literal["centroid", "kcenter", "uncertainty"]
STRATEGIES: tuple[str, ...] = ("centroid", "kcenter", "uncertainty")
#: The columns :func:`select_file` adds to each picked row.
ADDED_COLUMNS = ("score", "rank", "pool_line")


class Embedder:
    """Sentence embeddings from a frozen base model: tokens -> hidden states ``(B, T, d)`` -> the model's pooling
    (:func:`adaptune.tasks.pooling.pool`; sentence-transformers' own config when it has one, see
    :func:`adaptune.backbone.read_pooling`) -> L2-normalised ``(B, d)``. Batches are sorted by length (least
    padding); no gradients.

    Args:
        backbone: the loaded base model (:func:`adaptune.backbone.load_backbone`).
        batch_size: texts per forward pass (64).
        max_length: tokens per text; longer texts are truncated (256, capped by the model's positions).
    """

    def __init__(self, backbone: Backbone, *, batch_size: int = 64, max_length: int = 256) -> None:
        from adaptune.api import effective_max_length

        self.backbone = backbone
        self.batch_size = batch_size
        self.max_length = effective_max_length(max_length, backbone)

    @classmethod
    def load(
        cls, model: str = DEFAULT_MODEL, *, pooling: str = "auto", device: str = "auto", batch_size: int = 64
    ) -> Embedder:
        """Load ``model`` (hub id or folder) with :func:`~adaptune.backbone.load_backbone` onto ``device``."""
        from adaptune.training.distributed import resolve_device

        where = resolve_device(device)
        backbone = load_backbone(ModelConfig.model_validate({"name_or_path": model, "pooling": pooling}))
        backbone.model.to(where)
        return cls(backbone, batch_size=batch_size)

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """``(len(texts), d)`` float32 unit vectors, in input order, on the CPU."""
        tokenizer, model = self.backbone.tokenizer, self.backbone.model
        ids = tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        device = next(model.parameters()).device
        out = torch.zeros(len(ids), self.backbone.hidden_size)
        with torch.no_grad():
            for indices in eval_batches([len(row) for row in ids], self.batch_size):
                batch, mask = _padded([ids[i] for i in indices], int(tokenizer.pad_token_id), tokenizer.padding_side)
                batch, mask = batch.to(device), mask.to(device)
                hidden = model(input_ids=batch, attention_mask=mask).last_hidden_state
                out[indices] = F.normalize(pool(hidden.float(), mask, self.backbone.pooling), dim=-1).cpu()
        return out


def _padded(rows: Sequence[Sequence[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id rows padded to the longest on ``side``: ids and attention mask, both ``(B, T)``."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for number, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[number, span] = torch.tensor(list(row), dtype=torch.long)
        mask[number, span] = 1
    return ids, mask


def centroid_scores(pool_vectors: torch.Tensor, target_vectors: torch.Tensor) -> torch.Tensor:
    """``cos(e_i, c)`` for each pool row ``e_i`` (unit rows, ``(N, d)``) and the normalised mean ``c`` of the
    target rows ``(M, d)``: ``(N,)``."""
    centroid = F.normalize(target_vectors.mean(0), dim=0)
    return pool_vectors @ centroid


def k_center_greedy(vectors: torch.Tensor, k: int, start: int = 0) -> list[int]:
    """Greedy k-center (farthest-first traversal) over unit rows ``vectors`` ``(M, d)``: ``k`` row indices, in
    pick order, beginning with ``start``; each next pick maximises ``min_{j picked} (1 - v_i . v_j)``. Ties go to
    the lowest index. Within a factor 2 of the optimal k-center radius (Gonzalez 1985)."""
    if not 0 < k <= vectors.shape[0]:
        raise ValueError(f"k={k} must be between 1 and the number of rows ({vectors.shape[0]})")
    picked = [start]
    nearest = 1.0 - vectors @ vectors[start]  # (M,): distance of each row to its nearest pick
    nearest[start] = -math.inf
    for _ in range(k - 1):
        nxt = int(torch.argmax(nearest))
        picked.append(nxt)
        nearest = torch.minimum(nearest, 1.0 - vectors @ vectors[nxt])
        nearest[picked] = -math.inf
    return picked


def entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) over the last dimension: ``(..., C) -> (...)``; ``0 log 0 = 0``."""
    p = probabilities.float().clamp(min=0)
    return -(torch.where(p > 0, p * p.clamp(min=1e-30).log(), torch.zeros_like(p))).sum(-1)


def _binary_entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Mean over labels of each label's binary entropy: ``(..., C) -> (...)`` (multi-label sigmoid outputs)."""
    p = probabilities.float()
    return entropy(torch.stack([p, 1 - p], dim=-1)).mean(-1)


def uncertainty_scores(predictor: Any, texts: Sequence[str]) -> torch.Tensor:
    """Entropy of ``predictor``'s (an adapter's :class:`~adaptune.inference.Predictor`) predicted distribution for
    each text: ``(N,)``. Classification: the softmax over labels (multi-label: mean binary entropy of the
    sigmoids); tagging: the mean over words (first sub-tokens) of each word's tag entropy.

    Raises:
        ConfigError: for an adapter whose task neither classifies nor tags (generation, relations, answers).
    """
    kind = predictor.task.kind
    if kind not in ("classify", "tag"):
        raise ConfigError(
            f"--strategy uncertainty needs a classification or tagging adapter; {predictor.name} is a "
            f"'{kind}' adapter (its predictions have no class distribution to take the entropy of)"
        )
    logits = predictor.logits(list(texts))
    if kind == "classify":
        multi = bool(getattr(predictor.task.config, "multi_label", False))
        rows = torch.stack([row.float() for row in logits])
        return _binary_entropy(torch.sigmoid(rows)) if multi else entropy(torch.softmax(rows, dim=-1))
    encoded = predictor.encode(predictor.examples(list(texts)))
    scores = []
    for row, item in zip(logits, encoded, strict=True):
        words = torch.tensor([w >= 0 for w in item.word_index or []], dtype=torch.bool)
        per_token = entropy(torch.softmax(row.float(), dim=-1))
        scores.append(per_token[words[: len(per_token)]].mean() if bool(words.any()) else per_token.mean())
    return torch.stack(scores)


@dataclass
class Selection:
    """The picks: pool row indices (0-based, in rank order), their scores, and how they were chosen."""

    strategy: str
    indices: list[int]
    scores: list[float]
    #: Console notes (e.g. an unused target file).
    notes: list[str]


def _check_n(n: int, pool_size: int) -> None:
    if n < 1:
        raise ConfigError(f"--n {n}: pick at least one row")
    if n > pool_size:
        raise ConfigError(f"--n {n} is more than the pool's {pool_size} rows")


def select_rows(
    pool_texts: Sequence[str],
    n: int,
    *,
    strategy: str = "centroid",
    target_texts: Sequence[str] | None = None,
    embedder: Embedder | None = None,
    predictor: Any = None,
    candidates: float = 3.0,
) -> Selection:
    """Pick ``n`` of ``pool_texts`` by ``strategy`` (see the module docstring).

    ``centroid`` and ``kcenter`` need ``target_texts`` and an ``embedder``; ``kcenter`` keeps the
    ``ceil(candidates * n)`` most target-like rows (at least ``n``) before its farthest-first picks;
    ``uncertainty`` needs a ``predictor``.
    """
    _check_n(n, len(pool_texts))
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    if candidates < 1:
        raise ConfigError(f"--candidates {candidates}: must be at least 1 (times --n)")
    if strategy == "uncertainty":
        if predictor is None:
            raise ConfigError("--strategy uncertainty needs a trained adapter: --adapter DIR")
        notes = ["the target file is not used by --strategy uncertainty"] if target_texts else []
        scores = uncertainty_scores(predictor, pool_texts)
        order = torch.argsort(-scores, stable=True)[:n].tolist()
        return Selection(strategy, order, [float(scores[i]) for i in order], notes)
    if not target_texts:
        raise ConfigError(f"--strategy {strategy} needs a TARGET file of texts like those wanted")
    if embedder is None:
        raise ConfigError(f"--strategy {strategy} needs an embedding model")
    pool_vectors, target_vectors = embedder.embed(pool_texts), embedder.embed(target_texts)
    similarity = centroid_scores(pool_vectors, target_vectors)
    ranked = torch.argsort(-similarity, stable=True)
    if strategy == "centroid":
        order = ranked[:n].tolist()
    else:
        kept = ranked[: max(n, min(len(pool_texts), math.ceil(candidates * n)))]
        order = [int(kept[i]) for i in k_center_greedy(pool_vectors[kept], n, start=0)]
    return Selection(strategy, order, [float(similarity[i]) for i in order], [])


def _target_texts(target: str | Path | None, text_column: str) -> list[str] | None:
    """The target sample's texts (labels, if any, are ignored)."""
    return None if target is None else [row.text for row in read_rows(target, text_column=text_column)]


def select_file(
    pool: str | Path,
    target: str | Path | None,
    *,
    n: int,
    out: str | Path,
    strategy: str = "centroid",
    model: str = DEFAULT_MODEL,
    adapter: str | Path | None = None,
    text_column: str = "text",
    target_text_column: str | None = None,
    candidates: float = 3.0,
    device: str = "auto",
    batch_size: int = 64,
    embedder: Embedder | None = None,
) -> Selection:
    """Read ``pool`` (and ``target``), pick ``n`` rows (:func:`select_rows`) and write them to ``out`` (csv, tsv
    or jsonl by its extension) with every original field plus ``score``, ``rank`` (1 = first pick) and
    ``pool_line`` (the row's line in ``pool``). ``embedder``: one already loaded (else ``model`` is loaded
    unless the strategy is ``uncertainty``); ``adapter``: the adapter folder ``uncertainty`` predicts with (on
    its own base model; ``model`` is then not used)."""
    rows: list[SourceRow] = read_rows(pool, text_column=text_column)
    _check_n(n, len(rows))
    for row in rows:  # a clash with an added column is refused before any model runs
        with_columns(row, dict.fromkeys(ADDED_COLUMNS))
    texts = [row.text for row in rows]
    target_texts = _target_texts(target, target_text_column or text_column)
    predictor = None
    if strategy == "uncertainty":
        if adapter is None:
            raise ConfigError("--strategy uncertainty needs a trained adapter: --adapter DIR")
        from adaptune.inference import Predictor

        predictor = Predictor.load(adapter, device=device, batch_size=batch_size)
    elif adapter is not None:
        warnings.warn(f"--adapter is used by --strategy uncertainty only, not {strategy}", stacklevel=2)
    if strategy in ("centroid", "kcenter") and embedder is None and target_texts:
        embedder = Embedder.load(model, device=device, batch_size=batch_size)
    selection = select_rows(
        texts,
        n,
        strategy=strategy,
        target_texts=target_texts,
        embedder=embedder,
        predictor=predictor,
        candidates=candidates,
    )
    records = [
        with_columns(rows[i], {"score": round(score, 6), "rank": rank, "pool_line": rows[i].line})
        for rank, (i, score) in enumerate(zip(selection.indices, selection.scores, strict=True), start=1)
    ]
    write_rows(out, records)
    return selection
