"""Label-noise auditing: rank training rows by how likely their label is wrong, for ``adaptune audit``.

Two methods, both training the config's adapter with :func:`adaptune.api.train` (in a work folder, without the
config's dev and test files: nothing here selects weights or reports on them):

``dynamics`` (Dataset Cartography; Swayamdipta et al. 2020)
    One run on the data. At each epoch's end :class:`GoldProbabilities` (a training
    :class:`~adaptune.training.callbacks.Callback`) computes ``p_e(y_i | x_i)``, the model's probability of the
    given label of every training row, in eval mode without gradients. Per row, over the ``E`` epochs:
    ``confidence = mean_e p_e``, ``variability = std_e p_e`` (population std) and ``correctness`` = the share of
    epochs whose argmax is the given label. Mislabelled rows are "hard to learn": low confidence and low
    variability. Rows are ranked by confidence, lowest first (ties: lower variability first); ``suggested_label``
    is the last epoch's argmax.
``confident`` (confident learning; Northcutt, Jiang & Chuang 2021, as in cleanlab)
    ``K`` folds (stratified, seeded by ``training.seed``): an adapter trained on ``K-1`` folds predicts the
    held-out one, giving out-of-fold probabilities ``p_ij`` for every row. Per class, the threshold
    ``t_j = mean of p_ij over rows i labelled j``. A row is flagged when ``p_{i,y_i} < t_{y_i}`` and some other class
    ``j`` has ``p_ij >= t_j``. Rows are ranked flagged first, each group by self-confidence ``p_{i,y_i}``, lowest
    first; ``suggested_label`` is the out-of-fold argmax.

Single-label sequence classification only (``task.name: seq_cls``); other tasks are refused with a
:class:`~adaptune.errors.ConfigError`.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from adaptune.config import RunConfig
from adaptune.data.review import SourceRow, read_rows, with_columns, write_rows
from adaptune.errors import ConfigError
from adaptune.training.callbacks import Callback

if TYPE_CHECKING:
    from adaptune.training.loop import Trainer

__all__ = [
    "METHODS",
    "AuditResult",
    "AuditRow",
    "GoldProbabilities",
    "audit",
    "audit_file",
    "confident_ranking",
    "dynamics_ranking",
    "precision_at_k",
]

METHODS: tuple[str, ...] = ("dynamics", "confident")
#: Columns every output row gets after its own fields (then the method's scores).
ADDED_COLUMNS = ("rank", "data_line", "given_label", "suggested_label")


@dataclass
class AuditRow:
    """One training row in the ranking."""

    #: 0-based position among the data's rows (the order of the file).
    index: int
    row: SourceRow
    given_label: str
    suggested_label: str
    #: The method's figures: confidence, variability, correctness (dynamics); self_confidence, flagged,
    #: suggested_probability (confident).
    scores: dict[str, float | bool]


@dataclass
class AuditResult:
    """The rows, most likely mislabelled first."""

    method: str
    labels: list[str]
    rows: list[AuditRow]
    notes: list[str] = field(default_factory=list)

    @property
    def ranking(self) -> list[int]:
        """Row indices (0-based, file order) in rank order."""
        return [row.index for row in self.rows]


class GoldProbabilities(Callback):
    """At each epoch's end, every training row's predicted distribution ``(N, C)`` (eval mode, no gradients, then
    back to train mode: :func:`adaptune.inference.run_model`), and so ``p_e(y_i | x_i)`` ``(N,)`` for its gold
    label. Rows are the trainer's training examples, in file order."""

    def __init__(self) -> None:
        #: One ``(N, C)`` array per finished epoch.
        self.epochs: list[np.ndarray] = []
        self.gold: np.ndarray | None = None

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        from adaptune.inference import run_model

        cfg = trainer.config
        out = run_model(
            trainer.model,
            trainer.train,
            batch_size=cfg.data.eval_batch_size,
            pad_id=trainer.pad_id,
            padding_side=trainer.padding_side,
            bf16=cfg.training.bf16,
        )
        self.epochs.append(np.asarray([probs for _, probs in out.predictions], dtype=np.float64))
        self.gold = np.asarray([int(e.target) for e in trainer.train])

    def gold_probabilities(self) -> np.ndarray:
        """``(E, N)``: each epoch's probability of each row's gold label."""
        if not self.epochs or self.gold is None:
            raise RuntimeError("no epoch finished, so there are no training dynamics")
        rows = np.arange(len(self.gold))
        return np.stack([probs[rows, self.gold] for probs in self.epochs])


