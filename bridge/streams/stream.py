"""One run's event stream: history replay, live changes, pings, timeout and shutdown.

The opening (slot, lease, subscription) is bridge/streams/opening.py's, shared with /v1/streams.
Here: where a viewer starts (``run_frames``) and the frames it gets. Two ways out:

- the ASGI path: this generator yields every frame; everything a viewer waits for (a
  change on its channel, the next ping, its deadline, shutdown) sets the one ``wake``
  event of its subscription, so a viewer costs one suspended coroutine, never a task;
- the fast path: once the opening is sent and the viewer caught up, its frames are
  written to its socket by the channel and the process's ticker (bridge/streams/direct.py); the
  generator then yields its ``DirectSink`` once, and whoever sends the frames (the ASGI
  stream front, bridge/web/front.py) waits for the sink's end or the viewer leaving, in its
  own coroutine: no task, no wake-up, no frame of this generator per event.

Both follow one ``Keepalive`` (the ping schedule and the deadline), so a viewer gets the
same pings and the same ``timeout`` on either path.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import TypeAlias

from bridge.events import sse
from bridge.events.channel import Subscription
from bridge.events.delta import DeltaView, view_after
from bridge.events.history import Event
from bridge.streams.direct import DirectSink
from bridge.streams.keepalive import Keepalive, StreamLimits
from bridge.streams.ticker import Ticker
from bridge.streams.viewer import Viewer

#: A stream's output: frames to send, or (once, on the fast path) the sink to wait for.
Frames: TypeAlias = AsyncGenerator[bytes | DirectSink, None]

#: The ``wake`` of every subscription on the fast path: nothing waits on it any more (the
#: channel writes to the sink), so one shared event stands in for each viewer's own
#: (an event and its waiter deque are most of a kilobyte, per viewer, for minutes).
_UNWAITED = asyncio.Event()


def run_frames(
    subscriptions: list[Subscription], viewer: Viewer, limits: StreamLimits, ticker: Ticker
) -> Frames | None:
    """The single-run framer (see bridge/streams/opening.py): resume, then ``events``."""
    (subscription,) = subscriptions
    history = subscription.channel.history
    first = history.resume(viewer.resume_from)
    if history.terminal and not any(event.sent for event in first):
        # The viewer already has the run's final event, or all that is left to send
        # (a final status with the end events turned off): 204, EventSource stops.
        return None
    held = history.holds(viewer.resume_from)
    cursor = held or 0
    if viewer.delta:
        # Its frames are its own (patches), not the channel's shared chunk: ASGI path.
        return events(subscription, first, cursor, limits, None, view_after(history, held))
    direct = (viewer.transport, ticker) if viewer.transport is not None else None
    return events(subscription, first, cursor, limits, direct)


async def events(
    subscription: Subscription,
    first: list[Event],
    cursor: int,
    limits: StreamLimits,
    direct: tuple[asyncio.WriteTransport, Ticker] | None = None,
    delta: DeltaView | None = None,
) -> Frames:
    """Frames for one viewer; ends after a terminal event, a timeout or ``close()``.

    ``first`` is what the viewer gets before anything live (replay or current status),
    ``cursor`` the seq the viewer already has when ``first`` is empty. With ``direct``
    (the viewer's transport and the process's ticker), the live part is written straight
    to the socket once the opening is sent: the sink is yielded, and the stream is over
    once its ``ended`` resolves (or the consumer finishes it: the viewer left).
    """
    history = subscription.channel.history
    keepalive = Keepalive(limits)
    loop = asyncio.get_running_loop()

    yield sse.retry(limits.retry_ms)
    pending = first
    while True:
        for event in pending:
            if event.sent:
                yield event.frame if delta is None else delta.frame(event)
            cursor = event.seq
            if event.terminal:
                return
        if subscription.closed:
            if subscription.farewell:
                yield subscription.farewell
            return
        if direct is not None:
            transport, ticker = direct
            sink = DirectSink(transport, cursor, keepalive)
            if history.vocabulary.lossless:
                sink.lossless = sse.retry(limits.retry_ms)
            # What was published while the opening went out; from here on the channel writes.
            for event in history.after(cursor, limits.viewer_buffer):
                sink.deliver(event)
            if sink.ended.done():
                return
            subscription.sink = sink
            subscription.wake = _UNWAITED
            # Hack H5 (docs/hacks.md): this frame stays suspended for the stream's life.
            first = pending = []
            ticker.add(sink, lambda: history.latest)
            try:
                yield sink
            finally:
                ticker.discard(sink)
                subscription.sink = None
            return
        due = keepalive.due(loop.time())
        if due is not None:
            yield keepalive.frame(due)
            if due == "timeout":
                return
            pending = []
            continue
        pending = history.after(cursor, limits.viewer_buffer)
        if pending:
            continue
        await keepalive.sleep(subscription.wake)
        pending = history.after(cursor, limits.viewer_buffer)
