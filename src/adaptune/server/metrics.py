"""Serving metrics in the Prometheus text exposition format (version 0.0.4), thread-safe, no dependencies.

Counters, gauges and histograms with labels, enough for ``GET /metrics``: requests and errors by status (a
request whose client closed the connection before the answer has status 499 and is not an error),
request latency, micro-batch sizes, adapters per batch, generation batches (requests and prompts decoded
together), loaded adapters and their bytes, adapter loads (by trigger, with their seconds) and evictions; on a
server of several bases the batch, generation-batch, load and eviction series carry a ``base`` label. Names
follow Prometheus conventions
(``_total`` for counters, ``_seconds`` for durations; histograms expose ``_bucket{le=...}``, ``_sum``, ``_count``).
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adaptune.inference.residency import AdapterEvent

Labels = tuple[tuple[str, str], ...]


def _label_text(labels: Labels, extra: tuple[str, str] | None = None) -> str:
    pairs = [*labels, extra] if extra else list(labels)
    if not pairs:
        return ""
    escaped = (v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for _, v in pairs)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(pairs, escaped, strict=True)) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    """A monotonically increasing value per label set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, help_text)
        self.values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self.values.items())
        return [*self.header(), *(f"{self.name}{_label_text(k)} {_number(v)}" for k, v in items)]


class Gauge(_Metric):
    """A value read when the metrics are rendered (``source`` returns it)."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, source: Callable[[], float]) -> None:
        super().__init__(name, help_text)
        self.source = source

    def render(self) -> list[str]:
        return [*self.header(), f"{self.name} {_number(self.source())}"]


class Histogram(_Metric):
    """Observations counted into cumulative buckets per label set (``le`` upper bounds, then ``+Inf``)."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        super().__init__(name, help_text)
        self.bounds = sorted(buckets)
        self.series: dict[Labels, tuple[list[int], list[float]]] = {}  # counts per bucket (+Inf last), [sum]

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            counts, total = self.series.setdefault(key, ([0] * (len(self.bounds) + 1), [0.0]))
            counts[bisect.bisect_left(self.bounds, value)] += 1
            total[0] += value

    def count(self, **labels: str) -> int:
        series = self.series.get(tuple(sorted(labels.items())))
        return sum(series[0]) if series else 0

    def render(self) -> list[str]:
        lines = self.header()
        with self._lock:
            items = sorted((k, (list(c), t[0])) for k, (c, t) in self.series.items())
        for key, (counts, total) in items:
            running = 0
            for bound, count in zip([*self.bounds, math.inf], counts, strict=True):
                running += count
                lines.append(f"{self.name}_bucket{_label_text(key, ('le', _number(bound)))} {running}")
            lines.append(f"{self.name}_sum{_label_text(key)} {_number(total)}")
            lines.append(f"{self.name}_count{_label_text(key)} {running}")
        return lines


