"""A run's recent events, and how a viewer's last id maps onto them.

Ids are ``<epoch>-<seq>``: ``seq`` counts up within one history, ``epoch`` (the history's
creation time in milliseconds) tells histories of the same run apart, so an id from a
history that is gone is recognised as unknown instead of being compared with a new
history's counter. Clients treat ids as opaque strings.

A history is bounded in events (``size``) and in bytes (``max_bytes``): a status can be
as large as the upstream body cap, and each event holds exactly one copy of it, the SSE
frame every viewer is sent; the newest event is always kept, whatever its size.
"""

from __future__ import annotations

import itertools
import re
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from bridge.events import sse
from bridge.events.vocabulary import DEFAULT, Vocabulary

_ID = re.compile(r"([0-9]{1,16})-([0-9]{1,18})")


#: What one held event costs beyond its frame's bytes: the Event, its id and seq, the
#: bytes object's header and the deque's slot (tracemalloc, CPython 3.11: 212 bytes;
#: tests/test_history.py checks that this still covers them).
EVENT_OVERHEAD = 256

_DATA_FIELD = b"\ndata: "


def is_terminal(event: str) -> bool:
    """Whether an event of this name ends its run's stream."""
    return event in (sse.COMPLETE, sse.ERROR)


@dataclass(frozen=True, slots=True)
class Facts:
    """What an event says beyond its name and data, as ``Event`` keeps it (see there):
    carried as one value from the channel to the history."""

    state: str | None = None
    progress: float | None = None
    detail: str | None = None
    #: None: the event's name.
    kind: str | None = None
    raw: str | None = None
    #: Kept in the history but not sent (a built-in event turned off).
    hidden: bool = False


#: An event that says nothing beyond its name and data.
PLAIN = Facts()


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    id: str
    name: str
    #: The whole SSE frame, encoded once and shared by every viewer: the one copy of the
    #: event's bytes (a status may be up to BRIDGE_UPSTREAM_MAX_BYTES).
    frame: bytes
    #: Where ``data`` starts in ``frame``.
    data_at: int
    #: The run's state, progress and detail as the status filters read them
    #: (bridge/polling/status.py).
    state: str | None = None
    progress: float | None = None
    detail: str | None = None
    #: What the event stands for: ``progress``, ``complete`` or ``error`` for a status
    #: (whatever name it is sent as), "" for an event derived from a change
    #: (bridge/events/derive.py).
    kind: str = sse.PROGRESS
    #: The status as the upstream sent it, where the frame's data is not it (a built-in
    #: event reshaped, or turned off: then the frame is empty and nothing is sent).
    raw: str | None = None

    @classmethod
    def build(
        cls,
        seq: int,
        event_id: str,
        name: str,
        data: str,
        facts: Facts = PLAIN,
    ) -> Event:
        kind = name if facts.kind is None else facts.kind
        state, progress, detail, raw = facts.state, facts.progress, facts.detail, facts.raw
        if facts.hidden:
            status = raw if raw is not None else data
            return cls(seq, event_id, name, b"", 0, state, progress, detail, kind, status)
        frame = sse.frame(name, data, event_id)
        # The event and id fields hold no line break (sse.frame refuses one), so the
        # first "\ndata: " is where the data field starts.
        start = frame.index(_DATA_FIELD) + len(_DATA_FIELD)
        return cls(seq, event_id, name, frame, start, state, progress, detail, kind, raw)

    @property
    def data(self) -> str:
        """The status as one line of JSON, decoded from ``frame`` at each use rather than
        kept twice: the poller's change check, a status request, and each viewer of a
        multi-run stream (whose frames are built per viewer anyway; measured: +0.7 us on
        a 4.6 us frame build for a small status, +4% for a 900 KB one). Single-run
        streams send ``frame`` and never read it."""
        return str(memoryview(self.frame)[self.data_at : -2], "utf-8")

    @property
    def nbytes(self) -> int:
        """What holding this event costs, as the history counts it against ``max_bytes``."""
        return len(self.frame) + len(self.raw or "") + EVENT_OVERHEAD

    @property
    def terminal(self) -> bool:
        return is_terminal(self.kind)

    @property
    def sent(self) -> bool:
        """Viewers get this event (False: a built-in event turned off, kept for resume)."""
        return bool(self.frame)

    @property
    def is_status(self) -> bool:
        return bool(self.kind)

    @property
    def status(self) -> str:
        """The status this event carries as the upstream sent it (a status event's)."""
        return self.raw if self.raw is not None else self.data

    def as_progress(self) -> Event:
        """This status as a plain ``progress`` event with this id: what a viewer whose
        place is lost gets, even with ``progress`` turned off (never a silent gap)."""
        if self.sent and self.raw is None and self.name == sse.PROGRESS:
            return self
        # The kind stays: a terminal status still ends the stream after it.
        return Event.build(
            self.seq,
            self.id,
            sse.PROGRESS,
            self.status,
            Facts(self.state, self.progress, self.detail, self.kind),
        )


def enveloped(run_id: str, event: Event, data: str) -> str:
    """``data`` of ``event`` wrapped as a multi-run stream sends it (/v1/streams,
    /v1/events): with the run, the event's id, and state, progress and detail as the
    status filters read them (null where none), so that a page shows any configured API
    without knowing its shape."""
    return (
        f'{{"run_id":{sse.encode_json(run_id)},'
        f'"id":{sse.encode_json(event.id)},'
        f'"state":{sse.encode_json(event.state)},'
        f'"progress":{sse.encode_json(event.progress)},'
        f'"detail":{sse.encode_json(event.detail)},'
        f'"data":{data}}}'
    )


_chunked: tuple[Event, bytes] | None = None


