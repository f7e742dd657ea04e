"""The Python API: ``train(config)`` runs a whole job; the CLI and tests call exactly this."""

from __future__ import annotations

import resource
import time
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from adaptune.backbone import Backbone, fingerprint, load_backbone
from adaptune.config import RunConfig
from adaptune.data.augment import augment_for_run
from adaptune.errors import ConfigError, DataError
from adaptune.evaluation.report import write_eval_report
from adaptune.hardware import host_record
from adaptune.inference import Predictor, model_device, run_model
from adaptune.io import AdapterDescription, describe, save_adapter
from adaptune.model import AdaptedModel
from adaptune.registry import build_method, build_task
from adaptune.tasks.base import Encoded, EvalOutput, Task
from adaptune.training.callbacks import Callback
from adaptune.training.checkpoint import data_digest
from adaptune.training.distributed import (
    SINGLE,
    Distributed,
    check_switches,
    claim_on_main,
    distributed_session,
    gather_in_order,
)
from adaptune.training.logging import tell_before_training, warn_before_training
from adaptune.training.loop import Trainer, seed_everything
from adaptune.training.precision import resolve_precision

#: Data settings stored with an adapter so that ``adaptune eval`` reads files the way training did.
READ_OPTIONS = {
    "format",
    "text_column",
    "text_pair_column",
    "label_column",
    "label_separator",
    "column_names",
    "token_column",
    "tag_column",
}


@dataclass
class Split:
    """Examples of one split, encoded."""

    name: str
    path: str
    examples: list[Any]
    encoded: list[Encoded]
    truncated: int
    #: What was done to the rows as read (augmentation), for the run's notes.
    notes: list[str] = field(default_factory=list)


@dataclass
class TrainResult:
    """Where things went, what was measured, and the trained model."""

    output_dir: Path
    adapter_dir: Path
    results: dict[str, Any]
    trainable_params: int
    train_tokens_per_s: float
    wall_s: float
    #: The trained model in memory, with the best weights loaded: what ``adapter_dir`` holds.
    model: AdaptedModel = field(repr=False, compare=False)
    notes: list[str] = field(default_factory=list)


def _read_split(
    task: Task, cfg: RunConfig, name: str, backbone: Backbone, labels: list[str] | None, max_length: int
) -> Split | None:
    path = getattr(cfg.data, name)
    if path is None:
        return None
    examples = task.read(path, cfg.data, split=name)
    limit = cfg.data.max_train_examples if name == "train" else cfg.data.max_eval_examples
    examples = examples[:limit] if limit else examples
    notes: list[str] = []
    if name == "train" and cfg.data.augment is not None:  # training rows only, before tokenisation
        augmented = augment_for_run(examples, cfg)
        examples, notes = augmented.examples, [augmented.note()]
    if labels is None:
        try:
            labels = task.label_names(examples)
        except DataError as err:  # about the whole file (too few labels ...): say which file
            raise (err if err.file else DataError(err.message, file=path, field=err.field)) from None
    task.check_labels(examples, labels, path)
    encoded = [task.encode(ex, backbone.tokenizer, labels, max_length) for ex in examples]
    return Split(name, path, examples, encoded, sum(e.truncated for e in encoded), notes)


#: The packaged model to suggest when a tokenizer does not know the training text (Chinese on MiniLM).
MULTILINGUAL_MODEL = "intfloat/multilingual-e5-small"


def vocabulary_notes(
    split: Split, backbone: Backbone, threshold: float = 0.02, switch_threshold: float = 0.05
) -> list[str]:
    """A note when many training tokens are unknown to the tokenizer (e.g. Chinese text on an English model);
    above ``switch_threshold`` it names the packaged multilingual model to use instead."""
    unk = backbone.tokenizer.unk_token_id
    if unk is None:
        return []
    total = sum(len(e.input_ids) for e in split.encoded)
    unknown = sum(e.input_ids.count(unk) for e in split.encoded)
    if not total or unknown / total < threshold:
        return []
    note = (
        f"{unknown / total:.1%} of the training tokens are unknown to the tokenizer of {backbone.name} "
        f"({backbone.tokenizer.unk_token}); a model whose vocabulary covers this language will do better"
    )
    if unknown / total > switch_threshold and backbone.name != MULTILINGUAL_MODEL:
        note += (
            f": use --set model.name_or_path={MULTILINGUAL_MODEL} (multilingual-e5-small: Chinese and about 100 "
            "other languages, installed offline by scripts/setup.sh)"
        )
    return [note]


