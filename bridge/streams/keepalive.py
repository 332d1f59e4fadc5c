"""A stream's ping schedule and deadline: one policy for the ASGI path and the fast path."""

from __future__ import annotations

import asyncio
import random
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Literal

from bridge.events import sse


@dataclass(frozen=True, slots=True)
class StreamLimits:
    ping_interval: float
    stream_timeout: float
    viewer_buffer: int
    retry_ms: int


def spread(retry_ms: float) -> int:
    """``retry_ms`` plus up to a fifth, at random: viewers told to come back after the same
    refusal, drain or restart do not all come back in the same instant."""
    return int(retry_ms * (1 + random.uniform(0, 0.2)))


class Keepalive:
    """A stream's schedule of pings and its deadline, on the loop's clock."""

    __slots__ = ("deadline", "next_ping", "ping_interval", "stream_timeout")

    def __init__(self, limits: StreamLimits) -> None:
        started = asyncio.get_running_loop().time()
        self.ping_interval = limits.ping_interval
        self.stream_timeout = limits.stream_timeout
        self.deadline = started + limits.stream_timeout
        self.next_ping = started + limits.ping_interval

    def due(self, now: float) -> Literal["ping", "timeout"] | None:
        """What the stream owes its viewer at ``now`` (a timeout ends the stream)."""
        if now >= self.deadline:
            return "timeout"
        if now >= self.next_ping:
            self.next_ping = max(self.next_ping + self.ping_interval, now)
            return "ping"
        return None

    def frame(self, due: Literal["ping", "timeout"]) -> bytes:
        if due == "timeout":
            return sse.timeout(self.stream_timeout)
        return sse.ping(time.time())

    async def sleep(self, wake: asyncio.Event) -> None:
        """Until ``wake`` is set, or the next ping or the deadline is due."""
        wake.clear()
        with suppress(TimeoutError):
            async with asyncio.timeout_at(min(self.deadline, self.next_ping)):
                await wake.wait()
