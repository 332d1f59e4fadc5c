"""GET /v1/streams?runs=a,b,c: several runs on one SSE connection, against the real bridge."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from bridge.demo.legacy_api import LegacyApi
from bridge.streams.multi import decode_cursor, encode_cursor, entry, run_key
from bridge.tools.eventstream import ParsedEvent
from tests.support import SseStream, auth_service, running_bridge, sse, wait_for

NODES = ("a", "b")


def body(event: ParsedEvent) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(event.data)
    return data


async def next_run_event(s: SseStream) -> tuple[str, str, dict[str, Any]]:
    event = await s.next_named("progress", "complete", "error")
    data = body(event)
    assert set(data) == {"run_id", "id", "state", "progress", "detail", "data"}
    # The default state expression is .status; no progress or detail expression is set.
    assert data["state"] == data["data"].get("status") and data["progress"] is None
    assert data["detail"] is None
    assert event.has_id and event.id.startswith("m1.")
    return event.event, data["run_id"], data["data"]


async def test_runs_interleave_on_one_connection(legacy: LegacyApi) -> None:
    r1 = legacy.scripted("r1", nodes=NODES)
    r2 = legacy.scripted("r2", nodes=NODES)
    async with running_bridge(legacy.url) as b, sse(f"{b.url}/v1/streams?runs=r1,r2") as s:
        assert s.status == 200
        assert s.response.headers["Content-Type"].startswith("text/event-stream")
        assert s.response.headers["Cache-Control"] == "no-cache"
        assert await next_run_event(s) == ("progress", "r1", r1.statuses[0])
        assert await next_run_event(s) == ("progress", "r2", r2.statuses[0])
        assert s.raw.startswith(b"retry: ")
        r2.advance()
        assert await next_run_event(s) == ("progress", "r2", r2.statuses[1])
        r1.advance()
        assert await next_run_event(s) == ("progress", "r1", r1.statuses[1])
        r2.advance()
        assert await next_run_event(s) == ("progress", "r2", r2.statuses[2])
        # One poller per run, shared with a single-run viewer of the same run.
        async with sse(f"{b.url}/v1/runs/r1/stream") as single:
            assert body(await single.next_named("progress")) == r1.statuses[1]
            assert b.bridge.pollers.active == 2


async def test_one_run_ending_does_not_end_the_others(legacy: LegacyApi) -> None:
    r1 = legacy.scripted("r1", nodes=NODES, outcome="completed")
    r2 = legacy.scripted("r2", nodes=NODES, outcome="failed")
    async with running_bridge(legacy.url) as b, sse(f"{b.url}/v1/streams?runs=r1,r2") as s:
        await next_run_event(s)
        await next_run_event(s)
        r1.advance(len(r1.statuses))
        assert await next_run_event(s) == ("complete", "r1", r1.statuses[-1])
        r2.advance()
        assert await next_run_event(s) == ("progress", "r2", r2.statuses[1])
        r2.advance(len(r2.statuses))
        name, run, data = await next_run_event(s)
        assert (name, run, data["status"]) == ("error", "r2", "failed")
        assert data["errorMessage"] == "Node b failed"
        # Both ended: the stream closes by itself, nothing after the last terminal event.
        assert await s.rest() == []


async def test_resume_with_one_id_covers_every_run(legacy: LegacyApi) -> None:
    r1 = legacy.scripted("r1", nodes=("a", "b", "c", "d"))
    r2 = legacy.scripted("r2", nodes=("a", "b", "c", "d"))
    url_runs = "/v1/streams?runs=r1,r2"
    async with running_bridge(legacy.url) as b, sse(b.url + url_runs) as keeper:
        # Another viewer keeps both pollers (and so both histories) going.
        await next_run_event(keeper)
        await next_run_event(keeper)
        async with sse(b.url + url_runs) as first:
            await next_run_event(first)
            await next_run_event(first)
            r1.advance()
            assert await next_run_event(first) == ("progress", "r1", r1.statuses[1])
            last_id = first.events[-1].id
        assert await next_run_event(keeper) == ("progress", "r1", r1.statuses[1])
        # Missed while away: two steps of r1, three of r2.
        for run in (r1, r2, r1, r2, r2):
            expected = run.advance()
            assert (await next_run_event(keeper))[2] == expected
        async with sse(b.url + url_runs, headers={"Last-Event-ID": last_id}) as again:
            got = [await next_run_event(again) for _ in range(5)]
            assert [(run, data) for _, run, data in got] == [
                ("r1", r1.statuses[2]),
                ("r1", r1.statuses[3]),
                ("r2", r2.statuses[1]),
                ("r2", r2.statuses[2]),
                ("r2", r2.statuses[3]),
            ]
            # Nothing twice, nothing else: the next event is the next change.
            r2.advance()
            assert await next_run_event(again) == ("progress", "r2", r2.statuses[4])
            resume_id = again.events[-1].id
        assert (await next_run_event(keeper))[2] == r2.statuses[4]
        # The cursor query parameter does the same where headers cannot be set.
        r1.advance()
        assert (await next_run_event(keeper))[2] == r1.statuses[4]
        async with sse(f"{b.url}{url_runs}&cursor={resume_id}") as by_query:
            assert await next_run_event(by_query) == ("progress", "r1", r1.statuses[4])


async def test_resume_after_every_run_ended_is_204(legacy: LegacyApi) -> None:
    r1 = legacy.scripted("r1", nodes=NODES)
    r1.advance(len(r1.statuses))
    r2 = legacy.scripted("r2", nodes=NODES, outcome="cancelled")
    r2.advance(len(r2.statuses))
    async with running_bridge(legacy.url) as b:
        async with sse(f"{b.url}/v1/streams?runs=r1,r2") as s:
            events = [e for e in await s.rest() if e.event != "ping"]
            assert [(e.event, body(e)["run_id"]) for e in events] == [
                ("complete", "r1"),
                ("error", "r2"),
            ]
        async with sse(f"{b.url}/v1/streams?runs=r1,r2", {"Last-Event-ID": events[-1].id}) as s:
            assert s.status == 204


async def test_a_run_added_on_reconnect_starts_at_its_current_status(legacy: LegacyApi) -> None:
    r1 = legacy.scripted("r1", nodes=NODES)
    r2 = legacy.scripted("r2", nodes=NODES)
    async with running_bridge(legacy.url) as b, sse(f"{b.url}/v1/streams?runs=r1") as keeper:
        await next_run_event(keeper)
        async with sse(f"{b.url}/v1/streams?runs=r1") as s:
            await next_run_event(s)
            cursor = s.events[-1].id
        r2.advance()
        async with sse(f"{b.url}/v1/streams?runs=r1,r2", {"Last-Event-ID": cursor}) as s:
            # r1: nothing new, so nothing replayed; r2: its current status.
            assert await next_run_event(s) == ("progress", "r2", r2.statuses[1])
            r1.advance()
            assert await next_run_event(s) == ("progress", "r1", r1.statuses[1])


async def test_a_forbidden_run_refuses_the_whole_stream(legacy: LegacyApi) -> None:
    legacy.scripted("open", nodes=NODES)
    legacy.scripted("secret", nodes=NODES)
    legacy.require("secret", "x-api-key", "k-1")
    url_runs = "/v1/streams?runs=open,secret"
    async with running_bridge(legacy.url) as b, aiohttp.ClientSession() as session:
        for headers, status, code in (
            ({}, 401, "unauthorized"),
            ({"X-Api-Key": "k-2"}, 403, "forbidden"),
        ):
            async with session.get(b.url + url_runs, headers=headers) as response:
                assert response.status == status
                assert response.headers["Content-Type"] == "application/json"
                answer = await response.json()
                assert answer["error"] == code and answer["run_id"] == "secret"
                assert answer["message"]
        async with session.get(f"{b.url}/v1/streams?runs=open,nope") as response:
            assert response.status == 404
            assert (await response.json())["run_id"] == "nope"
        # Refused runs leave no poller behind; the open run's lease was released too.
        await wait_for(lambda: b.bridge.pollers.active == 0)
        async with sse(b.url + url_runs, {"X-Api-Key": "k-1"}) as s:
            assert s.status == 200
            runs = {(await next_run_event(s))[1] for _ in range(2)}
            assert runs == {"open", "secret"}


async def test_requests_that_are_not_acceptable_never_reach_upstream(legacy: LegacyApi) -> None:
    legacy.scripted("r1", nodes=NODES)
    async with (
        running_bridge(legacy.url, multi_max_runs=3) as b,
        aiohttp.ClientSession() as session,
    ):
        for query, code in (
            ("", "invalid_request"),
            ("?runs=", "invalid_request"),
            ("?runs=,,", "invalid_request"),
            ("?runs=r1,..", "invalid_run_id"),
            ("?runs=r1,a%2Fb", "invalid_run_id"),
            ("?runs=r1,a%0Ab", "invalid_run_id"),
            ("?runs=r1,r2,r3,r4", "invalid_request"),
        ):
            async with session.get(f"{b.url}/v1/streams{query}") as response:
                assert response.status == 400, query
                assert (await response.json())["error"] == code, query
        assert sum(legacy.requests.values()) == 0
        # Duplicates are merged: one run, each event once.
        async with sse(f"{b.url}/v1/streams?runs=r1,r1&runs=r1") as s:
            await next_run_event(s)
            legacy.runs["r1"].advance()  # type: ignore[union-attr]
            await next_run_event(s)
            assert len(s.events) == 2


async def test_drain_ends_the_stream_and_a_reconnect_resumes(legacy: LegacyApi) -> None:
    r1 = legacy.scripted("r1", nodes=NODES)
    r2 = legacy.scripted("r2", nodes=NODES)
    async with running_bridge(legacy.url) as b, sse(f"{b.url}/v1/streams?runs=r1,r2") as s:
        await next_run_event(s)
        await next_run_event(s)
        b.bridge.drain()
        assert await s.rest() == []
    async with running_bridge(legacy.url) as b:
        r1.advance()
        cursor = s.events[-1].id
        async with sse(f"{b.url}/v1/streams?runs=r1,r2", {"Last-Event-ID": cursor}) as again:
            # A new bridge has no history: each run restarts at its current status.
            got = {
                (run, json.dumps(data))
                for _, run, data in [await next_run_event(again) for _ in range(2)]
            }
            assert got == {("r1", json.dumps(r1.statuses[1])), ("r2", json.dumps(r2.statuses[0]))}


def test_the_multi_id_round_trips_and_ignores_garbage() -> None:
    keys = [run_key(r) for r in ("r1", "run-0002", "x" * 128)]
    value = encode_cursor(
        entry(k, 1_700_000_000_123, seq) for k, seq in zip(keys, (1, 35, 99), strict=True)
    )
    assert decode_cursor(value) == {
        keys[0]: (1_700_000_000_123, 1),
        keys[1]: (1_700_000_000_123, 35),
        keys[2]: (1_700_000_000_123, 99),
    }
    assert all(c.isalnum() or c in ".-" for c in value)
    for garbage in (None, "", "1700-3", "m2.abc", "m1.zz-1-1", "m1." + "a" * 40000, "m1..-.--"):
        assert decode_cursor(garbage) == {}
    assert decode_cursor(value + ".broken") == decode_cursor(value)


async def test_one_connection_takes_one_stream_slot(legacy: LegacyApi) -> None:
    for i in range(5):
        legacy.scripted(f"r{i}", nodes=NODES)
    url = f"/v1/streams?runs={','.join(f'r{i}' for i in range(5))}"
    async with running_bridge(legacy.url, max_streams_per_client=1) as b:
        async with sse(b.url + url) as s:
            assert {(await next_run_event(s))[1] for _ in range(5)} == {f"r{i}" for i in range(5)}
            assert b.bridge.limiter.open == 1
            async with aiohttp.ClientSession() as http, http.get(b.url + url) as response:
                assert response.status == 429
                assert (await response.json())["error"] == "too_many_streams"
        await wait_for(lambda: b.bridge.limiter.open == 0)


async def test_forward_auth_admits_each_run(legacy: LegacyApi) -> None:
    for run_id in ("mine", "also-mine", "theirs"):
        legacy.scripted(run_id, nodes=NODES)
        legacy.require(run_id, "x-api-key", "bridge-own-key")
    allowed = {("Bearer alice", "mine"), ("Bearer alice", "also-mine"), ("Bearer bob", "theirs")}
    async with (
        auth_service(lambda token, run_id: (token, run_id) in allowed) as (auth_url, _),
        running_bridge(
            legacy.url, auth_url=auth_url, upstream_headers={"x-api-key": "bridge-own-key"}
        ) as b,
        aiohttp.ClientSession() as http,
    ):
        alice = {"Authorization": "Bearer alice"}
        async with http.get(f"{b.url}/v1/streams?runs=mine,theirs", headers=alice) as response:
            assert response.status == 403
            assert (await response.json())["run_id"] == "theirs"
            assert b"queued" not in await response.read()
        async with sse(f"{b.url}/v1/streams?runs=mine,also-mine", alice) as s:
            assert {(await next_run_event(s))[1] for _ in range(2)} == {"mine", "also-mine"}
        # The upstream only ever saw the bridge's own key.
        assert {r.headers.get("x-api-key") for r in legacy.seen} == {"bridge-own-key"}
