"""One poller per run and credentials, however many viewers; nothing crosses credentials."""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack

import aiohttp

from bridge.demo.legacy_api import LegacyApi
from tests.support import running_bridge, sse, wait_for


async def test_fifty_concurrent_viewers_cost_one_poll_per_interval(legacy: LegacyApi) -> None:
    run = legacy.scripted("shared", nodes=("a", "b", "c"))
    interval = 0.1
    async with running_bridge(legacy.url, poll_interval=interval) as b, AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        streams = await asyncio.gather(
            *(
                stack.enter_async_context(sse(f"{b.url}/v1/runs/shared/stream", session=session))
                for _ in range(50)
            )
        )
        firsts = await asyncio.gather(*(s.next_named("progress") for s in streams))
        assert {json.loads(e.data)["status"] for e in firsts} == {"queued"}
        # Concurrent cold connects: one request (single-flight).
        assert legacy.requests["shared"] <= 2
        assert b.bridge.pollers.active == 1
        loop = asyncio.get_running_loop()
        start_count, start = legacy.requests["shared"], loop.time()
        await wait_for(lambda: legacy.requests["shared"] >= start_count + 10, timeout=5)
        elapsed = loop.time() - start
        polls = legacy.requests["shared"] - start_count
        # Fixed cadence: about elapsed / interval polls, never one per viewer.
        assert polls <= elapsed / interval + 2
        run.advance()
        changed = await asyncio.gather(*(s.next_named("progress") for s in streams))
        assert all(json.loads(e.data) == run.statuses[1] for e in changed)
        assert len({e.id for e in changed}) == 1


async def test_late_viewer_gets_latest_without_upstream_request(legacy: LegacyApi) -> None:
    run = legacy.scripted("late")
    async with running_bridge(legacy.url, poll_interval=5.0) as b:
        async with sse(f"{b.url}/v1/runs/late/stream") as first:
            await first.next_named("progress")
            before = legacy.requests["late"]
            async with sse(f"{b.url}/v1/runs/late/stream") as second:
                event = await second.next_named("progress")
                assert json.loads(event.data) == run.statuses[0]
            assert legacy.requests["late"] == before


async def test_polling_stops_after_last_viewer_leaves(legacy: LegacyApi) -> None:
    legacy.scripted("leave")
    async with running_bridge(legacy.url, linger=0.2) as b:
        async with (
            sse(f"{b.url}/v1/runs/leave/stream") as s1,
            sse(f"{b.url}/v1/runs/leave/stream") as s2,
        ):
            await s1.next_named("progress")
            await s2.next_named("progress")
        await wait_for(lambda: b.bridge.pollers.active == 0, timeout=3)
        stopped_at = legacy.requests["leave"]
        # Give a stray poller ten intervals to show itself: none may come.
        await asyncio.sleep(0.5)
        assert legacy.requests["leave"] == stopped_at


async def test_refused_viewer_never_sees_another_viewers_data(legacy: LegacyApi) -> None:
    run = legacy.scripted("secret")
    legacy.require("secret", "authorization", "Bearer alice")
    async with (
        running_bridge(legacy.url) as b,
        sse(f"{b.url}/v1/runs/secret/stream", {"Authorization": "Bearer alice"}) as alice,
    ):
        assert json.loads((await alice.next_named("progress")).data) == run.statuses[0]
        async with aiohttp.ClientSession() as http:
            for headers, status in (({"Authorization": "Bearer mallory"}, 403), ({}, 401)):
                async with http.get(f"{b.url}/v1/runs/secret/stream", headers=headers) as r:
                    assert r.status == status
                    body = await r.read()
                    assert b"queued" not in body and b"nodes" not in body
                async with http.get(f"{b.url}/v1/runs/secret", headers=headers) as r:
                    assert r.status == status
        # Alice's and the refused viewers' polls went upstream with their own headers.
        sent = {req.headers.get("Authorization") for req in legacy.seen}
        assert sent == {"Bearer alice", "Bearer mallory", None}
        assert b.bridge.pollers.active == 1


async def test_credentials_refused_mid_stream_end_with_error(legacy: LegacyApi) -> None:
    legacy.scripted("revoked")
    legacy.require("revoked", "x-api-key", "k1")
    async with running_bridge(legacy.url) as b:
        async with sse(f"{b.url}/v1/runs/revoked/stream", {"X-Api-Key": "k1"}) as s:
            await s.next_named("progress")
            legacy.require("revoked", "x-api-key", "k2")
            event = await s.next_named("error")
            body = json.loads(event.data)
            assert body["status"] == "forbidden"
            assert body["errorMessage"].startswith("The upstream API does not allow")
            assert await s.rest() == []
