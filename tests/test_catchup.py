"""Clients that cannot hold a stream, and browsers: JSON catch-up and long-poll, the
result endpoint, and transient refusals in a form EventSource retries (the real bridge
against the simulated legacy API on loopback)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from bridge.demo.legacy_api import Fault, LegacyApi
from bridge.tools.eventstream import EventStreamParser
from tests.support import running_bridge, sse, wait_for


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers or {}) as r:
        raw = await r.read()
        body = json.loads(raw) if r.content_type == "application/json" else raw
        return r.status, body, r.headers


# --- /events: catch-up and long-poll -----------------------------------------------------


async def test_events_catch_up_with_the_streams_ids(legacy: LegacyApi) -> None:
    run = legacy.scripted("e1", nodes=("a", "b"))
    async with running_bridge(legacy.url) as b, sse(f"{b.url}/v1/runs/e1/stream") as s:
        first = await s.next_named("progress")
        status, body, headers = await get(f"{b.url}/v1/runs/e1/events")
        # No since: the current status as one event, with the stream's id.
        assert status == 200
        assert [(e["id"], e["event"]) for e in body["events"]] == [(first.id, "progress")]
        assert body["events"][0]["data"] == run.statuses[0]
        assert body["cursor"] == first.id and body["terminal"] is False
        assert body["state"] == run.statuses[0]["status"] and body["progress"] is None
        assert headers["X-Run-State"] == run.statuses[0]["status"]
        streamed = []
        for _ in range(2):
            run.advance()
            streamed.append(await s.next_named("progress"))
        status, body, _ = await get(f"{b.url}/v1/runs/e1/events?since={first.id}")
        assert [e["id"] for e in body["events"]] == [e.id for e in streamed]
        assert [e["data"] for e in body["events"]] == run.statuses[1:3]
        assert body["cursor"] == streamed[-1].id


async def test_a_long_poll_wakes_on_the_change(legacy: LegacyApi) -> None:
    run = legacy.scripted("e2", nodes=("a",))
    async with running_bridge(legacy.url) as b:
        _, body, _ = await get(f"{b.url}/v1/runs/e2/events")
        cursor = body["cursor"]
        waiting = asyncio.create_task(get(f"{b.url}/v1/runs/e2/events?since={cursor}&wait=20"))
        try:
            await wait_for(lambda: b.bridge.limiter.open == 1)  # the long-poll holds a slot
            assert not waiting.done()
            run.advance()
            status, body, _ = await asyncio.wait_for(waiting, timeout=5)
        finally:
            waiting.cancel()
        assert status == 200
        assert [e["data"] for e in body["events"]] == [run.statuses[1]]


async def test_a_long_poll_with_nothing_new_answers_empty_at_its_timeout(
    legacy: LegacyApi,
) -> None:
    legacy.scripted("e3", nodes=("a",))
    async with running_bridge(legacy.url) as b:
        _, body, _ = await get(f"{b.url}/v1/runs/e3/events")
        cursor = body["cursor"]
        started = time.monotonic()
        status, body, _ = await get(f"{b.url}/v1/runs/e3/events?since={cursor}&wait=0.3")
        assert time.monotonic() - started >= 0.25
        assert (status, body["events"], body["cursor"]) == (200, [], cursor)


async def test_an_unknown_since_gets_the_current_status(legacy: LegacyApi) -> None:
    run = legacy.scripted("e4", nodes=("a",))
    async with running_bridge(legacy.url) as b:
        for since in ("1-1", "garbage", "99999999999-5"):
            status, body, _ = await get(f"{b.url}/v1/runs/e4/events?since={since}&wait=5")
            assert status == 200
            assert [e["data"] for e in body["events"]] == [run.statuses[0]]


async def test_a_terminal_run_is_said_so(legacy: LegacyApi) -> None:
    run = legacy.scripted("e5", nodes=("a",))
    async with running_bridge(legacy.url) as b, sse(f"{b.url}/v1/runs/e5/stream") as s:
        await s.next_named("progress")
        run.advance(len(run.statuses))
        final = await s.next_named("complete", "progress", timeout=5)
        while final.event != "complete":
            final = await s.next_named("complete", "progress", timeout=5)
        status, body, _ = await get(f"{b.url}/v1/runs/e5/events?since={final.id}&wait=5")
        assert (status, body["events"], body["terminal"]) == (200, [], True)


@pytest.mark.parametrize("wait", ["-1", "31", "nan", "soon", "1e9"])
async def test_a_bad_wait_is_400(legacy: LegacyApi, wait: str) -> None:
    legacy.scripted("e6", nodes=("a",))
    async with running_bridge(legacy.url) as b:
        status, body, _ = await get(f"{b.url}/v1/runs/e6/events?wait={wait}")
        assert (status, body["error"]) == (400, "invalid_request")
        assert legacy.requests["e6"] == 0


async def test_events_refusals_are_the_streams(legacy: LegacyApi) -> None:
    async with running_bridge(legacy.url) as b:
        status, body, _ = await get(f"{b.url}/v1/runs/nobody/events")
        assert (status, body["error"]) == (404, "not_found")
        status, body, _ = await get(f"{b.url}/v1/runs/a%2Fb/events")
        assert status == 400


# --- /result ----------------------------------------------------------------------------


async def test_result_is_202_while_running_then_200(legacy: LegacyApi) -> None:
    run = legacy.scripted("r1", nodes=("a",))
    async with running_bridge(legacy.url) as b:
        status, body, headers = await get(f"{b.url}/v1/runs/r1/result")
        assert (status, body) == (202, run.statuses[0])
        assert headers["X-Run-State"] == run.statuses[0]["status"]
        waiting = asyncio.create_task(get(f"{b.url}/v1/runs/r1/result?wait=20"))
        try:
            await wait_for(lambda: b.bridge.limiter.open == 1)
            run.advance(len(run.statuses))
            status, body, headers = await asyncio.wait_for(waiting, timeout=5)
        finally:
            waiting.cancel()
        assert (status, body) == (200, run.statuses[-1])
        assert headers["X-Run-State"] == run.statuses[-1]["status"]
        assert headers["X-Run-Event"] == "complete"


async def test_drain_ends_a_long_poll_with_what_it_has(legacy: LegacyApi) -> None:
    run = legacy.scripted("r2", nodes=("a",))
    async with running_bridge(legacy.url) as b:
        waiting = asyncio.create_task(get(f"{b.url}/v1/runs/r2/result?wait=20"))
        try:
            await wait_for(lambda: b.bridge.limiter.open == 1)
            b.bridge.drain()
            status, body, _ = await asyncio.wait_for(waiting, timeout=5)
        finally:
            waiting.cancel()
        assert (status, body) == (202, run.statuses[0])


# --- transient refusals, as EventSource understands them ------------------------------


async def test_a_transient_refusal_is_a_retry_for_event_source(legacy: LegacyApi) -> None:
    legacy.scripted("t1", nodes=("a",))
    legacy.inject("t1", Fault(kind="status", status=500, times=1))
    async with running_bridge(legacy.url) as b:
        status, body, headers = await get(
            f"{b.url}/v1/runs/t1/stream", {"Accept": "text/event-stream"}
        )
        assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
        assert body.startswith(b"retry: ")
        assert b": upstream_unavailable: " in body
        # Nothing that an EventSource would take for an event.
        assert EventStreamParser().feed(body) == []
        # Without Accept: text/event-stream, the status and JSON body as before.
        legacy.inject("t1", Fault(kind="status", status=500, times=1))
        status, body, _ = await get(f"{b.url}/v1/runs/t1/stream")
        assert (status, body["error"]) == (502, "upstream_unavailable")


async def test_permanent_refusals_keep_their_status_for_event_source(legacy: LegacyApi) -> None:
    async with running_bridge(legacy.url) as b:
        status, body, _ = await get(
            f"{b.url}/v1/runs/nobody/stream", {"Accept": "text/event-stream"}
        )
        assert (status, body["error"]) == (404, "not_found")
        status, _, _ = await get(f"{b.url}/v1/runs/a%2Fb/stream", {"Accept": "text/event-stream"})
        assert status == 400


async def test_a_full_bridge_and_a_draining_one_say_retry(legacy: LegacyApi) -> None:
    legacy.scripted("t2", nodes=("a",))
    async with running_bridge(legacy.url, max_streams=1) as b:
        async with sse(f"{b.url}/v1/runs/t2/stream") as s:
            await s.next_named("progress")
            status, body, _ = await get(
                f"{b.url}/v1/streams?runs=t2", {"Accept": "text/event-stream"}
            )
            assert status == 200 and b": over_capacity: " in body
            # The Retry-After (5 s) became the retry, in ms, jittered by up to 20 %.
            retry = int(body.split(b"\n", 1)[0].split(b" ")[1])
            assert 5000 <= retry <= 6000
        b.bridge.drain()
        status, body, _ = await get(f"{b.url}/v1/runs/t2/stream", {"Accept": "text/event-stream"})
        assert status == 200 and b": draining: " in body
