"""/readyz tells the truth within about one poll interval: a real upstream on loopback is
stopped and started again under a bridge that has viewers, and one that is idle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from aiohttp import web

from tests.support import loopback_socket, running_bridge, sse

INTERVAL = 0.2


class Upstream:
    """``GET /runs/<id>`` on a fixed loopback port that can go away and come back."""

    def __init__(self) -> None:
        probe = loopback_socket()
        self.port = probe.getsockname()[1]
        probe.close()
        self.url = f"http://127.0.0.1:{self.port}"
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "running"})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/runs/{run_id}", self.handle)
        app.router.add_get("/", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        # The same port each time; nothing listens on it while stopped (refused, not hung).
        await web.SockSite(self._runner, loopback_socket(self.port)).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()  # closes the listener: connections are refused
            self._runner = None


@asynccontextmanager
async def upstream() -> AsyncIterator[Upstream]:
    api = Upstream()
    await api.start()
    try:
        yield api
    finally:
        await api.stop()


async def readyz(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as r:
        return r.status, await r.json()


async def test_readiness_follows_a_dead_upstream_within_an_interval() -> None:
    async with upstream() as api:
        async with (
            running_bridge(api.url, poll_interval=INTERVAL, backoff_max=INTERVAL) as b,
            sse(f"{b.url}/v1/runs/r/stream") as s,
        ):
            await s.next_named("progress")
            status, body = await readyz(b.url)
            assert (status, body["ready"], body["reason"]) == (200, True, "recent_answer")
            await api.stop()
            died = time.monotonic()
            last: list[Any] = []

            async def not_ready() -> bool:
                code, report = await readyz(b.url)
                last[:] = [code, report]
                return code == 503

            await wait_async(not_ready, timeout=5)
            reaction = time.monotonic() - died
            assert last[1]["upstream"] == "failing"
            assert last[1]["reason"] == "upstream_unavailable"
            # The next poll found it down: about one interval, not the old 30 s window.
            assert reaction < 3 * INTERVAL + 0.5, reaction
            await api.start()

            async def ready() -> bool:
                return (await readyz(b.url))[0] == 200

            await wait_async(ready, timeout=5)


async def test_an_idle_bridge_probes_and_says_so() -> None:
    async with upstream() as api:
        async with running_bridge(api.url, poll_interval=INTERVAL) as b:
            status, body = await readyz(b.url)
            assert (status, body["reason"]) == (200, "probe")
            await api.stop()

            async def unreachable() -> bool:
                code, report = await readyz(b.url)
                return code == 503 and report["upstream"] == "unreachable"

            await wait_async(unreachable, timeout=5)
            await api.start()
            await wait_async(lambda: _ready(b.url), timeout=5)


async def _ready(url: str) -> bool:
    return (await readyz(url))[0] == 200


async def wait_async(predicate: Any, timeout: float) -> None:
    """Until the async ``predicate()`` is true, asking every quarter interval (bounded)."""
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(INTERVAL / 4)