def http_chunk(event: Event) -> bytes:
    """``event.frame`` as one HTTP/1.1 chunk, for the fast path (bridge/streams/direct.py).

    Made once per event when a fan-out needs it and reused for every viewer of that
    fan-out (the loop delivers one event to all its viewers before the next), so a viewer
    costs one write of shared bytes; only the last chunk made is kept, so at most one
    event's frame is held twice in the process. Alternatives measured (bench/FINDINGS.md,
    "One copy of each event"): three writes per viewer (size line, frame, CRLF)
    cost 2.5x the CPU per viewer for frames up to 8 KB (three syscalls, three TCP
    segments); framing the chunk per viewer costs 5% (600 B) to 20% (900 KB) more; a
    chunk kept with each event costs the CPU this does but holds every frame twice.
    """
    global _chunked
    cached = _chunked
    if cached is not None and cached[0] is event:
        return cached[1]
    chunk = sse.chunk(event.frame)
    _chunked = (event, chunk)
    return chunk


def parse_id(value: str | None) -> tuple[int, int] | None:
    """(epoch, seq) of a well-formed id, else None; the value is never echoed anywhere."""
    if not value:
        return None
    match = _ID.fullmatch(value.strip())
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2))


class RunHistory:
    """At most ``size`` events and ``max_bytes`` bytes (``Event.nbytes``) of one run, newest
    last; the newest event is always kept, so the terminal event is too."""

    def __init__(
        self,
        size: int,
        max_bytes: int,
        epoch: int | None = None,
        vocabulary: Vocabulary = DEFAULT,
    ) -> None:
        if size < 1:
            raise ValueError("a history holds at least one event")
        self.epoch = epoch if epoch is not None else time.time_ns() // 1_000_000
        self.size = size
        self.max_bytes = max_bytes
        #: What the run's stream says (BRIDGE_EVENTS_FILE): how viewers start and catch up.
        self.vocabulary = vocabulary
        self._events: deque[Event] = deque()
        self._bytes = 0
        self._seq = 0
        #: The newest status event, even once trimmed (it is what a lost viewer gets).
        self._status: Event | None = None
        #: The newest event is terminal: asked several times per change, kept at append.
        self._terminal = False

    def append(
        self,
        name: str,
        data: str,
        facts: Facts = PLAIN,
        *,
        event_id: str | None = None,
    ) -> Event:
        """Add the next event; ``data`` is what it sends (``sse.encode_json``'s text).
        ``event_id``: the upstream's own id (a feed's cursor) instead of the bridge's."""
        if self.terminal:
            raise RuntimeError("a terminal history takes no more events")
        self._seq += 1
        event_id = event_id or f"{self.epoch}-{self._seq}"
        event = Event.build(self._seq, event_id, name, data, facts)
        self._events.append(event)
        self._terminal = event.terminal
        if event.is_status:
            self._status = event
        self._bytes += event.nbytes
        # Oldest first; what is trimmed resumes as an unknown id: the current status.
        while len(self._events) > 1 and (
            len(self._events) > self.size or self._bytes > self.max_bytes
        ):
            self._bytes -= self._events.popleft().nbytes
        return event

    def mirror(
        self,
        epoch: int,
        seq: int,
        name: str,
        data: str,
        facts: Facts = PLAIN,
        *,
        event_id: str | None = None,
    ) -> Event | None:
        """Take one event of this run's history as another replica wrote it, id and all
        (``event_id``: the upstream's own id, a feed's cursor, else ``<epoch>-<seq>``).

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
            self._bytes = 0
        self._seq = seq - 1
        return self.append(name, data, facts, event_id=event_id)

    @property
    def nbytes(self) -> int:
        """Bytes held, as counted against ``max_bytes`` (frames plus a per-event overhead)."""
        return self._bytes

    @property
    def last_seq(self) -> int:
        """The seq of the newest event ever appended (0: none yet)."""
        return self._seq

    @property
    def latest(self) -> Event | None:
        return self._events[-1] if self._events else None

    @property
    def status(self) -> Event | None:
        """The event of the run's latest status (its ``status`` is the status itself)."""
        return self._status

    def current(self) -> Event | None:
        """What a viewer without a place gets: the latest status, as it is sent, or as a
        plain ``progress`` where it is not sent (never a silent gap)."""
        status = self._status
        if status is None:
            return None
        return status if status.sent else status.as_progress()

    @property
    def terminal(self) -> bool:
        return self._terminal

    def __len__(self) -> int:
        return len(self._events)

    def newest_first(self) -> Iterator[Event]:
        """The held events, newest first (what is looked for is usually near the end)."""
        return reversed(self._events)

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
        """Events newer than ``seq``; more than ``limit`` of them collapse to the latest,
        unless the vocabulary's events are not snapshots (``lossless``): those are all
        returned, and a viewer too slow for them is ended by its stream instead."""
        if not self._events or seq >= self._seq:
            return []
        oldest = self._events[0].seq
        missing = self._seq - seq
        if seq < oldest - 1:
            current = self.current()
            return [current] if current is not None else []
        if limit is not None and missing > limit and not self.vocabulary.lossless:
            # The intermediate statuses are snapshots the latest one supersedes.
            return [self._events[-1]]
        return list(itertools.islice(self._events, len(self._events) - missing, None))

    def resume(self, last_event_id: str | None) -> list[Event]:
        """What a connecting viewer gets first: the events it missed; without an id, the
        current status (or, with ``progress`` turned off, the history from its start);
        with an id the history no longer holds, the current status as ``progress``."""
        seq = self.holds(last_event_id)
        if seq is None:
            if not last_event_id and self.vocabulary.from_start and self._events:
                return list(self._events)
            current = self.current()
            return [current] if current is not None else []
        return self.after(seq)
