"""Cluster mode, for real: two bridges sharing a real redis-server, in front of the real
simulated legacy API. One upstream poll per run per interval across replicas, the same
ids everywhere, resume on another replica, takeover, cluster-wide stop, credentials that
never cross, and Redis lost and back.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from bridge.cluster import RedisBackend
from bridge.cluster.link import MAX_CONNECTIONS
from bridge.cluster.store import Fenced, Record, Store
from bridge.demo.legacy_api import Fault, LegacyApi
from bridge.events.channel import ChannelKey
from bridge.events.history import RunHistory
from bridge.settings import ConfigError, load
from bridge.tools.eventstream import ParsedEvent
from tests.redis_server import RedisServer
from tests.support import RunningBridge, running_bridge, serving_app, sse, wait_for

pytestmark = pytest.mark.redis


@pytest.fixture
def cluster(redis_server: RedisServer) -> dict[str, Any]:
    """Settings of one cluster: the shared Redis, and a key prefix of this test's own."""
    return {"redis_url": redis_server.url, "redis_prefix": f"t{uuid.uuid4().hex[:10]}:"}


@asynccontextmanager
async def replicas(
    legacy: LegacyApi, cluster: dict[str, Any], **overrides: Any
) -> AsyncIterator[tuple[RunningBridge, RunningBridge]]:
    async with (
        running_bridge(legacy.url, **cluster, **overrides) as a,
        running_bridge(legacy.url, **cluster, **overrides) as b,
    ):
        yield a, b


def cluster_of(b: RunningBridge) -> RedisBackend:
    assert isinstance(b.bridge.backend, RedisBackend)
    return b.bridge.backend


def seq(event: ParsedEvent) -> tuple[int, int]:
    epoch, _, number = event.id.partition("-")
    return int(epoch), int(number)


async def status_of(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers or {}) as r:
        return r.status, json.loads(await r.read() or b"null")


# --- the parts, without servers ----------------------------------------------------------


def test_a_copy_of_a_history_keeps_the_leaders_ids() -> None:
    copy = RunHistory(4, 1 << 20)
    assert copy.mirror(77, 5, "progress", '{"n":5}') is not None
    assert (copy.epoch, copy.last_seq, copy.latest and copy.latest.id) == (77, 5, "77-5")
    assert copy.mirror(77, 5, "progress", '{"n":5}') is None  # held already
    assert copy.mirror(78, 6, "progress", '{"n":6}') is None  # another history
    copy.mirror(77, 6, "progress", '{"n":6}')
    assert [e.id for e in copy.after(5)] == ["77-6"]
    # A gap (events never seen) drops what is held: a viewer behind it gets the latest.
    copy.mirror(77, 9, "progress", '{"n":9}')
    assert [e.id for e in copy.resume("77-6")] == ["77-9"]
    assert [e.id for e in copy.after(6)] == ["77-9"]
    assert copy.mirror(77, 10, "complete", '{"n":10}') is not None
    assert copy.terminal and copy.mirror(77, 11, "progress", "{}") is None


def test_records_round_trip_and_garbage_is_refused() -> None:
    record = Record(1763827200123, 7, "error", "s", '{"status":"forbidden"}')
    assert Record.decode(record.encode().encode()) == record
    assert record.synthetic
    for garbage in (
        b"",
        b"1 2 progress p",
        b"x 2 progress p\n{}",
        b"1 2 ping p\n{}",
        b"1 0 progress p\n{}",
    ):
        assert Record.decode(garbage) is None


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("redis://redis:6379/0", True),
        ("rediss://user:pw@redis.internal:6380/2", True),
        ("unix:///run/redis/redis.sock", True),
        ("http://redis:6379", False),
        ("redis://", False),
        ("redis://redis:99999", False),
        ("redis://redis/x", False),
        ("unix://", False),
        ("redis://:hunter2@redis:99999/0", False),
        ("redis://:hunter2@redis:6379/db", False),
    ],
)
def test_redis_url_is_validated_without_echoing_it(url: str, accepted: bool) -> None:
    if accepted:
        assert load(redis_url=url).redis_url == url
        return
    with pytest.raises(ConfigError) as error:
        load(redis_url=url)
    assert str(error.value).startswith("BRIDGE_REDIS_URL: ")
    assert "hunter2" not in str(error.value)


def test_memory_url_and_empty_mean_one_process() -> None:
    assert load(redis_url="memory://").redis_url is None
    assert load(redis_url="").redis_url is None
    with pytest.raises(ConfigError, match="BRIDGE_REDIS_PREFIX"):
        load(redis_prefix="has space")


# --- sharing ---------------------------------------------------------------------------


