"""One viewer's event stream: history replay, live changes, pings, timeout and shutdown.

Everything a viewer waits for (a change on its channel, the next ping, its deadline,
shutdown) sets the one ``wake`` event of its subscription, so a viewer costs one
suspended coroutine and two timer handles, never a task of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import suppress
from dataclasses import dataclass

from bridge import sse
from bridge.direct import DirectSink, Ticker
from bridge.history import Event
from bridge.hub import Subscription


@dataclass(frozen=True, slots=True)
class StreamLimits:
    ping_interval: float
    stream_timeout: float
    viewer_buffer: int
    retry_ms: int


class Keepalive:
    """A stream's schedule of pings and its deadline, on the loop's clock."""

    def __init__(self, limits: StreamLimits) -> None:
        self._loop = asyncio.get_running_loop()
        self._limits = limits
        started = self._loop.time()
        self.deadline = started + limits.stream_timeout
        self.next_ping = started + limits.ping_interval

    def due(self) -> tuple[bytes, bool] | None:
        """The frame to send now, if any, and whether the stream ends with it."""
        now = self._loop.time()
        if now >= self.deadline:
            return sse.timeout(self._limits.stream_timeout), True
        if now >= self.next_ping:
            self.next_ping = max(self.next_ping + self._limits.ping_interval, now)
            return sse.ping(time.time()), False
        return None

    async def sleep(self, wake: asyncio.Event) -> None:
        """Until ``wake`` is set, or the next ping or the deadline is due."""
        wake.clear()
        with suppress(TimeoutError):
            async with asyncio.timeout_at(min(self.deadline, self.next_ping)):
                await wake.wait()


async def events(
    subscription: Subscription,
    first: list[Event],
    cursor: int,
    limits: StreamLimits,
    direct: tuple[asyncio.WriteTransport, Ticker] | None = None,
) -> AsyncIterator[bytes]:
    """Frames for one viewer; ends after a terminal event, a timeout or ``close()``.

    ``first`` is what the viewer gets before anything live (replay or current status),
    ``cursor`` the seq the viewer already has when ``first`` is empty. With ``direct``
    (the viewer's transport and the process's ticker), the live part is written straight
    to the socket by the channel and the ticker (bridge/direct.py) once the opening is sent.
    """
    history = subscription.channel.history
    keepalive = Keepalive(limits)

    yield sse.retry(limits.retry_ms)
    pending = first
    while True:
        for event in pending:
            yield event.frame
            cursor = event.seq
            if event.terminal:
                return
        if subscription.closed:
            return
        if direct is not None:
            transport, ticker = direct
            sink = DirectSink(transport, cursor, keepalive.deadline, keepalive.next_ping)
            await _hand_over(subscription, sink, ticker, limits.viewer_buffer)
            return
        tick = keepalive.due()
        if tick is not None:
            frame, final = tick
            yield frame
            if final:
                return
            pending = []
            continue
        pending = history.after(cursor, limits.viewer_buffer)
        if pending:
            continue
        await keepalive.sleep(subscription.wake)
        pending = history.after(cursor, limits.viewer_buffer)


async def _hand_over(
    subscription: Subscription, sink: DirectSink, ticker: Ticker, viewer_buffer: int
) -> None:
    """Put the viewer on the fast path and wait (one future, no wake-ups) until it ends."""
    history = subscription.channel.history
    # What was published while the opening went out; from here on the channel writes.
    for event in history.after(sink.cursor, viewer_buffer):
        sink.deliver(event)
    if sink.ended.done():
        return
    subscription.sink = sink
    ticker.add(sink, lambda: history.latest)
    try:
        await sink.ended
    finally:
        ticker.discard(sink)
        subscription.sink = None
