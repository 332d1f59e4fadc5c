"""Prometheus metrics, one registry per app (so tests can build many apps).

Labels never carry a run id, a header or a credential: only fixed, low-cardinality words.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
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

    def fast_path_fell_back(self, reason: FallbackReason) -> None:
        self.fast_path_fallbacks.labels(reason).inc()

    def track(self, pollers: Callable[[], float], fast_path: Callable[[], float]) -> None:
        self.pollers.set_function(pollers)
        self.fast_path_streams.set_function(fast_path)

    def render(self) -> bytes:
        return generate_latest(self.registry)
