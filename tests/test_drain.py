"""SIGTERM drain of the real `sse-bridge serve` process; 204 for a finished run; retry jitter."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from contextlib import AsyncExitStack

import aiohttp

from bridge.demo.legacy_api import LegacyApi
from tests.support import SseStream, running_bridge, serve_process, sse


async def test_sigterm_drains_and_exits_within_grace(legacy: LegacyApi) -> None:
    run = legacy.scripted("drain")
    env = {
        "BRIDGE_POLL_INTERVAL": "0.05",
        "BRIDGE_DRAIN_DELAY": "1",
        "BRIDGE_SHUTDOWN_GRACE": "5",
        # At once: this test is about the drain's steps (the spread has its own test).
        "BRIDGE_DRAIN_SPREAD": "0",
    }
    async with serve_process(legacy.url, env) as (proc, url):
        async with sse(f"{url}/v1/runs/drain/stream") as s, aiohttp.ClientSession() as http:
            first = await s.next_named("progress")
            assert first.id
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            # The open stream ends cleanly, with no terminal event (EventSource reconnects).
            assert await s.rest(timeout=3) == []
            # During the drain delay: not ready, and new streams are refused.
            async with http.get(url + "/readyz") as r:
                assert r.status == 503
                assert (await r.json())["error"] == "draining"
            async with http.get(f"{url}/v1/runs/drain/stream") as r:
                assert r.status == 503
                assert r.headers["Retry-After"] == "1"
        code = await asyncio.wait_for(proc.wait(), timeout=6)
        assert code == 0
        assert time.monotonic() - signalled < 5 + 0.5
        # Pollers stopped with the process.
        polls = legacy.requests["drain"]
        run.advance()
        await asyncio.sleep(0.2)
        assert legacy.requests["drain"] == polls
    stderr = (await proc.stderr.read()).decode() if proc.stderr else ""
    assert "Traceback" not in stderr


async def test_served_process_takes_the_fast_path(legacy: LegacyApi) -> None:
    run = legacy.scripted("uv")
    env = {"BRIDGE_POLL_INTERVAL": "0.05"}
    async with serve_process(legacy.url, env) as (proc, url):
        async with sse(f"{url}/v1/runs/uv/stream") as s, aiohttp.ClientSession() as http:
            assert json.loads((await s.next_named("progress")).data) == run.statuses[0]
            async with http.get(url + "/metrics") as r:
                assert "bridge_fast_path_streams 1.0" in await r.text()
            for expected in run.statuses[1:]:
                run.advance()
                event = await s.next_named("progress", "complete")
                assert json.loads(event.data) == expected
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0


async def test_reconnect_with_final_id_gets_204(legacy: LegacyApi) -> None:
    run = legacy.scripted("ended", nodes=("a",))
    async with running_bridge(legacy.url) as b:
        async with sse(f"{b.url}/v1/runs/ended/stream") as s:
            await s.next_named("progress")
            run.advance(10)
            events = await s.rest()
        final = next(e for e in events if e.event == "complete")
        async with aiohttp.ClientSession() as http:
            async with http.get(
                f"{b.url}/v1/runs/ended/stream", headers={"Last-Event-ID": final.id}
            ) as r:
                assert r.status == 204
                assert await r.read() == b""
            async with http.get(f"{b.url}/v1/runs/ended/stream?cursor={final.id}") as r:
                assert r.status == 204


async def test_retry_values_are_jittered(legacy: LegacyApi) -> None:
    legacy.scripted("j")
    async with running_bridge(legacy.url, retry_ms=1000) as b:
        retries = []
        for _ in range(8):
            async with sse(f"{b.url}/v1/runs/j/stream") as s:
                await s.next_named("progress")
                assert s.parser.retry is not None
                retries.append(s.parser.retry)
        assert all(1000 <= r <= 1200 for r in retries)
        assert len(set(retries)) > 1


async def test_drain_spreads_the_ends_and_every_viewer_can_resume(legacy: LegacyApi) -> None:
    """A few hundred streams end at random moments over BRIDGE_DRAIN_SPREAD, each with a
    jittered retry first, none with a terminal event; each resumes where it was."""
    run = legacy.scripted("spread")
    viewers = 200
    window = 1.5
    ends: list[float] = []
    farewells = 0
    async with running_bridge(
        legacy.url, drain_spread=window, shutdown_grace=5, max_streams_per_client=viewers
    ) as b:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http, AsyncExitStack() as stack:
            streams = [
                await stack.enter_async_context(sse(f"{b.url}/v1/runs/spread/stream", session=http))
                for _ in range(viewers)
            ]
            last_ids = [(await s.next_named("progress")).id for s in streams]
            started = time.monotonic()
            b.bridge.drain()

            async def until_closed(s: SseStream) -> None:
                nonlocal farewells
                assert await s.rest(timeout=window + 3) == []  # no terminal event
                ends.append(time.monotonic() - started)
                # The last bytes before the close: a retry line, jittered per viewer.
                tail = bytes(s.raw).rstrip(b"\n").rsplit(b"\n", 1)[-1]
                farewells += tail.startswith(b"retry: ")

            await asyncio.gather(*(until_closed(s) for s in streams))
    assert len(ends) == viewers and farewells == viewers
    ends.sort()
    # Spread over the window, not all at once: the middle half takes a good part of it.
    assert ends[-1] <= window + 1.0
    assert ends[3 * viewers // 4] - ends[viewers // 4] >= window / 4, ends
    # Another replica (a new process here) takes every viewer back, none lost.
    run.advance()
    async with running_bridge(legacy.url) as other:
        for last in last_ids[:20]:
            async with sse(
                f"{other.url}/v1/runs/spread/stream", headers={"Last-Event-ID": last}
            ) as s:
                event = await s.next_named("progress")
                assert json.loads(event.data) == run.statuses[1]
