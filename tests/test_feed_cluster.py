"""Feeds (BRIDGE_FEED_PATH) in cluster mode, for real: two bridges sharing a real
redis-server in front of a feed upstream on loopback. One replica polls a run's feed per
credential scope and commits its items with their cursors as ids; the other serves the
same ids without asking the upstream; resume works on either; a handover loses no item
and repeats none."""

from __future__ import annotations

import asyncio
import json
import pathlib
from contextlib import AsyncExitStack
from typing import Any

import pytest

from tests.feed_upstream import SEED_002, feed_upstream
from tests.support import running_bridge, sse, wait_for
from tests.test_cluster import cluster, cluster_of, status_of  # noqa: F401  (the fixture)

pytestmark = pytest.mark.redis

AUTH = {"Authorization": "Bearer alice"}


async def test_one_replica_polls_the_feed_and_both_serve_its_cursors(
    cluster: dict[str, Any],  # noqa: F811
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "feed.toml"
    path.write_text(
        "[builtin.complete]\nevent = 'run.completed'\n"
        "data = '{runId: $run_id, status: .runStatus}'\n"
    )
    settings = {**SEED_002, **cluster, "poll_interval": 0.1, "events_file": str(path)}
    async with feed_upstream() as up:
        run = up.run("r1")
        run.add("STARTED")
        async with (
            running_bridge(up.url, **settings) as a,
            running_bridge(up.url, **settings) as b,
            sse(f"{a.url}/v1/runs/r1/stream", AUTH) as on_a,
            sse(f"{b.url}/v1/runs/r1/stream", AUTH) as on_b,
            sse(f"{a.url}/v1/runs/r1/stream", {"Authorization": "Bearer bob"}) as bob,
        ):
            for s in (on_a, on_b, bob):
                assert (await s.next_named("STARTED")).id == "1"
            # One leader per credential scope in the cluster.
            await wait_for(lambda: cluster_of(a).leading + cluster_of(b).leading == 2)
            for i in range(2, 6):
                run.add("STEP", n=i)
            got_a = [await on_a.next_named("STEP") for _ in range(4)]
            got_b = [await on_b.next_named("STEP") for _ in range(4)]
            assert [e.id for e in got_a] == [e.id for e in got_b] == ["2", "3", "4", "5"]
            assert [e.data for e in got_a] == [e.data for e in got_b]
            # A run's status answers on either replica.
            for bridge in (a, b):
                code, status = await status_of(f"{bridge.url}/v1/runs/r1", AUTH)
                assert code == 200 and status["runStatus"] == "running"
            # Resume by cursor on either replica: the items after it, from the history.
            for bridge in (a, b):
                async with sse(
                    f"{bridge.url}/v1/runs/r1/stream", {**AUTH, "Last-Event-ID": "3"}
                ) as again:
                    assert [(await again.next_named("STEP")).id for _ in range(2)] == ["4", "5"]
            run.status = "completed"
            for s in (on_a, on_b):
                end = await s.next_named("run.completed")
                # Each replica ran the end event's filter on the last page.
                assert (end.id, s.data(end)) == ("5", {"runId": "r1", "status": "completed"})
                assert await s.rest() == []


async def test_a_follower_sends_no_feed_request(
    cluster: dict[str, Any],  # noqa: F811
) -> None:
    settings = {**SEED_002, **cluster, "poll_interval": 0.05}
    async with feed_upstream() as up:
        run = up.run("r2")
        run.add("STARTED")
        async with (
            running_bridge(up.url, **settings) as a,
            running_bridge(up.url, **settings) as b,
            sse(f"{a.url}/v1/runs/r2/stream", AUTH) as on_a,
        ):
            assert (await on_a.next_named("STARTED")).id == "1"
            await wait_for(lambda: cluster_of(a).leading == 1)
            async with sse(f"{b.url}/v1/runs/r2/stream", AUTH) as on_b:
                assert (await on_b.next_named("STARTED")).id == "1"
                asked = len(up.feed_requests("r2"))
                # Ten more polls by the leader, none of them by the follower.
                await wait_for(lambda: len(up.feed_requests("r2")) >= asked + 10)
                run.add("MORE")
                assert (await on_b.next_named("MORE")).id == "2"
                assert b.bridge.upstream.requests_sent == 0
                assert cluster_of(b).leading == 0


async def test_a_handover_loses_no_item_and_repeats_none(
    cluster: dict[str, Any],  # noqa: F811
) -> None:
    settings = {**SEED_002, **cluster, "poll_interval": 0.05}
    async with feed_upstream() as up:
        run = up.run("ho")
        run.add("STARTED")
        async with AsyncExitStack() as outer:
            b = await outer.enter_async_context(running_bridge(up.url, **settings))
            async with AsyncExitStack() as inner:
                a = await inner.enter_async_context(running_bridge(up.url, **settings))
                on_a = await inner.enter_async_context(sse(f"{a.url}/v1/runs/ho/stream", AUTH))
                assert (await on_a.next_named("STARTED")).id == "1"
                await wait_for(lambda: cluster_of(a).leading == 1)
                on_b = await outer.enter_async_context(sse(f"{b.url}/v1/runs/ho/stream", AUTH))
                assert cluster_of(b).leading == 0
                for i in range(2, 5):
                    run.add("STEP", n=i)
                got_a = [await on_a.next_named("STEP") for _ in range(3)]
            # The leader is gone (SIGTERM-like stop); b takes over the same feed.
            await wait_for(lambda: cluster_of(b).leading == 1)
            for i in range(5, 8):
                run.add("STEP", n=i)
            run.status = "completed"
            on_b_events = [e for e in await on_b.rest() if e.event != "ping"]
            # a's viewer reconnects to b with its last cursor.
            async with sse(
                f"{b.url}/v1/runs/ho/stream", {**AUTH, "Last-Event-ID": got_a[-1].id}
            ) as s:
                resumed = [e for e in await s.rest() if e.event != "ping"]
    ids = [e.id for e in on_b_events]
    assert ids == ["1", "2", "3", "4", "5", "6", "7", "7"]  # the end repeats the last cursor
    assert [e.event for e in on_b_events][-1] == "complete"
    assert [json.loads(e.data)["payload"]["n"] for e in on_b_events[1:-1]] == list(range(2, 8))
    assert [e.id for e in got_a + resumed] == ids[1:]
    # b asked the feed after what a had committed, never from the start again.
    assert "0" not in [since for _, since, _ in up.feed_requests("ho")[1:]]


async def test_a_resume_from_beyond_redis_history_is_caught_up_from_the_upstream(
    cluster: dict[str, Any],  # noqa: F811
) -> None:
    settings = {**SEED_002, **cluster, "poll_interval": 0.05, "history_size": 3}
    async with feed_upstream() as up:
        run = up.run("old")
        for i in range(1, 9):
            run.add("STEP", n=i)
        async with (
            running_bridge(up.url, **settings) as a,
            running_bridge(up.url, **settings) as b,
            sse(f"{a.url}/v1/runs/old/stream", {**AUTH, "Last-Event-ID": "8"}) as on_a,
        ):
            await wait_for(lambda: cluster_of(a).leading == 1)
            # The follower holds only the newest three; older ones come from the upstream.
            async with sse(f"{b.url}/v1/runs/old/stream", {**AUTH, "Last-Event-ID": "2"}) as s:
                got = [(await s.next_named("STEP")).id for _ in range(6)]
            assert got == ["3", "4", "5", "6", "7", "8"]
            run.add("STEP", n=9)
            assert (await on_a.next_named("STEP")).id == "9"


async def test_when_redis_lost_a_feeds_keys_a_copy_puts_its_cursors_back(
    cluster: dict[str, Any],  # noqa: F811
) -> None:
    settings = {**SEED_002, **cluster, "poll_interval": 0.05}
    async with feed_upstream() as up:
        run = up.run("lost")
        for i in range(1, 4):
            run.add("STEP", n=i)
        async with (
            running_bridge(up.url, **settings) as a,
            running_bridge(up.url, **settings) as b,
            sse(f"{a.url}/v1/runs/lost/stream", AUTH) as on_a,
        ):
            assert [(await on_a.next_named("STEP")).id for _ in range(3)] == ["1", "2", "3"]
            store = cluster_of(a).store
            (key,) = [c.key for c in a.bridge.hub.live_channels()]
            for part in ("meta", "events", "lease", "interest"):
                await store.client.delete(store.key(key, part))
            # The copy goes back as the feed's items, cursors and all.
            async with asyncio.timeout(3):
                while await store.client.llen(store.key(key, "events")) < 3:
                    await asyncio.sleep(0.02)
            run.add("STEP", n=4)
            assert (await on_a.next_named("STEP")).id == "4"
            # A replica that had no copy resumes from a cursor out of Redis's history.
            async with sse(f"{b.url}/v1/runs/lost/stream", {**AUTH, "Last-Event-ID": "1"}) as s:
                assert [(await s.next_named("STEP")).id for _ in range(3)] == ["2", "3", "4"]
            assert b.bridge.upstream.requests_sent == 0
