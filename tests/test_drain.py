"""SIGTERM drain of the real `sse-bridge serve` process; 204 for a finished run; retry jitter."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import aiohttp

from bridge.demo.legacy_api import LegacyApi
from tests.support import loopback_socket, running_bridge, sse


async def test_sigterm_drains_and_exits_within_grace(legacy: LegacyApi) -> None:
    run = legacy.scripted("drain")
    probe = loopback_socket()
    port = probe.getsockname()[1]
    probe.close()
    env = {
        **os.environ,
        "BRIDGE_UPSTREAM_URL": legacy.url,
        "BRIDGE_HOST": "127.0.0.1",
        "BRIDGE_PORT": str(port),
        "BRIDGE_POLL_INTERVAL": "0.05",
        "BRIDGE_DRAIN_DELAY": "1",
        "BRIDGE_SHUTDOWN_GRACE": "5",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "serve",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        waiter = asyncio.ensure_future(proc.wait())
        try:
            async with asyncio.timeout(15):
                while True:
                    assert not waiter.done(), "the bridge exited at start"
                    try:
                        async with aiohttp.ClientSession() as http, http.get(url + "/healthz") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.05)
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
            code = await asyncio.wait_for(waiter, timeout=6)
            assert code == 0
            assert time.monotonic() - signalled < 5 + 0.5
            # Pollers stopped with the process.
            polls = legacy.requests["drain"]
            run.advance()
            await asyncio.sleep(0.2)
            assert legacy.requests["drain"] == polls
        finally:
            if not waiter.done():
                waiter.cancel()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    stderr = (await proc.stderr.read()).decode() if proc.stderr else ""
    assert "Traceback" not in stderr


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
