"""Connection caps, slow viewers, and connect/disconnect cycles that leave nothing behind."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
import tracemalloc
from contextlib import AsyncExitStack

import aiohttp
import pytest

from bridge.demo.legacy_api import LegacyApi
from bridge.errors import Draining
from bridge.streams.limits import StreamLimiter
from bridge.tools.eventstream import EventStreamParser, ParsedEvent
from tests.support import loopback_socket, running_bridge, sse, wait_for


def test_a_draining_limiter_refuses_every_stream_and_open_ones_keep_their_slots() -> None:
    limiter = StreamLimiter(total=10, per_client=10)
    limiter.take("a")
    limiter.drain()
    with pytest.raises(Draining):
        limiter.take("b")
    assert limiter.open == 1  # the refused one took nothing
    limiter.give("a")
    assert limiter.open == 0 and limiter.clients() == 0


async def test_global_cap_503_and_per_client_cap_429(legacy: LegacyApi) -> None:
    legacy.scripted("cap")
    async with (
        running_bridge(legacy.url, max_streams=3, max_streams_per_client=2) as b,
        AsyncExitStack() as stack,
    ):
        url = f"{b.url}/v1/runs/cap/stream"
        first = [await stack.enter_async_context(sse(url)) for _ in range(2)]
        for s in first:
            await s.next_named("progress")
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            assert response.status == 429
            assert response.headers["Retry-After"].isdigit()
            assert (await response.json())["error"] == "too_many_streams"
        # Another client (the cap is per address, so pretend via X-Forwarded-For).
    async with (
        running_bridge(
            legacy.url, max_streams=3, max_streams_per_client=2, trust_forwarded_for=True
        ) as b,
        AsyncExitStack() as stack,
    ):
        url = f"{b.url}/v1/runs/cap/stream"
        for i in range(3):
            s = await stack.enter_async_context(sse(url, {"X-Forwarded-For": f"10.0.0.{i}"}))
            await s.next_named("progress")
        async with aiohttp.ClientSession() as http:
            async with http.get(url, headers={"X-Forwarded-For": "10.0.0.9"}) as response:
                assert response.status == 503
                assert int(response.headers["Retry-After"]) >= 1
                assert (await response.json())["error"] == "over_capacity"
        # Forwarded-For is about the cap only: it never goes upstream.
        assert all("X-Forwarded-For" not in r.headers for r in legacy.seen)
    assert b.bridge.limiter.open == 0


async def test_slow_viewer_is_coalesced_then_dropped_and_never_delays_others(
    legacy: LegacyApi,
) -> None:
    big = "x" * 20_000
    statuses = [{"status": "running", "step": i, "blob": big} for i in range(40)]
    statuses.append({"status": "completed", "step": 40})
    run = legacy.scripted("flood", statuses)
    listener = loopback_socket()
    # Small send buffers (inherited by accepted sockets) make "stopped reading" show fast.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    async with running_bridge(legacy.url, sock=listener, send_timeout=0.5) as b:
        port = listener.getsockname()[1]
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", port))
        stalled.sendall(b"GET /v1/runs/flood/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            async with sse(f"{b.url}/v1/runs/flood/stream") as reader:
                await reader.next_named("progress")
                await wait_for(lambda: b.bridge.limiter.open == 2)
                for i in range(1, len(statuses)):
                    run.advance()
                    event = await reader.next_named("progress", "complete", timeout=2)
                    # The reader follows every change although another viewer is stuck.
                    while json.loads(event.data)["step"] < i:
                        event = await reader.next_named("progress", "complete", timeout=2)
                    if i == len(statuses) - 2:
                        # The stalled viewer was dropped while the run still goes on:
                        # its slot, lease and subscription are gone.
                        await wait_for(lambda: b.bridge.limiter.open == 1, timeout=5)
                    if i == len(statuses) - 1:
                        assert event.event == "complete"
            await wait_for(lambda: b.bridge.limiter.open == 0, timeout=5)
        finally:
            stalled.close()
    listener.close()


async def test_slow_reader_gets_latest_status_not_a_backlog(legacy: LegacyApi) -> None:
    blob = "y" * 8_000
    statuses: list[dict[str, object]] = [
        {"status": "running", "step": i, "blob": blob} for i in range(60)
    ]
    statuses.append({"status": "completed", "step": 60})
    run = legacy.scripted("coalesce", statuses)
    listener = loopback_socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    async with running_bridge(legacy.url, sock=listener, viewer_buffer=4, linger=5) as b:
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(listener.getsockname())
        slow.sendall(b"GET /v1/runs/coalesce/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            await wait_for(lambda: b.bridge.pollers.active == 1)
            channel = b.bridge.hub.find(b.bridge.pollers.key("coalesce", {}))
            assert channel is not None
            # The viewer reads nothing while the run moves on 59 times.
            for i in range(1, 60):
                run.advance()
                await wait_for(lambda i=i: json.loads(channel.history.latest.data)["step"] == i)  # type: ignore[misc, union-attr]
            run.advance()
            slow.setblocking(False)
            parser = EventStreamParser()
            events: list[ParsedEvent] = []
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(10):
                while not events or events[-1].event != "complete":
                    chunk = await loop.sock_recv(slow, 65536)
                    assert chunk, "the bridge closed the stream early"
                    events.extend(parser.feed(chunk))
        finally:
            slow.close()
    listener.close()
    steps = [json.loads(e.data)["step"] for e in events]
    # Far behind, the viewer skipped to the latest status instead of a 60-event backlog.
    assert steps == sorted(steps) and steps[-1] == 60
    assert len(steps) < 30, steps


async def test_thousand_connect_disconnect_cycles_leave_nothing(legacy: LegacyApi) -> None:
    legacy.scripted("cycle")
    async with running_bridge(legacy.url, linger=0.0, poll_interval=0.02) as b:
        url = f"{b.url}/v1/runs/cycle/stream"
        connector = aiohttp.TCPConnector(limit=20, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:

            async def cycle() -> None:
                async with sse(url, session=http) as s:
                    await s.next_named("progress")

            await asyncio.gather(*(cycle() for _ in range(50)))  # warm up
            await wait_for(lambda: b.bridge.pollers.active == 0 and b.bridge.limiter.open == 0)
            gc.collect()
            tasks_before = len(asyncio.all_tasks())
            tracemalloc.start()
            before = tracemalloc.take_snapshot()
            for _ in range(20):
                await asyncio.gather(*(cycle() for _ in range(50)))
            await wait_for(lambda: b.bridge.pollers.active == 0 and b.bridge.limiter.open == 0)
            await wait_for(lambda: len(asyncio.all_tasks()) <= tasks_before, timeout=5)
            gc.collect()
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
        grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        assert grown < 512 * 1024, grown
        assert b.bridge.hub.live_count == 0
        assert b.bridge.limiter.clients() == 0
        assert b.bridge.ticker.watched == 0
