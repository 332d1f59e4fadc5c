"""Mid-stream upstream faults: viewers keep their stream, the poller backs off and recovers."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest

from bridge.demo.legacy_api import Fault, LegacyApi
from tests.support import running_bridge, sse, wait_for

FAULTS = [
    Fault("status", times=3, status=500),
    Fault("status", times=3, status=503),
    Fault("reset", times=3),
    Fault("malformed", times=3),
    Fault("not-object", times=3),
    Fault("huge", times=3, size=2 * 1024 * 1024),
    Fault("gzip-bomb", times=3, size=64 * 1024 * 1024),
    Fault("redirect", times=3),
    Fault("hang", times=2),
]


@pytest.mark.parametrize(
    "fault", FAULTS, ids=lambda f: f.kind + str(f.status if f.kind == "status" else "")
)
async def test_stream_survives_fault_and_recovers(legacy: LegacyApi, fault: Fault) -> None:
    run = legacy.scripted("f")
    async with (
        running_bridge(
            legacy.url,
            upstream_timeout=0.3,
            ping_interval=0.1,
            backoff_max=0.2,
            breaker_threshold=100,
        ) as b,
        sse(f"{b.url}/v1/runs/f/stream") as s,
    ):
        await s.next_named("progress")
        before = legacy.requests["f"]
        legacy.inject("f", fault)
        # While the upstream misbehaves the viewer keeps getting pings...
        assert (await s.next_event(timeout=3)).event == "ping"
        await wait_for(lambda: legacy.requests["f"] >= before + (fault.times or 0), timeout=10)
        # ...and once it behaves again the next change arrives, no restart needed.
        run.advance()
        event = await s.next_named("progress", timeout=10)
        assert json.loads(event.data) == run.statuses[1]
        assert b.bridge.pollers.active == 1


async def test_retry_after_is_honoured(legacy: LegacyApi) -> None:
    legacy.scripted("ra")
    async with (
        running_bridge(legacy.url, poll_interval=0.05) as b,
        sse(f"{b.url}/v1/runs/ra/stream") as s,
    ):
        await s.next_named("progress")
        legacy.inject("ra", Fault("status", status=429, headers={"Retry-After": "1"}))
        await wait_for(lambda: not legacy.faults.get("ra"), timeout=3)  # the 429 was served
        throttled = legacy.requests["ra"]
        await wait_for(lambda: legacy.requests["ra"] > throttled, timeout=5)
        times = [r.at for r in legacy.seen if r.run_id == "ra"]
        # The request after the 429 came no sooner than Retry-After said.
        assert times[throttled] - times[throttled - 1] >= 0.95


async def test_give_up_sends_error_event(legacy: LegacyApi) -> None:
    legacy.scripted("down")
    async with (
        running_bridge(
            legacy.url, upstream_give_up=0.4, backoff_max=0.1, breaker_threshold=1000
        ) as b,
        sse(f"{b.url}/v1/runs/down/stream") as s,
    ):
        await s.next_named("progress")
        legacy.inject("down", Fault("status", status=503, times=None))
        event = await s.next_named("error", timeout=5)
        body = json.loads(event.data)
        assert body["status"] == "upstream_unavailable"
        assert "gave up" in body["errorMessage"]
        assert await s.rest() == []
        await wait_for(lambda: b.bridge.pollers.active == 0)
        # A given-up run is not served from cache: the next viewer asks the upstream again.
        legacy.clear_faults("down")
        async with sse(f"{b.url}/v1/runs/down/stream") as again:
            assert (await again.next_named("progress")).event == "progress"


async def test_failing_poller_does_not_disturb_another(legacy: LegacyApi) -> None:
    legacy.scripted("sick")
    healthy = legacy.scripted("well")
    async with running_bridge(legacy.url, breaker_threshold=1000) as b:
        async with (
            sse(f"{b.url}/v1/runs/sick/stream") as sick,
            sse(f"{b.url}/v1/runs/well/stream") as well,
        ):
            await sick.next_named("progress")
            await well.next_named("progress")
            legacy.inject("sick", Fault("status", status=500, times=None))
            legacy.inject("sick", Fault("hang", times=None))
            for expected in healthy.statuses[1:]:
                healthy.advance()
                event = await well.next_named("progress", "complete", timeout=2)
                assert json.loads(event.data) == expected
            assert b.bridge.pollers.active == 1  # "well" ended, "sick" still tries


async def test_circuit_breaker_opens_shows_in_readyz_and_recovers(legacy: LegacyApi) -> None:
    legacy.scripted("cb")
    async with (
        running_bridge(
            legacy.url, breaker_threshold=3, breaker_cooldown=0.5, backoff_max=0.05
        ) as b,
        aiohttp.ClientSession() as http,
        sse(f"{b.url}/v1/runs/cb/stream") as s,
    ):
        await s.next_named("progress")
        legacy.inject("cb", Fault("status", status=503, times=None))
        await wait_for(lambda: b.bridge.upstream.breaker.state == "open", timeout=5)
        async with http.get(f"{b.url}/readyz") as response:
            assert response.status == 503
            assert (await response.json())["upstream"] == "circuit_open"
        # While open, new viewers are refused at once, without hammering the upstream.
        sent = legacy.requests["cb"]
        async with http.get(f"{b.url}/v1/runs/other/stream") as response:
            assert response.status == 502
        assert legacy.requests["other"] == 0
        assert legacy.requests["cb"] <= sent + 1
        legacy.clear_faults("cb")
        await wait_for(lambda: b.bridge.upstream.breaker.state == "closed", timeout=5)
        async with http.get(f"{b.url}/readyz") as response:
            assert response.status == 200


async def test_global_cap_on_concurrent_upstream_requests(legacy: LegacyApi) -> None:
    ids = [f"c{i}" for i in range(8)]
    for run_id in ids:
        legacy.scripted(run_id)
        legacy.inject(run_id, Fault("slow", delay=0.2, times=None))
    async with (
        running_bridge(legacy.url, upstream_concurrency=2) as b,
        aiohttp.ClientSession() as http,
    ):
        statuses = await asyncio.gather(
            *(_status(http, f"{b.url}/v1/runs/{run_id}") for run_id in ids)
        )
        assert statuses == [200] * len(ids)
        assert legacy.max_in_flight == 2


async def _status(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as response:
        return response.status


async def test_no_traceback_per_failed_poll(
    legacy: LegacyApi, caplog: pytest.LogCaptureFixture
) -> None:
    legacy.scripted("noisy")
    caplog.set_level(logging.DEBUG)
    async with (
        running_bridge(legacy.url, backoff_max=0.05, breaker_threshold=1000) as b,
        sse(f"{b.url}/v1/runs/noisy/stream") as s,
    ):
        await s.next_named("progress")
        before = legacy.requests["noisy"]
        legacy.inject("noisy", Fault("reset", times=None))
        await wait_for(lambda: legacy.requests["noisy"] >= before + 20, timeout=10)
    bridge_records = [r for r in caplog.records if r.name.startswith("bridge")]
    assert not any(r.exc_info for r in bridge_records)
    warnings = [r for r in bridge_records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
