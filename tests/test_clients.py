"""A second, independent SSE client against the real served bridge: httpx with httpx-sse.

The other tests read streams with tests/support.py (aiohttp and the bridge's own parser,
bridge/tools/eventstream.py): a framing mistake shared by the bridge and that parser would pass
there. httpx-sse is someone else's parser on someone else's HTTP stack. Here it follows a
run, resumes with Last-Event-ID across a bridge restart, and reads /v1/streams.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse

from bridge.demo.legacy_api import LegacyApi
from bridge.tasks import cancel_and_wait
from tests.support import RunningBridge, loopback_socket, running_bridge, sse, wait_for

#: Seconds between reconnects: the bridge asks for BRIDGE_RETRY_MS (checked below), but
#: the tests need not wait that long.
RECONNECT = 0.05


@dataclass
class Follower:
    """EventSource's loop in miniature, on httpx-sse: connect, read, and when the stream
    ends without a final event (or the bridge cannot be reached), wait and reconnect
    with Last-Event-ID, until ``done`` says the last event came."""

    url: str
    done: Callable[[ServerSentEvent], bool]
    events: asyncio.Queue[ServerSentEvent] = field(default_factory=asyncio.Queue)
    #: The Last-Event-ID sent on each connection (None: none sent).
    sent: list[str | None] = field(default_factory=list)
    last_id: str | None = None
    retry: int | None = None
    statuses: list[int] = field(default_factory=list)
    #: Cleared, the client stays away (a reconnect waits until it is set again).
    may_connect: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.may_connect.set()

    async def run(self) -> None:
        # read=None: a stream is quiet between events for as long as the run is.
        timeout = httpx.Timeout(5.0, read=None)
        async with httpx.AsyncClient(timeout=timeout) as client:
            while True:
                await self.may_connect.wait()
                if await self.connect(client):
                    return
                await asyncio.sleep(RECONNECT)

    async def connect(self, client: httpx.AsyncClient) -> bool:
        """One connection; True when the last event came (or the bridge said 204)."""
        headers = {} if self.last_id is None else {"Last-Event-ID": self.last_id}
        self.sent.append(self.last_id)
        try:
            async with aconnect_sse(client, "GET", self.url, headers=headers) as source:
                self.statuses.append(source.response.status_code)
                if source.response.status_code == 204:
                    return True
                source.response.raise_for_status()
                async for event in source.aiter_sse():
                    if event.retry is not None:
                        self.retry = event.retry
                    if event.event == "message" and not event.data:
                        continue  # httpx-sse hands the `retry:` line over as an empty event
                    if event.id:
                        self.last_id = event.id
                    await self.events.put(event)
                    if self.done(event):
                        return True
        except httpx.TransportError:
            pass  # refused, reset or cut: the bridge is away; try again
        return False

    async def next(self, *names: str, timeout: float = 5.0) -> ServerSentEvent:
        """The next event named one of ``names``, skipping pings."""
        async with asyncio.timeout(timeout):
            while True:
                event = await self.events.get()
                if event.event in names:
                    return event
                assert event.event == "ping", f"expected {names}, got {event}"


@asynccontextmanager
async def following(
    url: str, done: Callable[[ServerSentEvent], bool] | None = None
) -> AsyncIterator[Follower]:
    follower = Follower(url, done or (lambda e: e.event in ("complete", "error")))
    task = asyncio.create_task(follower.run())
    try:
        yield follower
    finally:
        await cancel_and_wait(task)


def data(event: ServerSentEvent) -> Any:
    return json.loads(event.data)


async def test_follows_a_run_and_resumes_after_a_bridge_restart(legacy: LegacyApi) -> None:
    run = legacy.scripted("r1", nodes=("a", "b", "c", "d"))
    sock = loopback_socket()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1/runs/r1/stream"
    try:
        async with following(url) as f:
            async with running_bridge(legacy.url, sock=sock):
                first = await f.next("progress")
                assert data(first) == run.statuses[0]
                run.advance()
                second = await f.next("progress")
                assert data(second) == run.statuses[1]
                assert first.id and second.id and first.id != second.id
                # The stream's `retry:` (BRIDGE_RETRY_MS=1000 plus up to 20 % jitter).
                assert f.retry is not None and 1000 <= f.retry <= 1200
            # The bridge stopped: the stream ended without a final event, so the client
            # reconnects (the listening socket queues it until the next bridge accepts).
            run.advance(2)
            async with running_bridge(legacy.url, sock=sock):
                # The new bridge has no history of the old one's ids: the current status,
                # never a stale one, nothing replayed; then live again.
                resumed = await f.next("progress")
                assert data(resumed) == run.statuses[3]
                assert f.sent[0] is None
                assert f.sent[-1] == second.id  # it did ask to resume after its last event
                run.advance(len(run.statuses))
                final = await f.next("complete")
                assert data(final) == run.statuses[-1]
                await wait_for(lambda: f.statuses and len(f.sent) == len(f.statuses))
        assert set(f.statuses) == {200}
    finally:
        sock.close()


async def test_resumes_from_history_with_no_event_twice(legacy: LegacyApi) -> None:
    run = legacy.scripted("r2", nodes=("a", "b", "c"))
    async with running_bridge(legacy.url) as b:
        url = f"{b.url}/v1/runs/r2/stream"
        # A second viewer (our own client) keeps the poller and so the history going and
        # tells when the bridge has seen each change.
        async with sse(url) as keeper, following(url) as f:
            await keeper.next_named("progress")
            assert data(await f.next("progress")) == run.statuses[0]
            # The bridge ends every open stream (as a drain would); the run moves on twice
            # before the client is back, so that what it missed can only come from history.
            f.may_connect.clear()
            for channel in b.bridge.hub.live_channels():
                channel.close_all()
            assert await keeper.rest() == []
            async with sse(url) as keeper2:
                await keeper2.next_named("progress")
                for _ in range(2):
                    run.advance()
                    await keeper2.next_named("progress")
                f.may_connect.set()
                # Exactly the missed events, in order, then live.
                assert data(await f.next("progress")) == run.statuses[1]
                assert data(await f.next("progress")) == run.statuses[2]
                run.advance(len(run.statuses))
                # The jump to the end is one change: one complete, no progress before it.
                assert data(await f.next("complete")) == run.statuses[-1]
        assert len(f.sent) == 2 and f.sent[1] is not None


async def test_reads_several_runs_on_one_stream_and_resumes_them_all(legacy: LegacyApi) -> None:
    runs = {
        "ma": legacy.scripted("ma", nodes=("a",)),
        "mb": legacy.scripted("mb", nodes=("a", "b"), outcome="failed"),
    }
    # linger: the pollers, and so the histories, outlive the moment without a viewer.
    async with running_bridge(legacy.url, progress_expr=".progress", linger=5) as b:
        ended: set[str] = set()

        def every_run_ended(event: ServerSentEvent) -> bool:
            if event.event in ("complete", "error"):
                ended.add(data(event)["run_id"])
            return ended == set(runs)

        seen: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}

        async def take() -> None:
            event = await f.next("progress", "complete", "error")
            envelope = data(event)
            assert set(envelope) == {"run_id", "id", "state", "progress", "detail", "data"}
            status = envelope["data"]
            # state and progress as the bridge read them from the status.
            assert envelope["state"] == status["status"]
            assert envelope["progress"] == status["progress"]
            # The envelope's id is the run's own; the event's id resumes every run.
            assert envelope["id"] != event.id and event.id.startswith("m1.")
            seen[envelope["run_id"]].append(envelope)
            if event.event != "progress":
                finished.add(envelope["run_id"])

        finished: set[str] = set()
        url = f"{b.url}/v1/streams?runs=ma,mb"
        async with following(url, every_run_ended) as f:
            for _ in runs:
                await take()  # each run's current status
            assert {name: [e["data"] for e in seen[name]] for name in runs} == {
                name: [run.statuses[0]] for name, run in runs.items()
            }
            # The bridge ends the stream (as a drain would); the client comes back with
            # the multi id, and the runs move on meanwhile.
            f.may_connect.clear()
            for channel in b.bridge.hub.live_channels():
                channel.close_all()
            for run in runs.values():
                run.advance(len(run.statuses))
            await ended_in_history(b, *runs)  # both ends happened while the client was away
            f.may_connect.set()
            while finished != set(runs):
                await take()
        assert f.sent[0] is None and (f.sent[1] or "").startswith("m1.")
        for name, run in runs.items():
            # Nothing twice: the current status was not sent again after the resume.
            assert [e["data"] for e in seen[name]] == [run.statuses[0], run.statuses[-1]]
            assert len({e["id"] for e in seen[name]}) == len(seen[name])
        assert seen["ma"][-1]["state"] == "completed"
        assert seen["mb"][-1]["state"] == "failed"


async def ended_in_history(b: RunningBridge, *run_ids: str) -> None:
    """Until the bridge's history of each run (no forwarded headers) holds its end."""

    def ended(run_id: str) -> bool:
        channel = b.bridge.hub.find(b.bridge.pollers.key(run_id, {}))
        return channel is not None and channel.history.terminal

    await wait_for(lambda: all(ended(r) for r in run_ids), timeout=10)
