"""Real servers on loopback for the tests: the bridge under Hypercorn, and an SSE client."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from quart import Quart

from bridge.server.serve import serve
from bridge.settings import Settings, load
from bridge.tasks import cancel_and_wait
from bridge.tools.eventstream import EventStreamParser, ParsedEvent
from bridge.web.app import SERVICES, create_app
from bridge.web.services import Services

#: Small intervals so the tests run in tens of milliseconds, not seconds.
FAST = {
    "poll_interval": 0.05,
    "ping_interval": 30.0,
    "stream_timeout": 30.0,
    "upstream_timeout": 2.0,
    "linger": 0.0,
    "retry_ms": 1000,
    "access_log": False,
    "drain_delay": 0.0,
    "drain_spread": 0.0,
    # gc.freeze() is process-wide: tests build hundreds of bridges (tests/test_gc_tuning.py).
    "gc_freeze_interval": 0.0,
}


@dataclass
class RunningBridge:
    url: str
    app: Quart
    settings: Settings
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def bridge(self) -> Services:
        bridge: Services = self.app.extensions[SERVICES]
        return bridge


def loopback_socket(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


@asynccontextmanager
async def running_bridge(
    upstream_url: str,
    sock: socket.socket | None = None,
    client_ssl: ssl.SSLContext | None = None,
    **overrides: Any,
) -> AsyncIterator[RunningBridge]:
    """The real bridge, served by Hypercorn on a loopback port, until the block ends.

    With the TLS settings it serves HTTPS; ``client_ssl`` is what trusts its certificate.
    """
    settings = load(**{**FAST, "upstream_url": upstream_url, **overrides})
    app = create_app(settings)
    own_socket = sock is None
    sock = sock or loopback_socket()
    port = sock.getsockname()[1]
    stop = asyncio.Event()

    async def stopped() -> None:
        await stop.wait()

    task = asyncio.create_task(serve(app, settings, shutdown_trigger=stopped, sock=sock))
    scheme = "https" if settings.tls_certfile is not None else "http"
    url = f"{scheme}://127.0.0.1:{port}"
    try:
        await wait_until_ready(url, task, client_ssl=client_ssl)
        yield RunningBridge(url, app, settings, stop, task)
    finally:
        stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=10)
        except TimeoutError:
            await cancel_and_wait(task)
        if own_socket:
            sock.close()


async def wait_until_ready(
    url: str,
    task: asyncio.Task[None],
    timeout: float = 10,
    client_ssl: ssl.SSLContext | None = None,
) -> None:
    async with asyncio.timeout(timeout), aiohttp.ClientSession() as session:
        while True:
            if task.done():
                task.result()
                raise RuntimeError("the bridge stopped before it was ready")
            try:
                async with session.get(url + "/healthz", ssl=client_ssl or True) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.01)


@dataclass
class SseStream:
    response: aiohttp.ClientResponse
    parser: EventStreamParser = field(default_factory=EventStreamParser)
    events: list[ParsedEvent] = field(default_factory=list)
    raw: bytearray = field(default_factory=bytearray)
    _ready: list[ParsedEvent] = field(default_factory=list)
    eof: bool = False

    @property
    def status(self) -> int:
        return self.response.status

    async def next_event(self, timeout: float = 5.0) -> ParsedEvent:
        """The next event; TimeoutError if none comes in time, EOFError if the stream ended."""
        async with asyncio.timeout(timeout):
            while not self._ready:
                if self.eof:
                    raise EOFError("the stream ended")
                chunk = await self.response.content.readany()
                if not chunk:
                    self.eof = True
                    continue
                self.raw += chunk
                self._ready.extend(self.parser.feed(chunk))
        event = self._ready.pop(0)
        self.events.append(event)
        return event

    async def next_named(self, *names: str, timeout: float = 5.0) -> ParsedEvent:
        """The next event with one of ``names``, skipping pings."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.next_event(timeout)
                if event.event in names:
                    return event
                if event.event != "ping":
                    raise AssertionError(f"expected {names}, got {event.event}: {event.data}")

    async def rest(self, timeout: float = 5.0) -> list[ParsedEvent]:
        """Every event until the server closes the stream."""
        out = []
        async with asyncio.timeout(timeout):
            while True:
                try:
                    out.append(await self.next_event(timeout))
                except EOFError:
                    return out

    def data(self, event: ParsedEvent) -> Any:
        return json.loads(event.data)


@asynccontextmanager
async def sse(
    url: str, headers: Mapping[str, str] | None = None, session: aiohttp.ClientSession | None = None
) -> AsyncIterator[SseStream]:
    own = session is None
    session = session or aiohttp.ClientSession()
    try:
        async with session.get(
            url,
            headers={"Accept": "text/event-stream", **(headers or {})},
            timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
        ) as response:
            yield SseStream(response)
    finally:
        if own:
            await session.close()


async def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.01) -> None:
    """Poll a cheap in-process predicate until true (bounded); for state, not for time."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(interval)


@asynccontextmanager
async def auth_service(
    admits: Callable[[str, str], bool],
) -> AsyncIterator[tuple[str, Counter[str]]]:
    """A forward-auth service on loopback: ``admits(token, run_id)`` decides, 401 without
    a token; yields its URL and the count of asks per Authorization value."""
    calls: Counter[str] = Counter()

    async def check(request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "")
        calls[token] += 1
        run_id = request.query["run_id"]
        if request.headers.get("X-Bridge-Run-Id") != run_id:
            return web.Response(status=400)
        if not token:
            return web.Response(status=401)
        return web.Response(status=204 if admits(token, run_id) else 403)

    app = web.Application()
    app.router.add_get("/check", check)
    async with serving_app(app) as url:
        yield f"{url}/check", calls


@asynccontextmanager
async def serving_app(app: web.Application) -> AsyncIterator[str]:
    """An aiohttp app, for real, on a loopback port until the block ends: its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@asynccontextmanager
async def serve_process(
    upstream_url: str, env: Mapping[str, str]
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """`python -m bridge serve` as its own process on a loopback port, ready; killed after."""
    probe = loopback_socket()
    port = probe.getsockname()[1]
    probe.close()
    full_env = {
        **os.environ,
        "BRIDGE_UPSTREAM_URL": upstream_url,
        "BRIDGE_HOST": "127.0.0.1",
        "BRIDGE_PORT": str(port),
        **env,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "serve",
        env=full_env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with asyncio.timeout(15), aiohttp.ClientSession() as http:
            while True:
                assert proc.returncode is None, "the bridge exited at start"
                try:
                    async with http.get(url + "/healthz") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
        yield proc, url
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
