"""What a study leaves to read: ``trials.csv`` and ``trials.md`` (one row per trial), ``history.png`` (each trial's
dev value and the best so far) and ``importance.png`` (each parameter's share of the variation of the value, by
optuna's :func:`optuna.importance.get_param_importances`: PED-ANOVA, Watanabe et al. 2023, in optuna 5).

The figures use the project's plot style (:func:`adaptune.evaluation.plots.font_families`: CJK text falls back
to an installed CJK font) on an Agg canvas, written atomically like every other file of a run.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptune.io import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from optuna import Study
    from optuna.trial import FrozenTrial

#: Columns of ``trials.csv`` before the parameters (one column each) and after them.
HEAD = ("number", "state", "value", "pruned_at_step", "duration_s")
TAIL = ("output_dir", "error")
#: What the table says of a failed trial that left no error: it was running when its process was killed.
KILLED = "interrupted (still running when the study was resumed)"


def param_names(trials: Sequence[FrozenTrial]) -> list[str]:
    """Every parameter of any trial, in the order they first appear."""
    names: dict[str, None] = {}
    for trial in trials:
        names.update(dict.fromkeys(trial.params))
    return list(names)


def trial_row(trial: FrozenTrial) -> dict[str, Any]:
    """One trial as a table row: state, value, step it was pruned at, seconds, where it ran, why it failed."""
    start, end = trial.datetime_start, trial.datetime_complete
    state = trial.state.name
    error = trial.user_attrs.get("error", KILLED if state == "FAIL" else "")
    return {
        "number": trial.number,
        "state": state,
        "value": trial.value,
        "pruned_at_step": trial.last_step if state == "PRUNED" else None,
        "duration_s": round((end - start).total_seconds(), 1) if start and end else None,
        **trial.params,
        "output_dir": trial.user_attrs.get("output_dir", ""),
        "error": error,
    }


def write_csv(trials: Sequence[FrozenTrial], path: Path) -> Path:
    """``trials.csv``: the columns of :data:`HEAD`, one per parameter, then :data:`TAIL`."""
    columns = [*HEAD, *param_names(trials), *TAIL]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for trial in sorted(trials, key=lambda t: t.number):
        writer.writerow({key: "" if value is None else value for key, value in trial_row(trial).items()})
    atomic_write_text(path, buffer.getvalue())
    return path


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value).replace("|", "\\|")


def markdown_table(trials: Sequence[FrozenTrial], metric: str) -> str:
    """The trials as a markdown table: number, state, dev value, pruned-at step, seconds, the parameters."""
    names = param_names(trials)
    header = ["trial", "state", f"dev {metric}", "pruned at step", "seconds", *names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for trial in sorted(trials, key=lambda t: t.number):
        row = trial_row(trial)
        value = "" if row["value"] is None else f"{row['value']:.4f}"
        cells = [row["number"], row["state"], value, row["pruned_at_step"], row["duration_s"]]
        cells += [row.get(name) for name in names]
        lines.append("| " + " | ".join(_cell(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(study: Study, path: Path, metric: str, notes: Sequence[str] = ()) -> Path:
    """``trials.md``: a summary line, the table, the failed trials' errors and ``notes``."""
    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(t.state.name == state for t in trials) for state in ("COMPLETE", "PRUNED", "FAIL")}
    lines = [
        f"# Study {study.study_name}",
        "",
        f"dev {metric} ({study.direction.name.lower()}); {len(trials)} trials: {counts['COMPLETE']} complete, "
        f"{counts['PRUNED']} pruned, {counts['FAIL']} failed.",
    ]
    best = best_trial(study)
    if best is not None:
        lines.append(f"Best: trial {best.number}, dev {metric} {best.value:.4f} (best.yaml).")
    lines += ["", markdown_table(trials, metric).rstrip("\n")]
    failed = [trial_row(t) for t in trials if t.state.name == "FAIL"]
    if failed:
        lines += ["", "Failed trials:", ""] + [f"- trial {row['number']}: {row['error']}" for row in failed]
    if notes:
        lines += ["", *(f"Note: {note}" for note in notes)]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def best_trial(study: Study) -> FrozenTrial | None:
    """The best complete trial, or None when no trial completed."""
    return study.best_trial if any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False)) else None


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def plot_history(study: Study, path: Path, metric: str) -> Path:
    """``history.png``: the dev value of each complete trial (dots), of each pruned one at its last evaluation
    (crosses), and the best value so far (a step line), against the trial number."""
    import matplotlib as mpl
    from matplotlib.ticker import MaxNLocator

    from adaptune.evaluation.plots import font_families

    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    done = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None and math.isfinite(t.value)]
    pruned = [t for t in trials if t.state.name == "PRUNED" and t.value is not None]
    pick = min if study.direction.name == "MINIMIZE" else max
    best: list[float] = []
    for trial in done:
        best.append(pick(best[-1], float(trial.value)) if best else float(trial.value))  # type: ignore[arg-type]
    with mpl.rc_context({"font.family": font_families()}):
        fig = _figure(7.5, 4.2)
        ax = fig.add_subplot()
        ax.plot([t.number for t in done], [t.value for t in done], "o", color="tab:blue", label="complete")
        if pruned:
            ax.plot([t.number for t in pruned], [t.value for t in pruned], "x", color="tab:red", label="pruned")
        if done:  # the best so far, carried on to the last trial
            steps = [t.number for t in done] + ([trials[-1].number] if trials[-1].number > done[-1].number else [])
            best += best[-1:] * (len(steps) - len(best))
            ax.step(steps, best, where="post", color="tab:green", label="best so far")
        else:
            ax.text(0.5, 0.5, "no complete trial", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{study.study_name}: optimisation history")
        ax.set_xlabel("trial")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"dev {metric}")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend()
        return _save(fig, path)


def plot_importance(study: Study, path: Path) -> list[str]:
    """``importance.png``: optuna's parameter importances as horizontal bars; notes for the report: why it was not
    drawn (fewer than 2 complete trials or fewer than 2 parameters), or optuna's warnings about the estimate
    (few trials per value, ties)."""
    import matplotlib as mpl
    import optuna

    from adaptune.evaluation.plots import font_families

    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(done) < 2:
        return [f"{path.name} not drawn: {len(done)} complete trial(s), importances need at least 2"]
    names = param_names(done)
    if len(names) < 2:
        return [f"{path.name} not drawn: the complete trials vary {len(names)} parameter(s), importances need 2"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        importances = optuna.importance.get_param_importances(study)
    notes = list(dict.fromkeys(f"{path.name}: {warning.message}" for warning in caught))
    order = sorted(importances, key=lambda name: importances[name])
    with mpl.rc_context({"font.family": font_families()}):
        fig = _figure(7.5, 1.2 + 0.45 * len(order))
        ax = fig.add_subplot()
        ax.barh(order, [importances[name] for name in order], color="tab:blue")
        for y, name in enumerate(order):
            ax.text(importances[name], y, f" {importances[name]:.2f}", va="center", fontsize=9)
        ax.set_title(f"{study.study_name}: parameter importance ({len(done)} complete trials)")
        ax.set_xlabel("importance (share, sums to 1)")
        ax.set_xlim(0, max(1.0, max(importances.values(), default=0) * 1.15))
        _save(fig, path)
    return notes
