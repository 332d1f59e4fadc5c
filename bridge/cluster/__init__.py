"""Cluster mode (``BRIDGE_REDIS_URL``): replicas share pollers and history through Redis.

    link.py    the replica's Redis connection: command pool, one pub/sub listener, health
    store.py   what is kept in Redis per channel key, and the Lua scripts that change it
    poller.py  pollers that lead (poll, commit, publish) or follow (copy), and the registry

The rest of the bridge is unchanged: each replica keeps a local channel per watched run
whose history carries the leader's ids, so streams, resume by Last-Event-ID (on any
replica), coalescing and terminal handling work as in one process. See docs/cluster.md.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Gauge

from bridge.cluster.link import ClusterUnavailable, RedisLink
from bridge.cluster.poller import ClusterContext, ClusterPoller, ClusterRegistry
from bridge.cluster.store import Store
from bridge.hub import Hub
from bridge.metrics import Metrics
from bridge.readiness import Readiness
from bridge.settings import Settings
from bridge.upstream import UpstreamClient

__all__ = ["Cluster", "ClusterPoller", "ClusterReadiness", "ClusterRegistry", "ClusterUnavailable"]


def lease_seconds(settings: Settings) -> float:
    """How long a leader's lease outlives its last renewal: a few polls, one slow request."""
    return 3 * settings.poll_interval + settings.upstream_timeout + settings.redis_timeout


class ClusterReadiness(Readiness):
    """Ready when the upstream is (as in one process) and Redis answers."""

    def __init__(self, settings: Settings, upstream: UpstreamClient, link: RedisLink) -> None:
        super().__init__(settings, upstream)
        self._link = link

    async def check(self) -> dict[str, Any]:
        report = await super().check()
        report["redis"] = "connected" if self._link.up else "unavailable"
        report["ready"] = bool(report["ready"]) and self._link.up
        return report


class Cluster:
    """What cluster mode adds to a bridge: the link, the store, its pollers and readiness."""

    def __init__(
        self, settings: Settings, upstream: UpstreamClient, hub: Hub, metrics: Metrics
    ) -> None:
        self.link = RedisLink(settings, self._deliver)
        lease_ms = int(lease_seconds(settings) * 1000)
        self.store = Store(
            self.link.client,
            settings.redis_prefix,
            lease_ms=lease_ms,
            # The history outlives its last poll by BRIDGE_HISTORY_TTL (and a lease).
            keep_ms=max(int(settings.history_ttl * 1000), lease_ms),
            history_size=settings.history_size,
        )
        context = ClusterContext(settings, self.link, self.store)
        self.pollers = ClusterRegistry(settings, upstream, hub, metrics, context)
        self.readiness = ClusterReadiness(settings, upstream, self.link)
        Gauge(
            "bridge_redis_connected",
            "1 while Redis answers (cluster mode)",
            registry=metrics.registry,
        ).set_function(lambda: 1.0 if self.link.up else 0.0)
        Gauge(
            "bridge_pollers_leading",
            "Pollers of this replica that hold their run's lease (cluster mode)",
            registry=metrics.registry,
        ).set_function(lambda: float(self.pollers.leading))

    def _deliver(self, message: bytes) -> None:
        self.pollers.deliver(message)

    async def start(self) -> None:
        await self.link.start()

    async def close(self) -> None:
        """After the pollers closed (they give their leases up through the link)."""
        await self.link.close()