async def test_viewers_on_two_replicas_cost_one_poll_per_interval(
    legacy: LegacyApi, cluster: dict[str, Any]
) -> None:
    run = legacy.scripted("shared", nodes=("a", "b"))
    interval = 0.1
    async with (
        replicas(legacy, cluster, poll_interval=interval) as (a, b),
        AsyncExitStack() as stack,
    ):
        session = await stack.enter_async_context(aiohttp.ClientSession())
        streams = await asyncio.gather(
            *(
                stack.enter_async_context(sse(f"{r.url}/v1/runs/shared/stream", session=session))
                for r in (a, b) * 10
            )
        )
        firsts = await asyncio.gather(*(s.next_named("progress") for s in streams))
        assert all(json.loads(e.data) == run.statuses[0] for e in firsts)
        assert len({e.id for e in firsts}) == 1
        # Concurrent cold connects on both replicas: only the leader ever asked upstream.
        assert min(a.bridge.upstream.requests_sent, b.bridge.upstream.requests_sent) == 0
        # One leader in the cluster, one follower.
        assert a.bridge.pollers.active == b.bridge.pollers.active == 1
        await wait_for(lambda: cluster_of(a).leading + cluster_of(b).leading == 1)

        # 20 viewers over 2 replicas, a fixed window: about one request per interval.
        window = 1.5
        before = legacy.requests["shared"]
        await asyncio.sleep(window)
        polls = legacy.requests["shared"] - before
        print(
            f"\nupstream requests, 20 viewers over 2 replicas, {window} s at {interval} s: {polls}"
        )
        assert window / interval - 3 <= polls <= window / interval + 2

        # Every change reaches every viewer on both replicas, with the same id.
        last = seq(firsts[0])
        for expected in run.statuses[1:]:
            run.advance()
            got = await asyncio.gather(*(s.next_named("progress", "complete") for s in streams))
            assert all(json.loads(e.data) == expected for e in got)
            assert len({e.id for e in got}) == 1
            assert seq(got[0]) == (last[0], last[1] + 1)
            last = seq(got[0])
        assert got[0].event == "complete"
        assert await asyncio.gather(*(s.rest() for s in streams)) == [[]] * len(streams)


async def test_a_viewer_on_a_follower_gets_the_latest_status_without_a_request(
    legacy: LegacyApi, cluster: dict[str, Any]
) -> None:
    run = legacy.scripted("late")
    async with replicas(legacy, cluster, poll_interval=5.0) as (a, b):
        async with sse(f"{a.url}/v1/runs/late/stream") as first:
            on_a = await first.next_named("progress")
            before = legacy.requests["late"]
            async with sse(f"{b.url}/v1/runs/late/stream") as second:
                on_b = await second.next_named("progress")
            assert json.loads(on_b.data) == run.statuses[0]
            assert on_b.id == on_a.id
            assert legacy.requests["late"] == before
            assert b.bridge.upstream.requests_sent == 0
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{b.url}/v1/runs/late") as r:
                    assert r.status == 200 and await r.json() == run.statuses[0]
                for replica, leading in ((a, 1), (b, 0)):
                    async with http.get(f"{replica.url}/metrics") as r:
                        text = await r.text()
                        assert "bridge_redis_connected 1.0" in text
                        assert f"bridge_pollers_leading {leading:.1f}" in text
            assert legacy.requests["late"] == before


async def test_an_ended_run_is_answered_from_redis_on_any_replica(
    legacy: LegacyApi, cluster: dict[str, Any]
) -> None:
    run = legacy.scripted("ended", nodes=("a",))
    async with replicas(legacy, cluster) as (a, b):
        async with sse(f"{a.url}/v1/runs/ended/stream") as s:
            await s.next_named("progress")
            run.advance(len(run.statuses))
            final = await s.next_named("complete", "progress")
            while final.event == "progress":
                final = await s.next_named("complete", "progress")
        await wait_for(lambda: a.bridge.pollers.active == 0)
        before = legacy.requests["ended"]
        async with sse(f"{b.url}/v1/runs/ended/stream") as s:
            events = await s.rest()
        assert [(e.event, e.id) for e in events] == [("complete", final.id)]
        # Reconnecting with the final id: 204, which stops EventSource.
        async with aiohttp.ClientSession() as http:
            headers = {"Last-Event-ID": final.id}
            async with http.get(f"{b.url}/v1/runs/ended/stream", headers=headers) as r:
                assert r.status == 204
        assert legacy.requests["ended"] == before