def effective_max_length(requested: int, backbone: Backbone) -> int:
    """``data.max_length``, capped by what the model's position embeddings allow."""
    limit = backbone.max_positions or requested
    model_max = getattr(backbone.tokenizer, "model_max_length", None) or limit
    return int(min(requested, limit, model_max if model_max < 1_000_000 else limit))


def evaluate_split(
    model: AdaptedModel, split: Split, cfg: RunConfig, dist: Distributed = SINGLE
) -> tuple[EvalOutput, list[Any]]:
    """Predict a labelled split and score it (headline metrics plus the mean loss). Under several processes
    each rank predicts its share (examples ``rank, rank + N, ...``) and every rank scores the gathered whole."""
    tokenizer = model.info.tokenizer
    mine = split.encoded[dist.rank :: dist.world]
    out = run_model(
        model,
        mine,
        batch_size=cfg.data.eval_batch_size,
        pad_id=int(tokenizer.pad_token_id),
        padding_side=tokenizer.padding_side,
        bf16=cfg.training.bf16,
    )
    predictions = gather_in_order(dist, len(split.encoded), out.predictions)
    loss = out.loss
    if dist.active:  # run_model's loss is a mean over examples: weigh each rank's by its count
        shares = [(n, part) for n, part in dist.all_gather((len(mine), out.loss)) if part is not None]
        loss = sum(n * part for n, part in shares) / sum(n for n, _ in shares) if shares else None
    result = model.task.evaluate(split.examples, predictions, model.labels)
    if loss is not None:
        result.headline.setdefault("loss", loss)  # a task may report its own (token-weighted) loss
    return result, predictions


def _describe(cfg: RunConfig, model: AdaptedModel, prep: Prepared, metrics: dict[str, Any]) -> AdapterDescription:
    return describe(
        model,
        name_or_path=cfg.model.name_or_path,
        gguf_file=cfg.model.gguf_file,
        base_fingerprint=prep.base_fingerprint,
        base_params=prep.base_params,
        max_length=prep.max_length,
        data=cfg.data.model_dump(mode="json", include=READ_OPTIONS),
        metrics=metrics,
    )


@dataclass
class Prepared:
    """Everything read and built before training starts."""

    task: Task
    backbone: Backbone
    base_fingerprint: str
    base_params: int
    max_length: int
    labels: list[str]
    splits: dict[str, Split]
    notes: list[str]


def prepare(cfg: RunConfig) -> Prepared:
    """Load the base model, read and encode every split, take the labels from the training data."""
    if cfg.data.train is None:
        raise ConfigError("config key 'data.train' is required for training")
    task = build_task(cfg.task)
    backbone = load_backbone(cfg.model)
    max_length = effective_max_length(cfg.data.max_length, backbone)
    train_split = _read_split(task, cfg, "train", backbone, None, max_length)
    assert train_split is not None
    labels = task.label_names(train_split.examples)
    splits = {"train": train_split}
    for name in ("dev", "test"):
        split = _read_split(task, cfg, name, backbone, labels, max_length)
        if split is not None:
            splits[name] = split
    notes = [note for s in splits.values() for note in s.notes]
    notes += [n for s in splits.values() if (n := task.truncation_note(s.name, s.encoded, max_length)) is not None]
    notes += vocabulary_notes(train_split, backbone)
    base_params = sum(p.numel() for p in backbone.model.parameters())
    return Prepared(task, backbone, fingerprint(backbone.model), base_params, max_length, labels, splits, notes)


