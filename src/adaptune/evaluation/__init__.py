"""Evaluation: tag schemes, metrics and reports (tables), and PNG plots.

The headline number for tagging tasks is :func:`entity_report` (strict, seqeval-compatible);
:func:`token_report` is a secondary, O-inflated diagnostic.
"""

from adaptune.evaluation.metrics import (
    TOKEN_REPORT_NOTE,
    classification_report,
    confusion,
    entity_report,
    format_report_markdown,
    format_report_table,
    multilabel_report,
    token_report,
)
from adaptune.evaluation.tagging import (
    SCHEMES,
    Entity,
    convert_tags,
    detect_scheme,
    extract_entities,
    normalise_scheme,
    validate_tags,
)


def __getattr__(name: str) -> object:  # the plots load matplotlib: only when one is asked for
    if name in ("plot_confusion_matrix", "plot_training_curves"):
        from adaptune.evaluation import plots

        return getattr(plots, name)
    raise AttributeError(f"module 'adaptune.evaluation' has no attribute {name!r}")


__all__ = [
    "SCHEMES",
    "TOKEN_REPORT_NOTE",
    "Entity",
    "classification_report",
    "confusion",
    "convert_tags",
    "detect_scheme",
    "entity_report",
    "extract_entities",
    "format_report_markdown",
    "format_report_table",
    "multilabel_report",
    "normalise_scheme",
    "plot_confusion_matrix",
    "plot_training_curves",
    "token_report",
    "validate_tags",
]