async def test_resume_on_another_replica_loses_nothing_and_repeats_nothing(
    legacy: LegacyApi, cluster: dict[str, Any]
) -> None:
    run = legacy.scripted("resume", nodes=("a", "b", "c"))
    async with (
        replicas(legacy, cluster) as (a, b),
        sse(f"{b.url}/v1/runs/resume/stream") as keeper,
    ):
        await keeper.next_named("progress")
        async with sse(f"{a.url}/v1/runs/resume/stream") as viewer:
            await viewer.next_named("progress")
            run.advance()
            seen = await viewer.next_named("progress")
            assert (await keeper.next_named("progress")).id == seen.id
        # Two changes while the viewer is away.
        missed = []
        for _ in range(2):
            run.advance()
            missed.append(await keeper.next_named("progress"))
        await wait_for(lambda: a.bridge.pollers.active == 0)
        # On the replica with the live copy, and on the one that has none any more.
        for replica in (b, a):
            url = f"{replica.url}/v1/runs/resume/stream"
            async with sse(url, {"Last-Event-ID": seen.id}) as resumed:
                got = [await resumed.next_named("progress") for _ in missed]
                assert [(e.id, e.data) for e in got] == [(e.id, e.data) for e in missed]
                with pytest.raises(TimeoutError):
                    await resumed.next_event(timeout=0.3)
        # The cursor query parameter works the same across replicas.
        async with sse(f"{a.url}/v1/runs/resume/stream?cursor={missed[0].id}") as resumed:
            assert (await resumed.next_named("progress")).id == missed[1].id


# --- takeover ----------------------------------------------------------------------------


async def test_leader_stopped_the_other_replica_takes_over_the_same_history(
    legacy: LegacyApi, cluster: dict[str, Any]
) -> None:
    run = legacy.scripted("takeover", nodes=("a", "b", "c"))
    async with AsyncExitStack() as outer:
        b = await outer.enter_async_context(running_bridge(legacy.url, **cluster))
        async with AsyncExitStack() as inner:
            a = await inner.enter_async_context(running_bridge(legacy.url, **cluster))
            on_a = await inner.enter_async_context(sse(f"{a.url}/v1/runs/takeover/stream"))
            await on_a.next_named("progress")
            await wait_for(lambda: cluster_of(a).leading == 1)
            on_b = await outer.enter_async_context(sse(f"{b.url}/v1/runs/takeover/stream"))
            await on_b.next_named("progress")
            assert cluster_of(b).leading == 0
            run.advance()
            last = await on_a.next_named("progress")
            assert (await on_b.next_named("progress")).id == last.id
        # Replica a is gone (its viewers' streams ended; they reconnect elsewhere).
        await wait_for(lambda: cluster_of(b).leading == 1)
        for expected in run.statuses[2:4]:
            run.advance()
            event = await on_b.next_named("progress")
            assert json.loads(event.data) == expected
            assert seq(event) == (seq(last)[0], seq(last)[1] + 1)
            last = event
        # a's viewer, reconnecting to b with its last id, gets exactly what it missed.
        async with sse(
            f"{b.url}/v1/runs/takeover/stream", {"Last-Event-ID": on_a.events[-1].id}
        ) as s:
            got = [await s.next_named("progress") for _ in range(2)]
            assert [e.id for e in got] == [e.id for e in on_b.events[-2:]]


async def test_a_dead_replicas_lease_is_taken_over_once_it_expires(
    legacy: LegacyApi, cluster: dict[str, Any]
) -> None:
    run = legacy.scripted("orphan", nodes=("a", "b"))
    async with (
        running_bridge(legacy.url, **cluster) as b,
        sse(f"{b.url}/v1/runs/orphan/stream") as s,
    ):
        first = await s.next_named("progress")
        store = cluster_of(b).store
        key = b.bridge.pollers.key("orphan", {})
        # A replica that died holding the lease: nobody may poll until it expires.
        stolen = time.monotonic()
        await store.client.set(store.key(key, "lease"), "dead-replica-1", px=600)
        run.advance()
        event = await s.next_named("progress", timeout=5)
        assert time.monotonic() - stolen >= 0.55
        during = [
            r for r in legacy.seen if r.run_id == "orphan" and stolen + 0.1 < r.at < stolen + 0.55
        ]
        assert during == []
        assert cluster_of(b).leading == 1
        assert json.loads(event.data) == run.statuses[1]
        assert seq(event) == (seq(first)[0], seq(first)[1] + 1)


# --- stopping --------------------------------------------------------------------------


async def test_polling_stops_after_the_last_viewer_on_every_replica_left(
    legacy: LegacyApi, cluster: dict[str, Any]
) -> None:
    legacy.scripted("leave")
    async with replicas(legacy, cluster) as (a, b):
        on_a = AsyncExitStack()
        on_b = AsyncExitStack()
        async with on_b:
            async with on_a:
                s = await on_a.enter_async_context(sse(f"{a.url}/v1/runs/leave/stream"))
                await s.next_named("progress")
                await wait_for(lambda: cluster_of(a).leading == 1)
                s = await on_b.enter_async_context(sse(f"{b.url}/v1/runs/leave/stream"))
                await s.next_named("progress")
            # The leader's viewers left; b's viewer keeps the run polled (by a, still).
            count = legacy.requests["leave"]
            await wait_for(lambda: legacy.requests["leave"] >= count + 5)
        await wait_for(lambda: a.bridge.pollers.active == b.bridge.pollers.active == 0)
        stopped_at = legacy.requests["leave"]
        # Ten intervals for a stray poller to show itself: none may.
        await asyncio.sleep(0.5)
        assert legacy.requests["leave"] == stopped_at
        store = cluster_of(a).store
        key = a.bridge.pollers.key("leave", {})
        assert await store.client.exists(store.key(key, "lease"), store.key(key, "interest")) == 0


