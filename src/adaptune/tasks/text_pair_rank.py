"""``text_pair_rank``: a bi-encoder that embeds a query and the item it goes with close together.

Query and item texts go through the same adapted backbone, are pooled (the model's own pooling, mean for MiniLM:
:mod:`adaptune.tasks.pooling`) and L2-normalised, ``e(x) = pool(H(x)) / ||pool(H(x))||``. Training minimises the
in-batch-negatives InfoNCE loss (van den Oord et al. 2018, "Representation Learning with Contrastive Predictive
Coding"; Henderson et al. 2017; sentence-transformers' ``MultipleNegativesRankingLoss``). For a batch of ``B``
pairs ``(q_i, p_i)`` with optional hard negatives ``n_i``, the batch's items ``c = (p_1, n_1, p_2, ...)``::

    s_ij = e(q_i) . e(c_j) / tau                                         (B, C)
    L    = -1/B sum_i log( exp(s_{i,pos(i)}) / sum_{j not masked} exp(s_ij) )

Masked for query ``i``: the other copies of its own positive (the same item twice in a batch is no negative of
itself) and the positives of other rows with the same query text (several relevant items for one query).
The task has no head parameters: the method is what trains (``head`` alone has nothing to train and is refused).

Evaluation ranks every query of a dev/test file against the corpus of all distinct items of that file (its
positives, negatives and corpus rows: :mod:`adaptune.data.formats.pairs`), leaving out each query's ``seen``
items: recall@1/5/10, NDCG@10 and MRR@10 (:mod:`adaptune.evaluation.ranking`), NDCG@10 the headline. Prediction
returns a text's embedding, or, given ``items``, those items sorted by cosine similarity to the query.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from transformers import PreTrainedTokenizerBase

from adaptune.config import DataConfig, TaskConfig
from adaptune.data.formats.pairs import PairColumns, PairExample, example_from_row, parse_pair_input
from adaptune.data.readers import read_table_rows
from adaptune.errors import ConfigError, DataError
from adaptune.evaluation.ranking import RECALL_AT, TOP, ranking_metrics
from adaptune.registry import register_task
from adaptune.tasks.base import Encoded, EvalOutput, Task
from adaptune.tasks.pooling import pool

#: Row roles in a collated batch.
QUERY, POSITIVE, NEGATIVE, CANDIDATE = 0, 1, 2, 3


class TextPairRankConfig(TaskConfig):
    """Query/item ranking settings."""

    name: Literal["text_pair_rank"] = "text_pair_rank"
    temperature: float = Field(
        0.05,
        gt=0,
        le=1,
        description="tau of the InfoNCE loss: cosine similarities are divided by it. 0.05 is SimCSE's value and "
        "sentence-transformers' MultipleNegativesRankingLoss default (scale 20): cosines lie in [-1, 1], and a "
        "small tau spreads them enough for a softmax to single out the positive.",
    )
    query_column: str = Field("query", description="Field with the query text (a user's profile, a question).")
    positive_column: str = Field("positive", description="Field with the item that goes with the query.")
    negative_column: str = Field("negative", description="Optional field with a hard negative item.")
    item_column: str = Field(
        "item", description="Dev/test: a row with this field and no query adds an item to the ranking corpus."
    )
    seen_column: str = Field(
        "seen", description="Optional list of items left out of the query's ranking (a user's seen items)."
    )

    def columns(self) -> PairColumns:
        return PairColumns(
            self.query_column, self.positive_column, self.negative_column, self.item_column, self.seen_column
        )


@dataclass
class PairEncoded(Encoded):
    """A tokenised :class:`PairExample`: one batch row per text, the query's first (``input_ids`` is the first
    row). ``target``, when labelled, holds the item rows' token ids (what the query must rank, positive first)."""

    rows: list[list[int]] = field(default_factory=list)
    roles: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return max(len(row) for row in self.rows)


