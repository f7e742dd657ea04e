"""Run or resume a hyper-parameter search: one :func:`adaptune.api.train` per trial, driven by optuna.

Sampler: TPE, the tree-structured Parzen estimator (Bergstra et al., "Algorithms for Hyper-Parameter
Optimization", NeurIPS 2011): after ``search.startup_trials`` random trials it models the good and the bad trials'
values as two densities l(x) and g(x) and draws next the x that maximises l(x) / g(x). Seeded with ``--seed``
(default ``training.seed``) plus the number of trials already in the study, so a resumed study does not replay
the first run's draws.

Pruner: the median stopping rule (Golovin et al., "Google Vizier", KDD 2017; optuna's ``MedianPruner``): at each
dev evaluation a trial reports its value at its optimiser step (:class:`PruningCallback`); when it is worse than
the median of the earlier trials' values at that step, the run stops there (``trainer.state.stopped_early``, as
early stopping does) and the trial is recorded as pruned, with its last dev value.

Storage: ``<study-dir>/study.sqlite3`` (optuna's RDB storage). A second ``adaptune tune`` on the same folder loads
the study and runs trials until ``trials`` of them are finished (complete or pruned) in total; a trial that was
still running when its process died is marked failed first. The folder is locked while a study runs in it.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from adaptune.api import train
from adaptune.errors import AdaptuneError, ConfigError
from adaptune.extras import MissingExtraError
from adaptune.io import atomic_write_text
from adaptune.training.callbacks import Callback
from adaptune.training.run_folder import OutputFolderError, claim_output_folder
from adaptune.tuning.report import (
    best_trial,
    plot_history,
    plot_importance,
    write_csv,
    write_markdown,
)
from adaptune.tuning.trials import SearchSetup, build_config, config_yaml, read_search, sample, trial_config

if TYPE_CHECKING:
    from optuna import Study, Trial
    from optuna.pruners import BasePruner
    from optuna.trial import FrozenTrial

    from adaptune.tasks.base import EvalOutput
    from adaptune.training.loop import Trainer

STUDY_FILE = "study.sqlite3"
FINISHED = ("COMPLETE", "PRUNED")


class SampledConfigError(ConfigError):
    """The values drawn for a trial make an invalid config: that trial fails, the search goes on."""


def import_optuna() -> ModuleType:
    """optuna, with its own logging turned down to warnings; a :class:`MissingExtraError` naming the ``tune`` extra
    when it is not installed."""
    try:
        import optuna
    except ImportError:
        raise MissingExtraError("adaptune tune", "optuna") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


@dataclass
class TuneResult:
    """What a study found, and where its files are."""

    study_dir: Path
    study_name: str
    #: The dev metric compared, and ``maximize`` or ``minimize``.
    metric: str
    direction: str
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    #: ``<study-dir>/best.yaml`` (None when no trial completed).
    best_config: Path | None
    complete: int
    pruned: int
    failed: int
    notes: list[str] = field(default_factory=list)

    @property
    def finished(self) -> int:
        """Complete and pruned trials: what ``trials`` counts."""
        return self.complete + self.pruned


class PruningCallback(Callback):
    """Reports every dev evaluation to the trial (``trial.report(value, step)``, step = optimiser steps done) and
    stops the run when the pruner says so (``trial.should_prune()``); ``pruned_at`` is then that step."""

    def __init__(self, trial: Trial, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.pruned_at: int | None = None

    def on_evaluate(self, trainer: Trainer, result: EvalOutput, improved: bool) -> None:
        if self.metric not in result.headline:
            raise ConfigError(f"config key 'search.metric' = {self.metric!r}: dev reports {', '.join(result.headline)}")
        value, step = float(result.headline[self.metric]), trainer.state.step
        self.trial.report(value, step)
        if self.pruned_at is None and self.trial.should_prune():
            self.pruned_at = step
            trainer.state.stopped_early = True
            trainer.message(
                f"trial {self.trial.number} pruned at step {step} of {trainer.total_steps}: dev {self.metric} "
                f"{value:.4f} (search.pruner)",
                style="bold",
            )


class Objective:
    """One trial: draw the values, build the config, train into ``<study-dir>/trial-<n>``, return the dev value
    of the run's kept weights."""

    def __init__(self, setup: SearchSetup, folder: Path, callbacks: Sequence[Callback]) -> None:
        self.setup, self.folder, self.callbacks = setup, folder, list(callbacks)

    def __call__(self, trial: Trial) -> float:
        import optuna

        params = sample(trial, self.setup.search)
        out = self.folder / f"trial-{trial.number}"
        trial.set_user_attr("output_dir", str(out))
        try:
            cfg = trial_config(self.setup, params, out)
        except ConfigError as err:
            trial.set_user_attr("error", f"invalid config: {err}")
            raise SampledConfigError(str(err)) from None
        pruning = PruningCallback(trial, self.setup.metric)
        try:
            result = train(cfg, overwrite=True, callbacks=[pruning, *self.callbacks])
        except (Exception, KeyboardInterrupt) as err:  # optuna records the trial failed and raises it again
            trial.set_user_attr("error", failure(err))
            raise
        if pruning.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned at step {pruning.pruned_at}")
        headline = result.results["splits"]["dev"]["headline"]
        if self.setup.metric not in headline:
            raise ConfigError(f"config key 'search.metric' = {self.setup.metric!r}: dev reports {', '.join(headline)}")
        value = float(headline[self.setup.metric])
        if math.isnan(value):
            trial.set_user_attr("error", f"dev {self.setup.metric} is NaN")
        return value


