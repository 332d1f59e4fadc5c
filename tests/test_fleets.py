"""Fleets (BRIDGE_UPSTREAM_LIST_PATH): every listed run in one stream, ``GET /v1/events``,
from one list request per interval; the real bridge against an aiohttp upstream on
loopback."""

from __future__ import annotations

import json
import logging
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import jq
import pytest

from bridge.events.history import Event
from bridge.polling.fleet import FleetLog, ListSource
from bridge.settings import load
from tests.feed_upstream import list_upstream
from tests.support import SseStream, auth_service, running_bridge, sse, wait_for

AUTH = {"Authorization": "Bearer alice"}
LIST = {"upstream_list_path": "/runs"}


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers or {}) as r:
        return r.status, await r.json(content_type=None)


async def envelopes(s: SseStream, count: int) -> list[tuple[str, str, Any]]:
    """(event, run_id, data) of the next ``count`` run events."""
    out = []
    while len(out) < count:
        event = await s.next_named("progress", "complete", "error")
        body = s.data(event)
        out.append((event.event, body["run_id"], body["data"]))
    return out


async def test_every_listed_run_in_one_stream_of_envelopes() -> None:
    async with list_upstream() as up:
        up.set("a", "running")
        up.set("b", "queued")
        async with running_bridge(up.url, **LIST) as b, sse(f"{b.url}/v1/events", AUTH) as s:
            opening = await envelopes(s, 2)
            assert opening == [
                ("progress", "a", up.statuses["a"]),
                ("progress", "b", up.statuses["b"]),
            ]
            first = s.events[-1]
            body = s.data(first)
            assert body["state"] == "queued" and body["progress"] is None and body["id"]
            up.set("b", "running")
            assert await envelopes(s, 1) == [("progress", "b", up.statuses["b"])]
            # A run that appears comes with its status; one that ends ends only itself.
            up.set("c", "running")
            assert await envelopes(s, 1) == [("progress", "c", up.statuses["c"])]
            up.set("a", "completed")
            assert await envelopes(s, 1) == [("complete", "a", up.statuses["a"])]
            up.set("c", "failed")
            assert await envelopes(s, 1) == [("error", "c", up.statuses["c"])]
            assert not s.eof


async def test_one_list_request_feeds_single_run_streams_of_listed_runs() -> None:
    async with list_upstream() as up:
        for name in ("a", "b", "c"):
            up.set(name, "running")
        async with (
            running_bridge(up.url, **LIST, poll_interval=0.1) as b,
            sse(f"{b.url}/v1/events", AUTH) as fleet,
        ):
            await envelopes(fleet, 3)
            async with (
                sse(f"{b.url}/v1/runs/b/stream", AUTH) as one,
                sse(f"{b.url}/v1/streams?runs=a,c", AUTH) as multi,
            ):
                assert (await one.next_named("progress")).data
                await envelopes(multi, 2)
                up.set("b", "running", step=2)
                assert one.data(await one.next_named("progress"))["step"] == 2
                lists = up.list_requests()
                await wait_for(lambda: up.list_requests() >= lists + 3)
            # Listed runs cost no request of their own, however they are watched.
            assert [up.run_requests(r) for r in ("a", "b", "c")] == [0, 0, 0]
            assert b.bridge.pollers.active == 3


async def test_a_run_leaving_the_list_is_asked_once_at_its_own_path() -> None:
    async with list_upstream() as up:
        up.set("a", "running")
        up.set("b", "running")
        async with running_bridge(up.url, **LIST) as b, sse(f"{b.url}/v1/events", AUTH) as s:
            await envelopes(s, 2)
            # It ends between two list requests, and the list no longer names it.
            up.statuses["a"]["status"] = "completed"
            up.listed.remove("a")
            assert await envelopes(s, 1) == [("complete", "a", up.statuses["a"])]
            await wait_for(lambda: b.bridge.pollers.active == 1)
            assert up.run_requests("a") == 1 and up.run_requests("b") == 0


async def test_the_list_is_followed_by_link_next_up_to_the_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "bridge.polling.fleet")
    async with list_upstream() as up:
        for i in range(7):
            up.set(f"r{i}", "running")
        up.page_size = 2
        async with (
            running_bridge(up.url, **LIST, list_max_pages=3, poll_interval=30) as b,
            sse(f"{b.url}/v1/events", AUTH) as s,
        ):
            got = await envelopes(s, 6)
            assert [run for _, run, _ in got] == [f"r{i}" for i in range(6)]
            assert up.list_requests() == 3
            assert sorted(b.bridge.fleets.fleets()[0].listed) == [f"r{i}" for i in range(6)]
    assert any("BRIDGE_LIST_MAX_PAGES" in r.getMessage() for r in caplog.records)