# --- credentials -------------------------------------------------------------------------


async def test_different_credentials_never_share_across_replicas(
    legacy: LegacyApi, cluster: dict[str, Any]
) -> None:
    run = legacy.scripted("secret")
    legacy.require("secret", "authorization", "Bearer alice")
    alice = {"Authorization": "Bearer alice"}
    async with (
        replicas(legacy, cluster) as (a, b),
        sse(f"{a.url}/v1/runs/secret/stream", alice) as s,
    ):
        first = await s.next_named("progress")
        assert json.loads(first.data) == run.statuses[0]
        async with aiohttp.ClientSession() as http:
            for headers, status in (({"Authorization": "Bearer mallory"}, 403), ({}, 401)):
                for path in ("/v1/runs/secret/stream", "/v1/runs/secret"):
                    async with http.get(f"{b.url}{path}", headers=headers) as r:
                        assert r.status == status
                        body = await r.read()
                        assert b"queued" not in body and b"nodes" not in body
        # Alice on the other replica shares her channel: same id, no request of its own.
        async with sse(f"{b.url}/v1/runs/secret/stream", alice) as s2:
            assert (await s2.next_named("progress")).id == first.id
        assert a.bridge.pollers.key("secret", alice) == b.bridge.pollers.key("secret", alice)
        assert a.bridge.pollers.key("secret", alice) != b.bridge.pollers.key("secret", {})
        # Redis holds statuses and digests, never a forwarded header.
        client = cluster_of(a).store.client
        prefix = cluster["redis_prefix"]
        dump = b""
        async for name in client.scan_iter(match=f"{prefix}*"):
            kind = (await client.type(name)).decode()
            if kind == "string":
                dump += name + (await client.get(name) or b"")
            elif kind == "list":
                dump += name + b"".join(await client.lrange(name, 0, -1))
            elif kind == "hash":
                dump += name + b"".join(k + v for k, v in (await client.hgetall(name)).items())
            elif kind == "zset":
                dump += name + b"".join(await client.zrange(name, 0, -1))
        assert b"queued" in dump  # the history is there...
        assert b"alice" not in dump.lower() and b"mallory" not in dump.lower()
        assert b"bearer" not in dump.lower()


async def test_credentials_refused_mid_stream_end_every_replicas_viewers(
    legacy: LegacyApi, cluster: dict[str, Any]
) -> None:
    legacy.scripted("revoked")
    legacy.require("revoked", "x-api-key", "k1")
    key = {"X-Api-Key": "k1"}
    async with (
        replicas(legacy, cluster) as (a, b),
        sse(f"{a.url}/v1/runs/revoked/stream", key) as on_a,
        sse(f"{b.url}/v1/runs/revoked/stream", key) as on_b,
    ):
        await on_a.next_named("progress")
        await on_b.next_named("progress")
        legacy.require("revoked", "x-api-key", "k2")
        ends = [await s.next_named("error") for s in (on_a, on_b)]
        assert ends[0].id == ends[1].id
        assert json.loads(ends[0].data)["status"] == "forbidden"
        assert [await s.rest() for s in (on_a, on_b)] == [[], []]
        # The bridge's own error is not history to serve: the next viewer asks upstream.
        await wait_for(lambda: a.bridge.pollers.active == b.bridge.pollers.active == 0)
        code, body = await status_of(f"{b.url}/v1/runs/revoked/stream", key)
        assert (code, body["error"]) == (403, "forbidden")
        async with sse(f"{a.url}/v1/runs/revoked/stream", {"X-Api-Key": "k2"}) as s:
            assert (await s.next_named("progress")).id.split("-")[0] != ends[0].id.split("-")[0]


async def test_a_multi_run_stream_on_a_follower(legacy: LegacyApi, cluster: dict[str, Any]) -> None:
    runs = [legacy.scripted(run_id) for run_id in ("m1", "m2")]
    async with (
        replicas(legacy, cluster) as (a, b),
        sse(f"{a.url}/v1/runs/m1/stream") as s1,
        sse(f"{a.url}/v1/runs/m2/stream") as s2,
    ):
        ids = {
            "m1": (await s1.next_named("progress")).id,
            "m2": (await s2.next_named("progress")).id,
        }
        async with sse(f"{b.url}/v1/streams?runs=m1,m2") as multi:
            got = [json.loads((await multi.next_named("progress")).data) for _ in runs]
            assert {g["run_id"]: g["id"] for g in got} == ids
            assert b.bridge.upstream.requests_sent == 0  # b follows a for both runs
            runs[1].advance()
            change = json.loads((await multi.next_named("progress")).data)
            assert change["run_id"] == "m2" and change["data"] == runs[1].statuses[1]
            assert change["id"] == (await s2.next_named("progress")).id