def failure(err: BaseException) -> str:
    """How the trial table names what ended a trial."""
    if isinstance(err, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt)"
    return str(err) if isinstance(err, AdaptuneError) else f"{type(err).__name__}: {err}"


def count(study: Study, states: Sequence[str]) -> int:
    """Trials of ``study`` in one of ``states`` (names of optuna's TrialState)."""
    return sum(t.state.name in states for t in study.get_trials(deepcopy=False))


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def progress_line(study: Study, trial: FrozenTrial, metric: str, total: int) -> str:
    """``trial 3/20 (#4)  training.learning_rate=0.0012  dev accuracy 0.8125  best 0.8400 (#2)  41.2 s``."""
    params = "  ".join(f"{key}={_shown(value)}" for key, value in trial.params.items())
    start, end = trial.datetime_start, trial.datetime_complete
    seconds = f"{(end - start).total_seconds():.1f} s" if start and end else ""
    state = trial.state.name
    if state == "COMPLETE":
        head, outcome = f"trial {count(study, FINISHED)}/{total}", f"dev {metric} {trial.value:.4f}"
    elif state == "PRUNED":
        value = f" (dev {metric} {trial.value:.4f})" if trial.value is not None else ""
        head, outcome = f"trial {count(study, FINISHED)}/{total}", f"pruned at step {trial.last_step}{value}"
    else:
        head, outcome = "trial failed, not counted", f"failed: {trial.user_attrs.get('error', state)}"
    best = best_trial(study)
    so_far = f"best {best.value:.4f} (#{best.number})" if best is not None else "no complete trial yet"
    return "  ".join(part for part in (f"{head} (#{trial.number})", params, outcome, so_far, seconds) if part)


def make_pruner(optuna: ModuleType, setup: SearchSetup) -> BasePruner:
    """The pruner ``search.pruner`` names: optuna's MedianPruner, or none."""
    search = setup.search
    if search.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(
        n_startup_trials=search.prune_startup_trials, n_warmup_steps=search.prune_warmup_steps
    )


