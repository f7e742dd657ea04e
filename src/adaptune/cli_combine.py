"""The ``adaptune combine`` command, registered on the app in :mod:`adaptune.cli`: thin, over
:func:`adaptune.combine.combine_adapters`, with a before/after table over :meth:`Predictor.evaluate`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from adaptune.cli_common import err_console, fail
from adaptune.errors import AdaptuneError, ConfigError


class How(StrEnum):
    """How ``adaptune combine`` combines the adapters (:mod:`adaptune.combine`)."""

    linear = "linear"
    ties = "ties"
    dare_linear = "dare_linear"
    dare_ties = "dare_ties"
    svd = "svd"
    negation = "negation"


HOW_HELP = (
    "linear: Σ w_i ΔW_i, exact (ranks concatenated); negation: -A or A - B, exact; svd: Σ w_i ΔW_i by truncated "
    "SVD to --rank (exact when rank >= Σ r_i); ties, dare_linear, dare_ties: entrywise merges of the deltas, "
    "refactored by truncated SVD (approximate)."
)


def parse_weights(text: str | None) -> list[float] | None:
    """``"0.7,0.3"`` -> ``[0.7, 0.3]``; None stays None; anything else is a :class:`ConfigError`."""
    if text is None:
        return None
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"--weights {text!r}: give numbers separated by commas, e.g. 0.7,0.3") from None


@dataclass
class EvalTable:
    """The headline ``metric`` of each adapter (rows, in order) on each data file (columns); None where an
    adapter could not be scored on a file (why: ``notes``)."""

    metric: str
    data: list[str]
    rows: list[tuple[str, list[float | None]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def evaluate_adapters(adapters: Sequence[str | Path], data: Sequence[str | Path], *, device: str = "auto") -> EvalTable:
    """Score each adapter on each labelled file with :meth:`Predictor.evaluate` (what ``adaptune eval`` runs),
    by the task's default metric (``accuracy``, ``f1``, ``loss``); a file with labels an adapter never saw
    gives None and a note."""
    from adaptune.errors import DataError
    from adaptune.inference import Predictor

    table = EvalTable("", [str(item) for item in data])
    for path in adapters:
        predictor = Predictor.load(path, device=device)
        table.metric = table.metric or str(predictor.task.default_metric)
        scores: list[float | None] = []
        for item in data:
            try:
                value = predictor.evaluate(item).headline.get(table.metric)
            except DataError as err:
                table.notes.append(f"{path} on {item}: {err}")
                value = None
            scores.append(float(value) if isinstance(value, int | float) else None)
        table.rows.append((str(path), scores))
    return table


def format_table(table: EvalTable, result: str) -> str:
    """The table as aligned text: one row per adapter (the ``result`` row marked), one column per data file."""
    header = [f"adapter ({table.metric})", *table.data]
    lines = [header]
    for name, scores in table.rows:
        label = f"{name} (combined)" if name == result else name
        lines.append([label, *("n/a" if s is None else f"{s:.4f}" for s in scores)])
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in lines)


def combine(
    adapters: Annotated[list[Path], typer.Argument(help="LoRA (or DoRA) adapter folders of one base and one task.")],
    how: Annotated[How, typer.Option(help=HOW_HELP)],
    out: Annotated[Path, typer.Option(help="Folder for the combined adapter (an ordinary LoRA adapter).")],
    weights: Annotated[
        str | None, typer.Option(help="One weight per adapter, comma-separated: 0.7,0.3 (default 1 each).")
    ] = None,
    density: Annotated[
        float | None, typer.Option(help="ties, dare_*: the fraction of each delta's entries kept (default 0.5).")
    ] = None,
    seed: Annotated[int, typer.Option(help="dare_*: the seed of the drop masks.")] = 0,
    rank: Annotated[
        int | None, typer.Option(help="svd, ties, dare_*: the rank written (default: max r_i for svd, else Σ r_i).")
    ] = None,
    eval_: Annotated[
        list[Path] | None,
        typer.Option("--eval", help="Labelled data file: score every input and the result on it (repeatable)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
    device: Annotated[str, typer.Option(help="Where --eval runs: auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Combine LoRA adapters into one: task arithmetic, TIES, DARE, SVD or negation of their weight deltas.

    Heads are averaged where the labels agree in the same order; else the first adapter's head is kept (stderr
    says so). The result is an ordinary LoRA adapter for adaptune predict, eval and serve.
    """
    from adaptune.combine import combine_adapters
    from adaptune.io import read_adapter_config

    try:
        folder = combine_adapters(
            adapters,
            how.value,
            parse_weights(weights),
            out=out,
            density=density,
            seed=seed,
            rank=rank,
            overwrite=overwrite,
        )
        record = read_adapter_config(folder)["combine"]
        for note in record["notes"]:
            err_console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
        exact = "exact" if record["exact"] else f"approximate, relative error {record['relative_error']:.3g}"
        typer.echo(f"combined adapter: {folder} ({record['how']}, rank {record['rank']}, {exact})")
        if eval_:
            table = evaluate_adapters([*adapters, folder], eval_, device=device)
            for note in table.notes:
                err_console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
            typer.echo(format_table(table, str(folder)))
    except AdaptuneError as err:
        fail(err)
