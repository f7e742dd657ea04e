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

Adapters load on first use: at start-up every folder is listed from its config alone
(:class:`~adaptune.inference.folder.Listing`: name, method, task, labels; refusals recorded), so requests are checked
(unknown adapter, wrong task kind, input limits) before any weights load; the weights load when a batch first needs
them (a cold load, on the thread running the batch), ``load_all`` loads them now. With ``max_loaded`` and/or
``max_memory_mb`` the loaded adapters are a least-recently-used set within those limits
(:mod:`adaptune.inference.residency`): a cold load evicts the least recently used adapters that the batch does not
use, and a batch that needs more adapters than fit together runs as several forward passes, one per group that fits,
so no forward pass ever has an adapter evicted from under it. An evicted adapter keeps its listing: its queued rows
and next requests simply load it again.

Routing is by what a task predicts (:data:`~adaptune.tasks.base.TaskKind`), never by its name. Refusals are the
exception types of :mod:`adaptune.inference.errors`. The predictor is thread-safe: forward passes and adapter
(un)loading hold one lock (so a load or eviction never happens during a forward pass); tokenisation holds another
(fast tokenizers must not be used by two threads at once).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from adaptune.backbone import BaseFingerprint, load_backbone
from adaptune.config import ModelConfig
from adaptune.errors import DataError
from adaptune.generation import Generation, GenerationConfig, Prompt, generate_requests, prompt_tokens, stream
from adaptune.inference import check_finite, inference_precision, run_model, to_device
from adaptune.inference.adapter_set import AdapterSet
from adaptune.inference.errors import (
    AdapterUnloaded,
    InvalidInput,
    LimitExceeded,
    NonFiniteOutput,
    PredictorError,
    WrongTask,
)
from adaptune.inference.folder import Entry, Listing, structural_copy
from adaptune.inference.jobs import GenerationJob, job_batches
from adaptune.inference.residency import Residency
from adaptune.inference.rows import Decoded, Row
from adaptune.model import BACKBONE_INPUTS, head_embeds_inputs
from adaptune.padding_free import packed_forward, packing_of, worth_packing
from adaptune.padding_free import supports as supports_padding_free
from adaptune.per_row import MultiAdapterLayers
from adaptune.positions import positions_from_mask
from adaptune.quantize import check_quantize, quantize_base
from adaptune.tasks.base import Encoded, TaskKind

#: Called after each forward batch with (rows, rows per adapter name).
BatchObserver = Callable[[int, dict[str, int]], None]
#: Called after each generation batch with (requests, prompts) decoded together.
GenerationObserver = Callable[[int, int], None]


