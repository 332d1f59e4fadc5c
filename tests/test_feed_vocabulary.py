"""A feed's built-in events follow BRIDGE_EVENTS_FILE's built-in section: the end events
renamed, reshaped (their ``data`` filter runs on the last page) or turned off, and the
ping's data; the file's rules do not apply to a feed (it already says what happened)."""

from __future__ import annotations

import json
import pathlib

import aiohttp

from tests.feed_upstream import SEED_002, feed_upstream
from tests.support import running_bridge, sse

AUTH = {"Authorization": "Bearer alice"}

RESHAPED = """
[builtin.complete]
event = "run.completed"
data = '{runId: $run_id, state: $state, status: .runStatus, items: (.events | length)}'
[builtin.error]
event = "run.failed"
data = '{runId: $run_id, failed: true}'
[builtin.ping]
event = "keepalive"
data = '{beat: true}'

[[rule]]
event = "never"
items = '.events[]'
"""


async def test_end_events_are_renamed_and_reshaped_from_the_last_page(
    tmp_path: pathlib.Path,
) -> None:
    path = tmp_path / "feed.toml"
    path.write_text(RESHAPED)
    async with feed_upstream() as up:
        done, failed = up.run("r1"), up.run("r2")
        done.add("STARTED")
        failed.add("STARTED")
        async with running_bridge(
            up.url, **SEED_002, events_file=str(path), ping_interval=0.05
        ) as b:
            async with sse(f"{b.url}/v1/runs/r1/stream", AUTH) as s:
                assert (await s.next_named("STARTED")).id == "1"
                beat = await s.next_event()
                assert (beat.event, json.loads(beat.data)) == ("keepalive", {"beat": True})
                done.add("FINISHED")
                done.status = "completed"
                rest = [e for e in await s.rest() if e.event != "keepalive"]
                assert [e.event for e in rest] == ["FINISHED", "run.completed"]
                # The filter ran on the last page: the one that brought FINISHED and said
                # (hasMore false) that no more follow.
                assert s.data(rest[-1]) == {
                    "runId": "r1",
                    "state": "completed",
                    "status": "completed",
                    "items": 1,
                }
                assert rest[-1].id == "2"
            failed.status = "failed"
            async with sse(f"{b.url}/v1/runs/r2/stream", AUTH) as s:
                events = [e for e in await s.rest() if e.event != "keepalive"]
                assert [e.event for e in events] == ["STARTED", "run.failed"]
                assert s.data(events[-1]) == {"runId": "r2", "failed": True}
            # The JSON catch-up carries the end event as the stream does.
            url = f"{b.url}/v1/runs/r1/events?since=0"
            async with aiohttp.ClientSession() as http, http.get(url, headers=AUTH) as r:
                body = await r.json()
            assert [e["event"] for e in body["events"]][-1] == "run.completed"


async def test_end_events_turned_off_close_the_stream_unsent(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "feed.toml"
    path.write_text("[builtin.complete]\nenabled = false\n")
    async with feed_upstream() as up:
        run = up.run("r3")
        run.add("STARTED")
        async with running_bridge(up.url, **SEED_002, events_file=str(path)) as b:
            async with sse(f"{b.url}/v1/runs/r3/stream", AUTH) as s:
                assert (await s.next_named("STARTED")).id == "1"
                run.add("FINISHED")
                run.status = "completed"
                # The stream closes after the last item, with no end event.
                assert [e.event for e in await s.rest()] == ["FINISHED"]
            # A viewer coming back with the last cursor is told nothing more.
            async with sse(f"{b.url}/v1/runs/r3/stream", {**AUTH, "Last-Event-ID": "2"}) as again:
                assert again.status in (200, 204)
                assert [e.event for e in await again.rest()] == []
