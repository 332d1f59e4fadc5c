"""The fast path of a live stream: frames written straight to the viewer's socket.

Through ASGI, every frame of every viewer would cost a task wake-up, Quart's response
loop, Hypercorn's send path and h11 framing (measured: about 3x a plain write loop, and
the bulk of the fan-out delay at 10,000 viewers; see bench/FINDINGS.md). Once a viewer's
stream is open and caught up, its channel instead writes each frame, encoded and
chunk-framed once per event, to every viewer's asyncio transport in one loop. h11 still
writes the response head and the closing chunk, so the HTTP framing stays Hypercorn's.

A process-wide ticker (one task, not one timer per viewer) sends pings, ends streams at
their timeout, and looks after slow viewers: a viewer whose unsent bytes exceed
``MAX_UNSENT`` is skipped (every ``progress`` is a whole snapshot, so skipping coalesces
it to the latest status), caught up once its socket drained, and dropped when it stayed
behind for BRIDGE_SEND_TIMEOUT seconds. The terminal event is always written.

Where the transport cannot be found (another server, HTTP/2, a test client), the stream
falls back to the ASGI path (bridge/stream.py), which behaves the same, slower.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bridge import sse
from bridge.history import Event, http_chunk
from bridge.keepalive import Keepalive
from bridge.tasks import cancel_and_wait

log = logging.getLogger("bridge.direct")

#: Unsent bytes above which a viewer is skipped until its socket drains.
MAX_UNSENT = 64 * 1024
#: The ASGI scope key under which ``CaptureSend`` leaves the server's send callable.
SEND_KEY = "bridge.send"

AsgiApp = Callable[[Any, Any, Any], Awaitable[None]]


class CaptureSend:
    """ASGI middleware that leaves the server's ``send`` in the scope for the stream route."""

    def __init__(self, app: AsgiApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            scope[SEND_KEY] = send
        await self.app(scope, receive, send)


def transport_of(send: object) -> asyncio.WriteTransport | None:
    """The viewer's transport behind Hypercorn's HTTP/1.1 ``send``, else None.

    Hypercorn's send is ``HTTPStream.app_send``; its stream sends through
    ``H11Protocol.stream_send``, whose protocol sends through ``TCPServer.protocol_send``,
    whose server holds the ``StreamWriter``. Anything else (HTTP/2, another server, a
    Hypercorn whose internals moved) returns None and the stream takes the ASGI path.
    """
    try:
        stream = send.__self__  # type: ignore[attr-defined]
        protocol = stream.send.__self__
        if type(protocol).__name__ != "H11Protocol":
            return None
        server = protocol.send.__self__
        transport = server.writer.transport
    except AttributeError:
        return None
    if not isinstance(transport, asyncio.WriteTransport) or transport.is_closing():
        return None
    return transport


class DirectSink:
    """One viewer on the fast path: its transport, its position, and how it ends."""

    __slots__ = ("behind_since", "cursor", "ended", "keepalive", "transport")

    def __init__(
        self, transport: asyncio.WriteTransport, cursor: int, keepalive: Keepalive
    ) -> None:
        self.transport = transport
        self.cursor = cursor
        #: The stream's pings and deadline, carried over from its ASGI opening.
        self.keepalive = keepalive
        self.behind_since: float | None = None
        #: Resolved when the stream is over; the value says why (for tests and metrics).
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def deliver(self, event: Event) -> None:
        """Write ``event`` now, or skip it while the viewer's socket is full."""
        if self.ended.done():
            return
        transport = self.transport
        if transport.is_closing():
            self.finish("disconnected")
            return
        if not event.terminal and transport.get_write_buffer_size() > MAX_UNSENT:
            if self.behind_since is None:
                self.behind_since = time.monotonic()
            return
        transport.write(http_chunk(event))
        self.cursor = event.seq
        if event.terminal:
            self.finish("terminal")

    def write(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(sse.chunk(data))

    def finish(self, why: str) -> None:
        if not self.ended.done():
            self.ended.set_result(why)


class Ticker:
    """Pings, timeouts and slow-viewer care for every fast-path viewer, once a tick."""

    def __init__(self, ping_interval: float, send_timeout: float) -> None:
        self.send_timeout = send_timeout
        # Pings, timeouts and drops come at most a quarter of their interval late.
        self.period = max(0.01, min(1.0, ping_interval / 4, send_timeout / 4))
        self._sinks: dict[DirectSink, Callable[[], Event | None]] = {}
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0

    def add(self, sink: DirectSink, latest: Callable[[], Event | None]) -> None:
        self._sinks[sink] = latest

    def discard(self, sink: DirectSink) -> None:
        self._sinks.pop(sink, None)

    @property
    def viewers(self) -> int:
        return len(self._sinks)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bridge:direct-ticker")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.period)
            self.tick(loop.time())

    def tick(self, now: float) -> None:
        ping: bytes | None = None
        for sink, latest in list(self._sinks.items()):
            if sink.ended.done():
                continue
            if sink.transport.is_closing():
                sink.finish("disconnected")
                continue
            keepalive = sink.keepalive
            if now >= keepalive.deadline:
                sink.write(keepalive.frame(keepalive.due(now) or "timeout"))
                sink.finish("timeout")
                continue
            if sink.behind_since is not None:
                self._catch_up(sink, latest())
                if sink.ended.done():
                    continue
            if keepalive.due(now) == "ping":
                # One ping frame per tick, shared by every viewer it is due for.
                ping = ping or keepalive.frame("ping")
                sink.write(ping)

    def _catch_up(self, sink: DirectSink, latest: Event | None) -> None:
        assert sink.behind_since is not None
        if sink.transport.get_write_buffer_size() <= MAX_UNSENT:
            sink.behind_since = None
            if latest is not None and latest.seq > sink.cursor:
                sink.deliver(latest)
        elif time.monotonic() - sink.behind_since >= self.send_timeout:
            # Behind for too long: drop it (it reconnects and resumes by Last-Event-ID).
            self.dropped += 1
            sink.transport.abort()
            sink.finish("dropped")
