"""Ranking metrics over a corpus: recall@k, NDCG@k and MRR@k with binary relevance, and their report table.

For a query with relevant items ``R`` and the corpus ranked by descending score (ties broken by corpus order, the
order in which items first appear, so results do not depend on the sort's whims), with ``hit(i)`` = 1 when the
item at rank ``i`` (1-based) is relevant:

    recall@k = sum_{i <= k} hit(i) / |R|                      (with one relevant item: the hit rate @k)
    DCG@k    = sum_{i <= k} hit(i) / log2(i + 1)
    NDCG@k   = DCG@k / IDCG@k,  IDCG@k = sum_{i <= min(k, |R|)} 1 / log2(i + 1)      (Jarvelin & Kekalainen 2002)
    MRR@k    = 1 / (rank of the first relevant item) when it is within k, else 0

Each is averaged over the queries, as ``pytrec_eval`` / BEIR and sentence-transformers'
``InformationRetrievalEvaluator`` do. Items a query must not be offered (a user's already seen items: the
"filtered" setting of leave-one-out evaluation) are masked out of its ranking before sorting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

#: The cut-offs of recall in every report; NDCG and MRR are taken at :data:`TOP`.
RECALL_AT = (1, 5, 10)
TOP = 10


def ranking_metrics(
    scores: torch.Tensor,
    relevant: Sequence[set[int]],
    excluded: Sequence[set[int]] | None = None,
    *,
    recall_at: Sequence[int] = RECALL_AT,
    top: int = TOP,
    chunk: int = 512,
) -> dict[str, float]:
    """Mean recall@k (each ``k`` of ``recall_at``), NDCG@top and MRR@top of ``scores``.

    Args:
        scores: ``(Q, C)`` similarity of each query to each corpus item (higher ranks first).
        relevant: per query, the corpus indices of its relevant items (at least one each).
        excluded: per query, corpus indices left out of its ranking (never its relevant ones).
        recall_at: the cut-offs of recall.
        top: the cut-off of NDCG and MRR.
        chunk: queries sorted at a time (memory ``chunk x C``).

    Returns:
        ``{"recall@1": ..., "recall@5": ..., "recall@10": ..., "ndcg@10": ..., "mrr@10": ...}`` (names follow the
        cut-offs), each in [0, 1].
    """
    if scores.dim() != 2 or scores.shape[0] != len(relevant):
        raise ValueError(f"scores must be (queries, corpus) with one row per query, got {tuple(scores.shape)}")
    if any(not rel for rel in relevant):
        raise ValueError("every query needs at least one relevant item")
    depth = min(max([top, *recall_at]), scores.shape[1])
    totals = dict.fromkeys([*(f"recall@{k}" for k in recall_at), f"ndcg@{top}", f"mrr@{top}"], 0.0)
    for start in range(0, scores.shape[0], chunk):
        block = scores[start : start + chunk].float().clone()
        for row in range(block.shape[0]):
            drop = (excluded[start + row] if excluded is not None else set()) - relevant[start + row]
            if drop:
                block[row, sorted(drop)] = float("-inf")
        order = torch.sort(block, dim=1, descending=True, stable=True).indices[:, :depth].tolist()
        for row, ranked in enumerate(order):
            for name, value in query_metrics(ranked, relevant[start + row], recall_at, top).items():
                totals[name] += value
    return {name: total / len(relevant) for name, total in totals.items()}


def query_metrics(ranked: Sequence[int], relevant: set[int], recall_at: Sequence[int], top: int) -> dict[str, float]:
    """The metrics of one query from its ranked corpus indices (best first, at least ``max(recall_at, top)`` of
    them or the whole corpus)."""
    hits = [index in relevant for index in ranked]
    out = {f"recall@{k}": sum(hits[:k]) / len(relevant) for k in recall_at}
    dcg = sum(1.0 / math.log2(i + 2) for i, hit in enumerate(hits[:top]) if hit)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(top, len(relevant))))
    out[f"ndcg@{top}"] = dcg / ideal
    first = next((i for i, hit in enumerate(hits[:top]) if hit), None)
    out[f"mrr@{top}"] = 0.0 if first is None else 1.0 / (first + 1)
    return out


def format_ranking_report(report: dict[str, Any], split: str, markdown: bool = False, digits: int = 4) -> str:
    """The table of a ranking report (``report["ranking"]``: metric -> value, with ``n`` queries and
    ``corpus`` items): one row of figures, plain text for the console or GitHub markdown."""
    figures = report["ranking"]
    header = ["queries", "corpus", *figures]
    row = [str(report["n"]), str(report["corpus"]), *(f"{v:.{digits}f}" for v in figures.values())]
    title = f"{split}: ranking against the corpus (fractions, 0-1)"
    if markdown:
        lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "--:|" * len(header)]
        return "\n".join([*lines, "| " + " | ".join(row) + " |"]) + "\n"
    widths = [max(len(h), len(c)) for h, c in zip(header, row, strict=True)]
    cells = ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in (header, row)]
    return "\n".join([title, "=" * len(title), cells[0], "-" * len(cells[0]), cells[1]]) + "\n"
