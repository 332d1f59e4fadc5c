"""Every run at one endpoint: one list request per interval feeds each listed run.

With BRIDGE_UPSTREAM_LIST_PATH the bridge follows every run the upstream lists (seed
001's ``GET /api/events`` watches a whole system). One ``Fleet`` per credential scope
asks the list once an interval (following ``Link: <...>; rel="next"`` up to
BRIDGE_LIST_MAX_PAGES pages), however many runs and viewers:

- each item (BRIDGE_LIST_ITEMS) is that run's status; its id (BRIDGE_LIST_ID) names the
  run. The item goes straight into the run's channel through a ``ListedPoller``: a
  poller of the registry that asks nothing while the run is listed, so a single-run
  stream of a listed run (same credentials) leases it and costs no request of its own;
- a run that leaves the list is asked once at its own path (BRIDGE_UPSTREAM_RUN_PATH),
  so its terminal event is never missed; after that its poller is an ordinary one, kept
  by its own viewers if it has any;
- every event of every listed run's channel (from the list, or from that last own poll)
  is appended to the fleet's ``FleetLog``, which ``GET /v1/events`` streams
  (bridge/streams/fleet.py) with ids of its own, so one ``Last-Event-ID`` resumes all.

In cluster mode (a shared ``LedgerBackend``) the list has a ledger of its own, keyed by
the scope's digest and the run id ``*`` (never a run's): the replica holding its lease
polls the list, feeds each listed run's channel (committing each run under that run's
own lease) and commits the listed run ids; every other replica follows: it asks nothing,
keeps a ``ListedPoller`` per listed run that copies the run's history from Redis (and
never takes the run's lease while listed), so single-run streams and ``/v1/events`` work
on every replica. A run that leaves the list is asked once at its own path by the list's
poller; a following replica keeps its copy until that end arrives (a few intervals at
most), and a replica that takes the list over asks the runs that were leaving then.

Bad input never stops the fleet: an item without a usable id is skipped, duplicate ids
keep the first item, runs past BRIDGE_LIST_MAX_RUNS are left out (each logged once per
fleet; the cut is the ``bridge_list_runs_cut`` gauge).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import jq
from prometheus_client import CollectorRegistry, Counter, Gauge

from bridge import run_id as run_ids
from bridge.credentials import credentials_digest
from bridge.errors import ClusterUnavailable, InvalidRunId, UpstreamError
from bridge.events import sse
from bridge.events.channel import Channel, ChannelKey, Subscription
from bridge.events.history import Event, RunHistory, enveloped, parse_id
from bridge.polling.ledger import Ledger, LedgerBackend, LedgerOwner, Observation
from bridge.polling.poller import Poller, WarnOnce
from bridge.polling.registry import PollerRegistry
from bridge.polling.resilience import Backoff
from bridge.polling.status import Reading, StatusReader
from bridge.polling.upstream import Page, Validators
from bridge.settings import Settings
from bridge.tasks import cancel_and_wait

log = logging.getLogger("bridge.polling.fleet")

PageFetch = Callable[[str, Mapping[str, str], Validators | None], Awaitable[Page]]

_NONE = object()

#: Entries the fleet log keeps for resume (events of all listed runs, newest last), and
#: the bytes they may hold at most.
FLEET_LOG_SIZE = 20_000
FLEET_LOG_BYTES = 64 * 1024 * 1024

#: The run id of a list's own ledger (cluster mode): not a valid run id, so never a run's.
LIST_RUN = "*"
#: Steps a following replica keeps a delisted run's copy, waiting for its end (the list's
#: poller asks the run's own path at once).
DEPART_STEPS = 3


# --- the list ------------------------------------------------------------------------


class ListSource:
    """BRIDGE_UPSTREAM_LIST_PATH and its filters, compiled once."""

    def __init__(self, settings: Settings) -> None:
        assert settings.upstream_list_path is not None
        self.url = settings.upstream_base() + settings.upstream_list_path
        self.max_pages = settings.list_max_pages
        self.max_runs = settings.list_max_runs
        items, run_id = settings.list_items, settings.list_id
        #: The contract's defaults, `.[]` and `.id`, are read without jq: the same
        #: results (an array's elements or an object's values; an object's `id`, else
        #: null), without jq's parse of the whole page, most of a tick (bench/studies/fleet.py).
        self._defaults = items.strip() == ".[]" and run_id.strip() == ".id"
        # One jq run per page, never one per item (bench/studies/fleet.py measures a list tick).
        # It reads the page's text and gives where each item is in the page and its id
        # (null where there is none), so the items themselves are the page's own Python
        # objects, not copies made by jq: jq's parse is most of a tick's cost already.
        self._where = jq.compile(f"[path({items})], [({items}) | [try ({run_id})] | .[0]]")
        # Items that are not parts of the page (built by the filter): their values.
        self._values = jq.compile(f"[({items}) | [., ([try ({run_id})] | .[0])]]")

    def read(self, page: Any, text: str | None = None) -> list[tuple[Any, Any]] | None:
        """(item, id) of each item of the page, in order; None: the filter failed.
        ``text``: the page as the upstream sent it (the same JSON as ``page``)."""
        if self._defaults:
            return _defaults(page)
        if text is not None:
            try:
                paths, ids = self._where.input_text(text).all()
            except (ValueError, StopIteration):
                pass  # not paths into the page (e.g. `{id, status}`): take the values
            else:
                try:
                    return [(_at(page, path), ids[i]) for i, path in enumerate(paths)]
                except (KeyError, IndexError, TypeError):
                    pass
        try:
            found = self._values.input_value(page).first()
        except (ValueError, StopIteration):
            return None
        return [(pair[0], pair[1]) for pair in found] if isinstance(found, list) else None


def _defaults(page: Any) -> list[tuple[Any, Any]] | None:
    """``.[]`` with ``.id`` of each (null where jq's ``try .id`` gives nothing)."""
    if isinstance(page, list):
        found = page
    elif isinstance(page, dict):
        found = list(page.values())
    else:
        return None  # jq: "Cannot iterate over" a string, a number, null
    return [(item, item.get("id") if isinstance(item, dict) else None) for item in found]


def _at(value: Any, path: list[Any]) -> Any:
    """The part of ``value`` at a path jq's ``path()`` gave (keys and indexes)."""
    for step in path:
        value = value[step]
    return value


def run_id_of(value: Any) -> str | None:
    """A listed item's id as a run id (None: not one the bridge accepts)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str):
        return None
    try:
        return run_ids.validate(value)
    except InvalidRunId:
        return None


# --- what /v1/events streams ---------------------------------------------------------


@dataclass(eq=False, slots=True)
class Entry:
    """One event of one listed run, in the fleet's order."""

    seq: int
    id: str
    run_id: str
    event: Event
    _frames: dict[bool, bytes] = field(default_factory=dict)

    def frame(self, envelope: bool) -> bytes:
        """The SSE frame, made once per form and shared by every viewer of that form."""
        made = self._frames.get(envelope)
        if made is None:
            made = event_frame(self.run_id, self.event, self.id, envelope)
            self._frames[envelope] = made
        return made


def event_frame(run_id: str, event: Event, frame_id: str, envelope: bool) -> bytes:
    """A run's event as /v1/streams sends it (``envelope``), or as the run's own stream."""
    if not envelope:
        return sse.frame(event.name, event.data, frame_id)
    return sse.frame(event.name, enveloped(run_id, event, event.data), frame_id)


class FleetLog:
    """The events of every listed run in one order, bounded in entries and in bytes;
    ids ``<epoch>-<seq>``. An entry costs its event (shared with the run's history while
    that holds it) and the two frames it may make: three times the event's bytes."""

    def __init__(self, size: int = FLEET_LOG_SIZE, max_bytes: int = FLEET_LOG_BYTES) -> None:
        self.epoch = time.time_ns() // 1_000_000
        self._entries: deque[Entry] = deque()
        self._size = size
        self._max_bytes = max_bytes
        self.nbytes = 0
        self.last_seq = 0

    def append(self, run_id: str, event: Event) -> Entry:
        self.last_seq += 1
        entry = Entry(self.last_seq, f"{self.epoch}-{self.last_seq}", run_id, event)
        self._entries.append(entry)
        self.nbytes += 3 * event.nbytes
        # Oldest first; a viewer behind them gets every run's current status again.
        while len(self._entries) > 1 and (
            len(self._entries) > self._size or self.nbytes > self._max_bytes
        ):
            self.nbytes -= 3 * self._entries.popleft().event.nbytes
        return entry

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def current_id(self) -> str:
        return f"{self.epoch}-{self.last_seq}"

    def holds(self, event_id: str | None) -> int | None:
        """The seq of ``event_id`` when everything after it is still here."""
        parsed = parse_id(event_id)
        if parsed is None:
            return None
        epoch, seq = parsed
        oldest = self._entries[0].seq if self._entries else self.last_seq + 1
        if epoch != self.epoch or not oldest - 1 <= seq <= self.last_seq:
            return None
        return seq

    def after(self, seq: int) -> list[Entry]:
        if seq >= self.last_seq or not self._entries:
            return []
        start = max(0, seq - self._entries[0].seq + 1)
        return list(itertools.islice(self._entries, start, None))


@dataclass(eq=False, slots=True)
class FleetViewer:
    """One /v1/events viewer as its fleet knows it."""

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    farewell: bytes = b""

    def close(self, farewell: bytes = b"") -> None:
        if not self.closed:
            self.closed, self.farewell = True, farewell
            self.wake.set()


class _LogSink:
    """Appends each event of one listed run's channel to the fleet log (a ``Sink``)."""

    __slots__ = ("fleet", "run_id")

    def __init__(self, fleet: Fleet, run_id: str) -> None:
        self.fleet = fleet
        self.run_id = run_id

    def deliver(self, event: Event) -> None:
        self.fleet.logged(self.run_id, event)

    def finish(self, why: str) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass


# --- a listed run's poller -------------------------------------------------------------


class ListedPoller(Poller):
    """A run's poller that the list feeds: no request of its own while listed."""

    def __init__(self, *args: Any, fleet: Fleet, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fleet: Fleet | None = fleet
        self.listed = True
        #: Delisted, and still holding the fleet's lease until its own poll.
        self._handing_over = False

    async def fed(self, observation: Observation) -> None:
        """The run's status as the list has it now."""
        if not self.ledger.leads:
            # Cluster mode: the run's lease is taken before the commit that needs it.
            await self.ledger.sync(active=True)
        await self.ledger.record(observation)
        if self._settled():
            self._wakeup.nudge()  # ended: the loop stops at its next step

    def delisted(self) -> None:
        """The run left the list: ask its own path once, at once, then poll as usual.

        The fleet's lease is given back after that poll, not before: a run nobody else
        watches would otherwise stop before asking."""
        self.listed = False
        self.fleet = None
        self._handing_over = True
        self.ledger.may_lead = True
        self._wakeup.poke()

    def let_go(self) -> None:
        """The fleet gives its lease back without an own poll (another replica asks)."""
        self.listed = False
        self.fleet = None
        self.ledger.may_lead = True
        self.release()

    async def _poll(self, *, poked: bool = False) -> float | None:
        try:
            return await super()._poll(poked=poked)
        finally:
            if self._handing_over:
                self._handing_over = False
                self.release()

    def poke(self) -> bool:
        # A poke of a listed run polls the list, where its status comes from.
        if self.listed and self.fleet is not None:
            return self.fleet.poke()
        return super().poke()

    async def _synced_step(self, now: float) -> float | None:
        if not self.listed:
            return await super()._synced_step(now)
        # Fed, delisted or left by a viewer, it is nudged; otherwise it syncs once an
        # interval like any poller (its ledger's bookkeeping), asking nothing.
        return now + self._cadence.interval


# --- one credential scope's list poller -----------------------------------------------


class ListOwner(LedgerOwner):
    """What the list's ledger (cluster mode) tells the list poller: step now (the leader
    committed what it listed, or the lease is free)."""

    __slots__ = ("event", "nudged")

    def __init__(self, event: asyncio.Event) -> None:
        self.event = event
        self.nudged = False

    def nudge(self) -> None:
        self.nudged = True
        self.event.set()

    def news(self) -> None:
        self.nudge()

    def poke(self) -> bool:
        return False  # pokes name runs; the list is poked through its runs


def listed_status(run_ids: list[str]) -> str:
    """What the list's poller commits to the list's ledger: the runs it lists."""
    return sse.encode_json({"runs": run_ids})


def listed_runs(status: str) -> list[str] | None:
    """The run ids of a committed list status (None: not one)."""
    try:
        runs = json.loads(status).get("runs")
    except (ValueError, AttributeError):
        return None
    if not isinstance(runs, list):
        return None
    return [r for r in (run_id_of(v) for v in runs) if r is not None]


class Fleet:
    """Polls the list for one credential scope; see the module docstring."""

    def __init__(
        self,
        digest: str,
        headers: Mapping[str, str],
        *,
        source: ListSource,
        registry: PollerRegistry,
        reader: StatusReader,
        pages: PageFetch,
        interval: float,
        linger: float,
        hint_max: float,
        cut: Gauge,
        requests: Counter,
        ledger: Ledger | None = None,
        wake: asyncio.Event | None = None,
        owner: ListOwner | None = None,
    ) -> None:
        self.digest = digest
        #: Cluster mode: the list's own ledger (its lease says which replica polls it).
        self._ledger = ledger
        self._owner = owner
        #: This replica polled the list at its last step (cluster mode).
        self._led = False
        #: Following replica: delisted runs kept until their end arrives, with the
        #: steps they have waited.
        self._departing: dict[str, tuple[ListedPoller, int]] = {}
        self._headers = dict(headers)
        self._source = source
        self._registry = registry
        self._reader = reader
        self._pages = pages
        self._interval = interval
        self._linger = linger
        self._hint_max = hint_max
        self._cut = cut
        self._requests = requests
        self.log = FleetLog()
        #: Runs of the last list, in its order, each with its channel.
        self.listed: dict[str, Channel] = {}
        #: The pollers of listed runs, each leased by this fleet while listed.
        self._members: dict[str, ListedPoller] = {}
        #: Listed runs that ended while listed, with their channels: nothing more can
        #: change them, and the fleet holds them while listed (where Redis keeps ended
        #: runs the hub does not, and its cache of them is bounded anyway).
        self._ended: dict[str, Channel] = {}
        #: Log sinks on listed (and just delisted) runs' channels.
        self._sinks: dict[str, Subscription] = {}
        self._leaving: set[str] = set()
        #: The last item of each listed run, to skip unchanged items cheaply.
        self._last: dict[str, Any] = {}
        #: Each page URL's validators and what it listed (for a 304).
        self._pages_held: dict[str, tuple[Validators, list[tuple[Any, Any]]]] = {}
        self.viewers: set[FleetViewer] = set()
        self.leases = 0
        self._idle_since: float | None = None
        self.first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wake = wake or asyncio.Event()
        self._poked = False
        self._notify_soon: asyncio.Handle | None = None
        self._once = WarnOnce(log)
        self._backoff = Backoff(interval, max(interval, hint_max))
        #: List requests made (tests, bench).
        self.polls = 0
        #: The bridge stops: members are let go, not handed over to their own polling.
        self.shutting_down = False

    # --- viewers -------------------------------------------------------------------

    def acquire(self) -> None:
        self.leases += 1
        self._idle_since = None

    def release(self) -> None:
        self.leases -= 1
        if self.leases == 0:
            self._idle_since = time.monotonic()
            self._wake.set()

    def poke(self) -> bool:
        if self._poked:
            return False
        self._poked = True
        self._wake.set()
        return True

    def logged(self, run_id: str, event: Event) -> None:
        if not event.sent:
            return  # a built-in event turned off (BRIDGE_EVENTS_FILE): nothing to send
        self.log.append(run_id, event)
        if self._notify_soon is None:
            # One wake-up per viewer per turn of the loop, however many runs changed.
            self._notify_soon = asyncio.get_running_loop().call_soon(self._notify)

    def _notify(self) -> None:
        self._notify_soon = None
        for viewer in self.viewers:
            viewer.wake.set()

    def current(self) -> Iterator[tuple[str, Event]]:
        """What a viewer without a place gets of each listed run, in the list's order: as
        on the run's own stream, its current status (with ``builtin.progress`` off, its
        history from the start)."""
        for run_id, channel in self.listed.items():
            for event in channel.history.resume(None):
                if event.sent:
                    yield run_id, event

    def close_viewers(self, farewell: Callable[[], bytes]) -> None:
        for viewer in list(self.viewers):
            viewer.close(farewell())

    # --- the loop ------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                started = time.monotonic()
                wait = await self._tick()
                if wait is None:
                    return
                if not await self._sleep(started + wait):
                    return
        finally:
            if not self.first.done():
                self.first.set_exception(UpstreamError("The bridge stopped polling the list."))
            if not self.first.cancelled():
                self.first.exception()
            if self._notify_soon is not None:
                self._notify_soon.cancel()
                self._notify_soon = None
            self._leave_all()
            if self._ledger is not None:
                await self._ledger.close(None)

    async def _sleep(self, until: float) -> bool:
        """Until the next tick, a poke, or the end of the linger (False: stop)."""
        while True:
            now = time.monotonic()
            if self.leases == 0 and self._idle_since is not None:
                if now >= self._idle_since + self._linger:
                    return False
                until_idle = self._idle_since + self._linger
            else:
                until_idle = None
            if self._poked:
                self._poked = False
                return True
            if self._owner is not None and self._owner.nudged:
                self._owner.nudged = False
                return True
            if now >= until:
                return True
            wake_at = until if until_idle is None else min(until, until_idle)
            self._wake.clear()
            try:
                async with asyncio.timeout(wake_at - now):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _tick(self) -> float | None:
        """One list request (and its next pages); the seconds to the next (None: stop)."""
        if self._ledger is not None:
            try:
                wait = await self._sync_list(self._ledger)
            except ClusterUnavailable as error:
                self._led = False
                if not self.first.done():
                    self.first.set_exception(error)
                    return None
                return self._interval
            if wait is not None:
                return wait
        try:
            items, hint = await self._fetch_list()
        except UpstreamError as error:
            if not self.first.done():
                self.first.set_exception(error)
                return None
            self._once(f"failing:{error.code}", "the list of runs cannot be read: %s", error.code)
            return self._backoff.next_delay(error.retry_after)
        self._backoff.reset()
        try:
            await self._take(items)
            if self._ledger is not None:
                await self._share(self._ledger)
        except ClusterUnavailable:
            pass  # Redis is away: the statuses not committed are taken at the next list
        if not self.first.done():
            self.first.set_result(None)
        every = self._interval
        if hint is not None:
            every = max(every, min(hint, self._hint_max))
        return every

    async def _fetch_list(self) -> tuple[list[tuple[Any, Any]], float | None]:
        url: str | None = self._source.url
        found: list[tuple[Any, Any]] = []
        hint: float | None = None
        pages = 0
        # Only this list's pages are remembered: next links may differ every time.
        held_now: dict[str, tuple[Validators, list[tuple[Any, Any]]]] = {}
        while url is not None and pages < self._source.max_pages:
            pages += 1
            held = self._pages_held.get(url)
            self.polls += 1
            self._requests.inc()
            page = await self._pages(url, self._headers, held[0] if held else None)
            if page.wait is not None:
                hint = page.wait
            if page.value is None and held is not None:
                found.extend(held[1])  # 304: as it was
                held_now[url] = held
            else:
                read = self._source.read(page.value, page.text)
                if read is None:
                    self._once("items", "BRIDGE_LIST_ITEMS failed on the list, or gave no items")
                    read = []
                found.extend(read)
                kept = page.validators
                if kept.etag or kept.last_modified:
                    held_now[url] = (kept, read)
            if len(found) > self._source.max_runs:
                break
            url = page.next_url
        self._pages_held = held_now
        if url is not None and pages >= self._source.max_pages:
            self._once(
                "pages",
                "the list has more than BRIDGE_LIST_MAX_PAGES (%d) pages; the rest is not followed",
                self._source.max_pages,
            )
        return found, hint

    async def _take(self, items: list[tuple[Any, Any]]) -> None:
        """Feed each listed run; ask runs that left the list once at their own path."""
        listed: dict[str, Any] = {}
        for item, raw_id in items:
            run_id = run_id_of(raw_id)
            if run_id is None:
                self._once(
                    "id",
                    "a listed item has no usable run id (BRIDGE_LIST_ID gave none, or one "
                    "the bridge does not accept); such items are skipped",
                )
                continue
            if run_id in listed:
                self._once(
                    "duplicate",
                    "the list names a run twice; the first item is taken, later ones skipped",
                )
                continue
            listed[run_id] = item
        cut = max(0, len(listed) - self._source.max_runs)
        self._cut.set(cut)
        if cut:
            self._once(
                "cut",
                "the list names more than BRIDGE_LIST_MAX_RUNS (%d) runs; the rest are not "
                "followed (bridge_list_runs_cut)",
                self._source.max_runs,
            )
            listed = dict(itertools.islice(listed.items(), self._source.max_runs))
        for run_id in list(self._leaving):
            if run_id not in listed:
                self._unsink(run_id)
        self._leaving.clear()
        for run_id in list(self._members):
            if run_id not in listed:
                self._delist(run_id)
        self._ended = {r: c for r, c in self._ended.items() if r in listed}
        channels: dict[str, Channel] = {}
        for run_id, item in listed.items():
            channel = await self._feed(run_id, item)
            if channel is not None:
                channels[run_id] = channel
        self.listed = channels

    async def _feed(self, run_id: str, item: Any) -> Channel | None:
        member = self._members.get(run_id)
        if member is not None and self._last.get(run_id, _NONE) == item:
            return member.channel  # unchanged since the last list (compared in C)
        data = sse.encode_json(item)
        ended = self._ended.get(run_id)
        if ended is not None:
            return ended
        if member is None:
            poller = self._registry.start_with(
                run_id, self._headers, partial(ListedPoller, fleet=self)
            )
            if isinstance(poller, ListedPoller):
                poller.listed, poller.fleet = True, self
                if poller._handing_over:  # listed again before its own poll: keep the lease
                    poller._handing_over = False
                    poller.release()
            poller.acquire()
            member = poller if isinstance(poller, ListedPoller) else None
            if member is not None:
                self._members[run_id] = member
            self._sink(run_id, poller.channel)
            if member is None:
                # A run polled on its own already (a viewer came first): it keeps polling.
                poller.release()
                await poller.ledger.record(Observation(data, self._reader.read(item, data)))
                return poller.channel
        self._last[run_id] = item
        await member.fed(Observation(data, self._reader.read(item, data)))
        if member.channel.history.terminal:
            # Ended while listed: its poller stops; nothing more can change it.
            self._ended[run_id] = member.channel
            self._members.pop(run_id, None)
            self._last.pop(run_id, None)
            channel = member.channel
            member.release()
            self._unsink(run_id)
            return channel
        return member.channel

    # --- cluster mode -----------------------------------------------------------------

    def _active(self) -> bool:
        """Viewers here (of /v1/events or of listed runs), or the linger after them."""
        if self.leases > 0:
            return True
        return self._idle_since is not None and time.monotonic() < self._idle_since + self._linger

    async def _sync_list(self, ledger: Ledger) -> float | None:
        """Take or renew the list's lease: None when this replica polls the list now,
        else the seconds to its next step (a follower follows what the leader listed)."""
        await ledger.sync(active=self._active())
        if not ledger.leads:
            if self._led:
                self._lead(False)
            self._follow(ledger)
            return self._interval
        if self._led:
            return None
        self._lead(True)
        since = ledger.since_poll
        if self.first.done():
            # A new leader keeps the cadence: the rest of the interval since the last
            # list anyone asked (a whole one when that is unknown).
            rest = self._interval if since is None else self._interval - since
            if rest > 0:
                return rest
        return None

    def _lead(self, leads: bool) -> None:
        self._led = leads
        for member in self._members.values():
            member.ledger.may_lead = leads
        if not leads:
            return
        # Runs that were leaving the list as this replica took it over: their own path
        # is asked now, here, so that no end is missed.
        for run_id, (member, _) in list(self._departing.items()):
            del self._departing[run_id]
            if member.channel.history.terminal:
                member.let_go()
                self._unsink(run_id)
            else:
                member.delisted()
                self._leaving.add(run_id)

    async def _share(self, ledger: Ledger) -> None:
        """Commit the runs just listed, for the replicas that follow (also "polled now",
        the cadence a successor keeps)."""
        data = listed_status(list(self.listed))
        # Not a run's status: never read by the status filters, never an end.
        await ledger.record(Observation(data, Reading(sse.PROGRESS, None, None, data)))

    def _follow(self, ledger: Ledger) -> None:
        """A following replica: a copying poller for each run the leader listed."""
        status = ledger.channel.history.status
        runs = listed_runs(status.status) if status is not None else None
        if runs is None:
            return  # nothing listed yet: the leader's first list nudges this step
        wanted = set(runs)
        # Steps count only while the list's poller is alive: a dead one's delisted runs
        # wait for the replica that takes the list over (it asks their own paths).
        since = ledger.since_poll
        step = 1 if since is not None and since < 2 * self._interval else 0
        for run_id, (member, waited) in list(self._departing.items()):
            if run_id in wanted:
                del self._departing[run_id]
                self._members[run_id] = member
            elif member.channel.history.terminal or waited >= DEPART_STEPS:
                del self._departing[run_id]
                member.let_go()
                self._unsink(run_id)
            else:
                self._departing[run_id] = (member, waited + step)
        for run_id in list(self._members):
            if run_id not in wanted:
                self._departing[run_id] = (self._members.pop(run_id), 0)
        channels: dict[str, Channel] = {}
        for run_id in runs:
            held = self._members.get(run_id)
            if held is None:
                poller = self._registry.start_with(
                    run_id, self._headers, partial(ListedPoller, fleet=self)
                )
                self._sink(run_id, poller.channel)
                channels[run_id] = poller.channel
                if not isinstance(poller, ListedPoller):
                    continue  # polled on its own here already: its viewers keep it
                if poller._handing_over:
                    poller._handing_over = False  # listed again: it keeps the lease it has
                else:
                    poller.acquire()
                poller.listed, poller.fleet = True, self
                poller.ledger.may_lead = False
                self._members[run_id] = poller
            else:
                channels[run_id] = held.channel
        self.listed = channels
        if not self.first.done():
            self.first.set_result(None)

    def _delist(self, run_id: str) -> None:
        member = self._members.pop(run_id)
        self._last.pop(run_id, None)
        member.delisted()  # it gives the fleet's lease back after its own poll
        # Its own last poll's events still reach the log until the next list.
        self._leaving.add(run_id)

    def _sink(self, run_id: str, channel: Channel) -> None:
        if run_id in self._sinks:
            self._leaving.discard(run_id)
            return
        subscription = Subscription(channel)
        subscription.sink = _LogSink(self, run_id)
        channel.add(subscription)
        self._sinks[run_id] = subscription

    def _unsink(self, run_id: str) -> None:
        subscription = self._sinks.pop(run_id, None)
        if subscription is not None:
            subscription.channel.discard(subscription)

    def _leave_all(self) -> None:
        for run_id in list(self._sinks):
            self._unsink(run_id)
        for member in self._members.values():
            if self.shutting_down:
                member.release()
            elif self._ledger is not None and not self._led:
                member.let_go()  # another replica polls the list and asks what leaves it
            else:
                # Its single-run viewers stay: it asks its own path from now on.
                member.delisted()
        self._members.clear()
        for member, _ in self._departing.values():
            member.let_go()
        self._departing.clear()


class Fleets:
    """One ``Fleet`` per credential scope, started by its first viewer; owns their tasks."""

    def __init__(
        self,
        settings: Settings,
        registry: PollerRegistry,
        reader: StatusReader,
        pages: PageFetch,
        metrics: CollectorRegistry,
        backend: LedgerBackend | None = None,
    ) -> None:
        self.source = ListSource(settings)
        #: Where the list's own ledger comes from when replicas share (cluster mode).
        self._backend = backend if backend is not None and backend.shared else None
        self._settings = settings
        self._registry = registry
        self._reader = reader
        self._pages = pages
        self._fleets: dict[str, Fleet] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._cut = Gauge(
            "bridge_list_runs_cut",
            "Listed runs left out at the last list request (over BRIDGE_LIST_MAX_RUNS)",
            registry=metrics,
        )
        self._requests = Counter(
            "bridge_list_requests", "Requests for the list of runs", registry=metrics
        )

    async def take(self, headers: Mapping[str, str], digest_secret: bytes) -> Fleet:
        """The scope's fleet with its first list, leased (``release()`` gives it back).

        Raises the UpstreamError the first list request met (401, 403, 404, 502, ...).
        """
        digest = credentials_digest(digest_secret, headers)
        fleet = self._fleets.get(digest) or self._start(digest, headers)
        fleet.acquire()
        try:
            await asyncio.shield(fleet.first)
        except BaseException:
            fleet.release()
            raise
        return fleet

    async def follow(self, headers: Mapping[str, str], digest_secret: bytes) -> Fleet | None:
        """``take`` for a run's own stream: None (nothing held) when the list cannot be
        had with these headers, so that the run is polled at its own path instead."""
        try:
            return await self.take(headers, digest_secret)
        except UpstreamError:
            return None

    def _start(self, digest: str, headers: Mapping[str, str]) -> Fleet:
        s = self._settings
        wake = asyncio.Event()
        owner = ListOwner(wake)
        ledger = None
        if self._backend is not None:
            key = ChannelKey(LIST_RUN, digest)
            channel = Channel(key, RunHistory(2, s.history_max_bytes))
            ledger = self._backend.open(key, channel, owner)  # ClusterUnavailable: 503
        fleet = Fleet(
            digest,
            headers,
            source=self.source,
            registry=self._registry,
            reader=self._reader,
            pages=self._pages,
            interval=s.poll_interval,
            linger=s.linger,
            hint_max=s.poll_interval_max,
            cut=self._cut,
            requests=self._requests,
            ledger=ledger,
            wake=wake,
            owner=owner if ledger is not None else None,
        )
        self._fleets[digest] = fleet
        task = asyncio.create_task(self._run(fleet), name="fleet")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fleet

    async def _run(self, fleet: Fleet) -> None:
        try:
            await fleet.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the list poller failed")
        finally:
            if self._fleets.get(fleet.digest) is fleet:
                del self._fleets[fleet.digest]

    def fleets(self) -> list[Fleet]:
        return list(self._fleets.values())

    def drain(self, farewell: Callable[[], bytes]) -> None:
        for fleet in self.fleets():
            fleet.close_viewers(farewell)

    async def close(self) -> None:
        for fleet in self._fleets.values():
            fleet.shutting_down = True
        for task in list(self._tasks):
            await cancel_and_wait(task)