class MultiPredictor:
    """The base model loaded once and the adapters of ``adapters_dir`` on it, by folder name.

    Args:
        base: hub id or folder of the base model (packaged models resolve offline, see :mod:`adaptune.backbone`).
        adapters_dir: folder whose sub-folders are adapters; only these can ever be loaded.
        max_input_tokens: longest input (in tokens, special tokens included) a request may carry (512).
        load_all: load every adapter of the folder now, as far as the limits allow (True); else each loads on first
            use. Either way every folder is listed now (:attr:`available`); incompatible ones go to :attr:`refused`.
        max_loaded: most adapters loaded at once (None: no limit); the least recently used is evicted.
        max_memory_mb: most MiB of adapter tensors loaded at once (None: no limit; see
            :func:`~adaptune.inference.residency.entry_bytes`); an adapter larger alone is refused
            (:class:`AdapterTooLarge`).
        padding_free: run shared forward passes on the batch's real tokens only (:mod:`adaptune.padding_free`)
            when the base supports it (encoders); the same results, less work for batches of mixed lengths.
        precision: auto (bf16 autocast where :func:`~adaptune.hardware.choose_precision` finds it faster), fp32
            or bf16; the base weights stay as loaded. :attr:`precision` says what was chosen and why.
        quantize: "int8": the shared base's linear layers run on int8 weights (CPU only, :mod:`adaptune.quantize`),
            quantised once here, before any adapter loads; adapters attach to them and stay float, as do heads.
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
        max_loaded: int | None = None,
        max_memory_mb: float | None = None,
        precision: str = "auto",
        quantize: str | None = None,
    ) -> None:
        from adaptune.training.distributed import resolve_device

        self.device = resolve_device(device)
        check_quantize(quantize, self.device)
        self.precision = inference_precision(precision, self.device)
        self.base_name = base
        self.folder = Path(adapters_dir)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"adapters folder {self.folder} does not exist")
        self.backbone = load_backbone(ModelConfig(name_or_path=base))
        self.backbone.model.to(self.device)  # before the copies below, which share its tensors
        self.fingerprint = BaseFingerprint(self.backbone.model, now=quantize is not None)  # int8 drops the weights
        self.quantized = quantize_base(self.backbone.model, quantize)  # the int8 layers' names (none in float)
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
        self.adapters = AdapterSet(
            self.folder, self.template, self.fingerprint, self.layers, Residency(max_loaded, max_memory_mb)
        )
        self.residency = self.adapters.residency
        #: Every adapter that can be served, loaded or not, by name; :attr:`entries` are those loaded.
        self.available: dict[str, Listing] = self.adapters.available
        self.entries: dict[str, Entry] = self.adapters.entries
        self.refused: dict[str, str] = self.adapters.refused
        self.observers: list[BatchObserver] = []
        self.generation_observers: list[GenerationObserver] = []
        self._model_lock = self.adapters.lock
        self._token_lock = threading.Lock()
        if load_all:
            self.load_all()  # lists the folder first
        else:
            self.scan()

    # -- adapters (their life cycle: adaptune.inference.adapter_set) --------------------------------------------
    def scan(self) -> None:
        """List every adapter folder not listed yet, from its config alone; record why the others are refused."""
        self.adapters.scan()

    def load_all(self) -> None:
        """Load every listed adapter not loaded yet, as far as the limits allow without evicting (new folders are
        listed first); record why the others are refused."""
        self.adapters.load_all()

    def load(self, name: str) -> Entry:
        """Load adapter ``name`` now, listing it again from its folder if it was unloaded or is new
        (:class:`AdapterAlreadyLoaded` if it is loaded). It becomes the most recently used; it is not pinned."""
        return self.adapters.load(name)

    def unload(self, name: str) -> None:
        """Stop serving adapter ``name`` until :meth:`load` (or :meth:`reload`): its weights are unloaded, its
        rows still queued are answered with :class:`AdapterUnloaded`, new requests with :class:`AdapterNotFound`."""
        self.adapters.unload(name)

    def reload(self, name: str) -> Entry:
        """Read adapter ``name`` again from disk and swap it in atomically, loaded (lists it if it was not)."""
        return self.adapters.reload(name)

    def get(self, name: str) -> Entry:
        """Adapter ``name``'s loaded weights, loading them if need be: :class:`AdapterNameError` for a name that
        is not a plain folder name, :class:`AdapterNotFound` if no such adapter is listed."""
        return self.adapters.loaded(self.adapters.listing(name))

    # -- requests -------------------------------------------------------------------------------------------
    def prepare(self, name: str, items: Sequence[str | dict[str, Any]], kind: TaskKind | None = None) -> list[Row]:
        """Parse and tokenise ``items`` for adapter ``name``; every problem is a :class:`PredictorError` raised
        here, before any batching, so a bad request never reaches a batch. ``kind``: the task kind the call
        serves (``classify``, ``tag``); adapters of a ``generate`` task never join the forward batch."""
        listing = self.adapters.listing(name)
        if listing.kind == "generate" or (kind is not None and listing.kind != kind):
            serves = repr(kind) if kind is not None else "forward-pass"
            raise WrongTask(
                f"adapter {name!r} is a {listing.task_name} adapter (kind {listing.kind!r}); this endpoint serves "
                f"{serves} adapters"
            )
        self.residency.check_size(listing)
        self.residency.touch(listing)  # queued rows keep their adapter among the most recently used
        rows = []
        for index, item in enumerate(items):
            try:
                example = listing.task.without_labels(listing.task.parse_input(item))
            except DataError as err:
                raise InvalidInput(f"inputs[{index}]: {err}") from None
            rows.append(Row(listing, example, self._encode(listing, example, index)))
        return rows

    def _encode(self, listing: Listing, example: Any, index: int) -> Encoded:
        """Tokenise as the offline Predictor does; refuse an input longer than ``max_input_tokens``."""
        tokenizer = self.backbone.tokenizer
        with self._token_lock:
            encoded: Encoded = listing.task.encode(example, tokenizer, [], listing.max_length)
            length = len(encoded)
            if encoded.truncated or length > self.max_input_tokens:  # count the whole input, not the kept part
                length = len(listing.task.encode(example, tokenizer, [], 1 << 30))
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

        Adapters not loaded are loaded first (evicting least recently used ones the batch does not need); when the
        batch's adapters do not fit the limits together, each group that fits runs in turn
        (:meth:`~adaptune.inference.residency.Residency.groups`). A row whose adapter was unloaded (or reloaded)
        after it was prepared is answered with :class:`AdapterUnloaded`, one whose adapter fails to load with that
        error; the rows of an adapter that gives non-finite scores with :class:`NonFiniteOutput`.
        """
        results: list[Any] = [
            AdapterUnloaded(f"adapter {r.adapter.name!r} was unloaded while the request waited") for r in rows
        ]
        with self._model_lock, torch.no_grad(), self._autocast():
            live = [i for i, r in enumerate(rows) if self.available.get(r.adapter.name) is r.adapter]
            for group in self.residency.groups(list({rows[i].adapter.name: rows[i].adapter for i in live}.values())):
                ready = self._load_group(group, rows, live, results)
                shared = [i for i in ready if rows[i].entry.per_row]
                if shared:
                    self._run_shared(rows, shared, results)
                grouped: dict[str, list[int]] = {}
                for i in ready:
                    if not rows[i].entry.per_row:
                        grouped.setdefault(rows[i].entry.name, []).append(i)
                for positions in grouped.values():
                    self._run_private(rows, positions, results)
            self.adapters.trim()  # a group measured larger than planned ran over the limits
        counts: dict[str, int] = {}
        for row in rows:
            counts[row.adapter.name] = counts.get(row.adapter.name, 0) + 1
        for observe in self.observers:
            observe(len(rows), counts)
        return results

    def _load_group(self, group: list[Listing], rows: Sequence[Row], live: list[int], results: list[Any]) -> list[int]:
        """Load the adapters of ``group`` (evicting none of them); the positions in ``live`` of the rows of
        ``group``'s adapters, except those whose adapter failed to load (they get its error)."""
        keep = {listing.name for listing in group}
        failed: dict[str, PredictorError] = {}
        for listing in group:
            try:
                self.adapters.resident(listing, keep, "request")
            except PredictorError as err:
                failed[listing.name] = err
        for i in live:
            if rows[i].adapter.name in failed:
                results[i] = failed[rows[i].adapter.name]
        return [i for i in live if rows[i].adapter.name in keep and rows[i].adapter.name not in failed]

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
        answers = entry.task.predict(Decoded(entry.labels, predictions), examples)
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
            with self._autocast():
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
        return self._each_under_autocast(stream(entry.model, prompt, config, chat=chat))

    def _autocast(self) -> Any:
        """bf16 autocast on the predictor's device when :attr:`precision` chose bf16 (thread-local: entered
        around each piece of work, on the thread doing it)."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.precision.bf16 else nullcontext()

    def _each_under_autocast(self, pieces: Iterator[str]) -> Iterator[str]:
        """``pieces`` with each step under :meth:`_autocast`, so a stream resumed on other threads (a server's
        thread pool) is autocast on each of them."""
        while True:
            with self._autocast():
                piece = next(pieces, None)
            if piece is None:
                return
            yield piece

    def count_tokens(self, name: str, text: str) -> int:
        """Tokens of ``text`` (no special tokens) for adapter ``name``'s tokenizer (streamed usage figures)."""
        entry = self.get(name)
        tokenizer = entry.model.info.tokenizer if entry.model is not None else self.backbone.tokenizer
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def _generation_entry(self, name: str, prompts: Sequence[Prompt], chat: bool) -> Entry:
        """The generating adapter ``name``, after checking every prompt (as generation renders it,
        :func:`adaptune.generation.prompt_tokens`) against ``max_input_tokens``.

        Runs on the generation thread: the adapter's own tokenizer is used by that thread only."""
        listing = self.adapters.listing(name)
        entry = self.adapters.loaded(listing) if listing.kind == "generate" else None  # checked before any load
        if entry is None or entry.model is None:
            raise WrongTask(
                f"adapter {name!r} is a {listing.task_name} adapter (kind {listing.kind!r}); generation needs an "
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
        """Every listed adapter (loaded or not), refused folders with the reason, and the limits with what is
        loaded (``GET /v1/adapters``)."""
        return {
            "base": self.base_name,
            "adapters": [listing.describe() for _, listing in sorted(self.available.items())],
            "refused": [{"name": name, "reason": reason} for name, reason in sorted(self.refused.items())],
            "budget": self.residency.describe(),
        }
