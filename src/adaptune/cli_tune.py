"""The ``adaptune tune`` command, registered on the app in :mod:`adaptune.cli`: thin, over
:func:`adaptune.tuning.tune`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def tune(
    config: Annotated[Path, typer.Argument(help="YAML run config with a search: block (the keys to vary).")],
    trials: Annotated[
        int,
        typer.Option(
            min=1, help="Finished (complete or pruned) trials the study should reach; run again to resume or extend."
        ),
    ],
    timeout: Annotated[float | None, typer.Option(help="Start no new trial after this many seconds.")] = None,
    study_dir: Annotated[
        Path | None, typer.Option(help="Folder of the study: trials, study.sqlite3, reports. Default: runs/NAME-tune.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the TPE sampler. Default: training.seed.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: --set training.epochs=3")] = None,
) -> None:
    """Search hyper-parameters: train one run per trial (optuna's TPE sampler, median pruning on dev), keep the
    study in STUDY_DIR/study.sqlite3 (a second call resumes it) and write the best trial's config to
    STUDY_DIR/best.yaml, with trials.csv, trials.md, history.png and importance.png (needs the tune extra:
    .venv/bin/pip install -e '.\\[tune]', or scripts/setup.sh --test)."""
    from adaptune.cli_common import fail
    from adaptune.errors import AdaptuneError
    from adaptune.tuning import tune as run_tune

    try:
        result = run_tune(config, trials, study_dir=study_dir, timeout=timeout, seed=seed, overrides=set_ or ())
    except AdaptuneError as err:
        fail(err)
        return
    typer.echo(
        f"{result.finished} trials finished ({result.complete} complete, {result.pruned} pruned), "
        f"{result.failed} failed: {result.study_dir / 'trials.md'}"
    )
    for note in result.notes:
        typer.echo(f"note: {note}")
    if result.best_config is None:
        typer.echo("no trial completed: no best.yaml")
        return
    params = "  ".join(f"{key}={value}" for key, value in result.best_params.items())
    typer.echo(f"best: trial {result.best_trial}, dev {result.metric} {result.best_value:.4f}  {params}")
    typer.echo(f"train it: adaptune train {result.best_config}")
