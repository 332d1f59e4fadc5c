"""Polling a run whose upstream is already an event feed (BRIDGE_FEED_PATH).

Some run APIs keep an append-only list of a run's events behind a cursor (seed 002's
``GET /v1/agent-runs/{runId}/events?since={sequence}``). Polled as a snapshot, every page
looks different and nothing says what is new; polled as a feed, each item becomes one
event whose SSE id is the item's cursor (bridge/events/feed.py), and the next request asks
after the last one.

``FeedPoller`` is a ``Poller`` (bridge/polling/poller.py) whose one upstream request per
interval is a feed page (plus up to BRIDGE_FEED_MAX_PAGES - 1 pages at once while
BRIDGE_FEED_MORE says so), so the cadence, backoff, give-up, linger, pokes, hints and the
single-flight first answer are the poll loop's, unchanged. The run's state is read from
each page by BRIDGE_STATE_EXPR; a page that carries none makes the poller ask the run's
own path (BRIDGE_UPSTREAM_RUN_PATH) too, before the page from then on, so that a final
state it reads is never ahead of the items the page after it holds. At a final state,
once no more pages are announced, the end event (``complete``/``error``, data: the last
page) closes the history.

Bad items never stop the poller: an item without a usable cursor is skipped (logged once
per run), an item whose cursor does not increase is a duplicate and dropped (logged once
per run).
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import jq

from bridge import run_id as run_ids
from bridge.errors import UpstreamError, UpstreamRefused
from bridge.events import sse
from bridge.events.feed import CursorKey, FeedHistory, cursor_key, ordered
from bridge.polling.poller import Poller, WarnOnce
from bridge.polling.status import Reading
from bridge.polling.upstream import Fetched, Page, Validators
from bridge.settings import Settings

log = logging.getLogger("bridge.polling.feed")

#: GET of one page: (url, headers, validators) -> Page.
PageFetch = Callable[[str, Mapping[str, str], Validators | None], Awaitable[Page]]

#: Longest cursor and event name taken from an item; longer ones are not what they say.
MAX_CURSOR = 256
MAX_EVENT_NAME = 128
_BREAKS = frozenset("\r\n\x00")
#: Opaque cursors remembered per run to tell a repeated item (numbers need no memory).
RECENT_OPAQUE = 4096


@dataclass(frozen=True, slots=True)
class Item:
    """One feed item, read: its cursor (the SSE id), its place, its event and data."""

    cursor: str
    key: CursorKey
    event: str
    data: str


@dataclass(slots=True)
class PageRead:
    """What one page holds: its items (in order), and why some were not readable."""

    items: list[Item]
    #: Items without a usable cursor, and items whose data filter failed.
    uncursored: int = 0
    unreadable: int = 0
    #: BRIDGE_FEED_ITEMS failed or gave no list of items.
    problem: str | None = None


def _first(program: Any, value: Any) -> Any:
    """The first output of a compiled jq program (None: no output); ValueError if it fails."""
    try:
        return program.input_value(value).first()
    except StopIteration:
        return None


def _cursor_text(value: Any) -> str | None:
    """An item's cursor as the SSE id it becomes (None: not usable as one)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        text = json.dumps(value)
    elif isinstance(value, str):
        text = value
    else:
        return None
    if not text or len(text) > MAX_CURSOR or _BREAKS.intersection(text):
        return None
    return text