def train(
    config: RunConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Callback] | None = None,
) -> TrainResult:
    """Train, keep the best weights on dev, save the adapter, evaluate on dev and test, write reports.

    ``resume``: continue from the newest checkpoint in the output folder (refused when the training or dev data
    changed since). ``overwrite``: replace a run already in the output folder (without it, and without
    ``resume``, such a folder is refused). The folder is locked for the run: a second run into it is refused
    (:mod:`adaptune.training.run_folder`). ``callbacks`` (:class:`~adaptune.training.callbacks.Callback`) watch
    or steer the loop, after the run's own ones.
    """
    started = time.perf_counter()
    cfg = config
    if cfg.training.num_threads:
        torch.set_num_threads(cfg.training.num_threads)
    if cfg.training.num_interop_threads and torch.get_num_interop_threads() != cfg.training.num_interop_threads:
        try:
            torch.set_num_interop_threads(cfg.training.num_interop_threads)
        except RuntimeError as err:  # torch allows it once per process, before any inter-op parallel work
            warnings.warn(f"training.num_interop_threads not applied: {err}", stacklevel=2)
    with distributed_session(cfg.training.device, cfg.training.dist_timeout_s) as dist:
        check_switches(cfg.training, dist.world)
        output_dir = cfg.training.output_dir
        with claim_on_main(dist, output_dir, resume=resume, overwrite=overwrite) as claimed:
            warn_before_training(claimed.notes)  # a stale lock taken over, temporary files removed, a run replaced
            return _train_in(claimed.path, cfg, resume, callbacks, started, dist)


def _train_in(
    out_dir: Path,
    cfg: RunConfig,
    resume: bool,
    callbacks: Sequence[Callback] | None,
    started: float,
    dist: Distributed,
) -> TrainResult:
    """The body of :func:`train`, in the claimed output folder; rank 0 alone writes there."""
    cfg, precision = resolve_precision(cfg, dist)  # decided once: every part below reads the decided config
    prep = prepare(cfg)
    notes = [*prep.notes, f"precision {precision.reason}"]
    if dist.is_main:
        told = [note for split in prep.splits.values() for note in split.notes]  # augmentation: not a warning
        warn_before_training([note for note in prep.notes if note not in told])  # [UNK] share, truncation
        tell_before_training([*told, notes[-1]])
    seed_everything(cfg.training.seed)  # adapter and head initialisation are part of the run's seed
    model = AdaptedModel(prep.backbone, build_method(cfg.method), prep.task, prep.labels).to(dist.device)
    metric = cfg.training.metric if cfg.training.metric != "auto" else prep.task.default_metric
    dev = prep.splits.get("dev")
    tokenizer = prep.backbone.tokenizer
    trainer = Trainer(
        model,
        prep.task.training_examples(prep.splits["train"].encoded, prep.max_length),
        cfg,
        out_dir=out_dir,
        dist=dist,
        evaluate=(lambda m: evaluate_split(m, dev, cfg, dist)[0]) if dev is not None else None,
        metric=metric,
        pad_id=int(tokenizer.pad_token_id),
        padding_side=tokenizer.padding_side,
        callbacks=callbacks or (),
        precision=precision,
        data={
            name: data_digest(split.path, split.encoded)
            for name, split in prep.splits.items()
            if name in ("train", "dev")
        },
    )
    at_start = _evaluate_at_start(model, dev, cfg, out_dir, dist) if cfg.training.eval_at_start and dev else None
    fit = trainer.fit(resume=resume)
    if fit.best_state is not None:
        model.load_trainable_state(fit.best_state)
    results: dict[str, Any] = {
        "metric": metric,
        "learning_rate": trainer.learning_rate,  # what the run used (the method's default when none is set)
        "best_step": fit.loop.best_step,
        "steps": fit.loop.step,
        "stopped_early": fit.loop.stopped_early,
        "notes": notes,
        "precision": precision.record(),
        "host": host_record(),
        "splits": {},
    }
    if at_start is not None:
        results["at_start"] = at_start
    for split in (s for name, s in prep.splits.items() if name != "train"):
        result, predictions = evaluate_split(model, split, cfg, dist)
        extra = dist.on_main(lambda s=split: _extra_evaluation(model, cfg, s.examples, out_dir, s.name))
        result.headline.update(extra)
        if extra:  # generation metrics: in the split's report tables (eval_<split>.txt/.md) too
            result.report["generation"] = extra
        results["splits"][split.name] = dist.on_main(
            lambda s=split, r=result, p=predictions: write_eval_report(
                out_dir, s.name, s.path, r, model.task, s.examples, p, model.labels
            )
        )
    headline = {name: r["headline"] for name, r in results["splits"].items()}
    description = _describe(cfg, model, prep, headline)
    adapter_dir = dist.on_main(lambda: save_adapter(out_dir / "adapter", model.trainable_state(), description))
    results.update(_run_stats(model, fit.tokens_per_s, time.perf_counter() - started))
    results["train_s"] = round(fit.train_seconds, 2)  # the optimiser steps' compute time (rank 0's)
    if dist.active:
        results["nproc"] = dist.world
    dist.on_main(lambda: write_run_summary(out_dir, cfg, results, trainer))
    figures = (results["trainable_params"], fit.tokens_per_s, results["wall_s"])
    return TrainResult(out_dir, adapter_dir, results, *figures, model=model, notes=notes)


