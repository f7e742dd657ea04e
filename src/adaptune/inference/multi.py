"""The multi-adapter predictor: one base model, every compatible adapter of a folder, mixed-adapter forward passes.

>>> predictor = MultiPredictor("sentence-transformers/all-MiniLM-L6-v2", "adapters/")      # doctest: +SKIP
>>> rows = predictor.prepare("sentiment", ["a charming film"]) + predictor.prepare("ner", ["Bob lives in Paris"])
>>> predictor.run(rows)                                                                     # doctest: +SKIP
[{'text': 'a charming film', 'label': '1', ...}, {'text': 'Bob lives in Paris', 'entities': [...], ...}]

:meth:`MultiPredictor.run` takes rows of any mix of adapters and answers each exactly as
``Predictor.load(adapter).predict`` would (through the task's :meth:`~adaptune.tasks.base.Task.predict`):

* rows of per-row adapters (methods with a per-row form, :class:`~adaptune.methods.base.PerRowBatched`; see
  :mod:`adaptune.inference.folder`) are padded into **one** batch and go through the shared base **once**, with
  :meth:`~adaptune.per_row.MultiAdapterLayers.select` telling every adapted layer which adapter each row uses;
  then each adapter's head runs on its own rows' hidden states and its task decodes them;
* rows of the other adapters are grouped by adapter: :func:`~adaptune.inference.run_model` on the adapter's private
  model (which shares the base's tensors), one forward per group.

Generation (:meth:`MultiPredictor.generate_jobs`) takes the requests that arrived together: each is checked alone,
then those of one adapter with the same ``chat`` flag and decoding settings go through
:func:`adaptune.generation.generate_requests` in one batch (seeded sampled requests alone).

Routing is by what a task predicts (:data:`~adaptune.tasks.base.TaskKind`), never by its name. Refusals are the
exception types of :mod:`adaptune.inference.errors`. The predictor is thread-safe: forward passes and adapter
(un)loading hold one lock; tokenisation holds another (fast tokenizers must not be used by two threads at once).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from adaptune.backbone import BaseFingerprint, load_backbone
from adaptune.config import ModelConfig
from adaptune.errors import DataError
from adaptune.generation import Generation, GenerationConfig, Prompt, generate_requests, prompt_tokens, stream
from adaptune.inference import check_finite, run_model, to_device
from adaptune.inference.errors import (
    AdapterAlreadyLoaded,
    AdapterNotFound,
    AdapterRefused,
    AdapterUnloaded,
    InvalidInput,
    LimitExceeded,
    NonFiniteOutput,
    PredictorError,
    WrongTask,
)
from adaptune.inference.folder import Entry, adapter_path, build_entry, check_name, discover, structural_copy
from adaptune.inference.jobs import GenerationJob, job_batches
from adaptune.model import BACKBONE_INPUTS, head_embeds_inputs
from adaptune.padding_free import packed_forward, packing_of, worth_packing
from adaptune.padding_free import supports as supports_padding_free
from adaptune.per_row import MultiAdapterLayers
from adaptune.positions import positions_from_mask
from adaptune.tasks.base import Encoded, TaskKind


@dataclass
class Row:
    """One input of one request, parsed and tokenised for its adapter."""

    entry: Entry
    example: Any
    encoded: Encoded


#: Called after each forward batch with (rows, rows per adapter name).
BatchObserver = Callable[[int, dict[str, int]], None]
#: Called after each generation batch with (requests, prompts) decoded together.
GenerationObserver = Callable[[int, int], None]


class _Decoded:
    """The :class:`~adaptune.tasks.base.PredictContext` of rows whose forward pass already ran (in a mixed batch):
    :meth:`Task.predict` gets their decoded predictions from it, as it gets them from a Predictor's forward."""

    def __init__(self, labels: Sequence[str], predictions: list[Any]) -> None:
        self.labels = labels
        self.predictions = predictions

    def forward(self, examples: Sequence[Any]) -> list[Any]:
        return self.predictions

    def generate(self, prompts: Sequence[Any], config: Any) -> list[Any]:
        raise TypeError("rows of the forward batch do not generate (generation goes through generate_jobs)")


