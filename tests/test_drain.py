"""SIGTERM drain of the real `sse-bridge serve` process; 204 for a finished run; retry jitter."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import aiohttp

from bridge.demo.legacy_api import LegacyApi
from tests.support import running_bridge, serve_process, sse


async def test_sigterm_drains_and_exits_within_grace(legacy: LegacyApi) -> None:
    run = legacy.scripted("drain")
    env = {"BRIDGE_POLL_INTERVAL": "0.05", "BRIDGE_DRAIN_DELAY": "1", "BRIDGE_SHUTDOWN_GRACE": "5"}
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
