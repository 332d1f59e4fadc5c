"""Derived events in cluster mode, for real: two bridges sharing a real redis-server in
front of the simulated API. The leader derives and commits each change whole (its events
and its status in one write); every replica serves the same ids; a handover in the middle
of a run's log lines loses none and repeats none."""

from __future__ import annotations

import json
from contextlib import AsyncExitStack
from typing import Any

import pytest

from bridge.demo.legacy_api import LegacyApi
from bridge.demo.vocabularies import DEMOS, runner_statuses
from tests.support import running_bridge, sse, wait_for
from tests.test_cluster import cluster, cluster_of  # noqa: F401  (the fixture)
from tests.test_derived_events import step_through

pytestmark = pytest.mark.redis

RUNNER = {"events_file": str(DEMOS["runner"].path), **DEMOS["runner"].settings}


def numbers(ids: list[str]) -> list[tuple[int, int]]:
    return [(int(e.split("-")[0]), int(e.split("-")[1])) for e in ids]


async def test_a_handover_in_the_middle_of_the_log_loses_no_line_and_repeats_none(
    legacy: LegacyApi,
    cluster: dict[str, Any],  # noqa: F811
) -> None:
    run = legacy.scripted("ho", runner_statuses("ho", lines=6))
    async with AsyncExitStack() as outer:
        b = await outer.enter_async_context(running_bridge(legacy.url, **cluster, **RUNNER))
        async with AsyncExitStack() as inner:
            a = await inner.enter_async_context(running_bridge(legacy.url, **cluster, **RUNNER))
            on_a = await inner.enter_async_context(sse(f"{a.url}/v1/runs/ho/stream"))
            await wait_for(lambda: cluster_of(a).leading == 1)
            on_b = await outer.enter_async_context(sse(f"{b.url}/v1/runs/ho/stream"))
            assert cluster_of(b).leading == 0
            # Into the first step's log: three of its six lines.
            await step_through(b, run, until=6)
            got_a = []
            while len([e for e in got_a if e.event == "step.log"]) < 3:
                got_a.append(await on_a.next_event())
        # The leader is gone mid-log; b takes over the same history.
        await wait_for(lambda: cluster_of(b).leading == 1)
        await step_through(b, run)
        on_b_events = await on_b.rest()
        # a's viewer reconnects to b with its last id.
        async with sse(f"{b.url}/v1/runs/ho/stream", {"Last-Event-ID": got_a[-1].id}) as s:
            resumed = await s.rest()
    # Every replica served the same ids, in one history with no gap.
    assert [(e.id, e.data) for e in got_a] == [(e.id, e.data) for e in on_b_events[: len(got_a)]]
    assert [e.id for e in got_a + resumed] == [e.id for e in on_b_events]
    ids = numbers([e.id for e in on_b_events])
    assert len({epoch for epoch, _ in ids}) == 1
    lines = [json.loads(e.data)["line"] for e in on_b_events if e.event == "step.log"]
    expected = [
        f"{job} {step}: line {i}"
        for job in ("build", "test")
        for step in ("Checkout", "Run")
        for i in range(1, 7)
    ]
    assert lines == expected  # none lost, none twice, in order
    names = [e.event for e in on_b_events]
    assert names[0] == "run.started" and names[-1] == "run.completed"
    assert names.count("step.completed") == 4 and names.count("job.completed") == 2


async def test_every_replica_serves_the_same_derived_ids_and_envelopes(
    legacy: LegacyApi,
    cluster: dict[str, Any],  # noqa: F811
) -> None:
    run = legacy.scripted("same", DEMOS["task"].statuses("same", "completed"))
    task = {"events_file": str(DEMOS["task"].path)}
    async with (
        running_bridge(legacy.url, **cluster, **task) as a,
        running_bridge(legacy.url, **cluster, **task) as b,
        sse(f"{a.url}/v1/runs/same/stream") as on_a,
        sse(f"{b.url}/v1/streams?runs=same") as multi_b,
    ):
        await step_through(a, run)
        events_a = await on_a.rest()
        envelopes = [(e.event, json.loads(e.data)) for e in await multi_b.rest()]
    assert [(e.event, e.id, json.loads(e.data)) for e in events_a] == [
        (name, env["id"], env["data"]) for name, env in envelopes
    ]
    assert [e.event for e in events_a][:5] == ["status", "status", "status", "status", "progress"]
    # The change's state rides with its derived events on the follower too.
    assert envelopes[4][1]["state"] == "running"
