"""PNG plots: confusion matrices and training curves.

Figures are built with matplotlib's object API on an Agg canvas (``FigureCanvasAgg``), so plotting
works headless and never touches pyplot's global state or the user's chosen backend. Every PNG is
written atomically: to a temporary file in the target folder, then ``os.replace``-d into place, so a
reader never sees a half-written image.

Chinese (and other CJK) text renders through matplotlib's per-glyph font fallback: the text font
stays the user's (DejaVu Sans by default) and characters it lacks come from the first installed
font of :data:`CJK_FONTS` (``scripts/setup.sh`` installs WenQuanYi Micro Hei on Debian/Ubuntu).
Without one, matplotlib's own "Glyph ... missing from font(s)" warnings are left to reach the
caller: they are the only sign that a PNG shows boxes instead of characters.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
import tempfile
from collections.abc import Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_confusion_matrix", "plot_training_curves"]

CJK_FONTS = (
    "WenQuanYi Micro Hei",
    "Noto Sans CJK SC",
    "Noto Sans CJK JP",
    "Noto Sans SC",
    "Source Han Sans SC",
    "WenQuanYi Zen Hei",
    "SimHei",
    "Microsoft YaHei",
    "PingFang SC",
    "Heiti SC",
    "Arial Unicode MS",
)
"""Fallback fonts for CJK characters, in order of preference; the first one installed is used."""

MAX_ANNOTATED_CLASSES = 25
"""Above this many classes the confusion matrix cells carry no numbers (they would not fit)."""

logger = logging.getLogger(__name__)


def _installed(names: Sequence[str]) -> str | None:
    """The first of ``names`` that matplotlib's font manager knows, or ``None``."""
    known = {entry.name for entry in font_manager.fontManager.ttflist}
    return next((name for name in names if name in known), None)


def _add_uncached_system_fonts() -> None:
    """Register system fonts installed after matplotlib built its font cache (it never rescans)."""
    cached = {os.path.realpath(entry.fname) for entry in font_manager.fontManager.ttflist}
    for path in font_manager.findSystemFonts():
        if os.path.realpath(path) not in cached:
            try:
                font_manager.fontManager.addfont(path)
            except (OSError, RuntimeError, ValueError) as error:  # a broken font file is skipped
                logger.debug("skipping font %s: %s", path, error)


@lru_cache(maxsize=1)
def cjk_font() -> str | None:
    """The first installed font of :data:`CJK_FONTS`, or ``None`` when none is installed.

    Looked up once, at the first plot (not at import): in matplotlib's font cache, then among
    system fonts the cache predates (e.g. installed by ``scripts/setup.sh`` after the cache was built).
    """
    font = _installed(CJK_FONTS)
    if font is None:
        _add_uncached_system_fonts()
        font = _installed(CJK_FONTS)
    if font is None:
        logger.info("no CJK font found (tried %s): Chinese text will render as boxes", ", ".join(CJK_FONTS))
    return font


def font_families() -> list[str]:
    """The ``font.family`` list plots use: the current families, then the CJK fallback font if any."""
    families = list(mpl.rcParams["font.family"])
    font = cjk_font()
    return families if font is None or font in families else [*families, font]


@contextlib.contextmanager
def _style() -> Iterator[None]:
    """Draw with :func:`font_families`: Latin text keeps its font, CJK characters fall back."""
    with mpl.rc_context({"font.family": font_families()}):
        yield


def _save_png(fig: Figure, path: str | Path, dpi: int) -> Path:
    """Render ``fig`` to ``path`` as PNG atomically (temp file in the same folder, then replace)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            fig.savefig(stream, format="png", dpi=dpi)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; a plot should be readable like any other
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _normalise_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the recall view); rows that sum to 0 stay 0."""
    sums = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, sums, out=np.zeros_like(matrix, dtype=float), where=sums != 0)


def _annotate(ax: Any, shown: np.ndarray, normalise: bool, size: float) -> None:
    """Write each cell's value in it, white on cells in the dark half of the colour scale."""
    top = 1.0 if normalise else float(shown.max()) or 1.0
    for (row, col), value in np.ndenumerate(shown):
        text = f"{value:.2f}" if normalise else f"{int(value)}"
        colour = "white" if value > 0.5 * top else "black"
        ax.text(col, row, text, ha="center", va="center", fontsize=size, color=colour)


