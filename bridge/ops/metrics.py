"""Prometheus metrics, one registry per app (so tests can build many apps).

Every metric the bridge exports is defined here: ``Metrics`` (the app's), and the sets
that are registered only with what they measure (the loop lag, the collector, cluster
mode), each in the same registry. Labels never carry a run id, a header or a credential:
only fixed, low-cardinality words.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final, Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

#: Why a stream that wanted the fast path took the ASGI path: the label of
#: ``bridge_fast_path_fallbacks_total``, as bridge/server/hypercorn_transport.py reports it.
FallbackReason = Literal["http_version", "method", "hypercorn_version", "internals"]
FALLBACK_REASONS: Final[tuple[FallbackReason, ...]] = get_args(FallbackReason)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.streams_opened = Counter(
            "bridge_streams_opened", "SSE streams opened", registry=self.registry
        )
        self.streams_refused = Counter(
            "bridge_streams_refused",
            "Requests answered with an error before a stream opened",
            ["code"],
            registry=self.registry,
        )
        self.upstream_requests = Counter(
            "bridge_upstream_requests",
            "Requests sent to the upstream API, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.events_published = Counter(
            "bridge_events_published",
            "Events published to a run's viewers (once per change, not per viewer)",
            ["event"],
            registry=self.registry,
        )
        #: ``events_published``'s child per event name (names come from the vocabulary:
        #: a few): ``labels()`` costs about 2 us, paid at every event a list tick publishes.
        self._published: dict[str, Any] = {}
        self.events_cut = Counter(
            "bridge_events_cut",
            "Changes that derived more than BRIDGE_EVENTS_MAX_PER_CHANGE events (cut there)",
            registry=self.registry,
        )
        self.rule_failures = Counter(
            "bridge_event_rule_failures",
            "Statuses on which a rule of BRIDGE_EVENTS_FILE failed (it yielded nothing)",
            ["event"],
            registry=self.registry,
        )
        self.open_streams = Gauge(
            "bridge_open_streams", "SSE streams open now", registry=self.registry
        )
        self.pollers = Gauge("bridge_pollers", "Pollers running now", registry=self.registry)
        self.upstream_bytes = Counter(
            "bridge_upstream_bytes",
            "Status body bytes received from the upstream (after decompression)",
            registry=self.registry,
        )
        self.polls_saved = Counter(
            "bridge_polls_saved_by_sharing",
            "Upstream polls the viewers of a shared poller would have made on their own",
            registry=self.registry,
        )
        self.pokes = Counter(
            "bridge_pokes",
            "POST /v1/runs/{id}/poll requests, by what became of them",
            ["outcome"],
            registry=self.registry,
        )
        self.poll_interval = Gauge(
            "bridge_poll_interval_seconds",
            "The poll interval in force for runs in each configured state group "
            "(BRIDGE_POLL_INTERVALS keys, or 'default')",
            ["state"],
            registry=self.registry,
        )
        self.fast_path_streams = Gauge(
            "bridge_fast_path_streams",
            "Open streams whose live frames are written straight to the socket",
            registry=self.registry,
        )
        self.fast_path_fallbacks = Counter(
            "bridge_fast_path_fallbacks",
            "Stream requests that wanted the fast path but were given the ASGI path, by reason",
            ["reason"],
            registry=self.registry,
        )
        # Every reason shows from the start (as 0), so a dashboard can tell "none" from "no data".
        for reason in FALLBACK_REASONS:
            self.fast_path_fallbacks.labels(reason)

    def published(self, name: str) -> None:
        """Count one event published as ``name`` (``bridge_events_published``)."""
        child = self._published.get(name)
        if child is None:
            child = self._published[name] = self.events_published.labels(name)
        child.inc()

    def fast_path_fell_back(self, reason: FallbackReason) -> None:
        self.fast_path_fallbacks.labels(reason).inc()

    def track(
        self,
        pollers: Callable[[], float],
        fast_path: Callable[[], float],
        channels: Callable[[], float],
    ) -> None:
        self.pollers.set_function(pollers)
        self.fast_path_streams.set_function(fast_path)
        Gauge(
            "bridge_channels", "Runs with a live channel now", registry=self.registry
        ).set_function(channels)

    def render(self) -> bytes:
        return generate_latest(self.registry)


#: The gauge's window is SLOTS x SLOT seconds (the last minute, to within one slot).
SLOT = 10.0
SLOTS = 6
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RecentMax:
    """The largest value seen in the last ``slots`` x ``slot`` seconds, in O(1) memory."""

    def __init__(self, slot: float = SLOT, slots: int = SLOTS) -> None:
        self.slot = slot
        self._values = [0.0] * slots
        self._stamps = [-1] * slots

    def add(self, value: float, now: float) -> None:
        index = int(now // self.slot)
        i = index % len(self._values)
        if self._stamps[i] != index:
            self._stamps[i] = index
            self._values[i] = 0.0
        self._values[i] = max(self._values[i], value)

    def value(self, now: float) -> float:
        oldest = int(now // self.slot) - len(self._values) + 1
        return max(
            (v for v, s in zip(self._values, self._stamps, strict=True) if s >= oldest),
            default=0.0,
        )


class LoopLagMetrics:
    """The event loop's lag (bridge/ops/loop_lag.py measures it), and the asyncio tasks."""

    def __init__(self, registry: CollectorRegistry, tasks: Callable[[], float] | None) -> None:
        self.recent = RecentMax()
        self.histogram = Histogram(
            "bridge_event_loop_lag_seconds",
            "How much later than asked a periodic timer ran: the time the event loop was busy",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        Gauge(
            "bridge_event_loop_lag_max_seconds",
            "The longest event-loop lag in the last minute",
            registry=registry,
        ).set_function(lambda: self.recent.value(time.monotonic()))
        if tasks is not None:
            Gauge(
                "bridge_asyncio_tasks",
                "asyncio tasks alive (a count that grows with no more streams is a leak)",
                registry=registry,
            ).set_function(tasks)

    def observe(self, lag: float, now: float) -> None:
        self.histogram.observe(lag)
        self.recent.add(lag, now)


GENERATIONS = ("0", "1", "2")
PAUSE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GcMetrics:
    """What the collector cost: every pause, by generation, and what it freed."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.pauses = Histogram(
            "bridge_gc_pause_seconds",
            "Garbage collections and how long each paused the process, by generation "
            "(2: a full collection)",
            ["generation"],
            buckets=PAUSE_BUCKETS,
            registry=registry,
        )
        self.collected = Counter(
            "bridge_gc_collected_objects",
            "Objects the garbage collector freed (unreachable cycles), by generation",
            ["generation"],
            registry=registry,
        )
        self.recent = RecentMax()
        Gauge(
            "bridge_gc_pause_max_seconds",
            "The longest garbage-collection pause in the last minute",
            registry=registry,
        ).set_function(lambda: self.recent.value(time.monotonic()))
        self.heap = Gauge(
            "bridge_gc_heap_blocks",
            "Python's allocated memory blocks right after the last full collection",
            registry=registry,
        )
        self.growth = Gauge(
            "bridge_gc_growth_blocks",
            "Allocated blocks since the last full collection that the open streams do not "
            "explain; a full collection runs when this stays over BRIDGE_GC_FULL_GROWTH x "
            "the heap",
            registry=registry,
        )
        for generation in GENERATIONS:
            self.pauses.labels(generation)
            self.collected.labels(generation)

    def observe(self, generation: int, seconds: float, collected: int) -> None:
        label = GENERATIONS[min(generation, 2)]
        self.pauses.labels(label).observe(seconds)
        self.collected.labels(label).inc(collected)
        self.recent.add(seconds, time.monotonic())


class ClusterMetrics:
    """Cluster mode's link to Redis (bridge/cluster/): registered only in cluster mode."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        connected: Callable[[], float],
        leading: Callable[[], float],
        subscriptions: Callable[[], float],
    ) -> None:
        Gauge(
            "bridge_redis_connected",
            "1 while Redis answers (cluster mode)",
            registry=registry,
        ).set_function(connected)
        Gauge(
            "bridge_pollers_leading",
            "Pollers of this replica that hold their run's lease (cluster mode)",
            registry=registry,
        ).set_function(leading)
        Gauge(
            "bridge_redis_subscriptions",
            "Runs' event channels this replica follows in Redis (cluster mode)",
            registry=registry,
        ).set_function(subscriptions)
        self._received = Counter(
            "bridge_redis_messages_received",
            "Pub/sub messages this replica received from Redis: events of the runs its "
            "viewers watch, and pokes (cluster mode)",
            registry=registry,
        )
        self._received_bytes = Counter(
            "bridge_redis_message_bytes_received",
            "Bytes of the pub/sub messages this replica received (cluster mode)",
            registry=registry,
        )

    def received(self, size: int) -> None:
        """One pub/sub message of ``size`` bytes."""
        self._received.inc()
        self._received_bytes.inc(size)