#: The figures that follow the headline metric in :func:`headline_line`; for other metrics, the first other one.
COMPANIONS = {"accuracy": ("macro_f1",), "f1": ("precision", "recall"), "loss": ("perplexity",)}


def headline_line(results: dict[str, Any]) -> str | None:
    """The run's headline figure in one line, on test (dev when there is no test split), e.g.
    ``test accuracy 0.9556 (macro_f1 0.9562)``; None when no split was evaluated."""
    splits = results.get("splits", {})
    name = next((n for n in ("test", "dev") if n in splits), None)
    if name is None:
        return None
    figures = {
        k: v for k, v in splits[name]["headline"].items() if isinstance(v, int | float) and not isinstance(v, bool)
    }
    metric = results["metric"] if results["metric"] in figures else next(iter(figures), None)
    if metric is None:
        return None
    others = [k for k in COMPANIONS.get(metric, ()) if k in figures]
    others = others or [k for k in figures if k not in (metric, "loss")][:1]
    extra = ", ".join(f"{k} {figures[k]:.4f}" for k in others)
    return f"{name} {metric} {figures[metric]:.4f}" + (f" ({extra})" if extra else "")


def _evaluate_at_start(
    model: AdaptedModel, dev: Split, cfg: RunConfig, out_dir: Path, dist: Distributed = SINGLE
) -> dict[str, Any]:
    """Dev headline metrics before training (``training.eval_at_start``); kept in results.json on resume."""
    import json

    from adaptune.io import atomic_write_json

    previous = out_dir / "results_at_start.json"
    kept = dist.on_main(lambda: json.loads(previous.read_text(encoding="utf-8")) if previous.is_file() else None)
    if kept is not None:  # a resumed run: the start was evaluated before the interruption
        return kept  # type: ignore[no-any-return]
    result, _ = evaluate_split(model, dev, cfg, dist)
    headline = dict(result.headline)
    headline.update(dist.on_main(lambda: _extra_evaluation(model, cfg, dev.examples, out_dir, f"{dev.name}_start")))
    model.train()
    dist.on_main(lambda: atomic_write_json(previous, headline))
    return headline


def _extra_evaluation(model: AdaptedModel, cfg: RunConfig, examples: list[Any], out_dir: Path, name: str) -> Any:
    """The task's extra evaluation (generation metrics) at the run's precision: under bf16 autocast when it trains
    in bf16, as evaluation's forward passes are (a bf16 base needs it)."""
    bf16 = torch.autocast(model_device(model).type, dtype=torch.bfloat16) if cfg.training.bf16 else nullcontext()
    with bf16:
        return model.task.extra_evaluation(model, examples, out_dir, name)


def _run_stats(model: AdaptedModel, tokens_per_s: float, wall_s: float) -> dict[str, Any]:
    return {
        "trainable_params": sum(p.numel() for p in model.trainable()),
        "train_tokens_per_s": round(tokens_per_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "wall_s": round(wall_s, 1),
    }


def write_run_summary(out_dir: Path, cfg: RunConfig, results: dict[str, Any], trainer: Trainer) -> None:
    """``results.json``, ``config.yaml`` and the training-curve PNG of a finished run."""
    import yaml

    from adaptune.evaluation.plots import plot_training_curves
    from adaptune.io import atomic_write_json, atomic_write_text

    atomic_write_json(out_dir / "results.json", results)
    atomic_write_text(
        out_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), allow_unicode=True, sort_keys=False)
    )
    records = trainer_records(out_dir)
    if records:
        plot_training_curves(records, out_dir / "training_curves.png", metric=f"eval_{trainer.metric}")


def trainer_records(out_dir: Path) -> list[dict[str, Any]]:
    """The metrics log of a run as a list of records."""
    import json

    path = out_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


__all__ = ["Predictor", "TrainResult", "train"]
