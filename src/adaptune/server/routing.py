"""Several base models behind one server: one :class:`~adaptune.inference.multi.MultiPredictor` per base, and
requests routed to the base that serves their adapter.

>>> engines = build_engines(["sentence-transformers/all-MiniLM-L6-v2", "HuggingFaceTB/SmolLM2-135M-Instruct"],
...                         "adapters/")                                                   # doctest: +SKIP
>>> engines.route("intents").base_name                                                     # doctest: +SKIP
'sentence-transformers/all-MiniLM-L6-v2'

Every predictor lists the same adapters folder and keeps the adapters whose recorded base fingerprint is its base's
(:func:`adaptune.io.check_base`, the check that refuses a folder of another base on a one-base server); so each
adapter is served by the base it was trained on, and a folder no base matches is refused with the reason. Adapter
names are folder names, so unique: :class:`EngineSet` refuses a set in which two predictors list one name (the
same base given twice). Each base keeps its own micro-batcher, generation thread, lock and adapter limits
(``max_loaded``, ``max_memory_mb`` apply per base): mixed-adapter batches never mix bases, and a cold load or an
eviction on one base never waits for a forward pass of another.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adaptune.errors import AdapterFileError, ConfigError
from adaptune.inference.errors import AdapterRefused, PredictorError
from adaptune.inference.folder import Entry, adapter_path, read_compatible
from adaptune.inference.multi import MultiPredictor
from adaptune.io import read_adapter_config

if TYPE_CHECKING:
    from adaptune.server.app import ServerSettings

#: The limits of :meth:`~adaptune.inference.residency.Residency.describe`; the rest of a budget are counts.
LIMITS = ("max_loaded_adapters", "adapter_memory_mb")

Engines = MultiPredictor | Sequence[MultiPredictor] | Mapping[str, MultiPredictor]


class EngineSet:
    """Predictors by base (in the order given), and which of them serves each adapter.

    Args:
        engines: one predictor, several (each under its ``base_name``) or a mapping base -> predictor.

    Raises :class:`~adaptune.errors.ConfigError` for no predictor, a base given twice, or an adapter listed by
    two predictors. With one base every call is that predictor's own (answers and errors unchanged).
    """

    def __init__(self, engines: Engines) -> None:
        if isinstance(engines, MultiPredictor):
            engines = [engines]
        if isinstance(engines, Mapping):
            self.engines = dict(engines)
        else:
            self.engines = {}
            for engine in engines:
                if engine.base_name in self.engines:
                    raise ConfigError(f"base {engine.base_name!r} is given twice; give each base once")
                self.engines[engine.base_name] = engine
        if not self.engines:
            raise ConfigError("a server needs at least one base model")
        self.first = next(iter(self.engines.values()))
        self._check_unique()

    def _check_unique(self) -> None:
        seen: dict[str, str] = {}
        for base, engine in self.engines.items():
            for name in engine.available:
                if name in seen:
                    raise ConfigError(
                        f"adapter {name!r} matches base {seen[name]!r} and base {base!r}: both have the weights it "
                        "was trained on; give each base once"
                    )
                seen[name] = base

    def __len__(self) -> int:
        return len(self.engines)

    def __iter__(self) -> Iterator[str]:
        return iter(self.engines)

    def items(self) -> list[tuple[str, MultiPredictor]]:
        return list(self.engines.items())

    # -- routing ----------------------------------------------------------------------------------------------
    def base_of(self, name: str) -> str:
        """The base serving adapter ``name``; the first base for a name no base lists (whose predictor then
        refuses it as a one-base server does: bad name, not found)."""
        for base, engine in self.engines.items():
            if name in engine.available:
                return base
        return next(iter(self.engines))

    def route(self, name: str) -> MultiPredictor:
        """The predictor serving adapter ``name`` (see :meth:`base_of`)."""
        return self.engines[self.base_of(name)]

    def holder(self, name: str) -> MultiPredictor | None:
        """The predictor that lists adapter ``name``, if one does."""
        return next((engine for engine in self.engines.values() if name in engine.available), None)

    def owner(self, name: str) -> MultiPredictor | None:
        """The predictor whose base adapter folder ``name`` records: the one listing it, else the one whose base its
        config matches now (:meth:`matching`)."""
        return self.holder(name) or self.matching(name)

    def matching(self, name: str) -> MultiPredictor | None:
        """The first predictor whose base the config of folder ``name`` records (read now); None when no base
        matches or no config is readable."""
        for engine in self.engines.values():
            try:
                read_compatible(adapter_path(engine.folder, name), engine.fingerprint)
            except PredictorError:  # not a plain folder name, no such folder, another base, unreadable
                continue
            return engine
        return None

    # -- admin --------------------------------------------------------------------------------------------------
    def load(self, name: str) -> Entry:
        """Load adapter ``name`` on its base (:meth:`MultiPredictor.load`); a folder that no base matches is
        refused (:class:`AdapterRefused`) with the reason."""
        engine = self.owner(name) if len(self) > 1 else self.first
        if engine is not None:
            return engine.load(name)
        for other in self.engines.values():  # each records its refusal (a missing folder raises here)
            try:
                return other.load(name)
            except AdapterRefused:
                continue
        raise AdapterRefused(f"adapter {name!r} refused: {self.refusal(name)}")

    def unload(self, name: str) -> None:
        """Stop serving adapter ``name`` (:meth:`MultiPredictor.unload` on its base)."""
        self.route(name).unload(name)

    def reload(self, name: str) -> Entry:
        """Read adapter ``name`` again on its base; a folder now holding an adapter of another served base moves
        to that base."""
        holder = self.holder(name)
        if holder is None:
            return self.load(name) if len(self) > 1 else self.first.reload(name)
        try:
            return holder.reload(name)
        except AdapterRefused:
            owner = self.matching(name) if len(self) > 1 else None
            if owner is None or owner is holder:
                raise
            holder.unload(name)
            return owner.load(name)

    # -- facts ----------------------------------------------------------------------------------------------
    @property
    def adapter_count(self) -> int:
        """Adapters served over every base, loaded or not."""
        return sum(len(engine.available) for engine in self.engines.values())

    def refused(self) -> dict[str, str]:
        """Folders no base serves, with the reason: the reason of the base they record (e.g. truncated weights),
        else why none of the bases matches. A folder its base no longer serves (unloaded) is not refused."""
        if len(self) == 1:
            return dict(self.first.refused)
        served = {name for engine in self.engines.values() for name in list(engine.available)}
        out: dict[str, str] = {}
        for name in sorted({name for e in self.engines.values() for name in list(e.refused)} - served):
            owner = self.owner(name)
            if owner is None:
                out[name] = self.refusal(name)
            elif (reason := owner.refused.get(name)) is not None:
                out[name] = reason
        return out

    def refusal(self, name: str) -> str:
        """Why no base serves folder ``name``: the one reason every base gives, else the base it records and the
        bases served."""
        found = {base: engine.refused.get(name) for base, engine in self.engines.items()}
        reasons = {base: reason for base, reason in found.items() if reason is not None}
        if len(set(reasons.values())) == 1:
            return next(iter(reasons.values()))
        recorded = self._recorded_base(name)
        if recorded is None:
            return "; ".join(f"on base {base!r}: {reason}" for base, reason in reasons.items())
        bases = ", ".join(repr(base) for base in self.engines)
        return (
            f"the adapter was trained on base model {recorded[0]!r} (fingerprint {recorded[1]}), and none of this "
            f"server's bases ({bases}) has those weights; serve it with --base {recorded[0]}"
        )

    def _recorded_base(self, name: str) -> tuple[str, str] | None:
        """(name_or_path, fingerprint) of the base adapter folder ``name`` records, if one config says."""
        for engine in self.engines.values():
            try:
                base = read_adapter_config(adapter_path(engine.folder, name))["base_model"]
                return str(base["name_or_path"]), str(base["fingerprint"])
            except (AdapterFileError, PredictorError, KeyError, TypeError):  # unreadable: the next folder
                continue
        return None

    def budget(self) -> dict[str, Any]:
        """The adapter limits and what is loaded (``GET /v1/adapters``' ``budget``). With several bases the counts
        are summed, the limits apply to each base (``per_base``: true; a limit that differs between bases maps
        each base to its own)."""
        if len(self) == 1:
            return self.first.residency.describe()
        budgets = {base: engine.residency.describe() for base, engine in self.engines.items()}
        first = next(iter(budgets.values()))
        total: dict[str, Any] = {}
        for key in first:
            values = [budget[key] for budget in budgets.values()]
            if key not in LIMITS:
                total[key] = sum(values)
            elif all(value == values[0] for value in values):
                total[key] = values[0]
            else:
                total[key] = {base: budget[key] for base, budget in budgets.items()}
        return {**total, "per_base": True}

    def describe(self) -> dict[str, Any]:
        """Every adapter (with its ``base``), the bases, refused folders and the budget (``GET /v1/adapters``)."""
        adapters = [
            {**listing.describe(), "base": base}
            for base, engine in self.engines.items()
            for listing in list(engine.available.values())
        ]
        bases = [
            {"name": base, "adapters": len(engine.available), "budget": engine.residency.describe()}
            for base, engine in self.engines.items()
        ]
        return {
            "base": next(iter(self.engines)),
            "bases": bases,
            "adapters": sorted(adapters, key=lambda adapter: str(adapter["name"])),
            "refused": [{"name": name, "reason": reason} for name, reason in self.refused().items()],
            "budget": self.budget(),
        }


def build_engines(
    bases: str | Sequence[str],
    adapters: str | Path,
    settings: ServerSettings,
    *,
    device: str = "auto",
    precision: str = "auto",
    quantize: str | None = None,
) -> EngineSet:
    """Load each of ``bases`` once (a :class:`MultiPredictor` each, on the same adapters folder, with
    ``settings``' input and adapter limits, adapters loading on first use) and return them as an :class:`EngineSet`.
    A base given twice is a :class:`~adaptune.errors.ConfigError` (before any base loads)."""
    names = [bases] if isinstance(bases, str) else list(bases)
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ConfigError(f"--base {twice[0]} is given twice; give each base once")
    engines = [
        MultiPredictor(
            name,
            adapters,
            max_input_tokens=settings.max_input_tokens,
            padding_free=settings.padding_free,
            device=device,
            load_all=False,  # every adapter is listed now and loads on first use
            max_loaded=settings.max_loaded_adapters,
            max_memory_mb=settings.adapter_memory_mb,
            precision=precision,
            quantize=quantize,
        )
        for name in names
    ]
    return EngineSet(engines)
