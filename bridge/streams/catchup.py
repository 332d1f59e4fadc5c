"""For clients that cannot hold a stream: JSON catch-up and long-poll on the same pollers.

    GET /v1/runs/{run_id}/events?since=<id>&wait=<s>   the events after ``since`` (seed 002)
    GET /v1/runs/{run_id}/result?wait=<s>               the final status, once the run ended

Both open like a stream (bridge/streams/opening.py): a stream slot for as long as they wait, the
same admission, shared poller, history and credentials, the same errors. Ids are the SSE
stream's, so a client may switch between the two. A wait ends early on news, on the
run's end, or on drain (with what it has).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import dataclass
from urllib.parse import quote

from bridge.errors import InvalidRequest
from bridge.events import sse
from bridge.events.channel import Subscription
from bridge.events.feed import FeedHistory, current_status
from bridge.events.history import Event
from bridge.streams.feed import upstream_events
from bridge.streams.opening import Opener, take_slot
from bridge.streams.viewer import Viewer


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: str
    headers: dict[str, str]


def parse_wait(value: str | None, longest: float) -> float:
    """``wait`` in seconds, 0 to BRIDGE_LONGPOLL_MAX; 400 for anything else."""
    if value is None or value == "":
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= longest:  # also refuses nan
        raise InvalidRequest(f"wait must be a number of seconds from 0 to {longest:g}.")
    return seconds


def header_safe(text: str | None) -> str:
    """``text`` as a header value ("" when none): as it is when printable ASCII, else
    percent-encoded (an upstream string may hold anything; a header may not)."""
    if not text:
        return ""
    return text if text.isascii() and text.isprintable() else quote(text, safe="")


def run_headers(latest: Event | None) -> dict[str, str]:
    """The headers of an answer about a run's latest status (its body is the upstream's
    status as it is, or events of it): what the bridge read of it goes beside, header-safe
    ("" when none): X-Run-State, the state as the status filters read it, and
    X-Run-Detail, the detail BRIDGE_DETAIL_EXPR read. None: a feed with no item yet."""
    return {
        "Cache-Control": "no-cache",
        "X-Run-State": header_safe(latest.state if latest is not None else None),
        "X-Run-Detail": header_safe(latest.detail if latest is not None else None),
    }


async def _wait(subscription: Subscription, ready: bool, seconds: float) -> None:
    """Until ``ready`` would be true (news on the channel), ``seconds`` pass, or drain."""
    if ready or seconds <= 0 or subscription.closed:
        return
    subscription.wake.clear()
    with suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await subscription.wake.wait()


def _events_body(
    run_id: str,
    events: list[Event],
    cursor: str | None,
    latest: Event | None,
    state: str | None = None,
) -> str:
    # Each event's data is already one line of JSON: embedded, never parsed again.
    # ``state``: a feed's, from its last page (it may have no item, so no latest event).
    if state is None and latest is not None:
        state = latest.state
    progress = latest.progress if latest is not None else None
    detail = latest.detail if latest is not None else None
    items = ",".join(
        f'{{"id":{sse.encode_json(e.id)},"event":{sse.encode_json(e.name)},"data":{e.data}}}'
        for e in events
    )
    return (
        f'{{"run_id":{sse.encode_json(run_id)},"events":[{items}],'
        f'"cursor":{sse.encode_json(cursor)},"state":{sse.encode_json(state)},'
        f'"progress":{sse.encode_json(progress)},'
        f'"detail":{sse.encode_json(detail)},'
        f'"terminal":{sse.encode_json(latest is not None and latest.terminal)}}}'
    )


@asynccontextmanager
async def _opened(opener: Opener, viewer: Viewer, run_id: str) -> AsyncIterator[Subscription]:
    """A stream slot, the run's lease and a subscription, as a stream takes them, held
    for as long as the answer waits."""
    async with AsyncExitStack() as stack:
        take_slot(opener.limiter, viewer.client, stack)
        (channel,) = await opener.lease_all(stack, [run_id], viewer)
        subscription = opener.hub.join(channel)
        stack.callback(channel.discard, subscription)
        yield subscription


async def events(
    opener: Opener, viewer: Viewer, run_id: str, since: str | None, wait: float
) -> Answer:
    """The events after ``since`` (or the current status), waiting up to ``wait`` for one."""
    async with _opened(opener, viewer, run_id) as subscription:
        history = subscription.channel.history
        held = history.holds(since)
        reach = opener.feed
        if isinstance(history, FeedHistory) and reach is not None:
            # A feed: items the history no longer holds come from the upstream.
            since = since or reach.source.start
            held = history.holds(since)
            if held is None:
                found = await upstream_events(
                    reach.source,
                    reach.pages,
                    run_id,
                    since,
                    reach.headers(viewer),
                    history.state,
                )
                reached = found[-1].id if found else since
                body = _events_body(run_id, found, reached, history.latest, history.state)
                return Answer(200, body, {"Cache-Control": "no-cache"})
        if held is None:
            # No since: the current status (with progress off, the history from its
            # start); one this history no longer holds: the current status.
            found = history.resume(since)
        else:
            found = history.after(held)
            await _wait(subscription, bool(found) or history.terminal, wait)
            found = history.after(held)
        # A lease comes with a first status (a feed's may have no item yet).
        latest = history.status
        cursor = found[-1].id if found else since
        # A feed's state is its last page's, whether or not it had an item.
        state = history.state if isinstance(history, FeedHistory) else None
        # A built-in event turned off moves the cursor on but is not listed.
        body = _events_body(run_id, [e for e in found if e.sent], cursor, latest, state)
        return Answer(200, body, run_headers(latest))


async def result(opener: Opener, viewer: Viewer, run_id: str, wait: float) -> Answer:
    """200 with the final status once the run ended (waiting up to ``wait``), else 202."""
    async with _opened(opener, viewer, run_id) as subscription:
        history = subscription.channel.history
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while not history.terminal and not subscription.closed:
            left = deadline - loop.time()
            if left <= 0:
                break
            await _wait(subscription, False, left)
        latest = history.status
        status = current_status(history) or "null"
        headers = run_headers(latest)
        # The outcome in the stream's words (complete / error / progress), so a script
        # needs no state lists of its own.
        headers["X-Run-Event"] = (
            latest.kind if latest is not None and latest.terminal else sse.PROGRESS
        )
        if history.terminal and latest is not None:
            status = latest.status
        return Answer(200 if history.terminal else 202, status, headers)
