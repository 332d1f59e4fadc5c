"""Cluster mode's ledger: a poller's history kept in Redis, led by one replica at a time.

Every poller syncs once per poll interval (one Lua script: refresh this replica's
interest, renew or take the lease, read the history's head) and keeps the replica's
local copy of the history in step with Redis. The one holding the lease *leads*: the
poll loop (bridge/polling/poller.py) polls the upstream on its cadence and ``record`` commits
each change to Redis (a script that only the lease holder passes, on top of the history
it has), which numbers the event and publishes it; every replica, the leader too, copies
it into its local channel with that id. The others *follow*: no upstream request, their
viewers get what the leader published (pub/sub at once, the next sync repairs anything
missed).

A replica with viewers takes a free lease; a leader whose own viewers left keeps polling
while another replica still has viewers (``others``), then gives the lease up. A dead
leader's lease expires (a few intervals plus the upstream timeout) and a follower with
viewers takes over, continuing the same history (same epoch, next seq).

A new poller answers its first viewer like the one-process bridge: from history when a
leader has polled it (no upstream request), else with its own first upstream request.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from bridge.cluster.link import REDIS_FAILURES, RedisLink
from bridge.cluster.store import (
    DERIVED,
    FEED,
    NOT_HOLDER,
    PROGRESS,
    SYNTHETIC,
    TERMINAL,
    WRITTEN,
    Record,
    Store,
)
from bridge.errors import ClusterUnavailable
from bridge.events import derive, sse
from bridge.events.channel import Channel, ChannelKey
from bridge.events.feed import ITEM, FeedHistory
from bridge.events.history import Event, is_terminal
from bridge.ops.metrics import Metrics
from bridge.polling.ledger import (
    Appended,
    Ledger,
    LedgerOwner,
    Observation,
    changed,
    end_status,
)
from bridge.polling.status import Reading

log = logging.getLogger("bridge.cluster")

_T = TypeVar("_T")

#: One commit: the event's name, the record's kind, the status, how it reads, and the
#: events derived from the change ("", "", "": unchanged, only "still polled").
_Commit = tuple[str, str, str, Reading | None, list[tuple[str, str]] | None]
_STILL: _Commit = ("", "", "", None, None)


class RedisLedger(Ledger):
    def __init__(
        self,
        channel: Channel,
        owner: LedgerOwner,
        metrics: Metrics | None,
        *,
        link: RedisLink,
        store: Store,
        token: str,
        read: Callable[[str], Reading | None],
        on_close: Callable[[RedisLedger], Coroutine[Any, Any, None]],
        step_aside_s: float = 30.0,
    ) -> None:
        super().__init__(channel, owner, metrics)
        self.key = channel.key
        self.token = token
        self.leads = False
        self._link = link
        self._store = store
        self._on_close = on_close
        #: Reads a status another replica committed (its state, progress, fingerprint).
        self._read = read
        self._active = True
        self._diverged = False
        #: The status whose commit failed, and the head of the copy then (epoch, seq).
        self._unrecorded: tuple[Observation, int, int] | None = None
        #: After stepping aside: how long this replica leaves the lease to others, and
        #: (cluster-wide) how long before another leader may step aside again.
        self._step_aside_s = step_aside_s
        self._cool_until = 0.0
        #: This key's pub/sub channel, and whether the link follows it for this ledger.
        self.live_channel = store.live_channel(self.key)
        self._following = False
        #: When the poll in flight as the poller stopped started (monotonic; None: none).
        self._in_flight: float | None = None

    # --- the seam ----------------------------------------------------------------------

    async def sync(self, *, active: bool) -> bool:
        self._active = active
        await self._guarded(self._tick())
        if self._diverged:
            log.warning(
                "cluster: run %s has another history in Redis than this replica's copy; "
                "its viewers here reconnect and resume",
                self.key.run_id,
            )
            self.channel.close_all()
            return False
        return True

    async def record(self, observation: Observation) -> None:
        """Commit a polled status: an event if it changed, else just "still polled".

        A status whose commit failed (Redis lost, or the primary fenced after a failover)
        is committed before the next one, if nothing newer arrived meanwhile: it was
        served, and this replica's viewers may be the only ones that did not get it.
        """
        history = self.channel.history
        pending, self._unrecorded = self._unrecorded, None
        todo = [observation]
        if (
            pending is not None
            and pending[1:] == (history.epoch, history.last_seq)
            and pending[0].data != observation.data
        ):
            todo.insert(0, pending[0])
        for status in todo:
            mark = (history.epoch, history.last_seq)
            try:
                await self._record(status)
            except ClusterUnavailable:
                self._unrecorded = (status, *mark)
                raise

    async def _record(self, observation: Observation) -> None:
        def commit() -> _Commit:
            # Asked again after a catch-up: what the copy had may now hold this status.
            if not changed(self.channel, observation):
                return _STILL
            kind = TERMINAL if is_terminal(observation.name) else PROGRESS
            # The leader derives; the change's events and its status are one commit.
            derived = derive.derived(
                self.channel, observation.data, observation.reading, self._metrics
            )
            return observation.name, kind, observation.data, observation.reading, derived

        await self._commit_on_top(commit)

    async def still(self) -> None:
        """A 304: commit "still polled" (the cadence and freshness others rely on)."""
        await self._commit_on_top(lambda: _STILL)

    async def end(self, code: str, message: str) -> bool:
        ended: _Commit = (sse.ERROR, SYNTHETIC, end_status(code, message), None, None)
        return await self._commit_on_top(lambda: ended)

    async def append(self, items: Sequence[Appended], reading: Reading | None) -> bool:
        """Commit a feed's new items in one write, each its own record whose id (on every
        replica) is its cursor; the page they came in rides on the last one."""
        history = self.channel.history
        assert isinstance(history, FeedHistory)
        state = reading.state if reading is not None else None
        for _ in range(2):
            if history.terminal:
                return False
            # After a catch-up, what another leader wrote meanwhile is not written again.
            fresh = [item for item in items if not history.passed(item[0])]
            if not fresh:
                return True
            records = [
                ("item", _feed_record(cursor, name, state, data, None))
                for cursor, name, data in fresh[:-1]
            ]
            cursor, name, data = fresh[-1]
            last = _feed_record(cursor, name, state, data, history.page)
            result = await self._guarded(
                self._store.commit(
                    self.key,
                    self.token,
                    history.epoch,
                    history.last_seq,
                    "item",
                    FEED,
                    last,
                    records,
                    derived_kind=FEED,
                )
            )
            if result.code == WRITTEN:
                self.fresh = True
                first = result.seq - len(fresh) + 1
                for i, (cursor, name, data) in enumerate(fresh):
                    self.channel.mirror(
                        result.epoch, first + i, name, data, reading, kind=ITEM, event_id=cursor
                    )
                return True
            if result.code == NOT_HOLDER:
                self.leads = False
                return False
            await self._tick()
            if not self.leads or self._diverged:
                return False
        return False

    async def conclude(self, page: str, reading: Reading, event_id: str) -> bool:
        # The id is the last item's, as _mirror_status gives every replica.
        ended: _Commit = (reading.event, TERMINAL, page, reading, None)
        return await self._commit_on_top(lambda: ended)

    async def close(self, in_flight: float | None) -> None:
        self._in_flight = in_flight
        await self._on_close(self)

    async def step_aside(self) -> bool:
        window_ms = int(self._step_aside_s * 1000)
        if not await self._guarded(self._store.step_aside(self.key, self.token, window_ms)):
            return False
        log.warning(
            "cluster: this replica cannot reach the upstream for run %s; another replica "
            "whose viewers watch it takes over polling",
            self.key.run_id,
        )
        self.leads = False
        self._cool_until = time.monotonic() + self._step_aside_s
        return True

    def resignation(self) -> tuple[ChannelKey, str, int | None]:
        """What giving up this ledger's lease tells Redis: key, token, and how long ago
        the poll still in flight started (the successor counts from there)."""
        started = self._in_flight if self.leads else None
        ago = None if started is None else int((time.monotonic() - started) * 1000)
        return self.key, self.token, ago

    def on_message(self, payload: bytes) -> None:
        """A pub/sub message for this key (called by the listener, in order)."""
        if payload == b"!":
            # A new leader confirmed the history: a waiting first viewer can have it.
            self.owner.nudge()
            return
        record = Record.decode(payload)
        if record is None:
            return
        history = self.channel.history
        if (
            history.last_seq == 0
            or record.epoch != history.epoch
            or record.seq != history.last_seq + 1
        ):
            # Not the next one: the sync loads from Redis what is missing (or notices
            # the history changed). An empty copy loads all of it, for resumes.
            if record.epoch != history.epoch or record.seq > history.last_seq:
                self.owner.nudge()
            return
        if self._apply(record):
            # Only a lease holder that just polled publishes: the copy is up to date.
            self.fresh = True
            self.owner.news()

    # --- Redis -------------------------------------------------------------------------

    async def _guarded(self, call: Coroutine[Any, Any, _T]) -> _T:
        """Run a Redis call; a failure marks the link down and becomes ClusterUnavailable."""
        if not self._link.up:
            call.close()
            self.leads = False
            raise ClusterUnavailable()
        try:
            return await call
        except REDIS_FAILURES as error:
            self._link.trouble(error)
            self.leads = False
            raise ClusterUnavailable() from None

    async def _commit_on_top(self, commit: Callable[[], _Commit]) -> bool:
        """Commit what ``commit()`` says on top of the local copy; refused because another
        leader wrote meanwhile, catch up and try once more. True once the history holds it
        or has ended; False if this replica no longer leads or its copy diverged."""
        for _ in range(2):
            if self.channel.history.terminal:
                return True
            if await self._guarded(self._commit(*commit())):
                return True
            if not self.leads or self._diverged:
                return False
        return self.channel.history.terminal

    async def _commit(
        self,
        name: str,
        kind: str,
        data: str,
        reading: Reading | None = None,
        derived: list[tuple[str, str]] | None = None,
    ) -> bool:
        """One commit on top of the local copy; False (after catching up) if refused."""
        history = self.channel.history
        derived = derived or []
        facts = (reading.state, reading.progress, reading.detail) if reading else (None, None, None)
        records = [(n, _derived_record(d, *facts)) for n, d in derived]
        result = await self._store.commit(
            self.key, self.token, history.epoch, history.last_seq, name, kind, data, records
        )
        if result.code == WRITTEN:
            self.fresh = True
            if name:
                first = result.seq - len(derived)
                for i, (event_name, event_data) in enumerate(derived):
                    self.channel.mirror(
                        result.epoch, first + i, event_name, event_data, reading, kind=""
                    )
                    self._published(event_name)
                self._mirror_status(
                    result.epoch, result.seq, name, data, reading, kind == SYNTHETIC
                )
            return True
        if result.code == NOT_HOLDER:
            self.leads = False
            return False
        # Out of date or ended: another leader wrote, or Redis lost the history.
        await self._tick()
        return False

    async def _tick(self) -> None:
        """Refresh interest and lease; bring the local copy and Redis's history in step."""
        if not self._following:
            # Subscribed before the first read of the head: whatever is published after
            # that read arrives here at once, nothing waits for the next sync.
            await self._link.follow(self.live_channel)
            self._following = True
        may_lead = self.may_lead and time.monotonic() >= self._cool_until
        view = await self._store.tick(self.key, self.token, active=self._active, may_lead=may_lead)
        self.leads = view.holder == self.token
        self.others = view.others
        self.since_poll = None if view.since_poll is None else view.since_poll / 1000
        history = self.channel.history
        if view.epoch is None:
            # Redis has no history (restarted empty, or expired): put ours back.
            self.fresh = False
            await self._restore(None, 0)
            return
        if history.last_seq == 0:
            if view.end == SYNTHETIC:
                # Ended by a bridge (refused, gave up): a new history is to come.
                self.fresh = False
                return
            await self._load(view.epoch, view.seq)
        elif history.epoch == view.epoch:
            if view.seq > history.last_seq:
                await self._load(view.epoch, view.seq - history.last_seq)
            elif view.seq < history.last_seq:
                # Redis holds an older part of this history: a replica was promoted before
                # the leader's last commits reached it. Everything after its newest record
                # goes back, not only ours: a resume from any id before then stays whole.
                await self._restore(view.epoch, view.seq)
        else:
            self._diverged = True
            return
        self.fresh = view.fresh

    async def _load(self, epoch: int, count: int) -> None:
        """Copy the records this replica lacks (``count`` of them, or more by now)."""
        for record in await self._store.records(self.key, count):
            if record.epoch == epoch and record.seq > self.channel.history.last_seq:
                self._apply(record)

    async def _restore(self, epoch: int | None, seq: int) -> None:
        """Offer Redis the records it lacks: all this copy holds when Redis has no history
        (``epoch`` None; not an ended one, which the next viewer asks the upstream for
        again), else those after ``seq``, the end included."""
        history = self.channel.history
        if not len(history) or (epoch is None and history.terminal):
            return
        # The copy is contiguous (a gap drops what was before it): its oldest seq follows.
        oldest = history.last_seq - len(history) + 1
        records = [
            self._record_of(history.epoch, event) for event in history.after(max(seq, oldest - 1))
        ]
        await self._store.restore(self.key, history.epoch, records)

    def _record_of(self, epoch: int, event: Event) -> Record:
        """A held event as its record: a status as the upstream sent it (each replica
        renders it in its vocabulary), a derived event with its change's state, a feed's
        item with its cursor."""
        if isinstance(self.channel.history, FeedHistory) and not event.terminal:
            data = _feed_record(event.id, event.name, event.state, event.data, None)
            return Record(epoch, event.seq, "item", FEED, data)
        if not event.is_status:
            data = _derived_record(event.data, event.state, event.progress, event.detail)
            return Record(epoch, event.seq, event.name, DERIVED, data)
        return Record(epoch, event.seq, event.kind, self._kind(event.kind), event.status)

    def _kind(self, name: str) -> str:
        if not is_terminal(name):
            return PROGRESS
        return SYNTHETIC if self.channel.synthetic_end else TERMINAL

    def _mirror_status(
        self, epoch: int, seq: int, name: str, data: str, reading: Reading | None, synthetic: bool
    ) -> bool:
        """A status record, as this replica's vocabulary sends it (renamed, reshaped, off)."""
        history = self.channel.history
        out = derive.status_event(history.vocabulary, self.key.run_id, data, reading, name)
        event_id = None
        if isinstance(history, FeedHistory):
            # A feed's end event repeats the last item's cursor (the feed's start if none).
            latest = history.latest
            event_id = latest.id if latest is not None else history.start
            if not synthetic:
                history.page = data
        event = self.channel.mirror(
            epoch,
            seq,
            out.name,
            out.data,
            reading,
            synthetic=synthetic,
            kind=out.kind,
            raw=out.raw,
            hidden=out.hidden,
            event_id=event_id,
        )
        if event is not None and not out.hidden:
            self._published(out.name)
        return event is not None

    def _apply(self, record: Record) -> bool:
        if record.kind == FEED:
            return self._apply_item(record)
        if record.kind == DERIVED:
            parsed = _parse_derived(record.data)
            if parsed is None:
                return False
            data, carried = parsed
            event = self.channel.mirror(
                record.epoch, record.seq, record.name, data, carried, kind=""
            )
            return event is not None
        reading: Reading | None
        if record.synthetic:
            reading = None  # the bridge's own error, not an upstream status
        else:
            reading = self._read(record.data)
            if reading is None and isinstance(self.channel.history, FeedHistory):
                # A feed's last page need not be an object: the record says how it ended.
                reading = Reading(record.name, None, None, "")
            if reading is None:
                return False  # not a status object: a record this cluster never wrote
        return self._mirror_status(
            record.epoch, record.seq, record.name, record.data, reading, record.synthetic
        )

    def _apply_item(self, record: Record) -> bool:
        """A feed's item as the leader committed it: its cursor is its id here too."""
        history = self.channel.history
        parsed = _parse_feed(record.data)
        if parsed is None or not isinstance(history, FeedHistory):
            return False
        cursor, name, state, data, page = parsed
        reading = Reading(sse.PROGRESS, state, None, "")
        event = self.channel.mirror(
            record.epoch, record.seq, name, data, reading, kind=ITEM, event_id=cursor
        )
        if event is None:
            return False
        history.state = state
        if page is not None:
            history.page = page
        return True


