"""``/readyz``: ready when the upstream is reachable and the circuit breaker is not open.

It follows the upstream within about one poll interval: the pollers' last answer
decides (a success, or an outage: unreachable, 5xx, 429, timeout), as long as one came
within two intervals and an upstream timeout. When no poller asked that recently (the
bridge is idle), one cheap probe of the upstream base URL (any HTTP answer means
reachable) decides, reused for one poll interval, so a probing load balancer never
hammers the upstream. The JSON says which evidence it used.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bridge.polling.upstream import UpstreamClient
from bridge.settings import Settings

#: Seconds a probe's verdict is reused, at most (and at most one poll interval).
PROBE_TTL = 5.0


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
        settings = self._settings
        now = time.monotonic()
        recent = 2 * settings.poll_interval + settings.upstream_timeout
        success = self._upstream.last_success
        outage = self._upstream.last_outage
        if outage is not None and (success is None or outage[0] > success):
            if now - outage[0] < recent:
                return {
                    "ready": False,
                    "upstream": "failing",
                    "reason": outage[1],
                    "since_s": round(now - outage[0], 3),
                    "circuit": breaker,
                }
        elif success is not None and now - success < recent:
            return {
                "ready": True,
                "upstream": "reachable",
                "reason": "recent_answer",
                "since_s": round(now - success, 3),
                "circuit": breaker,
            }
        ttl = min(PROBE_TTL, settings.poll_interval)
        if self._probed_at is None or now - self._probed_at >= ttl:
            self._reachable = await self._upstream.probe()
            self._probed_at = time.monotonic()
        return {
            "ready": self._reachable,
            "upstream": "reachable" if self._reachable else "unreachable",
            "reason": "probe",
            "circuit": breaker,
        }
