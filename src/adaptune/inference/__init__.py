"""Prediction: run an :class:`AdaptedModel` over examples, and the :class:`Predictor` users load adapters with.

``Predictor.load(path).predict(texts)`` is the Python API behind ``adaptune predict``;
:class:`~adaptune.inference.multi.MultiPredictor` (one base model, many adapters, mixed-adapter batches) is the
one behind ``adaptune serve``. Both build an adapter's model with :func:`adapter_model`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from adaptune.backbone import Backbone, BaseFingerprint, load_backbone
from adaptune.config import DataConfig, validate_config
from adaptune.data.batching import eval_batches
from adaptune.errors import AdapterFileError, ConfigError, DataError
from adaptune.generation import Generation, GenerationConfig, Prompt, generate, stream
from adaptune.hardware import PrecisionChoice, choose_precision, requested
from adaptune.inference.errors import NonFiniteOutput
from adaptune.io import CONFIG_FILE, WEIGHTS_FILE, AdapterFile, check_base, load_adapter
from adaptune.methods.base import Mergeable
from adaptune.model import AdaptedModel
from adaptune.quantize import check_quantize, quantize_base
from adaptune.registry import build_method, build_task, methods_with
from adaptune.tasks.base import Encoded, EvalOutput


@dataclass
class BatchOutput:
    """Predictions (in input order), per-example logits and the mean loss when the examples were labelled."""

    predictions: list[Any]
    logits: list[torch.Tensor]
    loss: float | None


def run_model(
    model: AdaptedModel,
    encoded: Sequence[Encoded],
    *,
    batch_size: int,
    pad_id: int,
    padding_side: str = "right",
    bf16: bool = False,
    keep_logits: bool = False,
    adapter: str | None = None,
) -> BatchOutput:
    """Forward ``encoded`` in length-sorted batches without gradients; results come back in input order. With
    ``adapter`` (its name, for the message) non-finite logits raise :class:`NonFiniteOutput` (:func:`check_finite`)."""
    predictions: list[Any] = [None] * len(encoded)
    logits_out: list[torch.Tensor] = []
    if keep_logits:
        logits_out = [torch.empty(0)] * len(encoded)
    loss_sum, loss_n = 0.0, 0
    was_training = model.training
    model.eval()
    device = model_device(model)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    with torch.no_grad(), autocast:
        for indices in eval_batches([len(e) for e in encoded], batch_size):
            items = [encoded[i] for i in indices]
            batch = to_device(model.task.collate(items, pad_id, padding_side), device)
            logits = model(batch)
            if adapter is not None:
                check_finite(logits, adapter)
            if "labels" in batch:
                loss_sum += float(model.task.loss(logits, batch)) * len(items)
                loss_n += len(items)
            for i, pred in zip(indices, model.task.decode(logits, batch, items), strict=True):
                predictions[i] = pred
            if keep_logits:
                for row, i in enumerate(indices):
                    logits_out[i] = _example_logits(logits, batch, row, model.task.rows_are_examples)
    model.train(was_training)
    return BatchOutput(predictions, logits_out, loss_sum / loss_n if loss_n else None)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where ``model``'s weights are (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """``batch`` with its tensors on ``device`` (unchanged on the CPU, where collate builds them)."""
    if device.type == "cpu":
        return batch
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def check_finite(logits: torch.Tensor, adapter: str) -> None:
    """Refuse NaN or infinite ``logits`` of ``adapter``: they would become NaN scores, which are not JSON."""
    if not bool(torch.isfinite(logits).all()):
        raise NonFiniteOutput(
            f"adapter {adapter!r} produced non-finite scores (NaN or inf): its weights likely hold NaN or inf values "
            "(a training run that diverged?); retrain it or restore a good copy of its weights"
        )


def _example_logits(logits: torch.Tensor, batch: dict[str, Any], example: int, rows_are_examples: bool) -> torch.Tensor:
    """The logits of the batch's ``example``-th example: its row, or, for a task whose collate makes several rows
    of one example (``batch["example_index"]``, ``(R,)``: the example of each row), its rows' unpadded token
    logits one after another."""
    mask = batch["attention_mask"].cpu()
    if rows_are_examples:
        return _unpad(logits[example].float().cpu(), mask[example])
    rows = (batch["example_index"].cpu() == example).nonzero().flatten().tolist()
    return torch.cat([_unpad(logits[row].float().cpu(), mask[row]) for row in rows])


def _unpad(row_logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Drop padded positions from token-level logits; sequence-level logits pass through."""
    return row_logits[mask.bool()].clone() if row_logits.dim() == 2 else row_logits.clone()


