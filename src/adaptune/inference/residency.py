"""Which adapters of the multi-adapter predictor have their weights loaded: a least-recently-used set within two
optional limits, a number of adapters (``max_loaded``) and a memory budget (``max_memory_mb``).

The predictor (:class:`~adaptune.inference.multi.MultiPredictor`) lists every adapter of its folder at start-up from
the configs alone (:class:`~adaptune.inference.folder.Listing`) and loads an adapter's weights when a request first
needs them (a *cold load*). This module keeps the books, the predictor does the loading:

* :meth:`Residency.touch` stamps an adapter with the predictor's clock when a request names it (and when it is
  loaded); the least recently stamped loaded adapter is evicted first;
* :meth:`Residency.groups` splits the adapters of one micro-batch into groups that fit the limits together (all of
  them in one group when they fit, the loaded ones first), so that a forward pass never needs more adapters than
  the limits allow and never runs with an adapter evicted from under it;
* :meth:`Residency.victims` names the adapters to evict before a load, never one of the group being run.

The memory budget counts each loaded adapter's own tensors (:func:`entry_bytes`: method and head, and what a grouped
adapter's private model holds beside the shared base; for a LoRA ``r`` on ``d_in -> d_out`` about
``4 r (d_in + d_out)`` bytes per adapted layer in fp32). The per-row kernels (:mod:`adaptune.per_row`) keep their own
stacked copies of per-row adapters' weights beside that, which the budget does not count. Before an adapter has been
loaded once its size is estimated by its tensor file's size. A generating adapter evicted while one of its streams
is being decoded keeps its model until that stream ends (no longer counted).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from adaptune.errors import ConfigError
from adaptune.inference.errors import AdapterTooLarge
from adaptune.inference.folder import Entry, Listing

MB = 2**20


@dataclass(frozen=True)
class AdapterEvent:
    """An adapter loaded (``kind`` ``load``: ``trigger`` ``request`` for a cold load, ``admin`` or ``start``; how
    long it took in ``seconds``) or evicted to make room (``kind`` ``evict``, ``trigger`` ``lru``)."""

    kind: str
    name: str
    trigger: str
    seconds: float = 0.0
    nbytes: int = 0


#: Called after each load and eviction.
ResidencyObserver = Callable[[AdapterEvent], None]


def entry_bytes(entry: Entry, shared: set[int]) -> int:
    """Bytes of the tensors ``entry`` holds beyond the shared base: its head, its per-row parts' modules, and its
    private model's tensors (each storage once; ``shared``: the ``data_ptr`` of every storage of the base)."""
    modules = [entry.head, *(part.module for part in entry.parts)]
    if entry.model is not None:
        modules.append(entry.model)
    seen, total = set(shared), 0
    for module in modules:
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in seen and storage.nbytes():
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


def storages(tensors: Iterable[torch.Tensor]) -> set[int]:
    """The ``data_ptr`` of each tensor's storage (what :func:`entry_bytes` leaves out as shared)."""
    return {tensor.untyped_storage().data_ptr() for tensor in tensors}


