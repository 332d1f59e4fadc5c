"""Events that say what happened, through the real bridge (Hypercorn on loopback) against
the simulated API (aiohttp on loopback): each seed vocabulary of config/events/ end to end,
and derived events everywhere events go (single-run stream, /v1/streams, the JSON
catch-up and long-poll, resume by Last-Event-ID and cursor)."""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from bridge.demo.legacy_api import LegacyApi
from bridge.demo.runs import ScriptedRun
from bridge.demo.vocabularies import DEMOS, runner_statuses
from bridge.events.channel import Channel
from bridge.tools.eventstream import ParsedEvent
from tests.support import RunningBridge, running_bridge, sse, wait_for

ROOT = pathlib.Path(__file__).resolve().parent.parent


def channel_of(b: RunningBridge, run_id: str) -> Channel | None:
    for channel in b.bridge.hub.live_channels():
        if channel.key.run_id == run_id:
            return channel
    return None


def seen(b: RunningBridge, run_id: str, status: dict[str, Any]) -> bool:
    channel = channel_of(b, run_id)
    if channel is None or channel.history.status is None:
        return False
    return bool(json.loads(channel.history.status.status) == status)


async def step_through(b: RunningBridge, run: ScriptedRun, until: int | None = None) -> None:
    """Advance ``run`` one status at a time, each once the bridge has it (the last one,
    when final, ends the stream: the caller waits for that)."""
    last = len(run.statuses) - 1 if until is None else until
    while run.index < last:
        await wait_for(lambda: seen(b, run.id, run.statuses[run.index]))
        run.advance()
    if until is not None:
        await wait_for(lambda: seen(b, run.id, run.statuses[run.index]))


@asynccontextmanager
async def bridge_for(
    legacy: LegacyApi, vocabulary: str, **overrides: Any
) -> AsyncIterator[RunningBridge]:
    demo = DEMOS[vocabulary]
    settings = {"events_file": str(demo.path), **demo.settings, **overrides}
    async with running_bridge(legacy.url, **settings) as b:
        yield b


def pairs(events: list[ParsedEvent], *fields: str) -> list[tuple[Any, ...]]:
    out = []
    for event in events:
        data = json.loads(event.data)
        out.append((event.event, *(_dig(data, f) for f in fields)))
    return out


def _dig(data: Any, path: str) -> Any:
    for part in path.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


async def whole_run(legacy: LegacyApi, vocabulary: str, outcome: str) -> list[ParsedEvent]:
    run = legacy.scripted("r1", DEMOS[vocabulary].statuses("r1", outcome))
    async with bridge_for(legacy, vocabulary) as b, sse(f"{b.url}/v1/runs/r1/stream") as s:
        await step_through(b, run)
        events = await s.rest()
    assert all(e.id for e in events)
    assert len({e.id for e in events}) == len(events)
    return events


# --- each seed vocabulary, end to end -------------------------------------------------------


def test_config_events_has_one_file_per_seed_vocabulary() -> None:
    names = sorted(p.name for p in (ROOT / "config" / "events").glob("*.toml"))
    assert names == [
        "000-improve-run.toml",
        "001-runner.toml",
        "002-agent-run-frames.toml",
        "003-task.toml",
    ]
    assert sorted(DEMOS[n].path.name for n in DEMOS) == names


async def test_seed_000_improve_run(legacy: LegacyApi) -> None:
    events = await whole_run(legacy, "improve-run", "succeeded")
    assert pairs(events, "type", "status", "phase", "candidate_id", "proposal_id") == [
        ("run_enqueued", "run_enqueued", "queued", None, None, None),
        ("run_started", "run_started", "running", None, None, None),
        ("phase_changed", "phase_changed", "running", "analyze", None, None),
        ("phase_changed", "phase_changed", "running", "generate", None, None),
        ("candidate_persisted", "candidate_persisted", "running", None, "cand-1", None),
        ("candidate_persisted", "candidate_persisted", "running", None, "cand-2", None),
        ("phase_changed", "phase_changed", "running", "evaluate", None, None),
        ("proposal_created", "proposal_created", "running", None, None, "prop-1"),
        ("run_completed", "run_completed", "succeeded", None, None, None),
    ]
    assert all(json.loads(e.data)["run_id"] == "r1" for e in events)


async def test_seed_000_a_failed_run_ends_with_run_failed(legacy: LegacyApi) -> None:
    events = await whole_run(legacy, "improve-run", "failed")
    assert [e.event for e in events][-2:] == ["phase_changed", "run_failed"]
    assert json.loads(events[-1].data)["payload"] == {"error": "evaluation crashed"}