class FeedSource:
    """The BRIDGE_FEED_* filters, compiled once, and how a feed URL is made."""

    def __init__(self, settings: Settings) -> None:
        assert settings.feed_path is not None
        self.path = settings.feed_path
        self.base = settings.upstream_base()
        self.start = settings.feed_start
        self.max_pages = settings.feed_max_pages
        self._items = jq.compile(settings.feed_items)
        self._cursor = jq.compile(settings.feed_cursor)
        self._event = jq.compile(settings.feed_event)
        # "." (the default) is the item itself: no filter run per item.
        self._data = None if settings.feed_data.strip() == "." else jq.compile(settings.feed_data)
        self._more = jq.compile(settings.feed_more) if settings.feed_more else None

    def url(self, run_id: str, cursor: str) -> str:
        """The feed page of ``run_id`` after ``cursor``, both percent-encoded."""
        path = run_ids.upstream_path(self.path, run_id)
        return self.base + path.replace("{cursor}", quote(cursor, safe=""))

    @property
    def announces_more(self) -> bool:
        """BRIDGE_FEED_MORE is set: a page says whether another follows."""
        return self._more is not None

    def more(self, page: Any) -> bool:
        """BRIDGE_FEED_MORE: ask the next page at once (a failing filter: no)."""
        if self._more is None:
            return False
        try:
            return bool(_first(self._more, page))
        except ValueError:
            return False

    def read(self, page: Any) -> PageRead:
        """The page's items, oldest first, each read by the item filters."""
        try:
            raw = self._items.input_value(page).all()
        except ValueError:
            return PageRead([], problem="BRIDGE_FEED_ITEMS failed on this page")
        read = PageRead([])
        for value in raw:
            try:
                cursor = _cursor_text(_first(self._cursor, value))
            except ValueError:
                cursor = None
            if cursor is None:
                read.uncursored += 1
                continue
            try:
                name = _first(self._event, value)
                data = value if self._data is None else _first(self._data, value)
            except ValueError:
                read.unreadable += 1
                continue
            if (
                not isinstance(name, str)
                or not name
                or len(name) > MAX_EVENT_NAME
                or _BREAKS.intersection(name)
            ):
                name = sse.MESSAGE
            read.items.append(Item(cursor, cursor_key(cursor), name, sse.encode_json(data)))
        return read


