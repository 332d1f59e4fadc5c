"""The event-loop lag measurement and the process gauges next to it."""

from __future__ import annotations

import time

import aiohttp
from prometheus_client import CollectorRegistry

from bridge.demo.legacy_api import LegacyApi
from bridge.ops.loop_lag import LoopLag
from bridge.ops.metrics import RecentMax
from tests.support import running_bridge, sse, wait_for


def block(seconds: float) -> None:
    """Keep the event loop busy, as a long collection or a slow callback would."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_recent_max_forgets_what_left_the_window() -> None:
    recent = RecentMax(slot=10, slots=6)
    recent.add(0.5, now=0)
    recent.add(0.1, now=25)
    assert recent.value(now=30) == 0.5
    # Slot [0, 10) is more than a minute old at 65: only the 0.1 is left.
    assert recent.value(now=65) == 0.1
    assert recent.value(now=200) == 0.0
    recent.add(0.2, now=200)
    assert recent.value(now=201) == 0.2


async def test_a_blocked_loop_shows_as_lag() -> None:
    registry = CollectorRegistry()
    lag = LoopLag(registry, period=0.01)
    lag.start()
    try:
        await wait_for(lag.measured.is_set)
        lag.measured.clear()
        block(0.3)
        await wait_for(lag.measured.is_set)
        # The timer that was due during the block ran at least this much late.
        longest = registry.get_sample_value("bridge_event_loop_lag_max_seconds")
        assert longest is not None and longest >= 0.25
        over = registry.get_sample_value("bridge_event_loop_lag_seconds_bucket", {"le": "0.25"})
        count = registry.get_sample_value("bridge_event_loop_lag_seconds_count")
        assert over is not None and count is not None and count > over
    finally:
        await lag.stop()
    assert not lag._task.running


async def test_the_bridge_exports_lag_tasks_and_channels(legacy: LegacyApi) -> None:
    legacy.scripted("lag")
    async with running_bridge(legacy.url) as b:
        async with sse(f"{b.url}/v1/runs/lag/stream") as s:
            await s.next_named("progress")
            await wait_for(b.bridge.loop_lag.measured.is_set)
            async with aiohttp.ClientSession() as http, http.get(f"{b.url}/metrics") as r:
                text = await r.text()
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values["bridge_channels"] == 1
    assert values["bridge_asyncio_tasks"] >= 1
    assert values["bridge_event_loop_lag_seconds_count"] >= 1
    assert "bridge_event_loop_lag_max_seconds" in values
