"""Drops viewers whose socket stopped taking data, so they hold nothing for long.

A stream marks itself while one frame is being sent; a single reaper task (not one
timer per viewer) cancels any stream whose send has taken longer than
BRIDGE_SEND_TIMEOUT. The listening socket's TCP_USER_TIMEOUT (see server.py) lets the
kernel close such a connection too, so its buffers are freed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from bridge.tasks import cancel_and_wait

log = logging.getLogger("bridge.watchdog")


@dataclass(eq=False, slots=True)
class Sending:
    task: asyncio.Task[object]
    #: loop.time() when the current frame was handed to the server, None between frames.
    since: float | None = None


class SendWatchdog:
    def __init__(self, send_timeout: float) -> None:
        self.send_timeout = send_timeout
        self._streams: set[Sending] = set()
        self._reaper: asyncio.Task[None] | None = None
        self.dropped = 0

    def watch(self) -> Sending:
        task = asyncio.current_task()
        assert task is not None
        entry = Sending(task)
        self._streams.add(entry)
        return entry

    def unwatch(self, entry: Sending) -> None:
        self._streams.discard(entry)

    def start(self) -> None:
        self._reaper = asyncio.create_task(self._reap(), name="bridge:send-watchdog")

    async def stop(self) -> None:
        if self._reaper is not None:
            await cancel_and_wait(self._reaper)
            self._reaper = None

    async def _reap(self) -> None:
        loop = asyncio.get_running_loop()
        period = min(1.0, max(self.send_timeout / 4, 0.01))
        while True:
            await asyncio.sleep(period)
            deadline = loop.time() - self.send_timeout
            for entry in list(self._streams):
                if entry.since is not None and entry.since < deadline:
                    self._streams.discard(entry)
                    self.dropped += 1
                    entry.task.cancel()
            if self.dropped:
                log.debug("dropped %d stalled viewers so far", self.dropped)