async def test_first_fetch_errors_reach_the_viewer_as_in_one_process(
    legacy: LegacyApi, cluster: dict[str, Any]
) -> None:
    legacy.scripted("flaky")
    legacy.scripted("slow")
    async with replicas(legacy, cluster, upstream_timeout=0.3) as (a, b):
        for replica in (a, b):
            code, body = await status_of(f"{replica.url}/v1/runs/missing/stream")
            assert (code, body["error"]) == (404, "not_found")
        legacy.inject("flaky", Fault("status", status=500))
        code, body = await status_of(f"{b.url}/v1/runs/flaky/stream")
        assert (code, body["error"]) == (502, "upstream_unavailable")
        legacy.inject("slow", Fault("hang"))
        code, body = await status_of(f"{a.url}/v1/runs/slow/stream")
        assert (code, body["error"]) == (504, "upstream_timeout")
        # The faults are spent: both runs stream now.
        for run_id in ("flaky", "slow"):
            async with sse(f"{b.url}/v1/runs/{run_id}/stream") as s:
                assert s.status == 200
                await s.next_named("progress")


# --- Redis lost and back -------------------------------------------------------------------


async def test_redis_lost_mid_stream_viewers_keep_pinging_then_recover(
    legacy: LegacyApi, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bridge")
    server = RedisServer(tmp_path)
    server.start()
    cluster = {"redis_url": server.url, "redis_prefix": "outage:"}
    run = legacy.scripted("outage", nodes=("a", "b", "c"))
    try:
        async with (
            replicas(legacy, cluster, ping_interval=0.1) as (a, b),
            sse(f"{a.url}/v1/runs/outage/stream") as on_a,
            sse(f"{b.url}/v1/runs/outage/stream") as on_b,
        ):
            await on_a.next_named("progress")
            await on_b.next_named("progress")
            run.advance()
            last = await on_a.next_named("progress")
            assert (await on_b.next_named("progress")).id == last.id

            server.kill()
            await wait_for(lambda: not cluster_of(a).link.up and not cluster_of(b).link.up)
            for replica in (a, b):
                code, body = await status_of(f"{replica.url}/readyz")
                assert code == 503 and body["redis"] == "unavailable"
            # Polling pauses (no lease to hold); the streams keep pinging.
            polls = legacy.requests["outage"]
            for stream in (on_a, on_b):
                for _ in range(3):
                    assert (await stream.next_event(timeout=2)).event == "ping"
            assert legacy.requests["outage"] <= polls + 1
            # A run this replica has no copy of cannot start: 503, retry later.
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{a.url}/v1/runs/other/stream") as r:
                    assert r.status == 503 and "Retry-After" in r.headers
                    assert (await r.json())["error"] == "cluster_unavailable"

            await server.astart()  # empty: it kept nothing
            await wait_for(lambda: cluster_of(a).link.up and cluster_of(b).link.up, timeout=10)
            for replica in (a, b):
                code, body = await status_of(f"{replica.url}/readyz")
                assert code == 200 and body["redis"] == "connected"
            for expected in run.statuses[2:4]:
                run.advance()
                event = await on_a.next_named("progress", timeout=5)
                assert json.loads(event.data) == expected
                assert seq(event) == (seq(last)[0], seq(last)[1] + 1)
                assert (await on_b.next_named("progress")).id == event.id
                last = event
    finally:
        server.kill()
    records = caplog.records  # every logger: the bridge's, redis-py's, asyncio's
    assert not [r for r in records if r.exc_info], "no traceback"
    assert not [r for r in records if r.levelno >= logging.ERROR]
    lost = [r for r in records if "lost Redis" in r.getMessage()]
    assert 1 <= len(lost) <= 2  # one line per replica, not one per poll
    assert not [r for r in records if "redis://" in r.getMessage() and "@" in r.getMessage()]


async def test_redis_down_at_start_the_bridge_serves_not_ready_until_it_answers(
    legacy: LegacyApi, tmp_path: Path
) -> None:
    legacy.scripted("early")
    server = RedisServer(tmp_path)
    cluster = {"redis_url": f"redis://:s3cret@127.0.0.1:{server.port}/0", "redis_timeout": 0.5}
    try:
        async with running_bridge(legacy.url, **cluster) as b:
            code, _ = await status_of(f"{b.url}/healthz")
            assert code == 200
            code, body = await status_of(f"{b.url}/readyz")
            assert code == 503 and body["redis"] == "unavailable"
            code, body = await status_of(f"{b.url}/v1/runs/early/stream")
            assert (code, body["error"]) == (503, "cluster_unavailable")
            assert legacy.requests["early"] == 0
            server.extra_args = ["--requirepass", "s3cret"]
            await server.astart()
            await wait_for(lambda: cluster_of(b).link.up, timeout=10)
            async with sse(f"{b.url}/v1/runs/early/stream") as s:
                await s.next_named("progress")
    finally:
        server.kill()


# --- the cadence across handovers ----------------------------------------------------------

CADENCE = 0.4


async def test_a_leader_stopped_mid_poll_leaves_the_cadence_to_its_successor(
    legacy: LegacyApi, cluster: dict[str, Any]
) -> None:
    """SIGTERM-like stop of the leader while its poll is in flight: it records that poll's
    start as it resigns, so the successor counts from there instead of polling at once."""
    legacy.scripted("midpoll")
    settings = {**cluster, "poll_interval": CADENCE}
    async with AsyncExitStack() as outer:
        b = await outer.enter_async_context(running_bridge(legacy.url, **settings))
        async with AsyncExitStack() as inner:
            a = await inner.enter_async_context(running_bridge(legacy.url, **settings))
            on_a = await inner.enter_async_context(sse(f"{a.url}/v1/runs/midpoll/stream"))
            await on_a.next_named("progress")
            await wait_for(lambda: cluster_of(a).leading == 1)
            on_b = await outer.enter_async_context(sse(f"{b.url}/v1/runs/midpoll/stream"))
            await on_b.next_named("progress")
            # The leader's next poll hangs at the upstream; a stops while it is in flight.
            legacy.inject("midpoll", Fault("hang"))
            count = legacy.requests["midpoll"]
            await wait_for(lambda: legacy.requests["midpoll"] == count + 1, timeout=3)
            in_flight = [r.at for r in legacy.seen if r.run_id == "midpoll"][-1]
            store = cluster_of(a).store
            meta = store.key(a.bridge.pollers.key("midpoll", {}), "meta")
        # Redis counts the run as polled when the poll in flight started, not before.
        seconds, micros = await store.client.time()
        polled = int(await store.client.hget(meta, "polled"))
        age_in_redis = (seconds * 1000 + micros // 1000 - polled) / 1000
        assert age_in_redis <= time.monotonic() - in_flight + 0.05, age_in_redis
        # b takes over and polls on the cadence: not at once.
        await wait_for(lambda: cluster_of(b).leading == 1)
        await wait_for(lambda: legacy.requests["midpoll"] >= count + 2, timeout=5)
        after = [r.at for r in legacy.seen if r.run_id == "midpoll"][-1]
        assert after - in_flight >= CADENCE * 0.9, after - in_flight


async def test_after_redis_lost_the_keys_the_next_leader_waits_an_interval(
    legacy: LegacyApi, cluster: dict[str, Any]
) -> None:
    """FLUSHALL: the copy is put back counted as polled just now, so whichever replica
    leads next waits an interval instead of polling at once."""
    legacy.scripted("flushed")
    settings = {**cluster, "poll_interval": CADENCE}
    async with replicas(legacy, settings) as (a, b):
        async with (
            sse(f"{a.url}/v1/runs/flushed/stream") as s1,
            sse(f"{b.url}/v1/runs/flushed/stream") as s2,
        ):
            await s1.next_named("progress")
            await s2.next_named("progress")
            store = cluster_of(a).store
            key = a.bridge.pollers.key("flushed", {})
            count = legacy.requests["flushed"]
            await wait_for(lambda: legacy.requests["flushed"] == count + 1, timeout=3)
            for part in ("meta", "events", "lease", "interest"):
                await store.client.delete(store.key(key, part))
            flushed = time.monotonic()
            # A replica puts its copy back, with a poll time (bounded wait on Redis).
            async with asyncio.timeout(3):
                while not await store.client.hexists(store.key(key, "meta"), "polled"):
                    await asyncio.sleep(0.02)
            await wait_for(lambda: legacy.requests["flushed"] >= count + 3, timeout=5)
        times = [r.at for r in legacy.seen if r.run_id == "flushed" and r.at >= flushed]
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert min(gaps) >= CADENCE * 0.9, gaps


# --- a leader that cannot reach the upstream steps aside ----------------------------------


class Relay:
    """An HTTP relay to the upstream for one replica; ``cut`` makes it drop every request."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.cut = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.cut:
            assert request.transport is not None
            request.transport.close()  # the path is gone: the replica sees a reset
            return web.Response(status=502)
        async with (
            aiohttp.ClientSession() as http,
            http.get(self.upstream + request.path_qs, headers=request.headers) as r,
        ):
            return web.Response(body=await r.read(), status=r.status, content_type=r.content_type)


async def test_a_leader_cut_off_from_the_upstream_hands_the_run_over(
    legacy: LegacyApi, cluster: dict[str, Any]
) -> None:
    run = legacy.scripted("cutoff", nodes=("a", "b", "c"))
    relay = Relay(legacy.url)
    app = web.Application()
    app.router.add_get("/{tail:.*}", relay.handle)
    settings = {**cluster, "poll_interval": 0.1, "backoff_max": 0.1}
    async with (
        serving_app(app) as through_relay,
        running_bridge(through_relay, **settings) as a,
        sse(f"{a.url}/v1/runs/cutoff/stream") as on_a,
    ):
        await on_a.next_named("progress")
        await wait_for(lambda: cluster_of(a).leading == 1)
        async with running_bridge(legacy.url, **settings) as b:
            async with sse(f"{b.url}/v1/runs/cutoff/stream") as on_b:
                await on_b.next_named("progress")
                assert cluster_of(b).leading == 0
                relay.cut = True
                cut = time.monotonic()
                run.advance()
                # b, which can reach the upstream, takes over; both replicas' viewers
                # get the change, with nothing lost and no error.
                for stream in (on_b, on_a):
                    event = await stream.next_named("progress", timeout=5)
                    assert json.loads(event.data) == run.statuses[1]
                took = time.monotonic() - cut
                assert cluster_of(b).leading == 1 and cluster_of(a).leading == 0
                # No flapping: a does not take the lease back while b leads.
                relay.cut = False
                run.advance()
                await on_a.next_named("progress", timeout=5)
                assert cluster_of(a).leading == 0
                assert took < 5, took


# --- targeted delivery -------------------------------------------------------------------


POKE = {"Authorization": "Bearer poke-secret-0123456789"}


def received(replica: RunningBridge) -> float:
    """Pub/sub messages the replica received from Redis (its metric)."""
    value = replica.bridge.metrics.registry.get_sample_value("bridge_redis_messages_received_total")
    assert value is not None
    return value


async def subscribers(store: Any, channel: str) -> int:
    """How many pub/sub connections Redis has subscribed to ``channel``."""
    ((_, count),) = await store.client.pubsub_numsub(channel)
    return int(count)


async def test_a_replica_receives_only_the_events_of_runs_its_viewers_watch(
    legacy: LegacyApi, cluster: dict[str, Any]
) -> None:
    shared = legacy.scripted("shared-run", nodes=("a", "b", "c"))
    solo = legacy.scripted("solo-run", nodes=("a", "b", "c", "d"))
    # A long interval: an event a follower gets before its next sync came by pub/sub.
    async with (
        replicas(legacy, cluster, poll_interval=30.0, poke_token="poke-secret-0123456789") as (
            a,
            b,
        ),
        sse(f"{a.url}/v1/runs/shared-run/stream") as shared_on_a,
        sse(f"{b.url}/v1/runs/shared-run/stream") as shared_on_b,
        sse(f"{b.url}/v1/runs/solo-run/stream") as solo_on_b,
    ):
        for stream in (shared_on_a, shared_on_b, solo_on_b):
            await stream.next_named("progress")
        store = cluster_of(a).store
        shared_live = store.live_channel(a.bridge.pollers.key("shared-run", {}))
        solo_live = store.live_channel(b.bridge.pollers.key("solo-run", {}))
        assert cluster_of(a).link.following == {shared_live}
        assert cluster_of(b).link.following == {shared_live, solo_live}
        assert await subscribers(store, shared_live) == 2
        assert await subscribers(store, solo_live) == 1

        received_on_a = received(a)
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                solo.advance()
                async with http.post(f"{b.url}/v1/runs/solo-run/poll", headers=POKE) as r:
                    assert r.status == 202
                await solo_on_b.next_named("progress", timeout=10)
            # A change of the shared run reaches the follower at once, not at its next
            # sync 30 s away: whichever replica leads, the other one is told by Redis.
            shared.advance()
            async with http.post(f"{a.url}/v1/runs/shared-run/poll", headers=POKE) as r:
                assert r.status == 202
            on_a = await shared_on_a.next_named("progress", timeout=10)
            on_b = await shared_on_b.next_named("progress", timeout=10)
            assert on_a.id == on_b.id and json.loads(on_b.data) == shared.statuses[1]
        # a got the shared run's event (and the pokes of everyone), none of solo-run's:
        # 3 pokes of solo-run, 1 poke and 1 event of shared-run.
        assert received(a) - received_on_a == 5

    # Viewers gone, pollers stopped: nobody is subscribed any more.
    assert await subscribers(store, shared_live) == 0
    assert await subscribers(store, solo_live) == 0


async def test_a_replica_unsubscribes_when_its_last_viewer_of_a_run_leaves(
    legacy: LegacyApi, cluster: dict[str, Any]
) -> None:
    legacy.scripted("leaving")
    async with replicas(legacy, cluster) as (a, b):
        key = a.bridge.pollers.key("leaving", {})
        store = cluster_of(a).store
        live = store.live_channel(key)
        async with sse(f"{a.url}/v1/runs/leaving/stream") as on_a:
            await on_a.next_named("progress")
            async with sse(f"{b.url}/v1/runs/leaving/stream") as on_b:
                await on_b.next_named("progress")
                assert await subscribers(store, live) == 2
            await wait_for(lambda: not cluster_of(b).link.following)
            assert await subscribers(store, live) == 1
            assert cluster_of(a).link.following == {live}


async def test_subscriptions_are_restored_when_redis_comes_back(
    legacy: LegacyApi, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path)
    server.start()
    run = legacy.scripted("again", nodes=("a", "b", "c", "d"))
    try:
        async with (
            replicas(
                legacy,
                {"redis_url": server.url, "redis_prefix": "again:"},
                poll_interval=30.0,
                poke_token="poke-secret-0123456789",
            ) as (a, b),
            sse(f"{a.url}/v1/runs/again/stream") as on_a,
            sse(f"{b.url}/v1/runs/again/stream") as on_b,
        ):
            await on_a.next_named("progress")
            await on_b.next_named("progress")
            live = cluster_of(a).store.live_channel(a.bridge.pollers.key("again", {}))
            server.kill()
            await wait_for(lambda: not cluster_of(a).link.up and not cluster_of(b).link.up)
            await server.astart()
            await wait_for(lambda: cluster_of(a).link.up and cluster_of(b).link.up, timeout=10)
            store = cluster_of(a).store
            await wait_for_async(lambda: subscribers(store, live), 2)
            # And the next change reaches both at once (by pub/sub, not the 30 s sync).
            run.advance()
            async with aiohttp.ClientSession() as http:
                for replica in (a, b):
                    async with http.post(f"{replica.url}/v1/runs/again/poll", headers=POKE) as r:
                        assert r.status == 202
            got = [await s.next_named("progress", timeout=10) for s in (on_a, on_b)]
            assert got[0].id == got[1].id and json.loads(got[0].data) == run.statuses[1]
    finally:
        server.kill()


async def wait_for_async(read: Any, expected: object, timeout: float = 5.0) -> None:
    """Wait until the awaitable ``read()`` gives ``expected`` (bounded)."""
    async with asyncio.timeout(timeout):
        while (value := await read()) != expected:
            await asyncio.sleep(0.02)
    assert value == expected


async def test_a_busy_connection_pool_is_not_a_redis_outage(
    legacy: LegacyApi, cluster: dict[str, Any]
) -> None:
    """Every pooled connection in use for BRIDGE_REDIS_TIMEOUT (a replica starting
    thousands of runs at once): that call fails, Redis is not called down for it."""
    legacy.scripted("busy")
    async with running_bridge(legacy.url, **cluster, redis_timeout=0.2) as a:
        link = cluster_of(a).link
        pool = link.client.connection_pool
        held = []
        with suppress(RedisConnectionError):  # the listener holds one already
            for _ in range(MAX_CONNECTIONS):
                held.append(await pool.get_connection())
        assert len(held) >= MAX_CONNECTIONS - 2
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{a.url}/v1/runs/busy") as r:
                    assert r.status == 503
                    assert (await r.json())["error"] == "cluster_unavailable"
            assert link.up
        finally:
            for connection in held:
                await pool.release(connection)
        async with sse(f"{a.url}/v1/runs/busy/stream") as stream:
            assert (await stream.next_named("progress")).event == "progress"


@pytest.mark.redis
async def test_restore_puts_back_the_whole_tail_and_a_fence_refuses_commits(
    redis_server: RedisServer,
) -> None:
    """Redis holds an older part of a history (a replica promoted before the leader's last
    commits reached it): a copy offers everything, and Redis takes every record after its
    newest one, within the history's bounds, and says so on the run's channel. A fenced
    primary refuses every commit."""
    prefix = f"t{uuid.uuid4().hex[:10]}:"
    key = ChannelKey("tail", "digest")
    async with Redis.from_url(redis_server.url) as client:
        store = Store(
            client, prefix, lease_ms=5000, keep_ms=60000, history_size=4, history_max_bytes=10**6
        )
        epoch = 42
        assert (await store.tick(key, "leader", active=True)).holder == "leader"
        for n in range(1, 4):
            done = await store.commit(key, "leader", epoch, n - 1, "progress", "p", f'{{"n": {n}}}')
            assert (done.epoch, done.seq) == (epoch, n)
        records = [Record(epoch, n, "progress", "p", f'{{"n": {n}}}') for n in range(1, 7)]
        async with client.pubsub() as pubsub:
            await pubsub.subscribe(store.live_channel(key))
            assert await store.restore(key, epoch, records)
            messages = []
            while len(messages) < 2:
                message = await pubsub.get_message(timeout=2)
                assert message is not None
                messages.append(message)
        assert messages[1]["data"].endswith(b"\n!")
        held = await store.records(key, 10)
        assert [r.seq for r in held] == [3, 4, 5, 6]
        assert held[-1] == records[-1]
        # An older or equal offer changes nothing.
        assert not await store.restore(key, epoch, records[:5])
        assert (await store.tick(key, "leader", active=True)).seq == 6
        # The fence: commits refused, even the lease holder's.
        await client.set(store.fence_key, "127.0.0.1 1 9")
        with pytest.raises(Fenced):
            await store.commit(key, "leader", epoch, 6, "progress", "p", '{"n": 7}')
        await client.delete(store.fence_key)
        assert (await store.commit(key, "leader", epoch, 6, "progress", "p", '{"n": 7}')).seq == 7
