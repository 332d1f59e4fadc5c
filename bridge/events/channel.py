"""A channel: one run's history as seen with one set of credentials, and its viewers.

A viewer waits on its subscription's ``wake`` (the ASGI path, bridge/streams/stream.py), or has
a ``Sink`` that the channel writes each event to as it is published (the fast path,
bridge/streams/direct.py); the channel knows only this small protocol, not the fast path.

An event goes to at most ``FANOUT_SLICE`` viewers per turn of the event loop: written in
one go, an event to 10,000 fast-path viewers holds the loop for 150-210 ms (bench/studies/soak.py's
loop lag), and every ping, connect and other run's event would wait that long. The rest
of the viewers follow from a loop callback, slice by slice, every event in order: a
viewer gets each event once (a sink skips what it already has, bridge/streams/direct.py), and
what is still to be written is bounded (``MAX_BACKLOG`` events, then written at once).

The channel knows nothing of the poll path: a status comes with ``StatusFacts``, the few
things the history keeps of how the status filters read it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from bridge.events.history import Event, Facts, RunHistory


class ChannelKey(NamedTuple):
    run_id: str
    #: Keyed digest of the forwarded credentials; viewers share only what they could fetch.
    credentials: str


class StatusFacts(Protocol):
    """What the channel keeps of a status as the status filters read it."""

    @property
    def state(self) -> str | None: ...

    @property
    def progress(self) -> float | None: ...

    @property
    def detail(self) -> str | None: ...

    #: The status as its ledger compares it (ignored fields left out).
    @property
    def fingerprint(self) -> str: ...


class Sink(Protocol):
    """Where a fast-path viewer's events go as they are published."""

    def deliver(self, event: Event) -> None: ...

    def finish(self, why: str) -> None: ...

    def write(self, data: bytes) -> None: ...


@dataclass(eq=False, slots=True)
class Subscription:
    """One viewer's place on a channel; ``wake`` is set whenever there is news."""

    channel: Channel
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set by the owner (e.g. shutdown) to end the stream without a terminal event.
    closed: bool = False
    #: Set once the viewer is on the fast path: events are written, not waited for.
    sink: Sink | None = None

    def notify(self, event: Event) -> None:
        if self.sink is not None:
            self.sink.deliver(event)
        else:
            self.wake.set()

    #: Sent to the viewer just before a ``close`` ends its stream (a jittered ``retry:``).
    farewell: bytes = b""

    def close(self, farewell: bytes = b"") -> None:
        """End the stream without a terminal event (the viewer reconnects and resumes)."""
        if self.closed:
            return
        self.closed = True
        self.farewell = farewell
        self.wake.set()
        if self.sink is not None:
            if farewell:
                self.sink.write(farewell)
            self.sink.finish("closed")


#: Viewers one turn of the event loop writes an event to: 10-20 ms of writes here.
FANOUT_SLICE = 1_000
#: Events whose fan-out may wait for a later turn; past it the backlog is written at once
#: (a loop too busy to come back to it must not hold events, nor memory, without bound).
MAX_BACKLOG = 8