async def test_seed_001_runner(legacy: LegacyApi) -> None:
    events = await whole_run(legacy, "runner", "success")
    got = pairs(events, "jobId", "stepNumber", "line")
    steps = []
    for job in ("build", "test"):
        steps.append(("job.started", job, None, None))
        for number, name in ((1, "Checkout"), (2, "Run")):
            steps += [
                ("step.started", job, number, None),
                ("step.log", job, number, f"{job} {name}: line 1"),
                ("step.log", job, number, f"{job} {name}: line 2"),
                ("step.completed", job, number, None),
            ]
        steps.append(("job.completed", job, None, None))
    assert got == [
        ("run.started", None, None, None),
        *steps,
        ("run.completed", None, None, None),
    ]
    assert json.loads(events[-1].data) == {
        "runId": "r1",
        "run": {"id": "r1", "status": "completed", "conclusion": "success"},
    }


async def test_seed_002_unnamed_frames(legacy: LegacyApi) -> None:
    run = legacy.scripted("r1", DEMOS["agent-run"].statuses("r1", "completed"))
    async with bridge_for(legacy, "agent-run") as b, sse(f"{b.url}/v1/runs/r1/stream") as s:
        await step_through(b, run)
        events = await s.rest()
    # No `event:` line at all: what EventSource.onmessage receives.
    assert b"event:" not in bytes(s.raw)
    assert [e.event for e in events] == ["message"] * len(events)
    frames = [json.loads(e.data) for e in events]
    assert [(f["type"], f.get("runStatus"), _dig(f, "event.sequence")) for f in frames] == [
        ("status", "queued", None),
        ("run_event", None, 1),
        ("status", "running", None),
        ("run_event", None, 2),
        ("run_event", None, 3),
        ("status", "running", None),
        ("run_event", None, 4),
        ("status", "completed", None),
        ("run_finished", "completed", None),
    ]


async def test_seed_003_task(legacy: LegacyApi) -> None:
    events = await whole_run(legacy, "task", "completed")
    assert pairs(events, "status", "progress", "current_node", "step_current") == [
        ("status", "pending", None, None, None),
        ("status", "waiting", None, None, None),
        ("status", "queued", None, None, None),
        ("status", "running", None, None, None),
        ("progress", None, 0, "1", 0),
        ("progress", None, 0.35, "3", 7),
        ("progress", None, 1, "3", 20),
        ("completed", "completed", None, None, None),
    ]
    assert json.loads(events[-1].data)["output"] == {"images": ["out.png"]}


async def test_seed_003_a_failed_task_ends_with_failed_and_closes(legacy: LegacyApi) -> None:
    # The built-in error is off: the stream still closes after the final status.
    events = await whole_run(legacy, "task", "failed")
    assert [e.event for e in events][-2:] == ["progress", "failed"]


# --- everywhere events go -------------------------------------------------------------------


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        return await response.json()


async def test_resume_in_the_middle_of_the_log_gets_the_rest_once(legacy: LegacyApi) -> None:
    run = legacy.scripted("r2", runner_statuses("r2", lines=4))
    async with bridge_for(legacy, "runner") as b:
        async with sse(f"{b.url}/v1/runs/r2/stream") as s:
            await step_through(b, run, until=6)
            before = []
            while len([e for e in before if e.event == "step.log"]) < 2:
                before.append(await s.next_event())
            await step_through(b, run)
            everything = [*before, *await s.rest()]
        # Last-Event-ID, and the cursor query parameter where headers cannot be set.
        last = before[-1].id
        async with sse(f"{b.url}/v1/runs/r2/stream", {"Last-Event-ID": last}) as s:
            by_header = await s.rest()
        async with sse(f"{b.url}/v1/runs/r2/stream?cursor={last}") as s:
            by_cursor = await s.rest()
    assert [e.id for e in by_header] == [e.id for e in by_cursor]
    assert [e.id for e in before] + [e.id for e in by_header] == [e.id for e in everything]
    lines = [json.loads(e.data)["line"] for e in everything if e.event == "step.log"]
    assert len(lines) == len(set(lines)) == 2 * 2 * 4


async def test_an_id_history_no_longer_holds_gets_the_status_as_progress(
    legacy: LegacyApi,
) -> None:
    # Never a silent gap, even with progress off.
    run = legacy.scripted("r3", runner_statuses("r3"))
    async with bridge_for(legacy, "runner", history_size=4) as b:
        async with sse(f"{b.url}/v1/runs/r3/stream") as holder:
            # The queued run says nothing yet (its status is not sent: progress is off).
            await step_through(b, run, until=1)
            first = await holder.next_event()
            assert first.event == "run.started"
            await step_through(b, run, until=8)
            async with sse(f"{b.url}/v1/runs/r3/stream", {"Last-Event-ID": first.id}) as s:
                current = await s.next_event()
                assert current.event == "progress"
                assert json.loads(current.data) == run.statuses[8]
                run.advance()
                live = await s.next_event()
                assert live.event not in ("progress", "ping")
                assert int(live.id.split("-")[1]) > int(current.id.split("-")[1])


