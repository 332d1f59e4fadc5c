"""The single-run stream, end to end: real bridge and real legacy API, both on loopback."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
import yarl

from bridge.demo.legacy_api import Fault, LegacyApi
from tests.support import running_bridge, sse, wait_for

#: The live part of a stream is written straight to the socket (the fast path) unless
#: BRIDGE_DIRECT_WRITES=false; both paths must keep the same contract.
both_paths = pytest.mark.parametrize("direct", [True, False], ids=["fast-path", "asgi-path"])


@both_paths
async def test_progressing_run_exact_sequence(legacy: LegacyApi, direct: bool) -> None:
    run = legacy.scripted("r1", nodes=("a", "b"), outcome="completed")
    async with (
        running_bridge(legacy.url, direct_writes=direct) as b,
        sse(f"{b.url}/v1/runs/r1/stream") as s,
    ):
        assert s.status == 200
        assert s.response.headers["Content-Type"].startswith("text/event-stream")
        assert s.response.headers["Cache-Control"] == "no-cache"
        assert s.response.headers["X-Accel-Buffering"] == "no"
        first = await s.next_event()
        assert (first.event, json.loads(first.data)) == ("progress", run.statuses[0])
        await wait_for(lambda: b.bridge.ticker.viewers == (1 if direct else 0))
        for expected in run.statuses[1:]:
            run.advance()
            event = await s.next_named("progress", "complete")
            assert json.loads(event.data) == expected
        assert event.event == "complete"
        assert await s.rest() == []
        assert s.raw.startswith(b"retry: ")
        ids = [e.id for e in s.events]
        assert all(e.has_id for e in s.events)
        assert len(set(ids)) == len(ids)
        seqs = [int(i.rsplit("-", 1)[1]) for i in ids]
        assert seqs == sorted(seqs)


async def test_unchanged_status_sends_nothing(legacy: LegacyApi) -> None:
    run = legacy.scripted("quiet")
    async with running_bridge(legacy.url) as b, sse(f"{b.url}/v1/runs/quiet/stream") as s:
        await s.next_named("progress")
        polls = legacy.requests["quiet"]
        await wait_for(lambda: legacy.requests["quiet"] >= polls + 5)
        with pytest.raises(TimeoutError):
            await s.next_event(timeout=0.1)
        run.advance()
        assert json.loads((await s.next_named("progress")).data) == run.statuses[1]


@pytest.mark.parametrize("outcome", ["failed", "cancelled"])
@both_paths
async def test_failure_states_end_with_error(legacy: LegacyApi, outcome: str, direct: bool) -> None:
    run = legacy.scripted("bad", nodes=("a",), outcome=outcome)  # type: ignore[arg-type]
    async with (
        running_bridge(legacy.url, direct_writes=direct) as b,
        sse(f"{b.url}/v1/runs/bad/stream") as s,
    ):
        await s.next_named("progress")
        run.advance(len(run.statuses))
        event = await s.next_named("error", "progress")
        while event.event == "progress":
            event = await s.next_named("error", "progress")
        assert json.loads(event.data)["status"] == outcome
        assert json.loads(event.data)["errorMessage"]
        assert await s.rest() == []


async def test_already_terminal_gets_one_event_then_close(legacy: LegacyApi) -> None:
    run = legacy.scripted("done")
    run.advance(100)
    async with running_bridge(legacy.url) as b, sse(f"{b.url}/v1/runs/done/stream") as s:
        events = await s.rest()
        assert [e.event for e in events] == ["complete"]
        assert json.loads(events[0].data) == run.statuses[-1]
        # The poller stopped at the terminal state.
        await wait_for(lambda: b.bridge.pollers.active == 0)


@both_paths
async def test_ping_every_interval_without_id(legacy: LegacyApi, direct: bool) -> None:
    legacy.scripted("p")
    async with (
        running_bridge(legacy.url, ping_interval=0.1, direct_writes=direct) as b,
        sse(f"{b.url}/v1/runs/p/stream") as s,
    ):
        await s.next_named("progress")
        pings = [await s.next_event(timeout=2) for _ in range(3)]
        assert [p.event for p in pings] == ["ping"] * 3
        assert not any(p.has_id for p in pings)
        assert all(
            p.data.isdigit() and abs(int(p.data) - __import__("time").time()) < 5 for p in pings
        )


@both_paths
async def test_timeout_event_closes_stream(legacy: LegacyApi, direct: bool) -> None:
    legacy.scripted("slow")
    async with (
        running_bridge(legacy.url, stream_timeout=0.3, direct_writes=direct) as b,
        sse(f"{b.url}/v1/runs/slow/stream") as s,
    ):
        await s.next_named("progress")
        event = await s.next_named("timeout", timeout=3)
        assert not event.has_id
        assert json.loads(event.data) == {"message": "Stream timeout after 0.3 seconds"}
        assert await s.rest() == []


async def test_timeout_message_in_minutes(legacy: LegacyApi) -> None:
    from bridge.events.sse import timeout_message

    assert timeout_message(600) == "Stream timeout after 10 minutes"
    assert timeout_message(60) == "Stream timeout after 1 minute"


async def test_stream_outlives_quart_response_timeout(legacy: LegacyApi) -> None:
    run = legacy.scripted("long")
    async with running_bridge(legacy.url, ping_interval=0.05) as b:
        b.app.config["RESPONSE_TIMEOUT"] = 0.2
        async with sse(f"{b.url}/v1/runs/long/stream") as s:
            await s.next_named("progress")
            loop = asyncio.get_running_loop()
            start = loop.time()
            while loop.time() - start < 0.6:
                assert (await s.next_event(timeout=1)).event == "ping"
            run.advance()
            assert json.loads((await s.next_named("progress")).data) == run.statuses[1]


@pytest.mark.parametrize("how", ["header", "cursor", "since"])
@both_paths
async def test_resume_replays_missed_events_once(legacy: LegacyApi, how: str, direct: bool) -> None:
    run = legacy.scripted("res", nodes=("a", "b", "c"))
    async with running_bridge(legacy.url, linger=5.0, direct_writes=direct) as b:
        url = f"{b.url}/v1/runs/res/stream"
        async with sse(url) as s:
            first = await s.next_named("progress")
            run.advance()
            second = await s.next_named("progress")
        # Disconnected; the run moves on while nobody watches (the poller lingers).
        channel = b.bridge.hub.find(b.bridge.pollers.key("res", {}))
        assert channel is not None
        for expected_len in (3, 4):
            run.advance()
            await wait_for(lambda n=expected_len: len(channel.history) == n)  # type: ignore[misc]
        headers, query = {}, ""
        if how == "header":
            headers = {"Last-Event-ID": second.id}
        else:
            query = f"?{how}={second.id}"
        async with sse(url + query, headers) as s:
            replay = [await s.next_named("progress") for _ in range(2)]
            assert [json.loads(e.data) for e in replay] == run.statuses[2:4]
            seen = [first.id, second.id] + [e.id for e in replay]
            assert len(set(seen)) == 4
            run.advance(100)
            rest = await s.rest()
            assert [e.event for e in rest if e.event != "ping"] == ["complete"]


async def test_resume_with_unknown_id_gets_current_status(legacy: LegacyApi) -> None:
    run = legacy.scripted("u")
    run.advance(2)
    async with running_bridge(legacy.url) as b:
        for bad in ("5-999", "garbage", "99999999999-3"):
            async with sse(f"{b.url}/v1/runs/u/stream", {"Last-Event-ID": bad}) as s:
                event = await s.next_named("progress")
                assert json.loads(event.data) == run.statuses[2]
                assert bad.encode() not in s.raw


async def test_resume_after_completion_needs_no_upstream_call(legacy: LegacyApi) -> None:
    run = legacy.scripted("fin", nodes=("a",))
    async with running_bridge(legacy.url) as b:
        async with sse(f"{b.url}/v1/runs/fin/stream") as s:
            first = await s.next_named("progress")
            run.advance(100)
            await s.rest()
        await wait_for(lambda: b.bridge.pollers.active == 0)
        before = legacy.requests["fin"]
        async with sse(f"{b.url}/v1/runs/fin/stream", {"Last-Event-ID": first.id}) as s:
            events = await s.rest()
        assert [e.event for e in events] == ["complete"]
        assert legacy.requests["fin"] == before


async def test_get_status_served_from_shared_poller(legacy: LegacyApi) -> None:
    run = legacy.scripted("g")
    async with running_bridge(legacy.url, poll_interval=5.0) as b, aiohttp.ClientSession() as http:
        async with sse(f"{b.url}/v1/runs/g/stream") as s:
            await s.next_named("progress")
            before = legacy.requests["g"]
            for _ in range(5):
                async with http.get(f"{b.url}/v1/runs/g") as response:
                    assert response.status == 200
                    assert await response.json() == run.statuses[0]
            assert legacy.requests["g"] == before


@pytest.mark.parametrize(
    ("setup", "status", "code"),
    [
        ("missing", 404, "not_found"),
        ("401", 401, "unauthorized"),
        ("403", 403, "forbidden"),
        ("500", 502, "upstream_unavailable"),
        ("malformed", 502, "upstream_unavailable"),
        ("hang", 504, "upstream_timeout"),
    ],
)
async def test_errors_before_the_stream(
    legacy: LegacyApi, setup: str, status: int, code: str
) -> None:
    legacy.scripted("e")
    if setup == "missing":
        del legacy.runs["e"]
    elif setup == "401" or setup == "403":
        legacy.require("e", "authorization", "Bearer ok")
    elif setup == "500":
        legacy.inject("e", Fault("status", status=500))
    elif setup == "malformed":
        legacy.inject("e", Fault("malformed"))
    elif setup == "hang":
        legacy.inject("e", Fault("hang"))
    headers = {"Authorization": "Bearer nope"} if setup == "403" else {}
    async with (
        running_bridge(legacy.url, upstream_timeout=0.3) as b,
        aiohttp.ClientSession() as http,
    ):
        for path in ("/v1/runs/e/stream", "/v1/runs/e"):
            legacy.clear_faults("e") if path == "/v1/runs/e" else None
            if path == "/v1/runs/e" and setup in ("500", "malformed", "hang"):
                legacy.inject("e", Fault(setup if setup != "500" else "status", status=500))
            async with http.get(b.url + path, headers=headers) as response:
                assert response.status == status
                assert response.content_type == "application/json"
                body = await response.json()
                assert body["error"] == code
                assert isinstance(body["message"], str) and body["message"]


async def test_unreachable_upstream_is_502() -> None:
    from tests.support import loopback_socket

    closed = loopback_socket()
    port = closed.getsockname()[1]
    closed.close()
    async with running_bridge(f"http://127.0.0.1:{port}") as b, aiohttp.ClientSession() as http:
        async with http.get(f"{b.url}/v1/runs/x/stream") as response:
            assert response.status == 502
            assert (await response.json())["error"] == "upstream_unavailable"


async def test_invalid_run_id_never_reaches_upstream(legacy: LegacyApi) -> None:
    async with running_bridge(legacy.url) as b, aiohttp.ClientSession() as http:
        for raw in ("..", "a%2Fb", "%2e%2e", "a%20b", "x" * 200, "a@b", "%0d%0a"):
            url = yarl.URL(f"{b.url}/v1/runs/{raw}/stream", encoded=True)
            async with http.get(url) as response:
                assert response.status == 400, raw
                assert (await response.json())["error"] == "invalid_run_id"
        assert not legacy.seen


async def test_healthz(legacy: LegacyApi) -> None:
    async with running_bridge(legacy.url) as b, aiohttp.ClientSession() as http:
        async with http.get(f"{b.url}/healthz") as response:
            assert response.status == 200
        async with http.get(f"{b.url}/readyz") as response:
            assert response.status == 200