class Channel:
    def __init__(self, key: ChannelKey, history: RunHistory) -> None:
        self.key = key
        self.history = history
        self._subscribers: set[Subscription] = set()
        #: True when the terminal event was made by the bridge (it gave up, or the
        #: credentials were refused) rather than sent by the upstream: such a history
        #: must not be served from cache to the next viewer.
        self.synthetic_end = False
        #: The latest status as its ledger compares it (ignored fields left out).
        self.fingerprint: str | None = None
        #: Events still to be written to some of their viewers, oldest first: each with
        #: the viewers it had when published (a viewer who came later read it from the
        #: history), and where the next slice of the oldest starts.
        self._backlog: deque[tuple[Event, list[Subscription]]] = deque()
        self._next = 0
        self._continuation: asyncio.Handle | None = None

    @property
    def viewers(self) -> int:
        return len(self._subscribers)

    def publish(
        self,
        name: str,
        data: str,
        reading: StatusFacts | None = None,
        *,
        synthetic: bool = False,
        kind: str | None = None,
        raw: str | None = None,
        hidden: bool = False,
        event_id: str | None = None,
    ) -> Event:
        """The next event; ``data`` is what it sends as ``sse.encode_json`` wrote it, and
        ``reading`` what the status filters made of the status (none for the bridge's
        own); ``kind``, ``raw`` and ``hidden`` as in ``history.Event``; ``event_id`` the
        upstream's own id (a feed's cursor), else the history's."""
        facts = _facts(reading, kind, raw, hidden)
        event = self.history.append(name, data, facts, event_id=event_id)
        self._published(event, reading, synthetic)
        return event

    def mirror(
        self,
        epoch: int,
        seq: int,
        name: str,
        data: str,
        reading: StatusFacts | None = None,
        *,
        synthetic: bool = False,
        kind: str | None = None,
        raw: str | None = None,
        hidden: bool = False,
        event_id: str | None = None,
    ) -> Event | None:
        """An event another replica published (cluster mode), with its id (``event_id``:
        the upstream's own, a feed's cursor); None if held."""
        facts = _facts(reading, kind, raw, hidden)
        event = self.history.mirror(epoch, seq, name, data, facts, event_id=event_id)
        if event is not None:
            self._published(event, reading, synthetic)
        return event

    def _published(self, event: Event, reading: StatusFacts | None, synthetic: bool) -> None:
        if event.is_status:  # a derived event says nothing of the status's fingerprint
            self.fingerprint = reading.fingerprint if reading is not None else None
        self._deliver(event, synthetic)

    def _deliver(self, event: Event, synthetic: bool) -> None:
        if synthetic:
            self.synthetic_end = True
        if not self._backlog and len(self._subscribers) <= FANOUT_SLICE:
            for subscription in self._subscribers:
                subscription.notify(event)
            return
        self._backlog.append((event, list(self._subscribers)))
        if len(self._backlog) > MAX_BACKLOG:
            self.flush()
        elif self._continuation is None:
            self._write_slice()

    def _write_slice(self) -> None:
        """Write the next ``FANOUT_SLICE`` viewers' events; come back for the rest."""
        self._continuation = None
        self._write(FANOUT_SLICE)
        if self._backlog:
            self._continuation = asyncio.get_running_loop().call_soon(self._write_slice)

    def flush(self) -> None:
        """Write every event still in the backlog now (before the viewers are closed)."""
        if self._continuation is not None:
            self._continuation.cancel()
            self._continuation = None
        self._write(None)

    def _write(self, budget: int | None) -> None:
        """The backlog's events to up to ``budget`` viewers in all (None: to every one)."""
        while self._backlog and (budget is None or budget > 0):
            event, viewers = self._backlog[0]
            end = len(viewers) if budget is None else min(len(viewers), self._next + budget)
            for i in range(self._next, end):
                viewers[i].notify(event)
            if budget is not None:
                budget -= end - self._next
            self._next = end
            if end == len(viewers):
                self._backlog.popleft()
                self._next = 0

    @property
    def fanning_out(self) -> bool:
        """Some viewers are still to get a published event (a later turn of the loop)."""
        return bool(self._backlog)

    def add(self, subscription: Subscription) -> None:
        self._subscribers.add(subscription)

    def discard(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    @property
    def subscriptions(self) -> list[Subscription]:
        return list(self._subscribers)

    def close_all(self) -> None:
        self.flush()
        for subscription in list(self._subscribers):
            subscription.close()


def _facts(reading: StatusFacts | None, kind: str | None, raw: str | None, hidden: bool) -> Facts:
    if reading is None:
        return Facts(kind=kind, raw=raw, hidden=hidden)
    return Facts(reading.state, reading.progress, reading.detail, kind, raw, hidden)
