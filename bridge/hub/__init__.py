"""Fan-out of one run's events to its viewers, behind a backend seam.

``Hub.subscribe(key)`` is an async context manager that always unsubscribes. A backend
is chosen by URL scheme: ``memory://`` (the default, one process), or a Redis URL
(cluster mode), where this hub holds only the replica's live copy of each channel and
Redis the shared history (``bridge/cluster/``).
"""

from __future__ import annotations

from bridge.hub.base import Channel, ChannelKey, Subscription
from bridge.hub.memory import MemoryHub

Hub = MemoryHub

#: URL schemes of cluster mode (BRIDGE_REDIS_URL).
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})

__all__ = ["Channel", "ChannelKey", "Hub", "MemoryHub", "Subscription", "create_hub"]


def create_hub(url: str | None, *, history_size: int, history_runs: int, history_ttl: float) -> Hub:
    scheme = (url or "memory://").split(":", 1)[0].lower()
    if scheme == "memory":
        return MemoryHub(
            history_size=history_size, history_runs=history_runs, history_ttl=history_ttl
        )
    if scheme in REDIS_SCHEMES:
        # Ended runs are kept in Redis, for every replica; nothing is retired locally.
        return MemoryHub(history_size=history_size, history_runs=history_runs, history_ttl=0)
    raise ValueError(f"no hub backend for the scheme {scheme!r}")