def merge_in_place(model: AdaptedModel) -> None:
    """Fold the model's method into the base weights (an explicit ``merge()``; ``model.method.unmerge`` undoes it)."""
    method = model.method
    if not isinstance(method, Mergeable):
        name = getattr(method.config, "name", type(method).__name__)
        mergeable = ", ".join(methods_with(Mergeable))
        raise ConfigError(f"method '{name}' cannot be merged into the base weights (mergeable: {mergeable})")
    method.merge(model.backbone)


def inference_precision(asked: str, device: torch.device) -> PrecisionChoice:
    """:func:`~adaptune.hardware.choose_precision` for prediction: bf16 is autocast only, the base weights stay as
    loaded (one base may serve many adapters)."""
    return replace(choose_precision(asked, device), bf16_base=False)


def build_model(backbone: Backbone, method_cfg: Any, task_cfg: Any, labels: list[str]) -> AdaptedModel:
    """Method and task from their configs, attached to ``backbone``, with a head for ``labels``."""
    return AdaptedModel(backbone, build_method(method_cfg), build_task(task_cfg), labels)


class Predictor:
    """A trained adapter on its base model, ready to predict.

    >>> predictor = Predictor.load("runs/intents/adapter")      # doctest: +SKIP
    >>> predictor.predict(["where is my parcel?"])               # doctest: +SKIP
    [{'text': 'where is my parcel?', 'label': 'order_status', 'score': 0.97, 'scores': {...}}]
    """

    def __init__(
        self,
        model: AdaptedModel,
        description: dict[str, Any],
        *,
        batch_size: int = 32,
        bf16: bool = False,
        name: str | None = None,
        precision: PrecisionChoice | None = None,
    ) -> None:
        self.name = name or "<in memory>"  # the adapter's folder, in messages
        #: How :meth:`load` decided ``bf16`` (None for a predictor built directly).
        self.precision = precision
        self.model = model.eval()
        self.description = description
        self.labels = list(model.labels)
        self.task = model.task
        self.tokenizer = model.info.tokenizer
        self.max_length = int(description["max_length"])
        self.batch_size = batch_size
        self.bf16 = bf16
        self.data = DataConfig.model_validate(description.get("data", {}))

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        base: str | None = None,
        batch_size: int = 32,
        bf16: bool = False,
        merge: bool = False,
        device: str = "auto",
        precision: str = "auto",
        quantize: str | None = None,
    ) -> Predictor:
        """Load an adapter folder onto its base model (or onto ``base``, which must be the same weights).

        ``merge=True`` folds a mergeable method (lora, ia3, bitfit, head) into the base weights with the method's
        explicit ``merge()``, so prediction runs the plain base model plus the head (same outputs to float
        tolerance, no adapter cost per token); other methods are refused with a :class:`ConfigError` that lists
        the mergeable ones (:class:`~adaptune.methods.base.Mergeable`). ``device``: auto (CUDA when torch sees
        one), cpu, cuda or cuda:N. ``precision``: auto (bf16 autocast where :func:`~adaptune.hardware.choose_precision`
        finds it faster: a GPU with bf16, a CPU with fast bf16 matmuls), fp32 or bf16; ``bf16=True`` asks for bf16
        too. The weights stay as loaded (fp32); :attr:`precision` says what was chosen and why. ``quantize="int8"``
        runs the base's linear layers on int8 weights, CPU only (:mod:`adaptune.quantize`): the adapter and the head
        stay float, and with ``merge=True`` the merged weights are quantised.
        """
        from adaptune.training.distributed import resolve_device

        target = resolve_device(device)
        check_quantize(quantize, target)
        choice = inference_precision(requested(precision, bf16), target)
        adapter = load_adapter(path)
        model = model_from_adapter(adapter, base=base, quantize=None if merge else quantize)
        if merge:
            merge_in_place(model)
            quantize_base(model.backbone, quantize, keep=model.stored_parameters().values())  # the merged weights
        model.to(target)
        return cls(
            model, adapter.config, batch_size=batch_size, bf16=choice.bf16, name=str(adapter.path), precision=choice
        )

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def examples(self, items: Iterable[str | dict[str, Any]]) -> list[Any]:
        """Raw strings or JSON objects -> the task's examples."""
        out = []
        for index, item in enumerate(items):
            try:
                out.append(self.task.parse_input(item))
            except DataError as err:
                raise DataError(err.message, line=index + 1, field=err.field) from None
        return out

    def encode(self, examples: Sequence[Any], *, with_labels: bool = False) -> list[Encoded]:
        labels = self.labels if with_labels else []
        task = self.task
        items = examples if with_labels else [task.without_labels(ex) for ex in examples]
        return [task.encode(ex, self.tokenizer, labels, self.max_length) for ex in items]

    def _run(self, examples: Sequence[Any], *, with_labels: bool, keep_logits: bool) -> BatchOutput:
        return run_model(
            self.model,
            self.encode(examples, with_labels=with_labels),
            batch_size=self.batch_size,
            pad_id=self.pad_id,
            padding_side=self.tokenizer.padding_side,
            bf16=self.bf16,
            keep_logits=keep_logits,
            adapter=self.name,
        )

    def _autocast(self) -> Any:
        return torch.autocast(model_device(self.model).type, dtype=torch.bfloat16) if self.bf16 else nullcontext()

    def generate(
        self, prompts: Sequence[Prompt], config: GenerationConfig | None = None, *, chat: bool = True, **options: Any
    ) -> list[Generation]:
        """Generate for each prompt (a user message, or a list of ``{"role", "content"}`` messages; raw text
        with ``chat=False``); ``options`` override fields of ``config`` (``max_new_tokens=32``)."""
        config = (config or GenerationConfig()).model_copy(update=options)
        with self._autocast():
            return generate(self.model, prompts, GenerationConfig.model_validate(config.model_dump()), chat=chat)

    def stream(
        self, prompt: Prompt, config: GenerationConfig | None = None, *, chat: bool = True, **options: Any
    ) -> Iterator[str]:
        """Yield the generated text of one prompt in pieces as it is decoded (see :meth:`generate`)."""
        config = (config or GenerationConfig()).model_copy(update=options)
        with self._autocast():
            yield from stream(self.model, prompt, GenerationConfig.model_validate(config.model_dump()), chat=chat)

    def predict(self, items: Iterable[str | dict[str, Any]]) -> list[dict[str, Any]]:
        """One JSON-ready prediction per input, as the task gives it (:meth:`Task.predict`): label and scores,
        entities with character offsets, or a generated reply (a ``generate`` task, its generation settings)."""
        examples = self.examples(items)
        return self.task.predict(self, examples) if examples else []

    def forward(self, examples: Sequence[Any]) -> list[Any]:
        """The task's decoded predictions for unlabelled ``examples`` (the forward pass of :meth:`predict`)."""
        return self._run(examples, with_labels=False, keep_logits=False).predictions

    def logits(self, items: Iterable[str | dict[str, Any]]) -> list[torch.Tensor]:
        """Raw logits per input: ``(num_labels,)`` for sequence tasks, ``(tokens, num_labels)`` for token tasks."""
        examples = self.examples(items)
        return self._run(examples, with_labels=False, keep_logits=True).logits if examples else []

    def evaluate_examples(self, examples: Sequence[Any], path: str = "") -> tuple[EvalOutput, list[Any]]:
        """Score labelled examples; a label the adapter never saw is a :class:`DataError`."""
        self.task.check_labels(examples, self.labels, path)
        out = self._run(examples, with_labels=True, keep_logits=False)
        result = self.task.evaluate(examples, out.predictions, self.labels)
        if out.loss is not None:
            result.headline.setdefault("loss", out.loss)
        return result, out.predictions

    def evaluate(self, path: str | Path, **data_overrides: Any) -> EvalOutput:
        """Read a labelled file with the adapter's data settings (overridable) and score it."""
        data = self.data.model_copy(update=data_overrides)
        examples = self.task.read(str(path), data, split="test")
        return self.evaluate_examples(examples, str(path))[0]


