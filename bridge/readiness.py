"""``/readyz``: ready when the upstream is reachable and the circuit breaker is not open.

Recent polls answer the question for free; when nothing was asked for a while, one
cheap probe of the upstream base URL (any HTTP answer means reachable) is made and its
verdict kept for a few seconds, so a probing load balancer never hammers the upstream.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bridge.settings import Settings
from bridge.upstream import UpstreamClient

#: Seconds a probe's verdict is reused.
PROBE_TTL = 5.0
#: A poll within this many seconds counts as evidence that the upstream is reachable.
RECENT = 30.0


#: (usable, what to report) of a part the bridge needs besides the upstream (Redis).
Health = Callable[[], tuple[bool, dict[str, str]]]


def _no_backend() -> tuple[bool, dict[str, str]]:
    return True, {}


class Readiness:
    def __init__(
        self, settings: Settings, upstream: UpstreamClient, backend: Health = _no_backend
    ) -> None:
        self._settings = settings
        self._upstream = upstream
        self._backend = backend
        self._probed_at: float | None = None
        self._reachable = False

    async def check(self) -> dict[str, Any]:
        backend_ok, backend_report = self._backend()
        report = await self._upstream_report()
        report.update(backend_report)
        report["ready"] = bool(report["ready"]) and backend_ok
        return report

    async def _upstream_report(self) -> dict[str, Any]:
        breaker = self._upstream.breaker.state
        if breaker == "open":
            return {"ready": False, "upstream": "circuit_open"}
        now = time.monotonic()
        last = self._upstream.last_success
        if last is not None and now - last < RECENT:
            return {"ready": True, "upstream": "reachable", "circuit": breaker}
        if self._probed_at is None or now - self._probed_at >= PROBE_TTL:
            self._reachable = await self._upstream.probe()
            self._probed_at = time.monotonic()
        return {
            "ready": self._reachable,
            "upstream": "reachable" if self._reachable else "unreachable",
            "circuit": breaker,
        }