def _feed_record(cursor: str, name: str, state: str | None, data: str, page: str | None) -> str:
    """A feed's item as its record holds it: ``[cursor, name, state, data, page]`` (the
    page only on a commit's last item), one line of JSON."""
    return (
        f"[{sse.encode_json(cursor)},{sse.encode_json(name)},{sse.encode_json(state)},"
        f"{data},{'null' if page is None else page}]"
    )


def _parse_feed(text: str) -> tuple[str, str, str | None, str, str | None] | None:
    try:
        cursor, name, state, value, page = json.loads(text)
    except (ValueError, TypeError):
        return None
    if not (isinstance(cursor, str) and cursor and isinstance(name, str) and name):
        return None
    if not (state is None or isinstance(state, str)):
        return None
    page_text = None if page is None else sse.encode_json(page)
    return cursor, name, state, sse.encode_json(value), page_text


def _derived_record(
    data: str, state: str | None, progress: float | None, detail: str | None = None
) -> str:
    """A derived event as its record holds it: ``[state, progress, data, detail]``, so
    that every replica's envelopes carry the change's state, progress and detail."""
    return (
        f"[{sse.encode_json(state)},{sse.encode_json(progress)},{data},{sse.encode_json(detail)}]"
    )


def _parse_derived(text: str) -> tuple[str, Reading] | None:
    try:
        state, progress, value, detail = json.loads(text)
    except (ValueError, TypeError):
        return None
    if not (state is None or isinstance(state, str)):
        return None
    if not (progress is None or isinstance(progress, int | float)):
        return None
    if not (detail is None or isinstance(detail, str)):
        return None
    # Only state, progress and detail are read from it (it leaves the fingerprint alone).
    reading = Reading(sse.PROGRESS, state, progress, "", detail=detail)
    return sse.encode_json(value), reading
