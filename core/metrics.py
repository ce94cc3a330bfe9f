"""Prometheus metrics for one chat service, served at ``/metrics`` by the web server.

Counters and histograms move on every turn (the service's observer hook); gauges are read at
scrape time from the service, its engines and the database file, so they are never stale.
Each service gets its own :class:`~prometheus_client.CollectorRegistry` (no global state: two
services in one process, as in tests, do not collide).

The web front-end mounts :func:`metrics_asgi_app` (``app.mount("/metrics", ...)``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from core.observe import TurnRecord

if TYPE_CHECKING:
    from core.service import ChatService

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
_TPS_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
_ANSWERED = {"stop", "length", "cancelled"}


class Metrics:
    """The service's metrics; register with ``service.observers.append(metrics)``."""

    def __init__(self, service: ChatService) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._service = weakref.ref(service)
        r = self.registry
        self.requests = Counter(
            "finechat_requests", "Turns requested, per front-end.", ["frontend", "kind"], registry=r
        )
        self.errors = Counter(
            "finechat_errors",
            "Turns that produced no answer, per front-end and reason.",
            ["frontend", "reason"],
            registry=r,
        )
        self.turns = Counter(
            "finechat_turns",
            "Answered turns by finish reason.",
            ["frontend", "model", "finish"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "finechat_prompt_tokens", "Prompt tokens sent to models.", ["model"], registry=r
        )
        self.cached_tokens = Counter(
            "finechat_cached_prompt_tokens",
            "Prompt tokens served from a warm KV cache.",
            ["model"],
            registry=r,
        )
        self.completion_tokens = Counter(
            "finechat_completion_tokens", "Tokens generated.", ["model"], registry=r
        )
        self.ttft = Histogram(
            "finechat_ttft_seconds",
            "Time to first token.",
            ["model"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.tps = Histogram(
            "finechat_tokens_per_second",
            "Decode speed of each answer after its first token.",
            ["model"],
            buckets=_TPS_BUCKETS,
            registry=r,
        )
        r.register(_LiveCollector(self._service))

    def on_turn(self, record: TurnRecord) -> None:
        frontend = record.platform
        self.requests.labels(frontend, record.kind).inc()
        if record.outcome not in _ANSWERED:
            self.errors.labels(frontend, record.outcome).inc()
            return
        model = record.model
        self.turns.labels(frontend, model, record.outcome).inc()
        self.prompt_tokens.labels(model).inc(record.prompt_tokens)
        self.cached_tokens.labels(model).inc(record.cached_tokens)
        self.completion_tokens.labels(model).inc(record.completion_tokens)
        if record.ttft_seconds is not None:
            self.ttft.labels(model).observe(record.ttft_seconds)
        tps = record.tokens_per_second
        if tps is not None:
            self.tps.labels(model).observe(tps)

    def render(self) -> bytes:
        """The Prometheus text exposition of everything (what ``/metrics`` returns)."""
        return generate_latest(self.registry)


class _LiveCollector(Collector):
    """Gauges computed at scrape time: queue, slots, conversations, models, database size."""

    def __init__(self, service: Callable[[], ChatService | None]) -> None:
        self._service = service

    def describe(self) -> Iterable[Any]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        service = self._service()
        if service is None:
            return
        engines = _engines(service)
        queue = GaugeMetricFamily(
            "finechat_queue_length", "Generations waiting for a slot.", labels=["model"]
        )
        pending = GaugeMetricFamily(
            "finechat_engine_pending", "Generations queued or running.", labels=["model"]
        )
        busy = GaugeMetricFamily(
            "finechat_engine_slots_busy", "Slots decoding a conversation now.", labels=["model"]
        )
        slots = GaugeMetricFamily("finechat_engine_slots", "Slots per engine.", labels=["model"])
        cached = GaugeMetricFamily(
            "finechat_cached_conversations",
            "Conversations whose KV state is kept warm (slots plus saved states).",
            labels=["model"],
        )
        loaded = GaugeMetricFamily(
            "finechat_model_loaded", "1 while the model is in memory.", labels=["model"]
        )
        for name, engine in engines.items():
            if engine is None:
                loaded.add_metric([name], 0)
                continue
            loaded.add_metric([name], 1)
            n_pending = int(getattr(engine, "pending", 0))
            n_slots = int(getattr(engine, "n_slots", 1) or 1)
            n_busy = _int_attr(engine, "slots_busy", min(n_pending, n_slots))
            pending.add_metric([name], n_pending)
            queue.add_metric([name], max(0, n_pending - n_busy))
            busy.add_metric([name], n_busy)
            slots.add_metric([name], n_slots)
            cached.add_metric([name], _cached_conversations(engine))
        yield from (queue, pending, busy, slots, cached, loaded)
        yield from _limit_metrics(service)
        yield GaugeMetricFamily(
            "finechat_active_conversations",
            "Conversations with a reply in flight.",
            value=service.active_conversations,
        )
        size = _database_bytes(service)
        if size is not None:
            yield GaugeMetricFamily(
                "finechat_database_bytes", "Memory database size (file + WAL).", value=size
            )


def _limit_metrics(service: ChatService) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """``[limits]``: the configured caps and how many messages they refused, per platform."""
    limiter = service.limiter
    if limiter is None:
        return
    caps = GaugeMetricFamily(
        "finechat_limit", "Configured per-person limits (0 = no limit).", labels=["limit"]
    )
    for name in ("replies_per_minute", "tokens_per_day", "settings_per_minute"):
        caps.add_metric([name], float(getattr(limiter.config, name)))
    refusals = CounterMetricFamily(
        "finechat_limit_refusals",
        "Messages refused because a person reached a limit, since start.",
        labels=["platform", "limit"],
    )
    for (platform, limit), count in sorted(limiter.refusals.items()):
        refusals.add_metric([platform, limit], float(count))
    yield caps
    yield refusals


def _engines(service: ChatService) -> dict[str, Any]:
    """Model name → its loaded engine (None when unloaded)."""
    if service.models is not None:
        return {name: m.inner for name, m in service.models.all().items()}
    return {service.model_name: service.engine}


def _int_attr(obj: Any, name: str, default: int) -> int:
    value = getattr(obj, name, None)
    return int(value) if isinstance(value, int | float) else default


def _cached_conversations(engine: Any) -> int:
    explicit = getattr(engine, "cached_conversations", None)
    if isinstance(explicit, int):
        return explicit
    store = getattr(engine, "store", None)  # the batched engine's RAM state store
    saved = len(store) if store is not None and hasattr(store, "__len__") else 0
    slots = getattr(engine, "_slots", None)
    owners = 0
    if isinstance(slots, list):
        owners = sum(1 for s in slots if getattr(s, "owner", None))
    return saved + owners


def _database_bytes(service: ChatService) -> int | None:
    import os

    path = service.store.path
    if path == ":memory:":
        return None
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.stat(path + suffix).st_size
        except OSError:
            continue
    return total


_BY_SERVICE: weakref.WeakKeyDictionary[Any, Metrics] = weakref.WeakKeyDictionary()


def metrics_for(service: ChatService) -> Metrics:
    """The service's :class:`Metrics`, created and attached on first use."""
    metrics = _BY_SERVICE.get(service)
    if metrics is None:
        metrics = Metrics(service)
        service.observers.append(metrics)
        _BY_SERVICE[service] = metrics
    return metrics


def metrics_asgi_app(service: ChatService) -> Any:
    """An ASGI app serving the service's metrics (mount it at ``/metrics``)."""
    from prometheus_client import make_asgi_app

    return make_asgi_app(metrics_for(service).registry)