class EmbeddingHead(nn.Module):
    """Pool and L2-normalise: ``(R, T, d) -> (R, d)`` unit vectors; no parameters."""

    def __init__(self, pooling: str) -> None:
        super().__init__()
        self.pooling = pooling

    def forward(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(pool(hidden, batch["attention_mask"], self.pooling).float(), dim=-1)


def masked_negatives(query_keys: torch.Tensor, item_keys: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(B, C)`` True where item ``c`` must not count as a negative of query ``b``: it is the same item as the
    positive of ``b`` or of another query with the same text (``*_keys``: ids of identical texts), other than
    ``b``'s own positive column ``target[b]``."""
    positive_keys = item_keys[target]  # (B,)
    same_query = query_keys[:, None] == query_keys[None, :]  # (B, B)
    relevant = (same_query[:, :, None] & (positive_keys[None, :, None] == item_keys[None, None, :])).any(1)
    own = torch.zeros_like(relevant)
    own[torch.arange(len(target), device=target.device), target] = True
    return relevant & ~own


def info_nce(embeddings: torch.Tensor, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
    """The in-batch InfoNCE loss of the module docstring over a collated batch's unit ``embeddings`` ``(R, d)``."""
    role, key = batch["row_role"], batch["row_key"]
    queries = batch["query_rows"]  # (B,) the labelled examples' query rows
    items = ((role == POSITIVE) | (role == NEGATIVE)).nonzero().flatten()  # (C,)
    target = batch["labels"]  # (B,) the column of each query's positive
    sim = embeddings[queries].float() @ embeddings[items].float().T / temperature
    sim = sim.masked_fill(masked_negatives(key[queries], key[items], target), float("-inf"))
    return F.cross_entropy(sim, target)


@register_task("text_pair_rank", TextPairRankConfig)
class TextPairRanking(Task[PairExample]):
    """Embed queries and items close when they go together (in-batch negatives); rank items for a query."""

    config: TextPairRankConfig
    default_metric = f"ndcg@{TOP}"
    kind = "embed"
    rows_are_examples = False
    label_field = "positive"

    # -- data -----------------------------------------------------------------------------------------------
    def read(self, path: str, data: DataConfig, *, split: str, require_labels: bool = True) -> list[PairExample]:
        rows = read_table_rows(
            path,
            format=data.format,
            column_names=data.column_names,
            hf_split=getattr(data, f"hf_split_{split}", None),
            task="text pair ranking",
        )
        columns = self.config.columns()
        examples = [example_from_row(row, columns, require_positive=require_labels) for row in rows]
        corpus_row = next((ex for ex in examples if ex.query is None), None)
        if corpus_row is not None and split == "train":
            file, _, line = corpus_row.source.rpartition(":")
            raise DataError(
                "a corpus item row (no query) in the training data: training learns from query rows; put corpus "
                "rows in the dev/test files, where queries are ranked against them",
                file=file,
                line=int(line),
                field=columns.item,
            )
        if corpus_row is not None and data.max_eval_examples:
            raise ConfigError(
                f"config key 'data.max_eval_examples' = {data.max_eval_examples} would cut the corpus rows of "
                f"{path} (the first N rows are kept): drop the limit, or write a smaller file"
            )
        return examples

    def parse_input(self, item: str | dict[str, Any]) -> PairExample:
        return parse_pair_input(item, self.config.query_column)

    def label_names(self, examples: Sequence[PairExample]) -> list[str]:
        """No labels: a pair is its own target. At least two pairs, so that a batch has a negative."""
        if sum(ex.labelled for ex in examples) < 2:
            raise DataError("text pair ranking needs at least 2 query rows with their positive item")
        return []

    def gold(self, example: PairExample) -> Sequence[str]:
        return ()

    def without_labels(self, example: PairExample) -> PairExample:
        return replace(example, positive=None, negative=None, seen=())

    def encode(
        self, example: PairExample, tokenizer: PreTrainedTokenizerBase, labels: Sequence[str], max_length: int
    ) -> PairEncoded:
        texts = ([(QUERY, example.query)] if example.query is not None else []) + self._item_rows(example)
        rows, typed, cut, dropped = [], False, False, 0
        for _, text in texts:
            enc = tokenizer(text, truncation=False)
            full = len(enc["input_ids"])
            if full > max_length:
                enc = tokenizer(text, truncation=True, max_length=max_length)
                cut, dropped = True, dropped + full - max_length
            rows.append(list(enc["input_ids"]))
            typed = "token_type_ids" in enc
        roles = [role for role, _ in texts]
        return PairEncoded(
            input_ids=rows[0],
            token_type_ids=[0] * len(rows[0]) if typed else None,
            target=rows[1:] if example.labelled else None,
            truncated=cut,
            dropped_tokens=dropped,
            rows=rows,
            roles=roles,
        )

    @staticmethod
    def _item_rows(example: PairExample) -> list[tuple[int, str]]:
        rows = [(POSITIVE, example.positive)] if example.positive is not None else []
        rows += [(NEGATIVE, example.negative)] if example.negative is not None else []
        return rows + [(CANDIDATE, text) for text in example.candidates]  # type: ignore[return-value]

    def collate(self, encoded: Sequence[Encoded], pad_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
        """One row per text (:class:`PairEncoded`), with ``example_index`` ``(R,)``, ``row_role`` ``(R,)``,
        ``row_key`` ``(R,)`` (the same id for identical token sequences) and, when two or more examples are
        labelled (query rows with their positive), for those ``query_rows`` ``(B,)``, the row of each query, and
        ``labels`` ``(B,)``, the column of its positive among the batch's positive/negative rows."""
        pairs: Sequence[PairEncoded] = encoded  # type: ignore[assignment]
        flat = [(index, role, ids) for index, e in enumerate(pairs) for role, ids in zip(e.roles, e.rows, strict=True)]
        typed = encoded[0].token_type_ids is not None
        padded = [Encoded(ids, [0] * len(ids) if typed else None) for _, _, ids in flat]
        batch = super().collate(padded, pad_id, padding_side)
        keys: dict[tuple[int, ...], int] = {}
        batch["row_key"] = torch.tensor([keys.setdefault(tuple(ids), len(keys)) for _, _, ids in flat])
        batch["row_role"] = torch.tensor([role for _, role, _ in flat])
        batch["example_index"] = torch.tensor([index for index, _, _ in flat])
        labelled = [index for index, e in enumerate(encoded) if e.target is not None]
        if len(labelled) >= 2:  # a loss needs a negative: dev/test batches may hold corpus rows too
            rows = [(index, role) for index, role, _ in flat]
            columns = [(index, role) for index, role in rows if role in (POSITIVE, NEGATIVE)]
            batch["query_rows"] = torch.tensor([rows.index((index, QUERY)) for index in labelled])
            batch["labels"] = torch.tensor([columns.index((index, POSITIVE)) for index in labelled])
        return batch

    # -- model ----------------------------------------------------------------------------------------------
    def build_head(self, hidden_size: int, num_labels: int, pooling: str) -> nn.Module:
        return EmbeddingHead(pooling)

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return info_nce(logits, batch, self.config.temperature)

    def decode(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], encoded: Sequence[Encoded]) -> list[Any]:
        """Per example: its rows' unit embeddings ``(rows, d)`` (query first), on the CPU."""
        owners = batch["example_index"].to(logits.device)
        return [logits[owners == index].float().cpu() for index in range(len(encoded))]

    # -- evaluation -----------------------------------------------------------------------------------------
    def evaluate(
        self, examples: Sequence[PairExample], predictions: Sequence[Any], labels: Sequence[str]
    ) -> EvalOutput:
        corpus: dict[str, int] = {}
        vectors: list[torch.Tensor] = []
        groups: dict[tuple[str, tuple[str, ...]], tuple[torch.Tensor, set[int]]] = {}
        for example, rows in zip(examples, predictions, strict=True):
            offset = 0 if example.query is None else 1
            for k, text in enumerate(example.items()):
                if text not in corpus:
                    corpus[text] = len(vectors)
                    vectors.append(rows[offset + k])
        for example, rows in zip(examples, predictions, strict=True):
            if example.labelled:
                query = groups.setdefault((example.query, example.seen), (rows[0], set()))  # type: ignore[arg-type]
                query[1].add(corpus[example.positive])  # type: ignore[index]
        if not groups:
            raise DataError("no query row with its positive item to evaluate")
        scores = torch.stack([q for q, _ in groups.values()]) @ torch.stack(vectors).T
        excluded = [{corpus[t] for t in seen if t in corpus} for _, seen in groups]
        figures = ranking_metrics(scores, [rel for _, rel in groups.values()], excluded)
        headline = {name: figures[name] for name in (f"ndcg@{TOP}", f"recall@{TOP}", f"mrr@{TOP}")}
        headline.update({f"recall@{k}": figures[f"recall@{k}"] for k in RECALL_AT if k != TOP})
        report = {
            "ranking": figures,
            "n": len(groups),
            "corpus": len(vectors),
            "note": f"{len(groups)} queries ranked by cosine similarity against {len(vectors)} distinct items (each "
            "query's seen items left out; ties by corpus order)",
        }
        return EvalOutput(report=report, headline=headline)

    def to_output(self, example: PairExample, prediction: Any, labels: Sequence[str]) -> dict[str, Any]:
        rows: torch.Tensor = prediction
        if example.query is None:
            return {"item": example.candidates[0]}
        query = rows[0]
        if example.candidates:
            start = 1 + len(example.items()) - len(example.candidates)
            scores = (rows[start:] @ query).tolist()
            ranked = sorted(zip(example.candidates, scores, strict=True), key=lambda pair: -pair[1])
            return {"text": example.query, "items": [{"item": t, "score": round(s, 6)} for t, s in ranked]}
        if example.positive is not None:
            out: dict[str, Any] = {"query": example.query, "positive": example.positive}
            out["score"] = round(float(rows[1] @ query), 6)
            if example.negative is not None:
                out["negative"], out["negative_score"] = example.negative, round(float(rows[2] @ query), 6)
            return out
        return {"text": example.query, "embedding": [round(v, 6) for v in query.tolist()]}


__all__ = ["EmbeddingHead", "PairExample", "TextPairRankConfig", "TextPairRanking", "info_nce", "masked_negatives"]
