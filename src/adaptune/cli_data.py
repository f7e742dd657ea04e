"""The ``adaptune select`` and ``adaptune audit`` commands (data work before and after labelling), registered on
the app in :mod:`adaptune.cli`: thin, over :func:`adaptune.selection.select_file` and
:func:`adaptune.audit.audit_file`."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from adaptune.cli_common import err_console, fail
from adaptune.errors import AdaptuneError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"  # adaptune.selection.DEFAULT_MODEL, without importing torch


class Strategy(StrEnum):
    """``adaptune select --strategy`` (:mod:`adaptune.selection`)."""

    centroid = "centroid"
    kcenter = "kcenter"
    uncertainty = "uncertainty"


STRATEGY_HELP = (
    "centroid: the rows most like TARGET (cosine to its mean embedding); kcenter: farthest-first picks among the "
    "--candidates x N most TARGET-like rows (covers the target region, fewer near-duplicates); uncertainty: the "
    "rows whose predicted labels (by --adapter) have the highest entropy (active learning; TARGET not needed)."
)


class AuditMethod(StrEnum):
    """``adaptune audit --method`` (:mod:`adaptune.audit`)."""

    dynamics = "dynamics"
    confident = "confident"


METHOD_HELP = (
    "dynamics: one run; per row the mean (confidence) and std (variability) over epochs of p(given label), lowest "
    "confidence first (Dataset Cartography); confident: out-of-fold predictions over --folds runs, rows whose "
    "given label is below its class threshold while another class is above its own, cleanlab-style."
)


def _note(text: str) -> None:
    err_console.print(f"note: {text}", highlight=False, markup=False, soft_wrap=True)


def select(
    pool: Annotated[Path, typer.Argument(help="Rows to choose from: csv, tsv, jsonl, json or a datasets folder.")],
    target: Annotated[
        Path | None, typer.Argument(help="A sample of the rows wanted (labels ignored); not used by uncertainty.")
    ] = None,
    n: Annotated[int, typer.Option("--n", help="How many rows to pick.")] = 100,
    out: Annotated[Path, typer.Option(help="Output file, by extension: .csv, .tsv or .jsonl.")] = Path("selected.csv"),
    model: Annotated[str, typer.Option(help="Embedding model: hub id or folder (its own pooling).")] = DEFAULT_MODEL,
    strategy: Annotated[Strategy, typer.Option(help=STRATEGY_HELP)] = Strategy.centroid,
    adapter: Annotated[Path | None, typer.Option(help="uncertainty: the trained adapter folder.")] = None,
    text_column: Annotated[str, typer.Option(help="The text field (default text; falls back to sentence).")] = "text",
    target_text_column: Annotated[
        str | None, typer.Option(help="TARGET's text field, when it differs from --text-column.")
    ] = None,
    candidates: Annotated[
        float, typer.Option(help="kcenter: picks among the candidates x N rows most like TARGET.")
    ] = 3.0,
    batch_size: Annotated[int, typer.Option(help="Texts per forward pass.")] = 64,
    device: Annotated[str, typer.Option(help="auto (CUDA when torch sees one), cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Pick N rows of POOL to label next: the most TARGET-like, a diverse cover of TARGET's region, or those the
    adapter is least sure of. OUT gets the picked rows with all their fields plus score, rank and pool_line."""
    from adaptune.selection import select_file

    try:
        selection = select_file(
            pool,
            target,
            n=n,
            out=out,
            strategy=strategy.value,
            model=model,
            adapter=adapter,
            text_column=text_column,
            target_text_column=target_text_column,
            candidates=candidates,
            device=device,
            batch_size=batch_size,
        )
    except AdaptuneError as err:
        fail(err)
        return
    for note in selection.notes:
        _note(note)
    low, high = min(selection.scores), max(selection.scores)
    typer.echo(f"picked {len(selection.indices)} rows of {pool} ({strategy.value}, score {low:.4f}..{high:.4f}): {out}")


def audit(
    config: Annotated[str, typer.Argument(help="YAML config file, or a bundled config name (intents).")],
    data: Annotated[
        Path | None, typer.Argument(help="Labelled rows to audit; default: the config's data.train.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output file (.csv, .tsv or .jsonl); default audit_<method>.csv.")
    ] = None,
    method: Annotated[AuditMethod, typer.Option(help=METHOD_HELP)] = AuditMethod.dynamics,
    folds: Annotated[int, typer.Option(help="confident: the number of folds (K runs).")] = 3,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: --set training.epochs=3")] = None,
    work: Annotated[
        Path | None, typer.Option(help="Keep the training runs here (default: a temporary folder, removed).")
    ] = None,
    top: Annotated[int, typer.Option(help="Rows to show on the console.")] = 10,
) -> None:
    """Rank the rows of DATA by how likely their label is wrong, training the config's adapter on them (its dev
    and test files are not used). OUT gets every row, most suspicious first: its fields, rank, data_line,
    given_label, suggested_label and the method's scores."""
    from adaptune.audit import audit_file
    from adaptune.cli import _config_path
    from adaptune.config import load_config

    target = out or Path(f"audit_{method.value}.csv")
    try:
        cfg = load_config(_config_path(config), list(set_ or []))
        result = audit_file(cfg, data, target, method=method.value, folds=folds, work_dir=work)
    except AdaptuneError as err:
        fail(err)
        return
    for note in result.notes:
        _note(note)
    for rank, row in enumerate(result.rows[:top], start=1):
        figures = " ".join(f"{k}={v}" for k, v in row.scores.items())
        change = f"{row.given_label} -> {row.suggested_label}"
        typer.echo(f"{rank:>4}  line {row.row.line}: {change}  {figures}  {row.row.text[:60]}")
    typer.echo(f"ranked {len(result.rows)} rows ({method.value}): {target}")