async def test_bad_items_are_skipped_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "bridge.polling.fleet")
    async with list_upstream() as up:
        up.set("a", "running")
        up.junk = [
            {"status": "running"},  # no id
            {"id": "../etc", "status": "running"},  # not a run id
            {"id": "a", "status": "failed"},  # again: the first wins
            {"id": 7, "status": "queued"},  # a number is a run id too
        ]
        async with running_bridge(up.url, **LIST) as b, sse(f"{b.url}/v1/events", AUTH) as s:
            got = await envelopes(s, 2)
            assert [(e, r) for e, r, _ in got] == [("progress", "a"), ("progress", "7")]
            lists = up.list_requests()
            await wait_for(lambda: up.list_requests() >= lists + 3)
            assert s.events[-1].event == "progress"  # nothing more came
            assert b.bridge.pollers.active == 2
    messages = [r.getMessage() for r in caplog.records]
    assert sum("no usable run id" in m for m in messages) == 1
    assert sum("names a run twice" in m for m in messages) == 1


async def test_more_runs_than_the_cap_are_cut_with_a_log_line_and_a_metric(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "bridge.polling.fleet")
    async with list_upstream() as up:
        for i in range(5):
            up.set(f"r{i}", "running")
        async with (
            running_bridge(up.url, **LIST, list_max_runs=3) as b,
            sse(f"{b.url}/v1/events", AUTH) as s,
        ):
            got = await envelopes(s, 3)
            assert [run for _, run, _ in got] == ["r0", "r1", "r2"]
            async with aiohttp.ClientSession() as http, http.get(f"{b.url}/metrics") as r:
                metrics = await r.text()
            assert "bridge_list_runs_cut 2.0" in metrics
            assert b.bridge.pollers.active == 3
    assert sum("BRIDGE_LIST_MAX_RUNS" in r.getMessage() for r in caplog.records) == 1


async def test_a_viewer_whose_credentials_the_list_refuses_gets_that_status() -> None:
    async with list_upstream() as up:
        up.set("a", "running")
        async with running_bridge(up.url, **LIST) as b:
            status, body = await get(f"{b.url}/v1/events", {"Authorization": "Bearer nope"})
            assert status == 401 and body["error"] == "unauthorized"
            # Another scope is not affected, and never sees the refused one's data.
            async with sse(f"{b.url}/v1/events", AUTH) as s:
                assert await envelopes(s, 1) == [("progress", "a", up.statuses["a"])]
            assert {auth for _, auth in up.requests} == {"Bearer nope", "Bearer alice"}


async def test_resume_by_last_event_id_replays_what_was_missed_once() -> None:
    async with list_upstream() as up:
        up.set("a", "running", step=1)
        up.set("b", "running", step=1)
        async with running_bridge(up.url, **LIST, linger=30) as b:
            async with sse(f"{b.url}/v1/events", AUTH) as s:
                await envelopes(s, 2)
                up.set("a", "running", step=2)
                await envelopes(s, 1)
                last = s.events[-1].id
            up.set("b", "running", step=2)
            up.set("a", "completed", step=3)
            fleet = b.bridge.fleets.fleets()[0]
            await wait_for(lambda: fleet.log.last_seq >= 5)
            async with sse(f"{b.url}/v1/events", {**AUTH, "Last-Event-ID": last}) as s:
                got = await envelopes(s, 2)
                assert sorted((e, r, d["step"]) for e, r, d in got) == [
                    ("complete", "a", 3),
                    ("progress", "b", 2),
                ]


async def test_envelope_0_sends_each_event_as_the_runs_own_stream() -> None:
    async with list_upstream() as up:
        up.set("a", "running")
        async with running_bridge(up.url, **LIST) as b:
            async with sse(f"{b.url}/v1/events?envelope=0", AUTH) as s:
                event = await s.next_named("progress")
                assert s.data(event) == up.statuses["a"]
            async with (
                sse(f"{b.url}/v1/streams?runs=a&envelope=0", AUTH) as multi,
                sse(f"{b.url}/v1/runs/a/stream", AUTH) as own,
            ):
                raw = await multi.next_named("progress")
                mine = await own.next_named("progress")
                assert raw.data == mine.data
            status, _ = await get(f"{b.url}/v1/events?envelope=maybe", AUTH)
            assert status == 400


async def test_without_a_list_v1_events_is_404() -> None:
    async with list_upstream() as up, running_bridge(up.url) as b:
        status, body = await get(f"{b.url}/v1/events")
        assert status == 404 and "BRIDGE_UPSTREAM_LIST_PATH" in body["message"]


