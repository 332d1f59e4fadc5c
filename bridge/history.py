"""A run's recent events, and how a viewer's last id maps onto them.

Ids are ``<epoch>-<seq>``: ``seq`` counts up within one history, ``epoch`` (the history's
creation time in milliseconds) tells histories of the same run apart, so an id from a
history that is gone is recognised as unknown instead of being compared with a new
history's counter. Clients treat ids as opaque strings.
"""

from __future__ import annotations

import itertools
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from bridge import sse
from bridge.status import is_terminal

_ID = re.compile(r"([0-9]{1,16})-([0-9]{1,18})")


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    id: str
    name: str
    status: dict[str, Any]
    #: ``status`` as one line of JSON, encoded once.
    data: str
    #: The whole SSE frame, encoded once and shared by every viewer.
    frame: bytes
    #: ``frame`` as an HTTP/1.1 chunk, for viewers written to directly (bridge/direct.py).
    chunk: bytes

    @property
    def terminal(self) -> bool:
        return is_terminal(self.name)


def parse_id(value: str | None) -> tuple[int, int] | None:
    """(epoch, seq) of a well-formed id, else None; the value is never echoed anywhere."""
    if not value:
        return None
    match = _ID.fullmatch(value.strip())
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


class RunHistory:
    """At most ``size`` events of one run, newest last; the terminal event is always kept."""

    def __init__(self, size: int, epoch: int | None = None) -> None:
        self.epoch = epoch if epoch is not None else time.time_ns() // 1_000_000
        self._events: deque[Event] = deque(maxlen=size)
        self._seq = 0

    def append(self, name: str, status: dict[str, Any], *, data: str | None = None) -> Event:
        if self.terminal:
            raise RuntimeError("a terminal history takes no more events")
        self._seq += 1
        event_id = f"{self.epoch}-{self._seq}"
        payload = data if data is not None else sse.encode_json(status)
        frame = sse.frame(name, payload, event_id)
        event = Event(self._seq, event_id, name, status, payload, frame, sse.chunk(frame))
        self._events.append(event)
        return event

    def mirror(
        self, epoch: int, seq: int, name: str, status: dict[str, Any], data: str
    ) -> Event | None:
        """Take one event of this run's history as another replica wrote it, id and all.

        Cluster mode: the replica polling the run numbers the events, the others copy
        them. An empty history adopts ``epoch``. An event of another epoch, one already
        held, or one after the end is ignored (None). A seq that skips ahead (events this
        copy never saw and can no longer get) drops the events held, so that a viewer
        behind the gap gets the latest status instead of a hole.
        """
        if self._seq == 0 and not self._events:
            self.epoch = epoch
        if epoch != self.epoch or seq <= self._seq or self.terminal:
            return None
        if seq != self._seq + 1:
            self._events.clear()
        self._seq = seq - 1
        return self.append(name, status, data=data)

    @property
    def last_seq(self) -> int:
        """The seq of the newest event ever appended (0: none yet)."""
        return self._seq

    @property
    def latest(self) -> Event | None:
        return self._events[-1] if self._events else None

    @property
    def terminal(self) -> bool:
        latest = self.latest
        return latest is not None and latest.terminal

    def __len__(self) -> int:
        return len(self._events)

    def holds(self, event_id: str | None) -> int | None:
        """The seq of ``event_id`` if it belongs to this history and is still resumable."""
        parsed = parse_id(event_id)
        if parsed is None or not self._events:
            return None
        epoch, seq = parsed
        oldest = self._events[0].seq
        # seq == oldest - 1 is fine too: everything after it is still here.
        if epoch != self.epoch or seq < oldest - 1 or seq > self._seq:
            return None
        return seq

    def after(self, seq: int, limit: int | None = None) -> list[Event]:
        """Events newer than ``seq``; more than ``limit`` of them collapse to the latest."""
        if not self._events or seq >= self._seq:
            return []
        oldest = self._events[0].seq
        missing = self._seq - seq
        if seq < oldest - 1 or (limit is not None and missing > limit):
            # The intermediate statuses are snapshots the latest one supersedes.
            return [self._events[-1]]
        return list(itertools.islice(self._events, len(self._events) - missing, None))

    def resume(self, last_event_id: str | None) -> list[Event]:
        """What a connecting viewer gets first: the events it missed, else the current one."""
        seq = self.holds(last_event_id)
        if seq is None:
            latest = self.latest
            return [latest] if latest is not None else []
        return self.after(seq)
