"""Metrics and reports: single-label, multi-label, entity-level (strict), token-level; text tables.

Every report is a plain, JSON-serialisable dict. A row of scores is ``{"precision", "recall", "f1",
"support"}`` where ``support`` counts true instances. Division by zero gives 0 (sklearn's
``zero_division=0``), so a class that is never predicted has precision 0, not NaN.

Report shapes:

- :func:`classification_report`, :func:`token_report`: ``accuracy``, ``per_class``, ``micro``,
  ``macro``, ``weighted``, ``n`` (and ``note`` for the token report).
- :func:`multilabel_report`: the same plus ``subset_accuracy`` and ``hamming_loss``.
- :func:`entity_report`: headline ``precision``/``recall``/``f1`` (micro, strict), ``per_type``,
  ``micro``, ``macro``, ``weighted``, counts and ``n_sentences``; equal to seqeval's strict mode.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from adaptune.evaluation.tagging import (
    Entity,
    detect_scheme,
    extract_entities,
    normalise_scheme,
)

__all__ = [
    "TOKEN_REPORT_NOTE",
    "classification_report",
    "confusion",
    "entity_report",
    "format_report_markdown",
    "format_report_table",
    "multilabel_report",
    "token_report",
]

TOKEN_REPORT_NOTE = "token-level; counts O tokens, inflates scores; the headline is entity-level"
_AVERAGES = ("micro", "macro", "weighted")


def _row(precision: float, recall: float, f1: float, support: int) -> dict[str, Any]:
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "support": int(support),
    }


def _check_lengths(y_true: Sequence[Any], y_pred: Sequence[Any]) -> None:
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("cannot score an empty set of predictions")


def _check_known(values: Collection[str], labels: Sequence[str], what: str) -> None:
    if len(labels) == 0:
        raise ValueError("`labels` is empty")
    unknown = set(values) - set(labels)
    if unknown:
        shown = ", ".join(repr(u) for u in sorted(unknown)[:10])
        raise ValueError(f"{what} contains labels not in `labels`: {shown}")


def _sklearn_tables(y_true: Any, y_pred: Any, labels: Sequence[Any]) -> dict[str, Any]:
    """Per-class and micro/macro/weighted rows from sklearn's precision_recall_fscore_support."""
    from sklearn.metrics import precision_recall_fscore_support  # imported when needed: ~100 MB resident

    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    names = [str(label) for label in labels]
    out: dict[str, Any] = {"per_class": {n: _row(*vals) for n, *vals in zip(names, p, r, f, s, strict=True)}}
    total = int(np.sum(s))
    for average in _AVERAGES:
        ap, ar, af, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=average, zero_division=0)
        out[average] = _row(ap, ar, af, total)
    return out


def classification_report(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Single-label classification scores.

    Args:
        y_true: gold label per example; every value must be in ``labels``.
        y_pred: predicted label per example; a value outside ``labels`` counts as wrong (a false
            negative for the true class, a false positive for no listed class).
        labels: the label set, in display order.

    Returns:
        ``{"accuracy", "per_class": {label: row}, "micro", "macro", "weighted", "n"}``; micro-F1
        over the full label set equals accuracy.

    Raises:
        ValueError: lengths differ, inputs are empty, or ``y_true`` holds an unknown label.
    """
    _check_lengths(y_true, y_pred)
    _check_known(y_true, labels, "y_true")
    true, pred = list(y_true), list(y_pred)
    from sklearn.metrics import accuracy_score

    report: dict[str, Any] = {"accuracy": float(accuracy_score(true, pred))}
    report.update(_sklearn_tables(true, pred, list(labels)))
    report["n"] = len(true)
    return report


def _binarise(sets: Sequence[Collection[str]], labels: Sequence[str]) -> np.ndarray:
    """``(n_examples, n_labels)`` 0/1 matrix; labels outside ``labels`` are dropped."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(sets), len(labels)), dtype=bool)
    for row, chosen in enumerate(sets):
        for label in chosen:
            if label in index:
                matrix[row, index[label]] = True
    return matrix


def multilabel_report(
    y_true: Sequence[Collection[str]], y_pred: Sequence[Collection[str]], labels: Sequence[str]
) -> dict[str, Any]:
    """Multi-label scores: each example has a *set* of labels.

    Per-class rows treat each label as its own binary problem; micro pools every (example, label)
    decision (the same numbers as sklearn on indicator matrices, counted directly so that a single
    label is not mistaken for a binary problem). ``subset_accuracy`` (also given as ``accuracy``)
    is the share of examples whose predicted set equals the true set exactly; ``hamming_loss`` is
    the share of wrong (example, label) decisions over ``labels``.

    Raises:
        ValueError: lengths differ, inputs are empty, or ``y_true`` holds an unknown label.
    """
    _check_lengths(y_true, y_pred)
    _check_known({label for chosen in y_true for label in chosen}, labels, "y_true")
    true, pred = _binarise(y_true, labels), _binarise(y_pred, labels)
    subset = float(np.mean([set(t) == set(p) for t, p in zip(y_true, y_pred, strict=True)]))
    report: dict[str, Any] = {"accuracy": subset, "subset_accuracy": subset}
    report["hamming_loss"] = float(np.mean(true != pred))
    counts = ((true & pred).sum(axis=0), pred.sum(axis=0), true.sum(axis=0))
    report.update(_count_tables([str(label) for label in labels], *counts))
    report["n"] = len(y_true)
    return report


def confusion(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str]) -> list[list[int]]:
    """Confusion counts: ``matrix[i][j]`` = examples of true ``labels[i]`` predicted ``labels[j]``.

    Examples whose true or predicted label is not in ``labels`` are left out.
    """
    _check_lengths(y_true, y_pred)
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(list(y_true), list(y_pred), labels=list(labels)).tolist()