async def test_the_list_poller_stops_with_its_last_viewer() -> None:
    async with list_upstream() as up:
        up.set("a", "running")
        async with running_bridge(up.url, **LIST) as b:
            async with sse(f"{b.url}/v1/events", AUTH) as s:
                await envelopes(s, 1)
            await wait_for(lambda: not b.bridge.fleets.fleets())
            await wait_for(lambda: b.bridge.pollers.active == 0)
            lists = up.list_requests()
        assert up.list_requests() == lists


@pytest.mark.parametrize(
    ("items", "run_id", "page"),
    [
        (".[]", ".id", [{"id": "a"}, {"x": 1}, "text", None, [1], {"id": 7}]),
        (".[]", ".id", {"one": {"id": "a"}, "two": {"id": "b"}}),
        (".[]", ".id", "not a list"),
        (".workflow_runs[]", ".id", {"workflow_runs": [{"id": 1}, {"id": 2}], "total_count": 2}),
        (".items[]", ".metadata.name", {"items": [{"metadata": {"name": "j1"}}, {"spec": {}}]}),
        (".runs[] | {id: .run_id, status}", ".id", {"runs": [{"run_id": 5, "status": "x"}]}),
        (".runs[] | select(.active)", ".id", {"runs": [{"id": "a", "active": True}, {"id": "b"}]}),
    ],
)
def test_reading_a_list_gives_what_jq_gives(items: str, run_id: str, page: Any) -> None:
    """The defaults are read without jq and paths without jq's copies: same results."""
    settings = load(
        upstream_url="http://127.0.0.1:1",
        upstream_list_path="/runs",
        list_items=items,
        list_id=run_id,
    )
    program = jq.compile(f"[({items}) | [., ([try ({run_id})] | .[0])]]")
    try:
        expected = [tuple(pair) for pair in program.input_value(page).first()]
    except ValueError:
        expected = None
    assert ListSource(settings).read(page, json.dumps(page)) == expected


async def test_a_poke_of_a_listed_run_asks_the_list_at_once() -> None:
    token = "t" * 20
    async with list_upstream() as up:
        up.set("a", "running", step=1)
        async with (
            running_bridge(up.url, **LIST, poll_interval=30, poke_token=token) as b,
            sse(f"{b.url}/v1/events", AUTH) as s,
        ):
            await envelopes(s, 1)
            up.set("a", "running", step=2)
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"{b.url}/v1/runs/a/poll", headers={"Authorization": f"Bearer {token}"}
                ) as r,
            ):
                assert r.status == 202
            assert await envelopes(s, 1) == [("progress", "a", up.statuses["a"])]
            assert up.run_requests("a") == 0


async def test_a_listed_runs_own_viewer_keeps_the_list_poller_going() -> None:
    async with list_upstream() as up:
        up.set("a", "running", step=1)
        async with running_bridge(up.url, **LIST) as b:
            async with AsyncExitStack() as stack:
                fleet = await stack.enter_async_context(sse(f"{b.url}/v1/events", AUTH))
                await envelopes(fleet, 1)
                own = await stack.enter_async_context(sse(f"{b.url}/v1/runs/a/stream", AUTH))
                assert (await own.next_named("progress")).data
                # The list's stream leaves; the run's own viewer still has it from the list.
                fleet.response.close()
                lists = up.list_requests()
                await wait_for(lambda: up.list_requests() >= lists + 2)
                up.set("a", "running", step=2)
                assert own.data(await own.next_named("progress"))["step"] == 2
                assert up.run_requests("a") == 0
            await wait_for(lambda: not b.bridge.fleets.fleets())


async def test_when_the_list_poller_stops_its_runs_go_on_at_their_own_paths() -> None:
    """A listed run's poller still held when the list poller stops (here: leased
    directly, as GET /v1/runs/{id} does) is handed over to its own path, not left
    waiting for a list that no longer comes."""
    async with list_upstream() as up:
        up.set("a", "running", step=1)
        async with running_bridge(up.url, **LIST) as b:
            pollers = b.bridge.pollers
            async with sse(f"{b.url}/v1/events", AUTH) as fleet:
                await envelopes(fleet, 1)
                channel, release = await pollers.lease("a", {"authorization": "Bearer alice"})
            try:
                await wait_for(lambda: not b.bridge.fleets.fleets())
                await wait_for(lambda: up.run_requests("a") >= 1)
                up.set("a", "running", step=2)
                await wait_for(lambda: '"step":2' in getattr(channel.history.latest, "data", ""))
            finally:
                release()


