"""A feed run's stream (BRIDGE_FEED_PATH): history replay, catch-up from the upstream, live.

The ids are the upstream's cursors (bridge/events/feed.py). A viewer whose cursor the
bridge's history still covers gets the items after it from there; a viewer from further
back (or one without a cursor once the history no longer holds the run's start) is
caught up from the upstream first, page by page, with its own credentials, and then
joins the live events: nothing is lost however long it was away, as far as the upstream
keeps. If the upstream refuses the cursor as too old (400, 404, 410), the catch-up ends
with an ``error`` event that says so, never a silent gap; any other failure ends the
stream with a ``retry:`` so the viewer comes back and resumes where it was.

Feed viewers take the ASGI path: every item is an event a viewer must get, so none is
ever coalesced, and a viewer that falls behind is dropped by the ticker (after
BRIDGE_SEND_TIMEOUT) and resumes by its cursor.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.errors import BridgeError, UpstreamError
from bridge.events import sse
from bridge.events.channel import Subscription
from bridge.events.feed import CursorKey, FeedHistory, cursor_key, ordered
from bridge.events.history import Event, Facts
from bridge.polling.feed import FeedSource, Item, PageFetch
from bridge.streams.keepalive import Keepalive, StreamLimits
from bridge.streams.viewer import Viewer

#: Upstream answers that mean "this cursor is gone" (or never was).
STALE_CURSOR = frozenset({400, 404, 410})


class CursorExpired(BridgeError):
    """The upstream no longer serves events after a viewer's cursor (JSON catch-up)."""

    status = 410
    code = "cursor_expired"

    def __init__(self, upstream_status: int) -> None:
        super().__init__(
            f"The upstream API no longer serves events after this cursor (HTTP "
            f"{upstream_status}); ask again without `since` to start from the events it has."
        )


async def upstream_events(
    source: FeedSource,
    pages: PageFetch,
    run_id: str,
    cursor: str,
    headers: Mapping[str, str],
    state: str | None,
) -> list[Event]:
    """The items after ``cursor``, from the upstream (at most BRIDGE_FEED_MAX_PAGES
    pages), as events with their cursors as ids: a JSON client's catch-up step, which
    it continues with ``since`` = the last id. Raises CursorExpired for a stale cursor."""
    found: list[Event] = []
    facts = Facts(state=state)
    key = cursor_key(cursor)
    for _ in range(source.max_pages):
        try:
            fresh, page = await _page_after(source, pages, run_id, cursor, key, headers)
        except UpstreamError as error:
            status = _stale(error)
            if status is not None:
                raise CursorExpired(status) from None
            raise
        if not fresh:
            break
        found.extend(Event.build(0, item.cursor, item.event, item.data, facts) for item in fresh)
        cursor, key = fresh[-1].cursor, fresh[-1].key
        if not source.more(page):
            break
    return found


async def _page_after(
    source: FeedSource,
    pages: PageFetch,
    run_id: str,
    cursor: str,
    key: CursorKey,
    headers: Mapping[str, str],
) -> tuple[list[Item], Any]:
    """The items of the upstream's page after ``cursor`` (whose key is ``key``), and the
    page as parsed. Raises UpstreamError."""
    page = await pages(source.url(run_id, cursor), headers, None)
    return _newer(source.read(page.value).items, cursor, key), page.value


def _stale(error: UpstreamError) -> int | None:
    """The upstream's status when it refused the cursor as too old (or never known)."""
    status = error.upstream_status
    return status if status is not None and status in STALE_CURSOR else None


def stale_cursor_error(status: int) -> bytes:
    """The ``error`` event that ends a catch-up the upstream refused."""
    data = sse.encode_json(
        {
            "status": "cursor_expired",
            "errorMessage": (
                f"The upstream API no longer serves events after this cursor (HTTP {status}); "
                "events after it cannot be replayed. Reconnect without Last-Event-ID to "
                "start from the events the upstream still has."
            ),
        }
    )
    return sse.frame(sse.ERROR, data)


@dataclass(frozen=True, slots=True)
class FeedReach:
    """How a feed's items are asked of the upstream for one viewer: the feed's filters,
    the page request, and the headers that viewer's own requests go with."""

    source: FeedSource
    pages: PageFetch
    headers: Callable[[Viewer], Mapping[str, str]]