def model_from_adapter(adapter: AdapterFile, *, base: str | None = None, quantize: str | None = None) -> AdaptedModel:
    """Rebuild the trained model from an adapter file, checking that the base weights are the same; ``quantize``
    ("int8") quantises the base once checked, before the adapter attaches to it
    (:func:`~adaptune.quantize.quantize_base`)."""
    desc = adapter.config
    base_desc = desc["base_model"]
    base_cfg = {
        "name_or_path": base or base_desc["name_or_path"],
        "gguf_file": base_desc.get("gguf_file"),
        "pooling": desc["pooling"],
    }
    model_cfg = _run_config(adapter, base_cfg).model
    try:
        backbone = load_backbone(model_cfg)
    except ConfigError as err:
        raise AdapterFileError(
            f"adapter {adapter.path} needs its base model '{model_cfg.name_or_path}', which cannot be loaded "
            f"({err}); pass the base model's folder as base=..."
        ) from None
    check_base(
        desc, BaseFingerprint(backbone.model), where=f"adapter {adapter.path}", this=f"'{model_cfg.name_or_path}'"
    )
    quantize_base(backbone.model, quantize)
    return adapter_model(adapter, backbone)


def adapter_model(adapter: AdapterFile, backbone: Backbone, *, with_state: bool = True) -> AdaptedModel:
    """The adapter's method, task and head (from its config) on ``backbone``, which the caller has checked to be
    the adapter's base; with ``with_state`` its learned state too (:func:`load_adapter_state`). What
    :func:`model_from_adapter` and the multi-adapter predictor (:mod:`adaptune.inference.multi`) both build."""
    run = _run_config(adapter)
    model = build_model(backbone, run.method, run.task, adapter.labels)
    if with_state:
        load_adapter_state(model, adapter)
    return model


