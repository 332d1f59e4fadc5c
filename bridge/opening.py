"""The one way a stream opens, for one run (/v1/runs/{id}/stream) or several (/v1/streams).

    stream slot (limits) -> admission and lease per run (shared pollers) -> subscription
    -> the framer places the viewer in each history (resume) and makes the frames

Everything that can refuse the viewer happens before the body's first yield, so the
route can still answer with an error status and JSON body. A framer that finds the
viewer already has every run's final event returns None: the body yields nothing and
the route answers 204 (which stops EventSource).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from contextlib import AsyncExitStack, aclosing

from bridge.channel import Channel, Subscription
from bridge.errors import BridgeError
from bridge.keepalive import StreamLimits
from bridge.services import Services
from bridge.viewer import Viewer

#: Places the viewer in its runs' histories and makes its frames; None: nothing to send.
Framer = Callable[[list[Subscription], Viewer, StreamLimits], AsyncGenerator[bytes, None] | None]


class RunRefused(Exception):
    """One of the runs was refused: the whole request is answered with that error."""

    def __init__(self, run_id: str, error: BridgeError) -> None:
        super().__init__(run_id)
        self.run_id = run_id
        self.error = error

    def body(self) -> dict[str, str]:
        return {**self.error.body(), "run_id": self.run_id}


async def lease_all(
    stack: AsyncExitStack, services: Services, runs: list[str], viewer: Viewer
) -> list[Channel]:
    """One lease per run, taken concurrently, each released when ``stack`` closes.

    Each run is admitted (forward-auth mode) and leased from the poller shared by viewers
    with the same upstream headers. Raises RunRefused for the first run (in request
    order) that was refused, after every other attempt has finished (and its lease, if
    any, been put on ``stack``).
    """
    channels: dict[str, Channel] = {}
    refused: dict[str, BridgeError] = {}

    async def one(run_id: str) -> None:
        try:
            headers = await services.upstream_headers(run_id, dict(viewer.credentials))
            lease = services.pollers.lease(run_id, headers)
            channels[run_id] = await stack.enter_async_context(lease)
        except BridgeError as error:  # UpstreamError, or a refusal of the auth service
            refused[run_id] = error

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


async def stream_body(
    services: Services, viewer: Viewer, runs: list[str], framer: Framer
) -> AsyncGenerator[bytes, None]:
    """A stream slot, leases and subscriptions first (refusals raise), then frames."""
    async with AsyncExitStack() as stack:
        # One connection, one slot of the stream limits, however many runs it carries.
        stack.enter_context(services.limiter.hold(viewer.client))
        channels = await lease_all(stack, services, runs, viewer)
        wake = asyncio.Event()  # one wake-up for every run of this viewer
        subscriptions = [
            await stack.enter_async_context(services.hub.subscribe(channel, wake=wake))
            for channel in channels
        ]
        frames = framer(subscriptions, viewer, services.limits())
        if frames is None:
            return
        services.metrics.open_streams.inc()
        try:
            async with aclosing(frames):
                async for chunk in frames:
                    yield chunk
        finally:
            services.metrics.open_streams.dec()