def open_study(
    optuna: ModuleType, setup: SearchSetup, folder: Path, *, seed: int, pruner: BasePruner | None
) -> tuple[Study, list[int]]:
    """Create or load the study in ``folder``; the numbers of the trials found still running, now marked failed."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{(folder / STUDY_FILE).resolve()}")
    others = [name for name in optuna.get_all_study_names(storage) if name != setup.name]
    if others:
        raise ConfigError(
            f"study dir {folder} holds the study {others[0]!r}, not {setup.name!r} (the study is named after the "
            f"config file, {setup.path.name}): choose another --study-dir"
        )
    study = optuna.create_study(
        storage=storage,
        study_name=setup.name,
        direction=setup.direction,
        load_if_exists=True,
        pruner=pruner or make_pruner(optuna, setup),
    )
    mark = study.user_attrs.get("fingerprint")
    if mark is None and not study.trials:
        study.set_user_attr("fingerprint", setup.fingerprint())
        study.set_user_attr("config", str(setup.path.resolve()))
    elif mark != setup.fingerprint():
        raise ConfigError(
            f"study dir {folder}: its study {setup.name!r} was run with another config or search space (the YAML or "
            "the --set overrides changed since); resume it with the same ones, or choose another --study-dir"
        )
    running = optuna.trial.TrialState.RUNNING
    stale = [t.number for t in study.get_trials(deepcopy=False, states=(running,))]
    for number in stale:  # the folder's lock says no other tune runs here: these died with their process
        study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    study.sampler = optuna.samplers.TPESampler(
        seed=seed + len(study.trials), n_startup_trials=setup.search.startup_trials
    )
    return study, stale


@contextmanager
def claim_study_dir(folder: Path) -> Iterator[list[str]]:
    """Create and lock the study folder (as a run locks its output folder) for the ``with`` block; what was
    taken over."""
    try:
        with claim_output_folder(folder, resume=True, overwrite=False) as claimed:
            yield claimed.notes
    except OutputFolderError as err:
        raise OutputFolderError(str(err).replace("training.output_dir", "--study-dir")) from None


def write_best(study: Study, setup: SearchSetup, folder: Path) -> Path | None:
    """``best.yaml``: the whole config with the best trial's values, training into ``runs/<name>-best``."""
    best = best_trial(study)
    if best is None:
        return None
    cfg = build_config(setup.tree, best.params, output_dir=Path("runs") / f"{setup.name}-best")
    path = folder / "best.yaml"
    header = (
        f"The best trial of the study {setup.name!r} ({setup.path}): trial {best.number}, dev {setup.metric} "
        f"{best.value:.4f}.\nTrain it: adaptune train {path}"
    )
    atomic_write_text(path, config_yaml(cfg, header))
    return path


def write_tables(study: Study, setup: SearchSetup, folder: Path, notes: Sequence[str] = ()) -> Path | None:
    """``trials.csv``, ``trials.md`` and ``best.yaml`` as the study stands; the best config's path."""
    write_csv(study.get_trials(deepcopy=False), folder / "trials.csv")
    write_markdown(study, folder / "trials.md", setup.metric, notes)
    return write_best(study, setup, folder)


class Progress:
    """After each trial: its line on the console, and the tables rewritten (a killed study keeps them)."""

    def __init__(self, setup: SearchSetup, folder: Path, total: int, say: Callable[[str], None]) -> None:
        self.setup, self.folder, self.total, self.say = setup, folder, total, say

    def __call__(self, study: Study, trial: FrozenTrial) -> None:
        self.say(progress_line(study, trial, self.setup.metric, self.total))
        write_tables(study, self.setup, self.folder)


