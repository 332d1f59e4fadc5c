"""Fleets (BRIDGE_UPSTREAM_LIST_PATH) in cluster mode, for real: two bridges sharing a
real redis-server in front of a list upstream on loopback. One replica polls the list
(one request per interval in all) and feeds every listed run's channel through Redis;
``GET /v1/events`` and single-run streams of listed runs work on every replica without a
request of their own; a handover of the list loses no run's terminal event."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack
from typing import Any

import pytest
from redis.asyncio import Redis

from bridge.cluster.store import Store
from bridge.events.channel import ChannelKey
from tests.feed_upstream import list_upstream
from tests.redis_server import RedisServer
from tests.support import RunningBridge, SseStream, running_bridge, sse, wait_for
from tests.test_cluster import cluster  # noqa: F401  (the fixture)

pytestmark = pytest.mark.redis

AUTH = {"Authorization": "Bearer alice"}
LIST = {"upstream_list_path": "/runs"}


def polls_list(b: RunningBridge) -> bool:
    return any(fleet._led for fleet in b.bridge.fleets.fleets())  # type: ignore[union-attr]


async def run_events(s: SseStream, count: int) -> list[tuple[str, str, Any]]:
    """(event, run_id, envelope) of the next ``count`` run events of /v1/events."""
    out = []
    while len(out) < count:
        event = await s.next_named("progress", "complete", "error")
        body = s.data(event)
        out.append((event.event, body["run_id"], body))
    return out


async def until_event(s: SseStream, name: str, run_id: str) -> dict[str, Any]:
    while True:
        event, run, body = (await run_events(s, 1))[0]
        if (event, run) == (name, run_id):
            return body


async def test_one_replica_polls_the_list_and_every_replica_serves_it(
    cluster: dict[str, Any],  # noqa: F811
) -> None:
    interval = 0.1
    settings = {**LIST, **cluster, "poll_interval": interval}
    async with list_upstream() as up:
        for name in ("r1", "r2", "r3"):
            up.set(name, "running")
        async with (
            running_bridge(up.url, **settings) as a,
            running_bridge(up.url, **settings) as b,
            sse(f"{a.url}/v1/events", AUTH) as all_a,
            sse(f"{b.url}/v1/events", AUTH) as all_b,
        ):
            for s in (all_a, all_b):
                opening = await run_events(s, 3)
                assert sorted(run for _, run, _ in opening) == ["r1", "r2", "r3"]
            async with (
                sse(f"{a.url}/v1/runs/r1/stream", AUTH) as one_a,
                sse(f"{b.url}/v1/runs/r2/stream", AUTH) as one_b,
            ):
                assert (await one_a.next_named("progress")).data
                assert (await one_b.next_named("progress")).data
                await wait_for(lambda: polls_list(a) != polls_list(b))
                follower = b if polls_list(a) else a
                sent = follower.bridge.upstream.requests_sent
                # A fixed window: the list's requests from both replicas together.
                before = up.list_requests()
                window = 1.5
                await asyncio.sleep(window)
                lists = up.list_requests() - before
                print(
                    f"\nlist requests, 2 replicas with viewers, {window} s at {interval} s: "
                    f"{lists} ({lists / (window / interval):.2f} per interval)"
                )
                assert lists <= window / interval + 2  # not one per replica
                # The follower asked nothing: no list, no run of its own.
                assert follower.bridge.upstream.requests_sent == sent
                assert up.run_requests("r1") == up.run_requests("r2") == 0
                # A change reaches every viewer on both replicas, with the same run id.
                up.set("r2", "completed")
                ends = [await until_event(s, "complete", "r2") for s in (all_a, all_b)]
                assert ends[0]["id"] == ends[1]["id"] and ends[0]["data"]["status"] == "completed"
                end = await one_b.next_named("complete")
                assert one_b.data(end)["status"] == "completed" and end.id == ends[0]["id"]
                up.set("r1", "failed")
                await until_event(all_b, "error", "r1")
                assert (await one_a.next_named("error")).id
            assert up.run_requests("r1") == up.run_requests("r2") == 0


async def test_a_handover_of_the_list_loses_no_runs_terminal_event(
    cluster: dict[str, Any],  # noqa: F811
) -> None:
    settings = {**LIST, **cluster, "poll_interval": 0.1}
    async with list_upstream() as up:
        for name in ("keep", "early", "late"):
            up.set(name, "running")
        async with AsyncExitStack() as outer:
            b = await outer.enter_async_context(running_bridge(up.url, **settings))
            async with AsyncExitStack() as inner:
                a = await inner.enter_async_context(running_bridge(up.url, **settings))
                all_a = await inner.enter_async_context(sse(f"{a.url}/v1/events", AUTH))
                await run_events(all_a, 3)
                assert polls_list(a)
                all_b = await outer.enter_async_context(sse(f"{b.url}/v1/events", AUTH))
                await run_events(all_b, 3)
                early = await outer.enter_async_context(sse(f"{b.url}/v1/runs/early/stream", AUTH))
                assert (await early.next_named("progress")).data
                assert not polls_list(b)
                # "early" ends and leaves the list just as the list's poller stops.
                up.set("early", "completed")
                up.listed.remove("early")
            # The list's poller is gone; "late" ends and leaves the list meanwhile.
            up.set("late", "completed")
            up.listed.remove("late")
            await wait_for(lambda: polls_list(b))
            for run in ("early", "late"):
                body = await until_event(all_b, "complete", run)
                assert body["data"]["status"] == "completed"
            end = await early.next_named("complete")
            assert early.data(end)["status"] == "completed"
            # The list goes on from b: a change of a listed run reaches its viewer.
            up.set("keep", "completed")
            await until_event(all_b, "complete", "keep")


@pytest.mark.redis
async def test_a_poller_that_may_not_lead_gives_its_lease_up(
    redis_server: RedisServer,
) -> None:
    """A listed run's poller on a replica that stopped polling the list gives the run's
    lease up at its next tick, so the replica polling the list now can commit the run."""
    key = ChannelKey("listed", "digest")
    async with Redis.from_url(redis_server.url) as client:
        store = Store(
            client,
            f"t{uuid.uuid4().hex[:10]}:",
            lease_ms=5000,
            keep_ms=60000,
            history_size=4,
            history_max_bytes=10**6,
        )
        assert (await store.tick(key, "old", active=True)).holder == "old"
        assert (await store.tick(key, "new", active=True)).holder == "old"
        assert (await store.tick(key, "old", active=True, may_lead=False)).holder == ""
        assert (await store.tick(key, "new", active=True)).holder == "new"
        assert (await store.tick(key, "old", active=True, may_lead=False)).holder == "new"


async def test_a_run_that_ended_and_stays_listed_ends_once(
    cluster: dict[str, Any],  # noqa: F811
) -> None:
    """Lists of every run (GitHub's workflow runs) keep ended runs: their end is sent once,
    not again at every list."""
    settings = {**LIST, **cluster, "poll_interval": 0.05}
    async with list_upstream() as up:
        up.set("done", "completed")
        up.set("going", "running")
        async with (
            running_bridge(up.url, **settings) as a,
            running_bridge(up.url, **settings) as b,
            sse(f"{a.url}/v1/events", AUTH) as on_a,
            sse(f"{b.url}/v1/events", AUTH) as on_b,
        ):
            for s in (on_a, on_b):
                opening = sorted((e, r) for e, r, _ in await run_events(s, 2))
                assert opening == [("complete", "done"), ("progress", "going")]
            before = up.list_requests()
            await wait_for(lambda: up.list_requests() >= before + 5)
            up.set("going", "completed")
            for s in (on_a, on_b):
                assert [(e, r) for e, r, _ in await run_events(s, 1)] == [("complete", "going")]