def _safe_div(num: float, den: float) -> float:
    return num / den if den else 0.0


def _prf(tp: int, n_pred: int, n_true: int) -> tuple[float, float, float]:
    precision, recall = _safe_div(tp, n_pred), _safe_div(tp, n_true)
    return precision, recall, _safe_div(2 * precision * recall, precision + recall)


def _entity_sets(sequences: Sequence[Sequence[str]], scheme: str) -> set[tuple[int, Entity]]:
    return {(sid, ent) for sid, tags in enumerate(sequences) for ent in extract_entities(tags, scheme)}


def _type_counts(entities: set[tuple[int, Entity]], types: Sequence[str]) -> list[int]:
    counter = Counter(ent[0] for _, ent in entities)
    return [counter[kind] for kind in types]


def _count_tables(
    names: Sequence[str], tp: Sequence[int], n_pred: Sequence[int], n_true: Sequence[int]
) -> dict[str, Any]:
    """Per-class, micro, macro and weighted rows from per-class true-positive/predicted/true counts.

    Macro is the plain mean of per-class scores, weighted the mean weighted by support; both are 0
    when undefined (no classes, or no true instances), as sklearn and seqeval give with
    ``zero_division=0``.
    """
    tp, n_pred, n_true = (np.asarray(x, dtype=np.int64).reshape(-1) for x in (tp, n_pred, n_true))
    per_class = {
        name: _row(*_prf(int(t), int(p), int(s)), int(s))
        for name, t, p, s in zip(names, tp, n_pred, n_true, strict=True)
    }
    total = int(n_true.sum())
    out: dict[str, Any] = {"per_class": per_class}
    out["micro"] = _row(*_prf(int(tp.sum()), int(n_pred.sum()), total), total)
    rows = list(per_class.values())
    for name, weights in (("macro", np.ones(len(rows))), ("weighted", n_true.astype(float))):
        denom = float(weights.sum())
        values = [
            _safe_div(float(np.dot(weights, [row[key] for row in rows])), denom)
            for key in ("precision", "recall", "f1")
        ]
        out[name] = _row(*values, total)
    return out


def _check_sequences(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> None:
    if len(true_tags) != len(pred_tags):
        raise ValueError(f"true_tags has {len(true_tags)} sentences but pred_tags has {len(pred_tags)}")
    for sid, (true, pred) in enumerate(zip(true_tags, pred_tags, strict=True)):
        if len(true) != len(pred):
            raise ValueError(f"sentence {sid}: {len(true)} true tags but {len(pred)} predicted tags")


def entity_report(
    true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]], scheme: str = "auto"
) -> dict[str, Any]:
    """Strict entity-level scores, the headline metric for tagging (NER, chunking).

    An entity is ``(sentence, type, start, end)`` from
    :func:`~adaptune.evaluation.tagging.extract_entities`; a prediction is correct only when all
    four match, and malformed predicted fragments score nothing. The result equals seqeval's
    ``classification_report(..., mode="strict", scheme=IOB2/IOBES)`` (BMES scored as IOBES);
    ``scheme="auto"`` detects the scheme from ``true_tags``, as seqeval does.

    Returns:
        ``{"precision", "recall", "f1"`` (micro), ``"support"`` (true entities), ``"n_pred"``,
        ``"n_correct"``, ``"per_type": {type: row}``, ``"micro"``, ``"macro"``, ``"weighted"``,
        ``"n_sentences"``, ``"scheme"}``. Types are sorted; macro/weighted are 0 with no entities.

    Raises:
        ValueError: sentence counts or lengths differ; ``DataError`` (a ValueError) for tags the
            scheme does not allow.
    """
    _check_sequences(true_tags, pred_tags)
    name = normalise_scheme(scheme)
    name = detect_scheme(true_tags) if name == "auto" else name
    true_set, pred_set = _entity_sets(true_tags, name), _entity_sets(pred_tags, name)
    correct = true_set & pred_set
    types = sorted({ent[0] for _, ent in true_set | pred_set})
    counts = [_type_counts(group, types) for group in (correct, pred_set, true_set)]
    tables = _count_tables(types, *counts)
    micro = tables["micro"]
    report: dict[str, Any] = {key: micro[key] for key in ("precision", "recall", "f1", "support")}
    report.update(n_pred=len(pred_set), n_correct=len(correct), per_type=tables["per_class"])
    report.update(micro=micro, macro=tables["macro"], weighted=tables["weighted"])
    report.update(n_sentences=len(true_tags), scheme=name)
    return report


