"""The multi-adapter engine: one base model, every compatible adapter of a folder, mixed-adapter forward passes.

>>> engine = MultiAdapterEngine("sentence-transformers/all-MiniLM-L6-v2", "adapters/")   # doctest: +SKIP
>>> rows = engine.prepare("sentiment", ["a charming film"]) + engine.prepare("ner", ["Bob lives in Paris"])
>>> engine.run(rows)                                                                       # doctest: +SKIP
[{'text': 'a charming film', 'label': '1', ...}, {'text': 'Bob lives in Paris', 'entities': [...], ...}]

:meth:`MultiAdapterEngine.run` takes rows of any mix of adapters and answers each exactly as
``Predictor.load(adapter).predict`` would:

* rows of per-row adapters (plain LoRA, bottleneck, head-only; see :mod:`adaptune.server.adapters`) are padded
  into **one** batch and go through the shared base **once**, with
  :meth:`~adaptune.server.batched.MultiAdapterLayers.select` telling every adapted layer which adapter each row
  uses; then each adapter's head runs on its own rows' hidden states and its task decodes them;
* rows of the other adapters (prefix, prompt, IA3, BitFit, stacks, DoRA) are grouped by adapter, one forward of
  the adapter's private model (which shares the base's tensors) per group.

Generation (:meth:`MultiAdapterEngine.generate_jobs`) takes the requests that arrived together: each is checked
alone, then those of one adapter with the same ``chat`` flag and decoding settings go through
:func:`adaptune.generation.generate_requests` in one batch (seeded sampled requests alone).

The engine is thread-safe: forward passes and adapter (un)loading hold one lock; tokenisation holds another
(fast tokenizers must not be used by two threads at once). HTTP lives elsewhere (:mod:`adaptune.server.app`).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from adaptune.backbone import fingerprint, load_backbone
from adaptune.config import ModelConfig
from adaptune.data.chat import Message, prompt_ids, template_for
from adaptune.errors import DataError
from adaptune.generation import (
    Generation,
    GenerationConfig,
    Prompt,
    generate_requests,
    shared_settings,
    stream,
)
from adaptune.model import BACKBONE_INPUTS
from adaptune.padding_free import packed_forward, packing_of, worth_packing
from adaptune.padding_free import supports as supports_padding_free
from adaptune.server.adapters import (
    GENERATION_TASKS,
    AdapterNameError,
    AdapterRefused,
    Entry,
    adapter_path,
    build_entry,
    check_name,
    discover,
    structural_copy,
)
from adaptune.server.batched import MultiAdapterLayers
from adaptune.server.errors import ServeError, limit_error
from adaptune.tasks.base import Encoded

#: Task names each prediction endpoint serves.
CLASSIFY_TASKS = frozenset({"seq_cls"})
TAG_TASKS = frozenset({"token_cls"})


@dataclass
class Row:
    """One input of one request, parsed and tokenised for its adapter."""

    entry: Entry
    example: Any
    encoded: Encoded


BatchObserver = Callable[[int, dict[str, int]], None]
#: Called after each generation batch with (requests, prompts) decoded together.
GenerationObserver = Callable[[int, int], None]


@dataclass
class GenerationJob:
    """One non-streaming generation request: adapter name, prompts, decoding options, chat flag."""

    name: str
    prompts: Sequence[Prompt]
    config: GenerationConfig
    chat: bool

    def merge_key(self) -> tuple[Any, ...] | None:
        """What requests decoded together share, or None for one that must run alone: a seeded sampled request
        (the sampler's draws would depend on the other rows)."""
        if self.config.do_sample and self.config.seed is not None:
            return None
        return (self.name, self.chat, shared_settings(self.config))


class MultiAdapterEngine:
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
    ) -> None:
        self.base_name = base
        self.folder = Path(adapters_dir)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"adapters folder {self.folder} does not exist")
        self.backbone = load_backbone(ModelConfig(name_or_path=base))
        self.fingerprint = fingerprint(self.backbone.model)
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
                self.load(name)
            except ServeError as err:
                self.refused[name] = err.message

    def load(self, name: str) -> Entry:
        """Load adapter ``name`` from the adapters folder; 409 if it is already loaded."""
        if name in self.entries:
            raise ServeError(409, "already_loaded", f"adapter {name!r} is already loaded (use reload)")
        entry = self._build(name)
        with self._model_lock:
            if name in self.entries:
                raise ServeError(409, "already_loaded", f"adapter {name!r} is already loaded (use reload)")
            self._register(entry)
        return entry

    def unload(self, name: str) -> None:
        """Forget adapter ``name``; rows of it still queued are answered with a 503."""
        with self._model_lock:
            entry = self.get(name)
            self._unregister(entry)

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
        """The loaded adapter ``name``: 400 for a name that is not a plain folder name, 404 if not loaded."""
        try:
            check_name(name)
        except AdapterNameError as err:
            raise ServeError(400, "invalid_adapter_name", str(err)) from None
        entry = self.entries.get(name)
        if entry is None:
            raise ServeError(404, "not_found", f"adapter {name!r} is not loaded (GET /v1/adapters lists them)")
        return entry

    def _build(self, name: str) -> Entry:
        try:
            path = adapter_path(self.folder, name)
        except AdapterNameError as err:
            raise ServeError(400, "invalid_adapter_name", str(err)) from None
        if not path.is_dir():
            raise ServeError(404, "not_found", f"no adapter folder {name!r} in the adapters folder")
        try:
            entry = build_entry(name, path, self.template, self.fingerprint)
        except AdapterRefused as err:
            self.refused[name] = str(err)
            raise ServeError(422, "adapter_refused", f"adapter {name!r} refused: {err}") from None
        self.refused.pop(name, None)
        return entry

    def _register(self, entry: Entry) -> None:
        if entry.per_row:
            entry.index = self._next_index
            self._next_index += 1
            self.layers.add(entry.index, entry.loras, entry.bottlenecks)
        self.entries[entry.name] = entry

    def _unregister(self, entry: Entry) -> None:
        if entry.per_row:
            self.layers.remove(entry.index)
        del self.entries[entry.name]

    # -- requests -------------------------------------------------------------------------------------------
    def prepare(
        self, name: str, items: Sequence[str | dict[str, Any]], tasks: frozenset[str] | None = None
    ) -> list[Row]:
        """Parse and tokenise ``items`` for adapter ``name``; every problem is a :class:`ServeError` (4xx) raised
        here, before any batching, so a bad request never reaches a batch. ``tasks``: the task names allowed."""
        entry = self.get(name)
        if tasks is not None and entry.task_name not in tasks:
            raise ServeError(
                400,
                "wrong_task",
                f"adapter {name!r} is a {entry.task_name} adapter; this endpoint serves {sorted(tasks)}",
            )
        rows = []
        for index, item in enumerate(items):
            try:
                example = entry.task.without_labels(entry.task.parse_input(item))
            except DataError as err:
                raise ServeError(400, "invalid_input", f"inputs[{index}]: {err}") from None
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
            raise limit_error(
                "max_input_tokens",
                f"inputs[{index}] has {length} tokens; this server's max_input_tokens is {self.max_input_tokens}",
            )
        return encoded

    def predict(self, name: str, items: Sequence[str | dict[str, Any]]) -> list[dict[str, Any]]:
        """Prepare and run in one call (what the batcher does for many requests at once)."""
        results = self.run(self.prepare(name, items))
        for result in results:
            if isinstance(result, ServeError):
                raise result
        return results  # type: ignore[return-value]

    def run(self, rows: Sequence[Row]) -> list[dict[str, Any] | ServeError]:
        """Answer every row: per-row adapters in one forward of the base, the others grouped by adapter.

        A row whose adapter was unloaded (or reloaded) after it was prepared is answered with a 503 error.
        """
        results: list[dict[str, Any] | ServeError] = [
            ServeError(503, "adapter_unloaded", f"adapter {r.entry.name!r} was unloaded while the request waited")
            for r in rows
        ]
        with self._model_lock, torch.no_grad():
            live = [i for i, r in enumerate(rows) if self.entries.get(r.entry.name) is r.entry]
            shared = [i for i in live if rows[i].entry.per_row and rows[i].entry.task_name not in GENERATION_TASKS]
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

    def _collate(self, rows: Sequence[Row], positions: Sequence[int]) -> dict[str, torch.Tensor]:
        tokenizer = self.backbone.tokenizer
        task = rows[positions[0]].entry.task
        return task.collate([rows[i].encoded for i in positions], int(tokenizer.pad_token_id), tokenizer.padding_side)  # type: ignore[no-any-return]

    def _run_shared(self, rows: Sequence[Row], positions: list[int], results: list[Any]) -> None:
        """One forward pass of the shared base for rows of many adapters, then each adapter's head."""
        positions = sorted(positions, key=lambda i: rows[i].entry.index)  # one token range per adapter when packed
        batch = self._collate(rows, positions)
        inputs = {k: batch[k] for k in BACKBONE_INPUTS if k in batch}
        select = torch.tensor([rows[i].entry.index for i in positions], dtype=torch.long)
        if self.padding_free and worth_packing(inputs["attention_mask"]):
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
            index = torch.tensor(local_rows, dtype=torch.long)
            sub = {k: v[index] for k, v in batch.items()}
            logits = entry.head(hidden[index], sub)
            self._decode(entry, rows, [positions[j] for j in local_rows], logits, sub, results)

    def _run_private(self, rows: Sequence[Row], positions: list[int], results: list[Any]) -> None:
        """One forward of an adapter's private model (methods the shared base cannot apply per row)."""
        entry = rows[positions[0]].entry
        assert entry.model is not None
        batch = self._collate(rows, positions)
        self._decode(entry, rows, positions, entry.model(batch), batch, results)

    @staticmethod
    def _decode(
        entry: Entry,
        rows: Sequence[Row],
        positions: list[int],
        logits: torch.Tensor,
        batch: dict[str, torch.Tensor],
        results: list[Any],
    ) -> None:
        predictions = entry.task.decode(logits, batch, [rows[i].encoded for i in positions])
        for i, prediction in zip(positions, predictions, strict=True):
            results[i] = entry.task.to_output(rows[i].example, prediction, entry.labels)

    # -- generation (requests that arrived together, batched per adapter on the adapter's model) -------------
    def generate_jobs(self, jobs: Sequence[GenerationJob], max_prompts: int) -> list[list[Generation] | Exception]:
        """Answer requests that arrived together, in order: each is checked alone (a refused one gets its
        :class:`ServeError`, the others go on), then those with the same :meth:`GenerationJob.merge_key` are
        decoded together, at most ``max_prompts`` prompts per batch. Each gets what
        :func:`adaptune.generation.generate` gives it alone; a batch that fails is retried request by request, so
        one request cannot fail the others.

        Runs on the generation thread (the adapters' tokenizers are used by that thread only)."""
        results: list[Any] = [None] * len(jobs)
        groups: dict[Any, list[tuple[int, Entry]]] = {}
        for i, job in enumerate(jobs):
            try:
                entry = self._generation_entry(job.name, job.prompts, job.chat)
            except ServeError as err:
                results[i] = err
                continue
            key = job.merge_key()
            groups.setdefault((id(entry), key) if key is not None else i, []).append((i, entry))
        for members in groups.values():
            batch: list[tuple[int, Entry]] = []
            for member in [*members, None]:
                size = sum(len(jobs[i].prompts) for i, _ in batch)
                if batch and (member is None or size + len(jobs[member[0]].prompts) > max_prompts):
                    self._generate_batch(jobs, batch, results)
                    batch = []
                if member is not None:
                    batch.append(member)
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
        entry = self.get(name)
        tokenizer = entry.model.info.tokenizer if entry.model is not None else self.backbone.tokenizer
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def _generation_entry(self, name: str, prompts: Sequence[Prompt], chat: bool) -> Entry:
        """The causal-LM adapter ``name``, after checking every prompt against ``max_input_tokens``.

        Runs on the generation thread: the adapter's own tokenizer is used by that thread only."""
        entry = self.get(name)
        if entry.task_name not in GENERATION_TASKS or entry.model is None:
            raise ServeError(
                400, "wrong_task", f"adapter {name!r} is a {entry.task_name} adapter; generation needs a causal_lm one"
            )
        tokenizer = entry.model.info.tokenizer
        template = template_for(tokenizer, getattr(entry.task.config, "chat_template", None))
        for index, prompt in enumerate(prompts):
            if isinstance(prompt, str) and not chat:
                length = len(tokenizer(prompt, add_special_tokens=True)["input_ids"])
            else:
                turns = [prompt] if isinstance(prompt, str) else prompt
                messages = [Message("user", t) if isinstance(t, str) else _message(t) for t in turns]
                length = len(prompt_ids(tokenizer, messages, template))
            if length > self.max_input_tokens:
                raise limit_error(
                    "max_input_tokens",
                    f"prompt {index} has {length} tokens; this server's max_input_tokens is {self.max_input_tokens}",
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


def _message(turn: Mapping[str, str]) -> Message:
    return Message(str(turn["role"]), str(turn["content"]))