def _run_config(adapter: AdapterFile, model: dict[str, Any] | None = None) -> Any:
    """The adapter's method and task configs (and ``model``'s), validated; an :class:`AdapterFileError` if this
    version of adaptune cannot use them (e.g. a method it does not know)."""
    desc = adapter.config
    given = {"method": desc["method"], "task": desc["task"], **({"model": model} if model is not None else {})}
    try:
        return validate_config(given)
    except ConfigError as err:
        raise AdapterFileError(f"{adapter.path / CONFIG_FILE} cannot be used by this adaptune: {err}") from None


def load_adapter_state(model: AdaptedModel, adapter: AdapterFile) -> None:
    """Put the adapter file's learned task state and trainable tensors into ``model`` (built from its config)."""
    model.task.load_learned_state(adapter.config.get("task_state", {}))
    check_shapes(model, adapter)
    try:
        model.load_trainable_state(adapter.tensors)
    except KeyError as err:
        raise AdapterFileError(f"adapter {adapter.path} does not match its method config: {err}") from None


def check_shapes(model: AdaptedModel, adapter: AdapterFile) -> None:
    """Refuse, before any tensor is copied, a tensor file whose shapes differ from what the description builds:
    naming the description field (``labels`` for a head sized by the label count, else ``task`` for the head and
    ``method`` for the method's tensors), its value, and the shapes the file holds."""
    expected = {k: tuple(v.shape) for k, v in model.trainable_state().items()}
    labels = len(adapter.labels)
    for key, tensor in adapter.tensors.items():
        want, found = expected.get(key), tuple(tensor.shape)
        if want is None or want == found:
            continue
        config_file = adapter.path / CONFIG_FILE
        if key.startswith("head.") and labels in want and len(want) == len(found):
            held = next(n for n, w in zip(found, want, strict=True) if w == labels)
            raise AdapterFileError(
                f"{config_file}: field 'labels' lists {labels} labels, but {WEIGHTS_FILE} holds a head for {held} "
                f"({key} has shape {found}; {labels} labels need {want})"
            )
        field = "task" if key.startswith("head.") else "method"
        raise AdapterFileError(
            f"{config_file}: field '{field}' ({adapter.config.get(field)}) builds {key} with shape {want}, but "
            f"{WEIGHTS_FILE} holds shape {found}"
        )