def test_the_fleet_log_is_bounded_in_entries_and_bytes() -> None:
    log = FleetLog(size=10, max_bytes=3 * 10 * 1024)
    small = Event.build(1, "1-1", "progress", '{"a":1}')
    for _ in range(25):
        log.append("r", small)
    assert len(log) == 10 and log.holds(f"{log.epoch}-15") == 15
    assert log.holds(f"{log.epoch}-14") is None
    big = Event.build(2, "1-2", "progress", json.dumps({"x": "y" * 4000}))
    for _ in range(5):
        log.append("r", big)
    assert log.nbytes <= 3 * 10 * 1024 and 1 <= len(log) <= 3
    assert [e.seq for e in log.after(log.last_seq - 1)] == [log.last_seq]


async def test_an_unchanged_list_is_asked_conditionally() -> None:
    async with list_upstream() as up:
        up.etags = True
        up.set("a", "running", step=1)
        async with running_bridge(up.url, **LIST) as b, sse(f"{b.url}/v1/events", AUTH) as s:
            await envelopes(s, 1)
            await wait_for(lambda: up.not_modified >= 2)
            up.set("a", "running", step=2)
            assert await envelopes(s, 1) == [("progress", "a", up.statuses["a"])]


async def test_single_run_streams_alone_are_fed_by_the_list() -> None:
    """No /v1/events viewer at all: streams of listed runs keep the list poller going and
    cost no request of their own; a run the list does not name is asked at its path."""
    async with list_upstream() as up:
        up.set("a", "running", step=1)
        up.set("b", "running", step=1)
        up.statuses["gone"] = {"id": "gone", "status": "completed"}
        async with (
            running_bridge(up.url, **LIST) as b,
            sse(f"{b.url}/v1/runs/a/stream", AUTH) as one,
            sse(f"{b.url}/v1/streams?runs=b", AUTH) as multi,
        ):
            assert one.data(await one.next_named("progress"))["step"] == 1
            await envelopes(multi, 1)
            up.set("a", "running", step=2)
            assert one.data(await one.next_named("progress"))["step"] == 2
            async with sse(f"{b.url}/v1/runs/gone/stream", AUTH) as ended:
                assert ended.data(await ended.next_named("complete"))["status"] == "completed"
            assert (up.run_requests("a"), up.run_requests("b"), up.run_requests("gone")) == (
                0,
                0,
                1,
            )
            assert len(b.bridge.fleets.fleets()) == 1


async def test_forward_auth_admits_a_stream_of_every_run_as_run_star() -> None:
    asked: list[str] = []

    def admits(token: str, run_id: str) -> bool:
        asked.append(run_id)
        return token == "Bearer ok"

    async with list_upstream() as up, auth_service(admits) as (auth_url, _):
        up.set("a", "running")
        async with running_bridge(up.url, **LIST, auth_url=auth_url) as b:
            status, _ = await get(f"{b.url}/v1/events", {"Authorization": "Bearer no"})
            assert status == 403
            async with sse(f"{b.url}/v1/events", {"Authorization": "Bearer ok"}) as s:
                assert await envelopes(s, 1) == [("progress", "a", up.statuses["a"])]
    assert set(asked) == {"*"}
    # The list is polled with the bridge's own headers, never the viewer's.
    assert {auth for _, auth in up.requests} == {None}


JOBS_VOCABULARY = """
[builtin.progress]
enabled = false

[[rule]]
event = "job.started"
items = '.jobs[] | {runId: $run_id, jobId: .id}'
key = '.jobId'
on = "appear"
"""


async def test_with_progress_off_a_runs_history_opens_the_stream(tmp_path: Path) -> None:
    """BRIDGE_EVENTS_FILE with builtin.progress off: /v1/events starts each listed run with
    its history from the start (as its own stream does), never an empty frame."""
    vocabulary = tmp_path / "jobs.toml"
    vocabulary.write_text(JOBS_VOCABULARY)
    async with list_upstream() as up:
        up.set("a", "running", jobs=[{"id": "build"}, {"id": "test"}])
        settings = {**LIST, "events_file": str(vocabulary)}
        async with running_bridge(up.url, **settings) as b:
            async with sse(f"{b.url}/v1/events?envelope=0", AUTH) as first:
                got = [await first.next_named("job.started") for _ in range(2)]
                assert [first.data(e)["jobId"] for e in got] == ["build", "test"]
            # A viewer who comes later gets the same history first, then what is new.
            async with sse(f"{b.url}/v1/events", AUTH) as later:
                got = [await later.next_named("job.started") for _ in range(2)]
                assert [later.data(e)["data"]["jobId"] for e in got] == ["build", "test"]
                up.set("a", "running", jobs=[{"id": "build"}, {"id": "test"}, {"id": "ship"}])
                new = await later.next_named("job.started")
                assert later.data(new)["data"] == {"runId": "a", "jobId": "ship"}