async def test_with_progress_on_a_viewer_gets_the_current_status_then_derived(
    legacy: LegacyApi, tmp_path: pathlib.Path
) -> None:
    text = (DEMOS["runner"].path.read_text()).replace("[builtin.progress]\nenabled = false\n", "")
    path = tmp_path / "runner-with-progress.toml"
    path.write_text(text)
    run = legacy.scripted("r4", runner_statuses("r4"))
    async with running_bridge(legacy.url, events_file=str(path)) as b:
        async with sse(f"{b.url}/v1/runs/r4/stream") as s:
            first = await s.next_event()
            assert first.event == "progress" and json.loads(first.data) == run.statuses[0]
            run.advance()
            # Order within a change: the rules in file order, then progress.
            names = [(await s.next_event()).event for _ in range(4)]
            assert names == ["run.started", "job.started", "step.started", "progress"]


async def test_multi_stream_envelopes_carry_derived_events(legacy: LegacyApi) -> None:
    run = legacy.scripted("r5", DEMOS["task"].statuses("r5", "completed"))
    async with bridge_for(legacy, "task") as b:
        async with sse(f"{b.url}/v1/streams?runs=r5") as s:
            await step_through(b, run)
            events = await s.rest()
            async with sse(f"{b.url}/v1/streams?runs=r5", {"Last-Event-ID": events[3].id}) as again:
                resumed = await again.rest()
    envelopes = [json.loads(e.data) for e in events]
    assert [e.event for e in events] == [
        "status",
        "status",
        "status",
        "status",
        "progress",
        "progress",
        "progress",
        "completed",
    ]
    assert all(env["run_id"] == "r5" and env["id"] for env in envelopes)
    assert envelopes[4]["data"]["step_current"] == 0
    assert envelopes[-1]["state"] == "completed"
    assert [e.event for e in resumed] == [e.event for e in events[4:]]


async def test_catch_up_and_long_poll_carry_derived_events(legacy: LegacyApi) -> None:
    run = legacy.scripted("r6", DEMOS["task"].statuses("r6", "completed"))
    async with bridge_for(legacy, "task") as b, sse(f"{b.url}/v1/runs/r6/stream") as holder:
        await holder.next_event()
        # No since, progress off: the history from its start.
        body = await get_json(f"{b.url}/v1/runs/r6/events")
        assert [e["event"] for e in body["events"]] == ["status"]
        cursor = body["cursor"]
        waiting = asyncio.create_task(get_json(f"{b.url}/v1/runs/r6/events?since={cursor}&wait=20"))
        try:
            await wait_for(lambda: b.bridge.limiter.open == 2)
            run.advance()
            woke = await asyncio.wait_for(waiting, 10)
        finally:
            waiting.cancel()
        assert [(e["event"], e["data"]["status"]) for e in woke["events"]] == [
            ("status", "waiting")
        ]
        await step_through(b, run)
        await holder.rest()
        rest = await get_json(f"{b.url}/v1/runs/r6/events?since={woke['cursor']}")
        assert [e["event"] for e in rest["events"]] == [
            "status",
            "status",
            "progress",
            "progress",
            "progress",
            "completed",
        ]
        assert rest["terminal"] is True and rest["state"] == "completed"
        # A since history no longer holds: the current status, here the final one.
        lost = await get_json(f"{b.url}/v1/runs/r6/events?since=1-1")
        assert [e["event"] for e in lost["events"]] == ["completed"]
        # The status endpoints still answer the status itself.
        assert await get_json(f"{b.url}/v1/runs/r6") == run.statuses[-1]


@pytest.mark.parametrize("vocabulary", ["improve-run", "task"])
async def test_a_late_viewer_of_an_ended_run_gets_its_history_and_a_close(
    legacy: LegacyApi, vocabulary: str
) -> None:
    run = legacy.scripted("r7", DEMOS[vocabulary].statuses("r7", "failed"))
    async with bridge_for(legacy, vocabulary) as b:
        async with sse(f"{b.url}/v1/runs/r7/stream") as s:
            await step_through(b, run)
            first = await s.rest()
        async with sse(f"{b.url}/v1/runs/r7/stream") as s:
            late = await s.rest()
    assert [e.id for e in late] == [e.id for e in first]


async def test_resuming_after_the_last_event_sent_gets_204_with_the_end_events_off(
    legacy: LegacyApi,
) -> None:
    # Else EventSource would reconnect for ever: the final status is not sent here.
    run = legacy.scripted("r8", DEMOS["improve-run"].statuses("r8", "succeeded"))
    async with bridge_for(legacy, "improve-run") as b:
        async with sse(f"{b.url}/v1/runs/r8/stream") as s:
            await step_through(b, run)
            events = await s.rest()
        assert events[-1].event == "run_completed"
        async with sse(f"{b.url}/v1/runs/r8/stream", {"Last-Event-ID": events[-1].id}) as s:
            assert s.status == 204
        async with sse(f"{b.url}/v1/streams?runs=r8") as s:
            multi = await s.rest()
        async with sse(f"{b.url}/v1/streams?runs=r8", {"Last-Event-ID": multi[-1].id}) as s:
            assert s.status == 204