def dynamics_ranking(gold_probs: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Rank rows by training dynamics: ``gold_probs`` and ``correct`` (argmax == gold) are ``(E, N)``; returns the
    row order (lowest confidence first, ties by lower variability) and the per-row figures."""
    confidence, variability = gold_probs.mean(0), gold_probs.std(0)
    order = np.lexsort((variability, confidence))
    return order, {"confidence": confidence, "variability": variability, "correctness": correct.mean(0)}


def confident_ranking(probs: np.ndarray, given: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Confident learning on out-of-fold ``probs`` ``(N, C)`` and given label ids ``given`` ``(N,)``: the row order
    (flagged first, each group by self-confidence, lowest first) and the per-row figures, with the thresholds
    ``t_j`` (the mean ``p_j`` of rows labelled ``j``; 1.0 for a class no row has)."""
    n, classes = probs.shape
    thresholds = np.array([probs[given == j, j].mean() if (given == j).any() else 1.0 for j in range(classes)])
    self_confidence = probs[np.arange(n), given]
    above = probs >= thresholds[None, :]
    above[np.arange(n), given] = False
    flagged = (self_confidence < thresholds[given]) & above.any(1)
    order = np.lexsort((self_confidence, ~flagged))
    return order, {"self_confidence": self_confidence, "flagged": flagged, "thresholds": thresholds}


def precision_at_k(ranking: Sequence[int], positives: set[int], k: int) -> float:
    """The share of the first ``k`` ranked rows that are in ``positives``."""
    top = list(ranking)[:k]
    return sum(1 for i in top if i in positives) / len(top) if top else 0.0


def _check_task(cfg: RunConfig) -> None:
    if cfg.task.name != "seq_cls" or getattr(cfg.task, "multi_label", False):
        shown = f"{cfg.task.name}{' (multi_label)' if getattr(cfg.task, 'multi_label', False) else ''}"
        raise ConfigError(
            f"config key 'task.name' = {shown!r}: adaptune audit ranks single-label sequence-classification rows "
            "(task.name: seq_cls, task.multi_label: false); token classification and other tasks are not supported"
        )


def _run_config(cfg: RunConfig, train: str, out_dir: Path, **data: Any) -> RunConfig:
    """``cfg`` training on ``train`` into ``out_dir``, without dev, test, early stopping or an evaluation at start."""
    return cfg.model_copy(
        update={
            "data": cfg.data.model_copy(update={"train": train, "dev": None, "test": None, **data}),
            "training": cfg.training.model_copy(
                update={"output_dir": str(out_dir), "early_stopping_patience": None, "eval_at_start": False}
            ),
        }
    )


@dataclass
class _Data:
    """The data under audit: its rows (original fields), examples and label ids."""

    rows: list[SourceRow]
    examples: list[Any]
    labels: list[str]
    given: np.ndarray


def _read_data(cfg: RunConfig, path: str) -> _Data:
    """Rows and examples of ``path`` read as training reads it (``data.max_train_examples`` applies)."""
    from adaptune.registry import build_task

    task = build_task(cfg.task)
    d = cfg.data
    rows = read_rows(
        path, text_column=d.text_column, format=d.format, column_names=d.column_names, hf_split=d.hf_split_train
    )
    examples = task.read(path, d, split="train")
    rows, examples = rows[: d.max_train_examples], examples[: d.max_train_examples]
    assert len(rows) == len(examples), "one example per row"
    labels = task.label_names(examples)
    index = {name: i for i, name in enumerate(labels)}
    return _Data(rows, examples, labels, np.asarray([index[ex.labels[0]] for ex in examples]))


def _audit_rows(
    data: _Data, order: Sequence[int], suggested: np.ndarray, scores: Callable[[int], dict[str, Any]]
) -> list[AuditRow]:
    """The rows in ranking ``order``, each with its given and suggested label and ``scores(i)``."""
    return [
        AuditRow(int(i), data.rows[i], data.labels[data.given[i]], data.labels[suggested[i]], scores(i)) for i in order
    ]


def _dynamics(cfg: RunConfig, data: _Data, path: str, work: Path) -> AuditResult:
    from adaptune.api import train

    watcher = GoldProbabilities()
    train(_run_config(cfg, path, work / "dynamics"), overwrite=True, callbacks=[watcher])
    gold_probs = watcher.gold_probabilities()
    correct = np.stack([probs.argmax(1) == watcher.gold for probs in watcher.epochs])
    order, figures = dynamics_ranking(gold_probs, correct)
    suggested = watcher.epochs[-1].argmax(1)
    rows = _audit_rows(
        data, order, suggested, lambda i: {name: round(float(values[i]), 6) for name, values in figures.items()}
    )
    note = f"training dynamics over {len(watcher.epochs)} epoch(s)"
    return AuditResult("dynamics", data.labels, rows, [note])


def _fold_probabilities(cfg: RunConfig, data: _Data, train_idx: np.ndarray, held: np.ndarray, work: Path) -> np.ndarray:
    """Train on the rows ``train_idx`` (written as JSON Lines with their original fields) and predict ``held``:
    ``(len(held), C)`` in the data's label order."""
    from adaptune.api import train
    from adaptune.inference import Predictor
    from adaptune.io import read_adapter_config

    work.mkdir(parents=True, exist_ok=True)
    fold_file = work / "train.jsonl"
    lines = (json.dumps(dict(data.rows[i].values), ensure_ascii=False, default=str) for i in train_idx)
    fold_file.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    run_cfg = _run_config(cfg, str(fold_file), work / "run", format="jsonl", column_names=None, max_train_examples=None)
    result = train(run_cfg, overwrite=True)
    bf16 = result.results["precision"]["chosen"] == "bf16"  # predict as the run trained (bf16 base weights)
    description = read_adapter_config(result.adapter_dir)
    predictor = Predictor(result.model, description, batch_size=cfg.data.eval_batch_size, bf16=bf16)
    out = np.zeros((len(held), len(data.labels)))
    columns = [data.labels.index(name) for name in predictor.labels]
    for row, (_, probs) in enumerate(predictor.forward([data.examples[i] for i in held])):
        out[row, columns] = probs
    return out


def _confident(cfg: RunConfig, data: _Data, folds: int, work: Path) -> AuditResult:
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(data.given, minlength=len(data.labels))
    if folds < 2 or folds > len(data.rows):
        raise ConfigError(f"--folds {folds}: needs 2 or more folds, and no more than the {len(data.rows)} rows")
    notes = []
    if counts.min() < folds:
        rare = data.labels[int(counts.argmin())]
        notes.append(f"label {rare!r} has {counts.min()} row(s), fewer than {folds} folds: some folds train without it")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=cfg.training.seed)
    probs = np.zeros((len(data.rows), len(data.labels)))
    with warnings.catch_warnings():  # a class with fewer rows than folds: the note above says so
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        splits = list(splitter.split(np.zeros(len(data.given)), data.given))
    for k, (train_idx, held) in enumerate(splits):
        probs[held] = _fold_probabilities(cfg, data, train_idx, held, work / f"fold_{k + 1}")
    order, figures = confident_ranking(probs, data.given)
    suggested = probs.argmax(1)
    rows = _audit_rows(
        data,
        order,
        suggested,
        lambda i: {
            "self_confidence": round(float(figures["self_confidence"][i]), 6),
            "suggested_probability": round(float(probs[i, suggested[i]]), 6),
            "flagged": bool(figures["flagged"][i]),
        },
    )
    shown = ", ".join(f"{name} {t:.3f}" for name, t in zip(data.labels, figures["thresholds"], strict=True))
    flagged = int(figures["flagged"].sum())
    notes.append(f"confident learning over {folds} folds: {flagged} row(s) flagged; thresholds t_j: {shown}")
    return AuditResult("confident", data.labels, rows, notes)


