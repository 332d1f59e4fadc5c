"""A feed run's history: each event's id is the upstream's own cursor.

With BRIDGE_FEED_PATH the upstream keeps a run's events itself, each with a cursor
(seed 002's ``sequence``), so the SSE id of an item's event is that cursor and a viewer's
``Last-Event-ID`` is the upstream's own: what this history still holds is replayed from
here, anything older is asked of the upstream (bridge/streams/feed.py).

Cursors that read as numbers (``15``, ``"15"``) are ordered as numbers: a viewer's cursor
is placed among the held ones by that order, so one that falls between two items (or
before the oldest held one) resumes exactly after it. Any other cursor is opaque (an
event id such as ``evt_9f2a``): it is found among the held ones by equality only, and
one not held is asked of the upstream. A feed has no ``progress`` snapshots to collapse
to, so ``after`` never collapses: every held item is replayed.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque

from bridge.events.history import PLAIN, Event, Facts, RunHistory
from bridge.events.sse import encode_json
from bridge.events.vocabulary import DEFAULT, Vocabulary

#: What a feed item stands for (``Event.kind``): an event of its own, whatever its name.
#: Not its name, which may be ``error``, ``complete`` or ``progress`` (seed 002's frames
#: have a ``type: "error"``): only the run's final state ends a feed's stream, and an
#: item is never a status to patch.
ITEM = "item"

#: A cursor's place in the order: numbers first, by value, then strings.
CursorKey = tuple[int, float, str]


def ordered(key: CursorKey) -> bool:
    """The cursor is a number: it has a place among others, not only an identity."""
    return key[0] == 0


def cursor_key(cursor: str) -> CursorKey:
    """Where ``cursor`` stands among a feed's cursors (numbers first, by value)."""
    text = cursor.strip()
    if text and len(text) <= 40:
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            if number == number and abs(number) != float("inf"):
                return (0, number, "")
    return (1, 0.0, cursor)


class FeedHistory(RunHistory):
    """A ``RunHistory`` whose ids are cursors (``append(..., event_id=cursor)``)."""

    def __init__(
        self,
        size: int,
        max_bytes: int,
        epoch: int | None = None,
        vocabulary: Vocabulary = DEFAULT,
        *,
        start: str = "0",
    ) -> None:
        super().__init__(size, max_bytes, epoch, vocabulary)
        #: Each held event's cursor key, oldest first (parallel to the events).
        self._keys: deque[CursorKey] = deque()
        #: The cursor key everything after which is held: the feed's start until the
        #: oldest item is trimmed, then the trimmed item's.
        self.floor: CursorKey = cursor_key(start)
        self.start = start
        self._by_id: dict[str, int] = {}
        #: The last feed page as one line of JSON: the run's status where one is asked
        #: for (GET /v1/runs/{id}), and the end event's data.
        self.page: str | None = None
        #: The run's state as the last page (or the run's own path) gave it.
        self.state: str | None = None

    def append(
        self, name: str, data: str, facts: Facts = PLAIN, *, event_id: str | None = None
    ) -> Event:
        # An event of the bridge's own (no cursor) stands where the last item stood.
        key = cursor_key(event_id) if event_id else (self._keys[-1] if self._keys else self.floor)
        self._keys.append(key)
        try:
            event = super().append(name, data, facts, event_id=event_id)
        except BaseException:
            self._keys.pop()
            raise
        # The first event with an id keeps it: an end event repeats the last cursor.
        self._by_id.setdefault(event.id, event.seq)
        while len(self._keys) > len(self._events):
            self.floor = self._keys.popleft()
        oldest = self._events[0].seq
        if len(self._by_id) > 2 * len(self._events) + 8:
            self._by_id = {k: s for k, s in self._by_id.items() if s >= oldest}
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
        # A copy (cluster mode) that starts past the feed's first item, or skips ahead,
        # holds nothing before this item: a cursor older than it is asked of the upstream.
        skips = seq != self.last_seq + 1
        event = super().mirror(epoch, seq, name, data, facts, event_id=event_id)
        if event is not None and skips:
            self.floor = self._keys[-1]
        return event

    def passed(self, cursor: str) -> bool:
        """The feed went past ``cursor`` already: a number not above the newest item's,
        or an opaque cursor held (cluster mode: what another leader wrote meanwhile)."""
        key = cursor_key(cursor)
        if self.latest is not None and ordered(key) and ordered(self.last_key):
            return key <= self.last_key
        return cursor in self._by_id

    @property
    def last_key(self) -> CursorKey:
        """The cursor key of the newest item (the floor when none is held)."""
        return self._keys[-1] if self._keys else self.floor

    def key_of(self, event: Event) -> CursorKey:
        """The cursor key of a held event."""
        return self._keys[event.seq - self._events[0].seq]

    def holds(self, event_id: str | None) -> int | None:
        """The seq after which ``event_id`` (a cursor) resumes here, if it does."""
        if not event_id:
            return None
        seq = self._by_id.get(event_id)
        oldest = self._events[0].seq if self._events else self.last_seq + 1
        if seq is not None and seq >= oldest - 1:
            return seq
        if event_id == self.start and self.complete_from_start:
            return oldest - 1  # the feed's start: everything held is after it
        key = cursor_key(event_id)
        if not ordered(key) or key < self.floor:
            return None  # opaque and not held, or older than anything held: the upstream has it
        # The last held event at or before the cursor (none: everything held is after it).
        at = bisect.bisect_right(self._keys, key)
        return oldest - 1 + at

    def after(self, seq: int, limit: int | None = None) -> list[Event]:
        """Every held event newer than ``seq``: items are never collapsed."""
        if not self._events or seq >= self.last_seq:
            return []
        oldest = self._events[0].seq
        start = max(0, seq - oldest + 1)
        return list(itertools.islice(self._events, start, None))

    def resume(self, last_event_id: str | None) -> list[Event]:
        """What a viewer gets first: the items after its cursor (all held ones without one)."""
        seq = self.holds(last_event_id)
        if seq is None:
            return self.after(0)
        return self.after(seq)

    def behind(self, seq: int) -> bool:
        """Events after ``seq`` were trimmed already: only the upstream still has them."""
        return bool(self._events) and seq < self._events[0].seq - 1

    @property
    def complete_from_start(self) -> bool:
        """Nothing was trimmed yet: the history holds the run's feed from its start."""
        return not self._events or self._events[0].seq == 1


def current_status(history: RunHistory) -> str | None:
    """The run's latest status as JSON: a feed's last page, else the status event's."""
    if isinstance(history, FeedHistory):
        # A replica that copies the feed (cluster mode) may not have seen a page yet.
        if history.page is None:
            return encode_json({"status": history.state})
        return history.page
    status = history.status
    return status.status if status is not None else None