def plot_confusion_matrix(
    matrix: Sequence[Sequence[float]] | np.ndarray,
    labels: Sequence[str],
    path: str | Path,
    title: str = "",
    normalise: bool = True,
) -> Path:
    """Draw a confusion matrix (rows = true label, columns = predicted) and save it as a PNG.

    Args:
        matrix: ``(n, n)`` counts, e.g. from :func:`adaptune.evaluation.metrics.confusion`.
        labels: ``n`` class names (Chinese names render when a CJK font is installed).
        path: where to write the PNG; parent folders are created.
        title: figure title.
        normalise: colour and annotate by row share (recall per true class) instead of counts.

    The figure grows with ``n`` (readable up to ~80 classes); above
    :data:`MAX_ANNOTATED_CLASSES` classes the cells are not annotated.

    Returns:
        The path written.

    Raises:
        ValueError: ``matrix`` is not square or does not match ``labels``.
    """
    counts = np.asarray(matrix, dtype=float)
    n = len(labels)
    if counts.shape != (n, n):
        raise ValueError(f"matrix has shape {counts.shape}, expected ({n}, {n}) for {n} labels")
    shown = _normalise_rows(counts) if normalise else counts
    side = min(max(5.0, 0.32 * n + 2.5), 30.0)
    tick_size = 9.0 if n <= MAX_ANNOTATED_CLASSES else 7.0
    with _style():
        fig = _new_figure(side + 1.2, side)
        ax = fig.add_subplot()
        image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalise else None)
        fig.colorbar(image, ax=ax, fraction=0.046 if side < 12 else 0.02, pad=0.02)
        ax.set_xticks(range(n), [str(label) for label in labels], rotation=90, fontsize=tick_size)
        ax.set_yticks(range(n), [str(label) for label in labels], fontsize=tick_size)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title or ("confusion matrix (row-normalised)" if normalise else "confusion"))
        if 0 < n <= MAX_ANNOTATED_CLASSES:
            _annotate(ax, shown, normalise, max(5.0, 10.0 - 0.2 * n))
        return _save_png(fig, path, dpi=100)


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """``(steps, values)`` of records logging a finite ``key`` (no ``step``: the record index)."""
    steps, values = [], []
    for index, record in enumerate(records):
        value = record.get(key)
        if isinstance(value, numbers.Real) and math.isfinite(value):
            steps.append(float(record.get("step", index)))
            values.append(float(value))
    return steps, values


_NOT_METRICS = ("eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second")


def _pick_metric(records: Sequence[dict[str, Any]], metric: str | None) -> str | None:
    """The ``eval_<metric>`` key to plot: the one asked for, else the first eval score logged."""
    if metric:
        return metric if metric.startswith("eval_") else f"eval_{metric}"
    for record in records:
        for key in record:
            if key.startswith("eval_") and key not in _NOT_METRICS:
                return key
    return None


def plot_training_curves(records: Sequence[dict[str, Any]], path: str | Path, metric: str | None = None) -> Path:
    """Plot a training log as a PNG: loss against step (left), an eval metric against step (right).

    Args:
        records: metric-log dicts such as ``{"step": 10, "epoch": 0.5, "train_loss": 1.2}`` and
            ``{"step": 50, "eval_loss": 0.9, "eval_f1": 0.71}``; keys a record lacks are skipped.
        path: where to write the PNG; parent folders are created.
        metric: the metric for the right panel, ``"f1"`` or ``"eval_f1"``; ``None`` picks the first
            ``eval_*`` score logged (not loss or timing). A panel with no data says so.

    Returns:
        The path written.
    """
    key = _pick_metric(records, metric)
    with _style():
        fig = _new_figure(11.0, 4.2)
        loss_ax, metric_ax = fig.subplots(1, 2)
        for name, style in (("train_loss", "-"), ("eval_loss", "o-")):
            steps, values = _series(records, name)
            if steps:
                loss_ax.plot(steps, values, style, label=name.replace("_", " "), markersize=4)
        _finish_axis(loss_ax, "loss", has_data=bool(loss_ax.lines))
        if key is not None:
            steps, values = _series(records, key)
            if steps:
                metric_ax.plot(steps, values, "o-", color="tab:green", markersize=4, label=key)
        _finish_axis(metric_ax, key or "eval metric", has_data=bool(metric_ax.lines))
        return _save_png(fig, path, dpi=100)


def _finish_axis(ax: Any, name: str, has_data: bool) -> None:
    ax.set_title(name)
    ax.set_xlabel("step")
    ax.set_ylabel(name)
    ax.grid(True, alpha=0.3)
    if has_data:
        ax.legend()
    else:
        ax.text(0.5, 0.5, f"no {name} logged", ha="center", va="center", transform=ax.transAxes)
