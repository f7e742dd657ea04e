"""The life cycle of the multi-adapter predictor's adapters: listed at start-up, loaded on first use, evicted when
the limits need room, unloaded, reloaded.

:class:`AdapterSet` holds, by name, every adapter that can be served (:attr:`~AdapterSet.available`: its
:class:`~adaptune.inference.folder.Listing`, read from the config alone), those whose weights are loaded
(:attr:`~AdapterSet.entries`) and the folders it refuses with the reason (:attr:`~AdapterSet.refused`). Loaded
per-row adapters sit in the shared base's :class:`~adaptune.per_row.MultiAdapterLayers` under an index that is
reused once they are evicted. Which adapters stay loaded within the limits is :mod:`adaptune.inference.residency`.

Every change of what is loaded happens under :attr:`~AdapterSet.lock`, which the predictor's forward passes hold
too: an adapter is never loaded into, or evicted from, a forward pass that is running. Reading a folder (the config
for a listing, the tensors for an entry) uses the template's tokenizer and holds a lock of its own.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable
from pathlib import Path

from adaptune.backbone import Backbone
from adaptune.inference.errors import AdapterAlreadyLoaded, AdapterNotFound, AdapterRefused, PredictorError
from adaptune.inference.folder import Entry, Listing, build_entry, check_name, discover, read_listing
from adaptune.inference.residency import Residency, entry_bytes, storages
from adaptune.per_row import MultiAdapterLayers


class AdapterSet:
    """The adapters of ``folder`` on the base that ``template`` shares its tensors with.

    Args:
        folder: the adapters folder; only its sub-folders are ever read.
        template: the hook-free structural copy of the base every adapter is built on.
        fingerprint: the base's fingerprint, that an adapter's config must match.
        layers: the shared base's per-row layers, where per-row adapters are registered.
        residency: the limits and the least-recently-used books.
    """

    def __init__(
        self,
        folder: Path,
        template: Backbone,
        fingerprint: str | Callable[[str], str],
        layers: MultiAdapterLayers,
        residency: Residency,
    ) -> None:
        self.folder, self.template, self.fingerprint = folder, template, fingerprint
        self.layers = layers
        self.residency = residency
        self.available: dict[str, Listing] = {}
        self.entries: dict[str, Entry] = {}
        self.refused: dict[str, str] = {}
        self.lock = threading.RLock()  # what is loaded; held by forward passes too
        self._read_lock = threading.Lock()  # reading a folder uses the template's tokenizer
        self._next_index = 1
        self._free_indices: list[int] = []  # per-row indices of unloaded adapters, reused first (a heap)
        lm_head = list(template.lm_head.parameters()) if template.lm_head is not None else []
        self._shared = storages([*template.model.parameters(), *template.model.buffers(), *lm_head])

    # -- listing --------------------------------------------------------------------------------------------
    def scan(self) -> None:
        """List every adapter folder not listed yet, from its config alone (no tensors); record why the others
        are refused."""
        for name in discover(self.folder):
            if name not in self.available:
                try:
                    listing = self._read(name)
                except PredictorError as err:
                    self.refused[name] = err.message
                    continue
                with self.lock:
                    self.available.setdefault(name, listing)

    def listing(self, name: str) -> Listing:
        """The listing of adapter ``name``: :class:`AdapterNameError` for a name that is not a plain folder name,
        :class:`AdapterNotFound` if it is not listed."""
        check_name(name)
        listing = self.available.get(name)
        if listing is None:
            raise AdapterNotFound(f"adapter {name!r} is not served here (GET /v1/adapters lists them)")
        return listing

    # -- admin ----------------------------------------------------------------------------------------------
    def load_all(self) -> None:
        """List new folders (:meth:`scan`) and load every listed adapter that is not loaded, as long as it fits
        the limits without evicting another (the rest load on first use)."""
        self.scan()
        residency = self.residency
        for listing in list(self.available.values()):
            need = residency.estimate(listing)
            if listing.entry is None and residency.fits(len(residency.loaded) + 1, residency.loaded_bytes + need):
                try:
                    with self.lock:
                        self.resident(listing, set(), "start")
                except PredictorError as err:
                    self.refused.setdefault(listing.name, err.message)

    def load(self, name: str) -> Entry:
        """Load adapter ``name`` now (listing it again if it was unloaded or is new) as the most recently used;
        :class:`AdapterAlreadyLoaded` if it is loaded. The folder is read outside :attr:`lock` (batches go on)."""
        listing = self.available.get(check_name(name))
        if listing is not None and listing.entry is not None:
            raise AdapterAlreadyLoaded(f"adapter {name!r} is already loaded (use reload)")
        listing = listing or self._read(name)
        started = time.perf_counter()
        entry = self._build(listing)
        with self.lock:
            if listing.entry is not None:  # a request loaded it meanwhile
                return listing.entry
            self.available.setdefault(name, listing)
            return self._install(listing, entry, {name}, "admin", started)

    def unload(self, name: str) -> None:
        """Stop serving adapter ``name`` (no longer listed) and unload its weights."""
        with self.lock:
            listing = self.listing(name)
            del self.available[name]
            self._unregister(listing)

    def reload(self, name: str) -> Entry:
        """Read adapter ``name`` again (listing and weights) and swap it in, loaded; rows prepared for the old
        listing are then answered :class:`~adaptune.inference.errors.AdapterUnloaded`."""
        listing = self._read(check_name(name))
        started = time.perf_counter()
        entry = self._build(listing)
        with self.lock:
            old = self.available.get(name)
            if old is not None:
                self._unregister(old)
            self.available[name] = listing
            return self._install(listing, entry, {name}, "admin", started)

    # -- loading on use -------------------------------------------------------------------------------------
    def loaded(self, listing: Listing) -> Entry:
        """``listing``'s loaded weights, loading them now if need be (any thread; no lock when loaded)."""
        entry = listing.entry
        if entry is not None:
            self.residency.touch(listing)
            return entry
        with self.lock:
            return self.resident(listing, {listing.name}, "request")

    def resident(self, listing: Listing, keep: set[str], trigger: str) -> Entry:
        """``listing``'s loaded weights, loading them now if need be after evicting the least recently used
        adapters not named in ``keep`` (call with :attr:`lock` held). ``trigger``: why it loads (``request``,
        ``admin``, ``start``), for the metrics."""
        self.residency.touch(listing)
        if listing.entry is not None:
            return listing.entry
        residency = self.residency
        residency.check_size(listing)
        started = time.perf_counter()
        if residency.fits(1, residency.estimate(listing)):  # room first, by the estimate (none for a likely misfit)
            for old in residency.victims(listing, keep | {listing.name}):
                self._unregister(old, evicted=True)
        return self._install(listing, self._build(listing), keep, trigger, started)

    def trim(self) -> None:
        """Evict least recently used adapters until the loaded ones are within the limits (after a group whose
        measured sizes were over its plan; :attr:`lock` held)."""
        for old in self.residency.victims(None, set()):
            self._unregister(old, evicted=True)

    # -- internals ------------------------------------------------------------------------------------------
    def _read(self, name: str) -> Listing:
        """Adapter ``name``'s listing from its folder; a refused folder is recorded in :attr:`refused`."""
        try:
            with self._read_lock:
                listing = read_listing(name, self.folder, self.template, self.fingerprint)
        except AdapterRefused as err:
            self.refused[name] = str(err)
            raise AdapterRefused(f"adapter {name!r} refused: {err}") from None
        self.refused.pop(name, None)
        return listing

    def _build(self, listing: Listing) -> Entry:
        """``listing``'s weights, loaded (not registered). A folder whose weights fail to load, or that changed
        since it was listed, is refused: recorded in :attr:`refused` and no longer listed."""
        try:
            with self._read_lock:
                entry = build_entry(listing.name, listing.path, self.template, self.fingerprint)
            if entry.config != listing.config:
                raise AdapterRefused("its folder changed since it was listed; reload it to serve the new files")
        except AdapterRefused as err:
            with self.lock:
                self.refused[listing.name] = str(err)
                if self.available.get(listing.name) is listing:
                    del self.available[listing.name]
            raise AdapterRefused(f"adapter {listing.name!r} refused: {err}") from None
        return entry

    def _install(self, listing: Listing, entry: Entry, keep: set[str], trigger: str, started: float) -> Entry:
        """Measure ``entry`` (refused if it alone is over the memory budget), evict what it still needs, and
        register it as ``listing``'s weights (:attr:`lock` held)."""
        listing.nbytes = entry_bytes(entry, self._shared)
        self.residency.check_size(listing)
        for old in self.residency.victims(listing, keep | {listing.name}):
            self._unregister(old, evicted=True)
        self._register(listing, entry)
        self.residency.added(listing, trigger, time.perf_counter() - started)
        return entry

    def _register(self, listing: Listing, entry: Entry) -> None:
        if entry.per_row:
            if self._free_indices:
                entry.index = heapq.heappop(self._free_indices)
            else:
                entry.index, self._next_index = self._next_index, self._next_index + 1
            self.layers.add(entry.index, entry.parts)
            entry.parts = []  # the shared layers' stacks now hold the only copy of these weights
        self.entries[entry.name] = entry
        listing.entry, listing.batching = entry, entry.batching

    def _unregister(self, listing: Listing, *, evicted: bool = False) -> None:
        """Unload ``listing``'s weights, if loaded (``evicted``: to make room, counted as an eviction)."""
        entry = listing.entry
        if entry is None:
            return
        if entry.per_row:
            self.layers.remove(entry.index)
            heapq.heappush(self._free_indices, entry.index)
        if self.entries.get(entry.name) is entry:
            del self.entries[entry.name]
        listing.entry = None
        self.residency.removed(listing, evicted=evicted)