def audit(
    cfg: RunConfig,
    data: str | Path | None = None,
    *,
    method: str = "dynamics",
    folds: int = 3,
    work_dir: str | Path | None = None,
) -> AuditResult:
    """Rank the rows of ``data`` (default: the config's ``data.train``) by how likely their label is wrong, with
    ``method`` ``dynamics`` or ``confident`` (``folds`` folds); see the module docstring. Training runs go to
    ``work_dir`` (kept), else to a temporary folder that is removed afterwards."""
    _check_task(cfg)
    if method not in METHODS:
        raise ConfigError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    path = str(data) if data is not None else cfg.data.train
    if path is None:
        raise ConfigError("no data to audit: give DATA or set config key 'data.train'")
    rows = _read_data(cfg, path)
    for row in rows.rows:  # refuse a clash with an output column before any training
        with_columns(row, dict.fromkeys(ADDED_COLUMNS))
    holder = tempfile.TemporaryDirectory(prefix="adaptune-audit-") if work_dir is None else nullcontext(str(work_dir))
    with holder as folder:
        work = Path(folder)
        if method == "dynamics":
            return _dynamics(cfg, rows, path, work)
        return _confident(cfg, rows, folds, work)


def review_records(result: AuditResult) -> list[dict[str, Any]]:
    """One output record per row, in rank order: its own fields, then ``rank``, ``data_line``, ``given_label``,
    ``suggested_label`` and the method's scores."""
    return [
        with_columns(
            item.row,
            {
                "rank": rank,
                "data_line": item.row.line,
                "given_label": item.given_label,
                "suggested_label": item.suggested_label,
                **item.scores,
            },
        )
        for rank, item in enumerate(result.rows, start=1)
    ]


def audit_file(
    cfg: RunConfig,
    data: str | Path | None,
    out: str | Path,
    *,
    method: str = "dynamics",
    folds: int = 3,
    work_dir: str | Path | None = None,
) -> AuditResult:
    """:func:`audit`, then the ranking written to ``out`` (csv, tsv or jsonl by its extension)."""
    from adaptune.data.review import output_format

    output_format(out)  # an unusable extension is refused before training
    result = audit(cfg, data, method=method, folds=folds, work_dir=work_dir)
    write_rows(out, review_records(result))
    return result