#: The status a request is counted with when its client closed the connection before the answer (nginx's 499).
CLIENT_CLOSED = 499

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServingMetrics:
    """Every metric the server exposes; the engine records batches, the HTTP layer records requests."""

    def __init__(
        self,
        loaded_adapters: Callable[[], float] = lambda: 0.0,
        queued_rows: Callable[[], float] = lambda: 0.0,
        *,
        adapter_bytes: Callable[[], float] = lambda: 0.0,
        available_adapters: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.requests = Counter("adaptune_requests_total", "HTTP requests by route, method and status code.")
        self.errors = Counter(
            "adaptune_request_errors_total",
            "HTTP requests answered with status >= 400 (not those whose client left first, status 499).",
        )
        self.latency = Histogram(
            "adaptune_request_duration_seconds", "Time from request received to response sent.", LATENCY_BUCKETS
        )
        self.batch_size = Histogram("adaptune_batch_size", "Rows per forward pass of the base model.", BATCH_BUCKETS)
        self.batch_adapters = Histogram(
            "adaptune_batch_adapters", "Distinct adapters among the rows of one forward pass.", BATCH_BUCKETS
        )
        self.generation_batch_requests = Histogram(
            "adaptune_generation_batch_requests",
            "Non-streaming generation requests decoded together in one batch.",
            BATCH_BUCKETS,
        )
        self.generation_batch_prompts = Histogram(
            "adaptune_generation_batch_prompts", "Prompts decoded together in one generation batch.", BATCH_BUCKETS
        )
        self.items = Counter("adaptune_items_total", "Inputs predicted or prompts generated, by adapter.")
        self.generated = Counter("adaptune_generated_tokens_total", "Tokens generated, by adapter.")
        self.loaded = Gauge("adaptune_adapters_loaded", "Adapters whose weights are loaded.", loaded_adapters)
        self.queued = Gauge("adaptune_queued_rows", "Inputs waiting for a micro-batch.", queued_rows)
        self.available = Gauge(
            "adaptune_adapters_available",
            "Adapters served, loaded or not (each loads on first use).",
            available_adapters,
        )
        self.adapter_bytes = Gauge(
            "adaptune_adapter_bytes",
            "Bytes of the loaded adapters' tensors (what --adapter-memory-mb bounds).",
            adapter_bytes,
        )
        self.adapter_loads = Counter(
            "adaptune_adapter_loads_total",
            "Adapter weight loads by trigger: request (a cold load on first use or after an eviction), admin, start.",
        )
        self.adapter_evictions = Counter(
            "adaptune_adapter_evictions_total", "Adapters evicted (least recently used) to stay within the limits."
        )
        self.adapter_load_seconds = Histogram(
            "adaptune_adapter_load_seconds", "Time to load one adapter's weights, by trigger.", LATENCY_BUCKETS
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One finished HTTP request (``status`` :data:`CLIENT_CLOSED` when the client left before the answer:
        counted as a request, not as an error)."""
        self.requests.inc(route=route, method=method, status=str(status))
        if status >= 400 and status != CLIENT_CLOSED:
            self.errors.inc(route=route, status=str(status))
        self.latency.observe(seconds, route=route)

    def observe_batch(self, rows: int, adapters: dict[str, int], **labels: str) -> None:
        """One forward pass: ``rows`` rows from ``adapters`` (adapter name -> rows). ``labels``: e.g. ``base`` on a
        server of several bases (adapter names are unique over the bases, so ``items`` is by adapter alone)."""
        self.batch_size.observe(rows, **labels)
        self.batch_adapters.observe(len(adapters), **labels)
        for name, count in adapters.items():
            self.items.inc(count, adapter=name)

    def observe_adapter(self, event: AdapterEvent, **labels: str) -> None:
        """One adapter loaded (with the seconds it took) or evicted
        (:class:`~adaptune.inference.residency.AdapterEvent`)."""
        if event.kind == "load":
            self.adapter_loads.inc(trigger=event.trigger, **labels)
            self.adapter_load_seconds.observe(event.seconds, trigger=event.trigger, **labels)
        elif event.kind == "evict":
            self.adapter_evictions.inc(**labels)

    def observe_generation_batch(self, requests: int, prompts: int, **labels: str) -> None:
        """One generation batch: ``requests`` requests with ``prompts`` prompts in all, decoded together."""
        self.generation_batch_requests.observe(requests, **labels)
        self.generation_batch_prompts.observe(prompts, **labels)

    def render(self) -> str:
        """The whole exposition, newline-terminated."""
        metrics: list[_Metric] = [self.requests, self.errors, self.latency, self.batch_size, self.batch_adapters]
        metrics += [self.generation_batch_requests, self.generation_batch_prompts]
        metrics += [self.items, self.generated, self.loaded, self.queued, self.available, self.adapter_bytes]
        metrics += [self.adapter_loads, self.adapter_evictions, self.adapter_load_seconds]
        lines = [line for metric in metrics for line in metric.render()]
        return "\n".join(lines) + "\n"