class MultiPredictor:
    """The base model loaded once and the adapters of ``adapters_dir`` on it, by folder name.

    Args:
        base: hub id or folder of the base model (packaged models resolve offline, see :mod:`adaptune.backbone`).
        adapters_dir: folder whose sub-folders are adapters; only these can ever be loaded.
        max_input_tokens: longest input (in tokens, special tokens included) a request may carry (512).
        load_all: load every adapter of the folder now (True); incompatible ones are listed in :attr:`refused`.
        padding_free: run shared forward passes on the batch's real tokens only (:mod:`adaptune.padding_free`)
            when the base supports it (encoders); the same results, less work for batches of mixed lengths.
    """

    def __init__(
        self,
        base: str,
        adapters_dir: str | Path,
        *,
        max_input_tokens: int = 512,
        load_all: bool = True,
        padding_free: bool = True,
        device: str = "auto",
    ) -> None:
        from adaptune.training.distributed import resolve_device

        self.device = resolve_device(device)
        self.base_name = base
        self.folder = Path(adapters_dir)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"adapters folder {self.folder} does not exist")
        self.backbone = load_backbone(ModelConfig(name_or_path=base))
        self.backbone.model.to(self.device)  # before the copies below, which share its tensors
        self.fingerprint = BaseFingerprint(self.backbone.model)
        # hook-free module tree sharing the base tensors, what every adapter's own copy is made from; its own
        # tokenizer (methods may tokenise at attach) so that loading never races the requests' tokenisation
        self.template = replace(
            self.backbone,
            model=structural_copy(self.backbone.model),
            tokenizer=copy.deepcopy(self.backbone.tokenizer),
        )
        self.layers = MultiAdapterLayers(self.backbone.model)
        self.padding_free = padding_free and supports_padding_free(self.backbone.model)
        self.max_input_tokens = max_input_tokens
        self.entries: dict[str, Entry] = {}
        self.refused: dict[str, str] = {}
        self.observers: list[BatchObserver] = []
        self.generation_observers: list[GenerationObserver] = []
        self._next_index = 1
        self._model_lock = threading.RLock()
        self._token_lock = threading.Lock()
        if load_all:
            self.load_all()

    # -- adapters -------------------------------------------------------------------------------------------
    def load_all(self) -> None:
        """Load every adapter folder not loaded yet; record why the others are refused."""
        for name in discover(self.folder):
            if name in self.entries:
                continue
            try:
                self._load(name)
            except PredictorError as err:
                self.refused[name] = err.message

    def load(self, name: str) -> Entry:
        """Load adapter ``name`` from the adapters folder (:class:`AdapterAlreadyLoaded` if it is loaded)."""
        return self._load(name)

    def _load(self, name: str) -> Entry:
        if name in self.entries:
            raise AdapterAlreadyLoaded(f"adapter {name!r} is already loaded (use reload)")
        entry = self._build(name)
        with self._model_lock:
            if name in self.entries:
                raise AdapterAlreadyLoaded(f"adapter {name!r} is already loaded (use reload)")
            self._register(entry)
        return entry

    def unload(self, name: str) -> None:
        """Forget adapter ``name``; rows of it still queued are answered with :class:`AdapterUnloaded`."""
        with self._model_lock:
            self._unregister(self._entry(name))

    def reload(self, name: str) -> Entry:
        """Read adapter ``name`` again from disk and swap it in atomically (loads it if it was not loaded)."""
        entry = self._build(name)
        with self._model_lock:
            old = self.entries.get(name)
            if old is not None:
                self._unregister(old)
            self._register(entry)
        return entry

    def get(self, name: str) -> Entry:
        """The loaded adapter ``name``: :class:`AdapterNameError` for a name that is not a plain folder name,
        :class:`AdapterNotFound` if it is not loaded."""
        return self._entry(name)

    def _entry(self, name: str) -> Entry:
        check_name(name)
        entry = self.entries.get(name)
        if entry is None:
            raise AdapterNotFound(f"adapter {name!r} is not loaded (GET /v1/adapters lists them)")
        return entry

    def _build(self, name: str) -> Entry:
        path = adapter_path(self.folder, name)
        if not path.is_dir():
            raise AdapterNotFound(f"no adapter folder {name!r} in the adapters folder")
        try:
            entry = build_entry(name, path, self.template, self.fingerprint)
        except AdapterRefused as err:
            self.refused[name] = str(err)
            raise AdapterRefused(f"adapter {name!r} refused: {err}") from None
        self.refused.pop(name, None)
        return entry

    def _register(self, entry: Entry) -> None:
        if entry.per_row:
            entry.index = self._next_index
            self._next_index += 1
            self.layers.add(entry.index, entry.parts)
        self.entries[entry.name] = entry

    def _unregister(self, entry: Entry) -> None:
        if entry.per_row:
            self.layers.remove(entry.index)
        del self.entries[entry.name]

    # -- requests -------------------------------------------------------------------------------------------
    def prepare(self, name: str, items: Sequence[str | dict[str, Any]], kind: TaskKind | None = None) -> list[Row]:
        """Parse and tokenise ``items`` for adapter ``name``; every problem is a :class:`PredictorError` raised
        here, before any batching, so a bad request never reaches a batch. ``kind``: the task kind the call
        serves (``classify``, ``tag``); adapters of a ``generate`` task never join the forward batch."""
        entry = self._entry(name)
        if entry.kind == "generate" or (kind is not None and entry.kind != kind):
            serves = repr(kind) if kind is not None else "forward-pass"
            raise WrongTask(
                f"adapter {name!r} is a {entry.task_name} adapter (kind {entry.kind!r}); this endpoint serves "
                f"{serves} adapters"
            )
        rows = []
        for index, item in enumerate(items):
            try:
                example = entry.task.without_labels(entry.task.parse_input(item))
            except DataError as err:
                raise InvalidInput(f"inputs[{index}]: {err}") from None
            rows.append(Row(entry, example, self._encode(entry, example, index)))
        return rows

    def _encode(self, entry: Entry, example: Any, index: int) -> Encoded:
        """Tokenise as the offline Predictor does; refuse an input longer than ``max_input_tokens``."""
        tokenizer = self.backbone.tokenizer
        with self._token_lock:
            encoded: Encoded = entry.task.encode(example, tokenizer, [], entry.max_length)
            length = len(encoded)
            if encoded.truncated or length > self.max_input_tokens:  # count the whole input, not the kept part
                length = len(entry.task.encode(example, tokenizer, [], 1 << 30))
        if length > self.max_input_tokens:
            raise LimitExceeded(
                f"inputs[{index}] has {length} tokens; this server's max_input_tokens is {self.max_input_tokens}",
                limit="max_input_tokens",
            )
        return encoded

    def predict(self, name: str, items: Sequence[str | dict[str, Any]]) -> list[dict[str, Any]]:
        """Prepare and run in one call (what a micro-batcher does for many requests at once)."""
        results = self.run(self.prepare(name, items))
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results  # type: ignore[return-value]

    def run(self, rows: Sequence[Row]) -> list[dict[str, Any] | PredictorError]:
        """Answer every row: per-row adapters in one forward of the base, the others grouped by adapter.

        A row whose adapter was unloaded (or reloaded) after it was prepared is answered with
        :class:`AdapterUnloaded`; the rows of an adapter that gives non-finite scores with :class:`NonFiniteOutput`.
        """
        results: list[Any] = [
            AdapterUnloaded(f"adapter {r.entry.name!r} was unloaded while the request waited") for r in rows
        ]
        with self._model_lock, torch.no_grad():
            live = [i for i, r in enumerate(rows) if self.entries.get(r.entry.name) is r.entry]
            shared = [i for i in live if rows[i].entry.per_row]
            if shared:
                self._run_shared(rows, shared, results)
            grouped: dict[str, list[int]] = {}
            for i in live:
                if not rows[i].entry.per_row:
                    grouped.setdefault(rows[i].entry.name, []).append(i)
            for positions in grouped.values():
                self._run_private(rows, positions, results)
        counts: dict[str, int] = {}
        for row in rows:
            counts[row.entry.name] = counts.get(row.entry.name, 0) + 1
        for observe in self.observers:
            observe(len(rows), counts)
        return results

    def _run_shared(self, rows: Sequence[Row], positions: list[int], results: list[Any]) -> None:
        """One forward pass of the shared base for rows of many adapters, then each adapter's head and task."""
        positions = sorted(positions, key=lambda i: rows[i].entry.index)  # one token range per adapter when packed
        tokenizer = self.backbone.tokenizer
        task = rows[positions[0]].entry.task
        batch = task.collate([rows[i].encoded for i in positions], int(tokenizer.pad_token_id), tokenizer.padding_side)
        batch = to_device(batch, self.device)
        inputs = {k: batch[k] for k in BACKBONE_INPUTS if k in batch}
        select = torch.tensor([rows[i].entry.index for i in positions], dtype=torch.long, device=self.device)
        if self.backbone.is_decoder:  # as AdaptedModel.forward: left padding does not shift a row's positions
            inputs["position_ids"] = positions_from_mask(inputs["attention_mask"])
        if any(head_embeds_inputs(rows[i].entry.head) for i in positions):
            inputs["inputs_embeds"] = self._embed(rows, positions, inputs.pop("input_ids"))
        if self.padding_free and "input_ids" in inputs and worth_packing(inputs["attention_mask"]):
            packing = packing_of(inputs["attention_mask"])
            with self.layers.select(select, packing):
                hidden = packed_forward(self.backbone.model, inputs, packing)
        else:
            with self.layers.select(select):
                hidden = self.backbone.model(**inputs).last_hidden_state
        by_entry: dict[int, list[int]] = {}
        for local, i in enumerate(positions):
            by_entry.setdefault(rows[i].entry.index, []).append(local)
        for local_rows in by_entry.values():
            entry = rows[positions[local_rows[0]]].entry
            index = torch.tensor(local_rows, dtype=torch.long, device=self.device)
            mine = [positions[j] for j in local_rows]
            # the adapter's own batch (its task's keys, e.g. entity positions), and its rows' states cut to its
            # width: what lies beyond is padding on the padded side
            sub = to_device(
                entry.task.collate(
                    [rows[i].encoded for i in mine], int(tokenizer.pad_token_id), tokenizer.padding_side
                ),
                self.device,
            )
            width = sub["input_ids"].shape[1]
            states = hidden[index]
            states = states[:, -width:] if tokenizer.padding_side == "left" else states[:, :width]
            logits = entry.head(states, sub)
            try:
                check_finite(logits, entry.name)
            except NonFiniteOutput as err:  # this adapter's rows fail; the others of the batch go on
                for i in mine:
                    results[i] = err
                continue
            predictions = entry.task.decode(logits, sub, [rows[i].encoded for i in mine])
            self._answer(entry, rows, mine, predictions, results)

    def _embed(self, rows: Sequence[Row], positions: list[int], input_ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings ``(B, T, d)`` of a mixed batch: the base table's rows, and for the rows of adapters
        whose head embeds its inputs (:class:`~adaptune.model.EmbedsInputs`: entity markers) that head's."""
        embedding = self.backbone.model.get_input_embeddings()
        embeds = embedding(input_ids.clamp(max=embedding.num_embeddings - 1))
        by_entry: dict[int, list[int]] = {}
        for local, i in enumerate(positions):
            by_entry.setdefault(rows[i].entry.index, []).append(local)
        for local_rows in by_entry.values():
            head = rows[positions[local_rows[0]]].entry.head
            if head_embeds_inputs(head):
                index = torch.tensor(local_rows, dtype=torch.long, device=input_ids.device)
                embeds[index] = head.embed_inputs(embedding, input_ids[index]).to(embeds.dtype)
        return embeds  # type: ignore[no-any-return]

    def _run_private(self, rows: Sequence[Row], positions: list[int], results: list[Any]) -> None:
        """One forward of an adapter's private model (methods the shared base cannot apply per row)."""
        entry = rows[positions[0]].entry
        assert entry.model is not None
        tokenizer = self.backbone.tokenizer
        try:
            out = run_model(
                entry.model,
                [rows[i].encoded for i in positions],
                batch_size=len(positions),
                pad_id=int(tokenizer.pad_token_id),
                padding_side=tokenizer.padding_side,
                adapter=entry.name,
            )
        except NonFiniteOutput as err:
            for i in positions:
                results[i] = err
            return
        self._answer(entry, rows, positions, out.predictions, results)

    @staticmethod
    def _answer(
        entry: Entry, rows: Sequence[Row], positions: list[int], predictions: list[Any], out: list[Any]
    ) -> None:
        """The task's JSON-ready predictions (:meth:`Task.predict`) for rows decoded to ``predictions``."""
        examples = [rows[i].example for i in positions]
        answers = entry.task.predict(_Decoded(entry.labels, predictions), examples)
        for i, answer in zip(positions, answers, strict=True):
            out[i] = answer

    # -- generation (requests that arrived together, batched per adapter on the adapter's model) -------------
    def generate_jobs(self, jobs: Sequence[GenerationJob], max_prompts: int) -> list[list[Generation] | Exception]:
        """Answer requests that arrived together, in order: each is checked alone (a refused one gets its
        :class:`PredictorError`, the others go on), then those with the same :meth:`GenerationJob.merge_key` are
        decoded together, at most ``max_prompts`` prompts per batch. Each gets what
        :func:`adaptune.generation.generate` gives it alone; a batch that fails is retried request by request, so
        one request cannot fail the others.

        Runs on the generation thread (the adapters' tokenizers are used by that thread only)."""
        results: list[Any] = [None] * len(jobs)
        checked: list[tuple[int, Entry]] = []
        for i, job in enumerate(jobs):
            try:
                checked.append((i, self._generation_entry(job.name, job.prompts, job.chat)))
            except PredictorError as err:
                results[i] = err
        for batch in job_batches(jobs, checked, max_prompts):
            self._generate_batch(jobs, batch, results)
        return results

    def _generate_batch(
        self, jobs: Sequence[GenerationJob], batch: list[tuple[int, Entry]], results: list[Any]
    ) -> None:
        """Decode ``batch`` (job positions with their adapter) in one call; on failure, each job alone."""
        entry, chat = batch[0][1], jobs[batch[0][0]].chat
        assert entry.model is not None
        try:
            outs = generate_requests(entry.model, [(jobs[i].prompts, jobs[i].config) for i, _ in batch], chat=chat)
        except Exception as err:
            if len(batch) == 1:
                results[batch[0][0]] = err
                return
            for member in batch:
                self._generate_batch(jobs, [member], results)
            return
        for (i, _), out in zip(batch, outs, strict=True):
            results[i] = out
        for observe in self.generation_observers:
            observe(len(batch), sum(len(jobs[i].prompts) for i, _ in batch))

    def stream(self, name: str, prompt: Prompt, config: GenerationConfig, *, chat: bool = True) -> Iterator[str]:
        """The text of one prompt in pieces (:func:`adaptune.generation.stream`), checked like :meth:`generate_jobs`."""
        entry = self._generation_entry(name, [prompt], chat)
        assert entry.model is not None
        return stream(entry.model, prompt, config, chat=chat)

    def count_tokens(self, name: str, text: str) -> int:
        """Tokens of ``text`` (no special tokens) for adapter ``name``'s tokenizer (streamed usage figures)."""
        entry = self._entry(name)
        tokenizer = entry.model.info.tokenizer if entry.model is not None else self.backbone.tokenizer
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def _generation_entry(self, name: str, prompts: Sequence[Prompt], chat: bool) -> Entry:
        """The generating adapter ``name``, after checking every prompt (as generation renders it,
        :func:`adaptune.generation.prompt_tokens`) against ``max_input_tokens``.

        Runs on the generation thread: the adapter's own tokenizer is used by that thread only."""
        entry = self._entry(name)
        if entry.kind != "generate" or entry.model is None:
            raise WrongTask(
                f"adapter {name!r} is a {entry.task_name} adapter (kind {entry.kind!r}); generation needs an "
                "adapter of a generating task"
            )
        for index, length in enumerate(prompt_tokens(entry.model, prompts, chat=chat)):
            if length > self.max_input_tokens:
                raise LimitExceeded(
                    f"prompt {index} has {length} tokens; this server's max_input_tokens is {self.max_input_tokens}",
                    limit="max_input_tokens",
                )
        return entry

    # -- facts ----------------------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Loaded adapters and refused folders with the reason (``GET /v1/adapters``)."""
        return {
            "base": self.base_name,
            "adapters": [self.entries[name].describe() for name in sorted(self.entries)],
            "refused": [{"name": name, "reason": reason} for name, reason in sorted(self.refused.items())],
        }