def run_trials(
    optuna: ModuleType,
    study: Study,
    objective: Callable[[Trial], float],
    n_trials: int,
    timeout: float | None,
    after: Callable[[Study, FrozenTrial], None],
) -> None:
    """Optuna's ask-and-tell loop: up to ``n_trials`` trials, none started once ``timeout`` seconds have passed
    (as ``study.optimize``'s timeout). A trial whose drawn values make an invalid config is told failed and the
    loop goes on; any other error is told failed and raised (``study.optimize`` would also log its traceback).
    ``after(study, trial)`` follows each trial."""
    state = optuna.trial.TrialState
    started = time.monotonic()
    for _ in range(n_trials):
        if timeout is not None and time.monotonic() - started >= timeout:
            break
        trial = study.ask()
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            frozen = study.tell(trial, state=state.PRUNED)
        except SampledConfigError:
            frozen = study.tell(trial, state=state.FAIL)
        except BaseException:
            study.tell(trial, state=state.FAIL)
            raise
        else:
            frozen = study.tell(trial, value)  # a NaN value is told failed, with optuna's warning
        after(study, frozen)
        gc.collect()  # the trial's model, before the next one loads its own


def _print(line: str) -> None:
    print(line, flush=True)


def tune(
    config_path: str | Path,
    trials: int,
    *,
    study_dir: str | Path | None = None,
    timeout: float | None = None,
    seed: int | None = None,
    overrides: Sequence[str] = (),
    callbacks: Sequence[Callback] = (),
    pruner: BasePruner | None = None,
    echo: Callable[[str], None] | None = None,
) -> TuneResult:
    """Search the ``search:`` block of the YAML ``config_path`` until ``trials`` trials are finished (complete or
    pruned) in the study in ``study_dir`` (default ``runs/<config name>-tune``), resuming what is there.

    ``timeout``: start no new trial after that many seconds. ``seed``: the sampler's (default
    ``training.seed``). ``overrides``: ``--set`` assignments applied to the YAML first. ``callbacks``: added to
    every trial's run. ``pruner``: an optuna pruner instead of ``search.pruner``. ``echo``: where the progress
    lines go (default: printed). Writes ``best.yaml``, ``trials.csv``, ``trials.md``, ``history.png`` and
    ``importance.png`` in the study folder. Needs the ``tune`` extra (optuna).
    """
    optuna = import_optuna()
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"--timeout must be positive, got {timeout}")
    setup = read_search(config_path, overrides)
    folder = Path(study_dir) if study_dir is not None else Path("runs") / f"{setup.name}-tune"
    say = echo or _print
    with claim_study_dir(folder) as taken:
        for note in taken:
            say(f"note: {note}")
        first_seed = setup.base.training.seed if seed is None else seed
        study, stale = open_study(optuna, setup, folder, seed=first_seed, pruner=pruner)
        for number in stale:
            say(f"note: trial {number} was still running when the last tune on {folder} stopped: marked failed")
        done = count(study, FINISHED)
        say(f"study {setup.name!r} in {folder}: {done} of {trials} trials done; {setup.direction} dev {setup.metric}")
        if done < trials:
            progress = Progress(setup, folder, trials, say)
            try:
                run_trials(optuna, study, Objective(setup, folder, callbacks), trials - done, timeout, progress)
            finally:
                write_tables(study, setup, folder)
        return _finish(study, setup, folder)


def _finish(study: Study, setup: SearchSetup, folder: Path) -> TuneResult:
    """The plots, the tables with their notes, and the result."""
    notes: list[str] = []
    if any(t.value is not None for t in study.get_trials(deepcopy=False)):
        plot_history(study, folder / "history.png", setup.metric)
    else:
        notes.append("history.png not drawn: no trial has a dev value")
    notes += plot_importance(study, folder / "importance.png")
    best_config = write_tables(study, setup, folder, notes)
    best = best_trial(study)
    return TuneResult(
        study_dir=folder,
        study_name=setup.name,
        metric=setup.metric,
        direction=setup.direction,
        best_value=best.value if best is not None else None,
        best_params=dict(best.params) if best is not None else {},
        best_trial=best.number if best is not None else None,
        best_config=best_config,
        complete=count(study, ("COMPLETE",)),
        pruned=count(study, ("PRUNED",)),
        failed=count(study, ("FAIL",)),
        notes=notes,
    )
