"""The process's one housekeeping task for open streams: no timer or task per viewer.

Once a tick (at most a quarter of the ping interval or of BRIDGE_SEND_TIMEOUT):

- fast-path viewers (bridge/streams/direct.py): their pings and ``timeout`` (one ``Keepalive``
  each, the same schedule the ASGI path follows), the catch-up of a viewer that was
  skipped while its socket was full, and the drop of one that stayed behind for
  BRIDGE_SEND_TIMEOUT;
- ASGI-path viewers: the drop of one whose current send has taken longer than
  BRIDGE_SEND_TIMEOUT (its socket stopped taking data). The listening socket's
  TCP_USER_TIMEOUT (bridge/server/serve.py) lets the kernel close such a connection too.

Either way a dropped viewer reconnects and resumes by Last-Event-ID, nothing lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from bridge.events.history import Event
from bridge.streams.direct import DirectSink
from bridge.tasks import OwnedTask

log = logging.getLogger("bridge.streams.ticker")


@dataclass(eq=False, slots=True)
class Sending:
    """An ASGI-path stream; ``since`` is set while one of its frames is being sent."""

    task: asyncio.Task[object]
    #: loop.time() when the current frame was handed to the server, None between frames.
    since: float | None = None


class Ticker:
    def __init__(self, ping_interval: float, send_timeout: float) -> None:
        self.send_timeout = send_timeout
        # Pings, timeouts and drops come at most a quarter of their interval late.
        self.period = max(0.01, min(1.0, ping_interval / 4, send_timeout / 4))
        self._sinks: dict[DirectSink, Callable[[], Event | None]] = {}
        self._sending: set[Sending] = set()
        self._task = OwnedTask(self._run, "bridge:ticker")

    # --- fast-path viewers ---------------------------------------------------------

    def add(self, sink: DirectSink, latest: Callable[[], Event | None]) -> None:
        self._sinks[sink] = latest

    def discard(self, sink: DirectSink) -> None:
        self._sinks.pop(sink, None)

    @property
    def viewers(self) -> int:
        """Viewers on the fast path now."""
        return len(self._sinks)

    # --- ASGI-path viewers ---------------------------------------------------------

    def watch(self) -> Sending:
        """Time the sends of the current task's stream until ``unwatch``."""
        task = asyncio.current_task()
        assert task is not None
        entry = Sending(task)
        self._sending.add(entry)
        return entry

    def unwatch(self, entry: Sending) -> None:
        self._sending.discard(entry)

    @property
    def watched(self) -> int:
        """ASGI-path streams whose sends are timed now."""
        return len(self._sending)

    # --- the task ------------------------------------------------------------------

    def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.period)
            now = loop.time()
            self._drop_stalled_sends(now)
            self.tick(now)

    def _drop_stalled_sends(self, now: float) -> None:
        deadline = now - self.send_timeout
        for entry in list(self._sending):
            if entry.since is not None and entry.since < deadline:
                self._sending.discard(entry)
                entry.task.cancel()

    def tick(self, now: float) -> None:
        """Pings, timeouts and catch-up of every fast-path viewer at ``now`` (loop time)."""
        ping: bytes | None = None
        for sink, latest in list(self._sinks.items()):
            if sink.ended.done():
                continue
            if sink.transport.is_closing():
                sink.finish("disconnected")
                continue
            keepalive = sink.keepalive
            if sink.behind_since is not None:
                sink.catch_up(latest(), self.send_timeout)
                if sink.ended.done():
                    continue
            due = keepalive.due(now)
            if due == "timeout":
                sink.write(keepalive.frame(due))
                sink.finish("timeout")
            elif due == "ping":
                # One ping frame per tick, shared by every viewer it is due for.
                ping = ping or keepalive.frame(due)
                sink.write(ping)