def _tag_order(tag: str) -> tuple[bool, str, str]:
    """Sort tags by entity type, then prefix, with ``O`` last."""
    return (tag == "O", tag[2:], tag)


def token_report(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Token-level per-tag scores: a SECONDARY diagnostic, not the headline tagging metric.

    Every token counts, ``O`` tokens included, so accuracy and micro scores are inflated by the
    easy majority of ``O`` tokens, and a half-right entity still earns credit. Report
    :func:`entity_report` as the result; use this table to see which tags get confused. The report
    carries a ``"note"`` saying so.

    Returns:
        ``{"accuracy", "per_class": {tag: row}, "micro", "macro", "weighted", "n", "note"}``, over
        every tag seen in either input.
    """
    _check_sequences(true_tags, pred_tags)
    true = [tag for seq in true_tags for tag in seq]
    pred = [tag for seq in pred_tags for tag in seq]
    labels = sorted(set(true) | set(pred), key=_tag_order)
    report = classification_report(true, pred, labels)
    report["note"] = TOKEN_REPORT_NOTE
    return report


# --- formatting -----------------------------------------------------------------------------------

_SUMMARY_KEYS = (
    "accuracy",
    "subset_accuracy",
    "hamming_loss",
    "n",
    "n_sentences",
    "n_pred",
    "n_correct",
)


def _display_width(text: str) -> int:
    """Terminal columns taken by ``text``: CJK wide/full-width characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int, right: bool = False) -> str:
    fill = " " * max(0, width - _display_width(text))
    return fill + text if right else text + fill


def _table_rows(report: dict[str, Any], digits: int) -> tuple[list[list[str]], list[list[str]]]:
    """``(class rows, average rows)`` as strings: name, precision, recall, f1, support."""

    def cells(name: str, row: dict[str, Any]) -> list[str]:
        nums = [f"{row[key]:.{digits}f}" for key in ("precision", "recall", "f1")]
        return [name, *nums, str(row["support"])]

    per_class = report.get("per_class", report.get("per_type", {}))
    body = [cells(str(name), row) for name, row in per_class.items()]
    averages = [cells(f"{avg} avg", report[avg]) for avg in _AVERAGES if avg in report]
    return body, averages


def _summary(report: dict[str, Any], digits: int) -> list[str]:
    parts = []
    for key in _SUMMARY_KEYS:
        if key in report:
            value = report[key]
            parts.append(f"{key}: {value:.{digits}f}" if isinstance(value, float) else f"{key}: {value}")
    lines = ["  ".join(parts)] if parts else []
    if "note" in report:
        lines.append(f"note: {report['note']}")
    return lines


def format_report_table(report: dict[str, Any], title: str, digits: int = 4) -> str:
    """Plain-text, column-aligned table of any report from this module, for the console.

    Columns: class, precision, recall, f1, support; then micro/macro/weighted average rows and a
    summary line (accuracy, counts, the token report's note). CJK names align by display width.
    """
    body, averages = _table_rows(report, digits)
    header = ["class", "precision", "recall", "f1", "support"]
    rows = [header, *body, *averages]
    widths = [max(_display_width(row[col]) for row in rows) for col in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(_pad(cell, widths[i], right=i > 0) for i, cell in enumerate(row))

    rule = "-" * _display_width(line(header))
    out = [title, "=" * max(len(title), 1), line(header), rule, *map(line, body)]
    if averages:
        out += [rule, *map(line, averages)]
    out += _summary(report, digits)
    return "\n".join(out) + "\n"


def format_report_markdown(report: dict[str, Any], title: str, digits: int = 4) -> str:
    """The table of :func:`format_report_table` as GitHub markdown: a ``###`` heading, a table."""
    body, averages = _table_rows(report, digits)

    def line(row: list[str], bold: bool = False) -> str:
        name = row[0].replace("|", "\\|")
        return "| " + " | ".join([f"**{name}**" if bold else name, *row[1:]]) + " |"

    out = [
        f"### {title}",
        "",
        "| class | precision | recall | f1 | support |",
        "|:--|--:|--:|--:|--:|",
    ]
    out += [line(row) for row in body] + [line(row, bold=True) for row in averages]
    summary = _summary(report, digits)
    if summary:
        out += ["", *summary]
    return "\n".join(out) + "\n"