class FeedFramer:
    """The single-run framer of feed mode (see bridge/streams/opening.py)."""

    def __init__(self, reach: FeedReach) -> None:
        self._source = reach.source
        self._pages = reach.pages
        self._headers = reach.headers

    def __call__(
        self, subscriptions: list[Subscription], viewer: Viewer, limits: StreamLimits
    ) -> AsyncGenerator[bytes, None] | None:
        (subscription,) = subscriptions
        history = subscription.channel.history
        assert isinstance(history, FeedHistory)
        resume = viewer.resume_from or self._source.start
        held = history.holds(resume)
        if (
            held is not None
            and history.terminal
            and not any(event.sent for event in history.after(held))
        ):
            # The viewer already has every event the run will send (the end events may be
            # off): a 204 stops its EventSource reconnecting.
            return None
        headers = dict(self._headers(viewer))
        return self._frames(subscription, history, resume, limits, headers)

    async def _frames(
        self,
        subscription: Subscription,
        history: FeedHistory,
        position: str,
        limits: StreamLimits,
        headers: dict[str, str],
    ) -> AsyncGenerator[bytes, None]:
        """From the upstream while the history does not hold ``position`` (the last
        cursor the viewer has), from the history after it, then live; and back to the
        upstream should the viewer fall further behind than the history keeps."""
        keepalive = Keepalive(limits)
        loop = asyncio.get_running_loop()
        yield sse.retry(limits.retry_ms)
        after = cursor_key(position)
        #: Opaque cursors sent from the upstream: the history may hold them too.
        sent: set[str] = set()
        while True:
            seq = history.holds(position)
            if seq is None:
                refused: list[int] = []
                async for frame in self._upstream(
                    subscription, history, position, headers, refused
                ):
                    if isinstance(frame, bytes):
                        yield frame
                    else:
                        position, after = frame, cursor_key(frame)
                        if not ordered(after):
                            sent.add(frame)
                if refused:
                    return
                if subscription.closed:
                    if subscription.farewell:
                        yield subscription.farewell
                    return
                # The upstream had nothing newer: what is held, past the cursor.
                seq = history.holds(position) or 0
            pending = _keyed(history, history.after(seq))
            while not history.behind(seq):
                for event, key in pending:
                    seq = event.seq
                    if not event.terminal and (
                        event.id in sent or (ordered(key) and ordered(after) and key <= after)
                    ):
                        continue  # the viewer has it (caught up from the upstream meanwhile)
                    yield event.frame
                    if event.terminal:
                        return
                    position = event.id
                if subscription.closed:
                    if subscription.farewell:
                        yield subscription.farewell
                    return
                due = keepalive.due(loop.time())
                if due is not None:
                    yield keepalive.frame(due)
                    if due == "timeout":
                        return
                    pending = []
                    continue
                pending = _keyed(history, history.after(seq))
                if pending:
                    continue
                await keepalive.sleep(subscription.wake)
                pending = _keyed(history, history.after(seq))

    async def _upstream(
        self,
        subscription: Subscription,
        history: FeedHistory,
        cursor: str,
        headers: dict[str, str],
        refused: list[int],
    ) -> AsyncGenerator[bytes | str, None]:
        """Frames of the items after ``cursor`` until the history holds where they reach;
        each page's last cursor is yielded too (a ``str``), for the live part. A stale
        cursor's status goes into ``refused`` (the stream then ends)."""
        source = self._source
        run_id = subscription.channel.key.run_id
        key = cursor_key(cursor)
        while history.holds(cursor) is None and not subscription.closed:
            try:
                fresh, _ = await _page_after(source, self._pages, run_id, cursor, key, headers)
            except UpstreamError as error:
                status = _stale(error)
                if status is not None:
                    refused.append(status)
                    yield stale_cursor_error(status)
                else:
                    # Come back later and resume from the last item sent.
                    yield sse.retry(3000)
                    subscription.close()
                return
            if not fresh:
                return  # the upstream has nothing newer than this cursor
            for item in fresh:
                yield sse.frame(item.event, item.data, item.cursor)
                if not ordered(item.key):
                    yield item.cursor  # remembered: the history may hold it as well
            cursor, key = fresh[-1].cursor, fresh[-1].key
            yield cursor


def _newer(items: Sequence[Item], cursor: str, key: CursorKey) -> list[Item]:
    """The items of a page after ``cursor`` (whose key is ``key``): by number where both
    are numbers, else every item but the cursor's own."""
    return [
        item
        for item in items
        if (item.key > key if ordered(item.key) and ordered(key) else item.cursor != cursor)
    ]


def _keyed(history: FeedHistory, events: list[Event]) -> list[tuple[Event, CursorKey]]:
    """Each event with its cursor key, taken while the history still holds them."""
    return [(event, history.key_of(event)) for event in events]
