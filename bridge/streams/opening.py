"""The one way a stream opens, for one run (/v1/runs/{id}/stream) or several (/v1/streams).

    stream slot (limits) -> admission and lease per run (shared pollers) -> subscription
    -> the framer places the viewer in each history (resume) and makes the frames

Everything that can refuse the viewer happens in ``Opener.open``, before anything is
sent, so the route can still answer with an error status and JSON body. A framer that
finds the viewer already has every run's final event returns None: ``Opener.open``
returns None and the route answers 204 (which stops EventSource).

What an open stream holds (its slot, leases, subscriptions) is a list of plain calls to
give each back (``Holding``), not an exit stack of suspended context managers: a stream
is held for minutes by each of thousands of viewers, so what it keeps alive is counted
per viewer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from prometheus_client import Gauge

from bridge.errors import BridgeError
from bridge.events.channel import Channel, Subscription
from bridge.events.hub import Hub
from bridge.polling.registry import PollerRegistry
from bridge.streams.feed import FeedReach
from bridge.streams.keepalive import StreamLimits
from bridge.streams.limits import StreamLimiter
from bridge.streams.stream import Frames
from bridge.streams.viewer import Viewer

#: Places the viewer in its runs' histories and makes its frames; None: nothing to send.
Framer = Callable[[list[Subscription], Viewer, StreamLimits], Frames | None]


class RunRefused(Exception):
    """One of the runs was refused: the whole request is answered with that error."""

    def __init__(self, run_id: str, error: BridgeError) -> None:
        super().__init__(run_id)
        self.run_id = run_id
        self.error = error

    def body(self) -> dict[str, str]:
        return {**self.error.body(), "run_id": self.run_id}


class Holder(Protocol):
    """Where what was taken is given back later (``Holding``, or an ``AsyncExitStack``)."""

    def callback(self, callback: Callable[..., object], /, *args: Any) -> Any: ...


class Holding:
    """What an open stream holds, as the calls that give it back, last taken first."""

    __slots__ = ("_undo",)

    def __init__(self) -> None:
        self._undo: list[Callable[[], object]] = []

    def callback(self, callback: Callable[..., object], /, *args: Any) -> None:
        self._undo.append(partial(callback, *args) if args else callback)

    def release(self) -> None:
        while self._undo:
            self._undo.pop()()


@dataclass(eq=False, slots=True)
class Opened:
    """An open stream: its first bytes (sent by the route), the rest, what it holds."""

    first: bytes
    frames: Frames
    holding: Holding

    async def close(self) -> None:
        """End the frames and give back the slot, leases and subscriptions (once)."""
        try:
            await self.frames.aclose()
        finally:
            self.holding.release()


def take_slot(limiter: StreamLimiter, client: str, holder: Holder) -> None:
    """One slot of the stream limits for ``client`` (or the refusal), given back through
    ``holder``: whatever the connection carries, it counts once."""
    limiter.take(client)
    holder.callback(limiter.give, client)


async def start(frames: Frames, holding: Holding, open_streams: Gauge) -> Opened:
    """The stream's first frame (a framer's opening: its retry line), and the stream
    counted open until ``holding`` is released."""
    first = await anext(frames)
    if not isinstance(first, bytes):
        raise TypeError("a stream must open with bytes")
    open_streams.inc()
    holding.callback(open_streams.dec)
    return Opened(first, frames, holding)


#: Admits a viewer to a run (forward-auth mode; raises a BridgeError if refused) and says
#: the headers its poller polls with: ``(run_id, the viewer's credentials) -> headers``.
Admit = Callable[[str, dict[str, str]], Awaitable[dict[str, str]]]
#: Leases a credential scope's list poller: its release, None when it is not to be had.
Follow = Callable[[Mapping[str, str]], Awaitable[Callable[[], None] | None]]


class Opener:
    """What opening a stream takes, and nothing more: the stream caps, admission, the
    shared pollers, the hub, the stream limits of the moment and the open-streams gauge."""

    __slots__ = ("admit", "feed", "follow", "hub", "limiter", "limits", "open_streams", "pollers")

    def __init__(
        self,
        *,
        limiter: StreamLimiter,
        admit: Admit,
        pollers: PollerRegistry,
        hub: Hub,
        limits: Callable[[], StreamLimits],
        open_streams: Gauge,
        follow: Follow | None = None,
        feed: FeedReach | None = None,
    ) -> None:
        self.limiter = limiter
        self.admit = admit
        self.pollers = pollers
        self.hub = hub
        #: Each stream's own (its ``retry`` is jittered per stream).
        self.limits = limits
        self.open_streams = open_streams
        #: BRIDGE_UPSTREAM_LIST_PATH: leases a credential scope's list poller (its
        #: release; None: the list is not to be had with these headers).
        self.follow = follow
        #: BRIDGE_FEED_PATH: how a feed's items beyond the history are asked upstream.
        self.feed = feed

    async def lease_all(self, holder: Holder, runs: list[str], viewer: Viewer) -> list[Channel]:
        """One lease per run, taken concurrently, each given back through ``holder``.

        Each run is admitted (forward-auth mode) and leased from the poller shared by
        viewers with the same upstream headers. Raises RunRefused for the first run (in
        request order) that was refused, after every other attempt has finished (and its
        lease, if any, been put on ``holder``).
        """
        channels: dict[str, Channel] = {}
        refused: dict[str, BridgeError] = {}

        async def one(run_id: str) -> None:
            try:
                headers = await self.admit(run_id, dict(viewer.credentials))
                if self.follow is not None:
                    # With a list of runs, a listed run's status comes from the list: its
                    # stream keeps the scope's list poller going and costs no request.
                    let_go = await self.follow(headers)
                    if let_go is not None:
                        holder.callback(let_go)
                channel, release = await self.pollers.lease(run_id, headers)
            except BridgeError as error:  # UpstreamError, or a refusal of the auth service
                refused[run_id] = error
                return
            holder.callback(release)
            channels[run_id] = channel

        if len(runs) == 1:
            await one(runs[0])  # no task group: the single-run connect path stays cheap
        else:
            async with asyncio.TaskGroup() as group:
                for run_id in runs:
                    group.create_task(one(run_id), name=f"lease:{run_id}")
        for run_id in runs:
            if run_id in refused:
                raise RunRefused(run_id, refused[run_id])
        return [channels[run_id] for run_id in runs]

    async def open(self, viewer: Viewer, runs: list[str], framer: Framer) -> Opened | None:
        """A stream slot, leases and subscriptions (refusals raise), then the first frame.

        None: the viewer already has every run's final event. The caller closes the result.
        """
        holding = Holding()
        take_slot(self.limiter, viewer.client, holding)
        try:
            channels = await self.lease_all(holding, runs, viewer)
            wake = asyncio.Event()  # one wake-up for every run of this viewer
            subscriptions = []
            for channel in channels:
                subscription = self.hub.join(channel, wake)
                holding.callback(channel.discard, subscription)
                subscriptions.append(subscription)
            frames = framer(subscriptions, viewer, self.limits())
            if frames is None:
                holding.release()
                return None
            return await start(frames, holding, self.open_streams)
        except BaseException:
            holding.release()
            raise