class Residency:
    """The loaded adapters by name and the limits they are kept within (both None: no limit).

    Args:
        max_loaded: most adapters loaded at once (>= 1).
        max_memory_mb: most MiB of adapter tensors loaded at once (> 0; see :func:`entry_bytes`).

    Changed only under the predictor's model lock (:meth:`added`, :meth:`removed`); :meth:`touch` is called from
    any thread (one stamp is one atomic attribute write).
    """

    def __init__(self, max_loaded: int | None = None, max_memory_mb: float | None = None) -> None:
        if max_loaded is not None and max_loaded < 1:
            raise ConfigError(f"max_loaded_adapters must be at least 1 (got {max_loaded})")
        if max_memory_mb is not None and not max_memory_mb > 0:
            raise ConfigError(f"adapter_memory_mb must be more than 0 (got {max_memory_mb})")
        self.max_loaded = max_loaded
        self.max_memory_mb = max_memory_mb
        self.max_bytes = int(max_memory_mb * MB) if max_memory_mb is not None else None
        self.loaded: dict[str, Listing] = {}
        self.loads = 0
        self.evictions = 0
        self.observers: list[ResidencyObserver] = []
        self._clock = itertools.count(1)

    # -- facts ----------------------------------------------------------------------------------------------
    @property
    def loaded_bytes(self) -> int:
        """Bytes of every loaded adapter's tensors (:func:`entry_bytes`)."""
        return sum(listing.nbytes or 0 for listing in list(self.loaded.values()))

    def estimate(self, listing: Listing) -> int:
        """``listing``'s bytes once loaded: as measured at its last load, else its tensor file's size."""
        return listing.nbytes if listing.nbytes is not None else listing.file_bytes

    def fits(self, count: int, nbytes: int) -> bool:
        """Whether ``count`` adapters of ``nbytes`` bytes in all are within both limits."""
        return (self.max_loaded is None or count <= self.max_loaded) and (
            self.max_bytes is None or nbytes <= self.max_bytes
        )

    def check_size(self, listing: Listing) -> None:
        """Refuse an adapter measured larger than the whole memory budget (:class:`AdapterTooLarge`)."""
        if self.max_bytes is not None and listing.nbytes is not None and listing.nbytes > self.max_bytes:
            raise AdapterTooLarge(
                f"adapter {listing.name!r} takes {listing.nbytes / MB:.2f} MiB of tensors once loaded, more than "
                f"this server's whole adapter memory budget of {self.max_memory_mb:g} MiB (--adapter-memory-mb)"
            )

    def describe(self) -> dict[str, Any]:
        """The limits and what is loaded (the ``budget`` of ``GET /v1/adapters``)."""
        return {
            "max_loaded_adapters": self.max_loaded,
            "adapter_memory_mb": self.max_memory_mb,
            "loaded": len(self.loaded),
            "loaded_bytes": self.loaded_bytes,
            "loads": self.loads,
            "evictions": self.evictions,
        }

    # -- choices --------------------------------------------------------------------------------------------
    def touch(self, listing: Listing) -> None:
        """``listing`` was just used (a request named it, or it was loaded)."""
        listing.last_used = next(self._clock)

    def groups(self, listings: Sequence[Listing]) -> list[list[Listing]]:
        """The distinct adapters of one micro-batch in groups that each fit the limits (by :meth:`estimate`), the
        loaded ones first so that the first group needs the fewest loads; one group when all fit together. An
        adapter that fits no group alone gets a group of its own (its load is then refused or runs over)."""
        ordered = sorted(listings, key=lambda listing: listing.entry is None)  # stable: loaded ones first
        groups: list[list[Listing]] = []
        group: list[Listing] = []
        size = 0
        for listing in ordered:
            need = self.estimate(listing)
            if group and not self.fits(len(group) + 1, size + need):
                groups.append(group)
                group, size = [], 0
            group.append(listing)
            size += need
        return [*groups, group] if group else groups

    def victims(self, listing: Listing | None, keep: set[str]) -> list[Listing]:
        """Loaded adapters to evict, least recently used first and none named in ``keep``, so that ``listing``
        (None: nothing more) fits beside the others; as many as can go when that is not enough."""
        others = [old for name, old in list(self.loaded.items()) if listing is None or name != listing.name]
        count = len(others) + (listing is not None)
        size = sum(old.nbytes or 0 for old in others) + (self.estimate(listing) if listing is not None else 0)
        chosen = []
        for old in sorted((old for old in others if old.name not in keep), key=lambda old: old.last_used):
            if self.fits(count, size):
                break
            chosen.append(old)
            count, size = count - 1, size - (old.nbytes or 0)
        return chosen

    # -- changes (under the predictor's model lock) ---------------------------------------------------------
    def added(self, listing: Listing, trigger: str, seconds: float) -> None:
        """``listing`` was loaded (it is measured: ``listing.nbytes``)."""
        self.loaded[listing.name] = listing
        self.loads += 1
        self.touch(listing)
        self._emit(AdapterEvent("load", listing.name, trigger, seconds, listing.nbytes or 0))

    def removed(self, listing: Listing, *, evicted: bool) -> None:
        """``listing`` was unloaded: evicted to make room (counted), or unloaded, reloaded or refused."""
        if self.loaded.get(listing.name) is listing:
            del self.loaded[listing.name]
        if evicted:
            self.evictions += 1
            self._emit(AdapterEvent("evict", listing.name, "lru", 0.0, listing.nbytes or 0))

    def _emit(self, event: AdapterEvent) -> None:
        for observe in self.observers:
            observe(event)