class FeedPoller(Poller):
    """A poller whose request is the run's feed page; see the module docstring."""

    def __init__(self, *args: Any, source: FeedSource, pages: PageFetch, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._source = source
        self._pages = pages
        history = self.history
        latest = history.latest
        #: The cursor the next page is asked after (a revived history goes on from its own).
        self.cursor = latest.id if latest is not None else source.start
        self._key = history.last_key if latest is not None else cursor_key(source.start)
        #: The validators of the last page and the URL they are for.
        self._held: tuple[str, Validators] | None = None
        #: Pages carry no state: the run's own path is asked too, before the page.
        self._run_path_first = False
        #: The upstream refused the run's own path: not asked any more.
        self._run_path_refused = False
        #: The state as the latest full answer read it.
        self._state: Reading | None = None
        self._once = WarnOnce(log)
        #: Opaque cursors published lately, oldest first (duplicates are told by identity).
        self._recent: deque[str] = deque()
        self._recent_set: set[str] = set()

    @property
    def history(self) -> FeedHistory:
        history = self.channel.history
        assert isinstance(history, FeedHistory)
        return history

    # --- the poll loop's seams -----------------------------------------------------

    async def _request(self) -> Fetched:
        """The feed's pages of this tick, published as they come: the loop sees a
        "not modified" answer (the items are the events) with the last page's hint."""
        return Fetched(None, Validators(), await self._tick())

    def _settled(self) -> bool:
        # A feed may have no item yet: its first answer is current all the same.
        terminal = self.channel.history.terminal
        if (terminal or self.ledger.fresh) and not self.first.done():
            self.first.set_result(None)
        return terminal

    def _interval(self) -> float:
        state = self._state.state if self._state is not None else None
        return self._cadence.for_state(state)

    # --- one tick --------------------------------------------------------------------

    async def _tick(self) -> float | None:
        source = self._source
        history = self.history
        run_id = self.key.run_id
        latest = history.latest
        if latest is not None and latest.id != self.cursor:
            # Another replica led meanwhile (cluster mode): go on after what it wrote.
            self.cursor, self._key = latest.id, history.last_key
        if self._run_path_first:
            self._state = await self._run_state()
        wait: float | None = None
        more = False
        drained = True  # a 304: the page is as it was, with nothing new
        asked = 0
        while asked < source.max_pages and not history.terminal:
            asked += 1
            url = source.url(run_id, self.cursor)
            held = self._held[1] if self._held is not None and self._held[0] == url else None
            page = await self._pages(url, self._headers, held)
            if page.wait is not None:
                wait = page.wait
            if page.value is None:  # 304: the page is as it was
                more = False
                break
            kept = page.validators
            self._held = (url, kept) if kept.etag or kept.last_modified else None
            data = sse.encode_json(page.value)
            history.page = data
            reading = self._reader.read(page.value, data)
            again = False
            if reading.state is not None:
                self._state = reading
            elif not self._run_path_first:
                # The page says nothing of the run's state: its own path does, asked
                # before the page from the next tick on; this once it was asked after,
                # so a final state it gives waits for one more page.
                self._run_path_first = True
                self._state = await self._run_state()
                again = self._state is not None and self._state.event != sse.PROGRESS
            fresh = await self._publish(source.read(page.value))
            if fresh is None:
                return wait  # another replica leads now (cluster mode)
            # Without BRIDGE_FEED_MORE a page that brought items may not have been the
            # last: only an empty one says the feed has no more.
            drained = fresh == 0 or source.announces_more
            more = source.more(page.value) or again
            if not more:
                break
        state = self._state
        if state is not None:
            history.state = state.state
        if state is not None and state.event != sse.PROGRESS and not more and drained:
            await self._end(state)
        return wait

    async def _run_state(self) -> Reading | None:
        """The run's state from BRIDGE_UPSTREAM_RUN_PATH (one request), else the last one
        known: the feed is the run's source, its own path only says when it ended, so a
        failure there never stops the items."""
        if self._run_path_refused:
            return self._state
        run = self.key.run_id
        try:
            fetched = await self._fetch_status(run, self._headers, None)
        except UpstreamRefused as error:
            # Not asked again: a path the upstream refuses with the feed's own credentials
            # is a configuration that does not fit this API.
            self._run_path_refused = True
            self._once(
                "run-path",
                "run %s: its feed pages carry no state (BRIDGE_STATE_EXPR) and "
                "BRIDGE_UPSTREAM_RUN_PATH answered %s, so the run counts as still going",
                run,
                error.code,
            )
            return self._state
        except UpstreamError as error:
            self._once(
                "run-path-failing",
                "run %s: its state could not be read at BRIDGE_UPSTREAM_RUN_PATH (%s); "
                "asked again at the next poll",
                run,
                error.code,
            )
            return self._state
        assert fetched.status is not None  # no validators sent: no 304
        return self._reader.read(fetched.status)

    async def _publish(self, read: PageRead) -> int | None:
        """The page's new items as events; how many there were (None: not written, this
        replica no longer leads)."""
        history = self.history
        run = self.key.run_id
        if read.problem is not None:
            self._once("items", "run %s: %s (check BRIDGE_FEED_ITEMS)", run, read.problem)
        if read.uncursored:
            self._once(
                "cursor",
                "run %s: a feed item has no usable cursor (BRIDGE_FEED_CURSOR gave no number "
                "or string); such items are skipped",
                run,
            )
        if read.unreadable:
            self._once(
                "data",
                "run %s: BRIDGE_FEED_EVENT or BRIDGE_FEED_DATA failed on a feed item; such "
                "items are skipped",
                run,
            )
        if history.terminal:
            return 0
        fresh: list[Item] = []
        taken: set[str] = set()
        cursor, key = self.cursor, self._key
        for item in read.items:
            if self._seen(item, cursor, key) or item.cursor in taken:
                self._once(
                    "duplicate",
                    "run %s: the feed repeated or went back to a cursor it had passed; such "
                    "items are dropped as duplicates",
                    run,
                )
                continue
            fresh.append(item)
            taken.add(item.cursor)
            cursor, key = item.cursor, item.key
        if not fresh:
            return 0
        appended = [(item.cursor, item.event, item.data) for item in fresh]
        if not await self.ledger.append(appended, self._state):
            return None
        self.cursor, self._key = cursor, key
        for item in fresh:
            if not ordered(item.key):
                self._recent.append(item.cursor)
                self._recent_set.add(item.cursor)
                if len(self._recent) > RECENT_OPAQUE:
                    self._recent_set.discard(self._recent.popleft())
        if self._metrics is not None:
            self._metrics.events_published.labels("feed_item").inc(len(fresh))
        return len(fresh)

    def _seen(self, item: Item, cursor: str, key: CursorKey) -> bool:
        """A duplicate: a number not above the last one (``cursor``), or an opaque cursor
        seen lately."""
        if ordered(item.key) and ordered(key):
            return item.key <= key
        return item.cursor in self._recent_set or item.cursor == cursor

    async def _end(self, state: Reading) -> None:
        """The end event at a final state, in the run's vocabulary: renamed, its ``data``
        filter run on the last page (the page itself without one), or kept unsent."""
        history = self.history
        if history.terminal:
            return
        page = history.page or sse.encode_json({"status": state.state})
        await self.ledger.conclude(page, state, self.cursor)
