"""Fan-out of one run's events to its viewers, behind a backend seam.

``Hub.subscribe(key)`` is an async context manager that always unsubscribes. A backend
is chosen by URL scheme; ``memory://`` (the default, one process) is the one shipped.
"""

from __future__ import annotations

from bridge.hub.base import Channel, ChannelKey, Subscription
from bridge.hub.memory import MemoryHub

Hub = MemoryHub

__all__ = ["Channel", "ChannelKey", "Hub", "MemoryHub", "Subscription", "create_hub"]


def create_hub(url: str | None, *, history_size: int, history_runs: int, history_ttl: float) -> Hub:
    scheme = (url or "memory://").split(":", 1)[0].lower()
    if scheme == "memory":
        return MemoryHub(
            history_size=history_size, history_runs=history_runs, history_ttl=history_ttl
        )
    raise ValueError(f"no hub backend for the scheme {scheme!r}")
