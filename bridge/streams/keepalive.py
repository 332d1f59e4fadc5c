"""A stream's ping schedule and deadline: one policy for the ASGI path and the fast path."""

from __future__ import annotations

import asyncio
import random
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Literal

from bridge.events import sse
from bridge.events.vocabulary import DEFAULT, Vocabulary


@dataclass(frozen=True, slots=True)
class StreamLimits:
    ping_interval: float
    stream_timeout: float
    viewer_buffer: int
    retry_ms: int
    #: The stream's vocabulary: what ``ping`` and ``timeout`` are called and carry.
    vocabulary: Vocabulary = DEFAULT


def spread(retry_ms: float) -> int:
    """``retry_ms`` plus up to a fifth, at random: viewers told to come back after the same
    refusal, drain or restart do not all come back in the same instant."""
    return int(retry_ms * (1 + random.uniform(0, 0.2)))


class Keepalive:
    """A stream's schedule of pings and its deadline, on the loop's clock."""

    __slots__ = ("deadline", "next_ping", "ping_interval", "stream_timeout", "vocabulary")

    def __init__(self, limits: StreamLimits) -> None:
        started = asyncio.get_running_loop().time()
        self.ping_interval = limits.ping_interval
        self.stream_timeout = limits.stream_timeout
        self.deadline = started + limits.stream_timeout
        self.next_ping = started + limits.ping_interval
        self.vocabulary = limits.vocabulary

    def due(self, now: float) -> Literal["ping", "timeout"] | None:
        """What the stream owes its viewer at ``now`` (a timeout ends the stream)."""
        if now >= self.deadline:
            return "timeout"
        if now >= self.next_ping:
            self.next_ping = max(self.next_ping + self.ping_interval, now)
            return "ping"
        return None

    def frame(self, due: Literal["ping", "timeout"]) -> bytes:
        vocabulary = self.vocabulary
        if not vocabulary.customised:
            return sse.timeout(self.stream_timeout) if due == "timeout" else sse.ping(time.time())
        return _shaped(vocabulary, due, self.stream_timeout)

    async def sleep(self, wake: asyncio.Event) -> None:
        """Until ``wake`` is set, or the next ping or the deadline is due."""
        wake.clear()
        with suppress(TimeoutError):
            async with asyncio.timeout_at(min(self.deadline, self.next_ping)):
                await wake.wait()


def _shaped(vocabulary: Vocabulary, due: Literal["ping", "timeout"], timeout: float) -> bytes:
    """``ping``/``timeout`` as BRIDGE_EVENTS_FILE says: renamed, reshaped (the filter runs
    on the default data: the timestamp, the timeout message), or, turned off, a comment
    line (a ping still keeps proxies from closing an idle stream; a timeout still ends
    it)."""
    if not vocabulary.enabled(due):
        return b": ping\n\n" if due == "ping" else b""
    default = (
        sse.encode_json({"message": sse.timeout_message(timeout)})
        if due == "timeout"
        else str(int(time.time()))
    )
    data = vocabulary.render(due, default, "", None, None) or default
    return sse.frame(vocabulary.name_of(due), data)
