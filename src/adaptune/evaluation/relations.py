"""The official score of SemEval-2010 Task 8 (Hendrickx et al. 2010), as its scorer ``semeval2010_task8_scorer-v1.2.pl``
computes it: "(9+1)-way evaluation with directionality taken into account", macro-averaged over the relations
with ``Other`` excluded.

Labels are directed relations ``Name(e1,e2)`` / ``Name(e2,e1)`` and the negative label (``Other``). The
directions of a relation fold into one class ``Name``; a prediction is correct only with the right relation *and*
direction. For each relation ``r`` (``Other`` excluded)::

    correct_r   = examples whose gold and predicted labels are equal and of relation r
    P_r = correct_r / (predictions of relation r, any direction)
    R_r = correct_r / (gold examples of relation r, any direction)
    F1_r = 2 P_r R_r / (P_r + R_r)

and the official score is the mean of ``F1_r`` over the relations that occur in the gold labels or the predictions
(macro-F1; the scorer averages the per-relation F1, it does not take the F1 of the mean P and R). Labels without a
direction suffix are their own relation (data sets other than SemEval).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_DIRECTED = re.compile(r"^(.*)\((e1,e2|e2,e1)\)$")


def relation_of(label: str) -> str:
    """``Cause-Effect(e1,e2)`` -> ``Cause-Effect``; labels without a direction are returned as they are."""
    match = _DIRECTED.match(label)
    return match.group(1) if match else label


def semeval_report(gold: Sequence[str], predicted: Sequence[str], negative: str | None = "Other") -> dict[str, Any]:
    """The official macro-F1 (and macro P and R) with a per-relation table; all figures 0-1.

    ``negative``: the label left out of the average (None: none is).
    """
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
    relations = sorted({relation_of(label) for label in (*gold, *predicted)} - {negative})
    table: dict[str, dict[str, float]] = {}
    for rel in relations:
        correct = sum(g == p and relation_of(g) == rel for g, p in zip(gold, predicted, strict=True))
        wrong_direction = sum(
            g != p and relation_of(g) == rel == relation_of(p) for g, p in zip(gold, predicted, strict=True)
        )
        n_pred = sum(relation_of(p) == rel for p in predicted)
        n_gold = sum(relation_of(g) == rel for g in gold)
        precision = correct / n_pred if n_pred else 0.0
        recall = correct / n_gold if n_gold else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        table[rel] = {
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": n_gold,
            "predicted": n_pred,
            "wrong_direction": wrong_direction,
        }
    count = len(table) or 1
    return {
        "macro_precision": sum(r["precision"] for r in table.values()) / count,
        "macro_recall": sum(r["recall"] for r in table.values()) / count,
        "macro_f1": sum(r["f1"] for r in table.values()) / count,
        "excluded": negative,
        "relations": table,
    }
