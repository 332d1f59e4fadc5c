"""The fast path of a live stream: frames written straight to the viewer's socket.

Through ASGI, every frame of every viewer would cost a task wake-up, Quart's response
loop, Hypercorn's send path and h11 framing (measured: about 3x a plain write loop, and
the bulk of the fan-out delay at 10,000 viewers; see bench/FINDINGS.md). Once a viewer's
stream is open and caught up, its channel instead writes each frame, encoded and
chunk-framed once per event, to every viewer's asyncio transport in a plain loop (1,000
viewers per turn of the event loop, bridge/events/channel.py). h11 still writes the response
head and the closing chunk, so the HTTP framing stays Hypercorn's.

A process-wide ticker (one task, not one timer per viewer) sends pings, ends streams at
their timeout, and looks after slow viewers: a viewer whose unsent bytes exceed
``MAX_UNSENT`` is skipped (every ``progress`` is a whole snapshot, so skipping coalesces
it to the latest status), caught up once its socket drained, and dropped when it stayed
behind for BRIDGE_SEND_TIMEOUT seconds. The terminal event is always written.

The transport is found by bridge/server/hypercorn_transport.py, the one module that knows
Hypercorn's internals: only for an HTTP/1.1 GET on a tested Hypercorn. Anything else
(HTTP/1.0, HTTP/2, another server, an untested Hypercorn) takes the ASGI path
(bridge/streams/stream.py), which behaves the same, slower; see docs/fast-path.md.
"""

from __future__ import annotations

import asyncio
import logging
import time

from bridge.events import sse
from bridge.events.history import Event, http_chunk
from bridge.streams.keepalive import Keepalive

log = logging.getLogger("bridge.streams.direct")

#: Unsent bytes above which a viewer is skipped until its socket drains.
MAX_UNSENT = 64 * 1024


class DirectSink:
    """One viewer on the fast path: its transport, its position, and how it ends."""

    __slots__ = ("behind_since", "cursor", "ended", "keepalive", "lossless", "transport")

    def __init__(
        self, transport: asyncio.WriteTransport, cursor: int, keepalive: Keepalive
    ) -> None:
        self.transport = transport
        self.cursor = cursor
        #: The stream's pings and deadline, carried over from its ASGI opening.
        self.keepalive = keepalive
        self.behind_since: float | None = None
        #: Set (to the ``retry:`` to end with) where events are not snapshots (derived
        #: events, or ``progress`` turned off): a viewer that falls behind is ended, to
        #: resume from history, instead of skipped (which would lose events).
        self.lossless: bytes = b""
        #: Resolved when the stream is over; the value says why (for tests and metrics).
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def deliver(self, event: Event) -> None:
        """Write ``event`` now, or skip it while the viewer's socket is full."""
        # An event already written: the hand-over (bridge/streams/stream.py) wrote it from the
        # history while its channel's fan-out had not reached this viewer yet.
        if self.ended.done() or event.seq <= self.cursor:
            return
        transport = self.transport
        if transport.is_closing():
            self.finish("disconnected")
            return
        if not event.sent:
            # A built-in event turned off: nothing to write, but a terminal one still ends.
            self.cursor = event.seq
            if event.terminal:
                self.finish("terminal")
            return
        if not event.terminal and transport.get_write_buffer_size() > MAX_UNSENT:
            if self.lossless:
                # Never a silent gap: it reconnects after the last event it was written.
                self.write(self.lossless)
                self.finish("behind")
                return
            if self.behind_since is None:
                self.behind_since = time.monotonic()
            return
        transport.write(http_chunk(event))
        self.cursor = event.seq
        if event.terminal:
            self.finish("terminal")

    def write(self, data: bytes) -> None:
        # An empty chunk would end the chunked body: an empty frame is not written.
        if data and not self.transport.is_closing():
            self.transport.write(sse.chunk(data))

    def finish(self, why: str) -> None:
        if not self.ended.done():
            self.ended.set_result(why)

    def catch_up(self, latest: Event | None, send_timeout: float) -> None:
        """A skipped viewer: send the latest status once its socket drained, or drop it
        when it stayed behind ``send_timeout`` seconds (it resumes by Last-Event-ID)."""
        assert self.behind_since is not None
        if self.transport.get_write_buffer_size() <= MAX_UNSENT:
            self.behind_since = None
            if latest is not None and latest.seq > self.cursor:
                self.deliver(latest)
        elif time.monotonic() - self.behind_since >= send_timeout:
            self.transport.abort()
            self.finish("dropped")
