"""Feeds (BRIDGE_FEED_PATH): an upstream that is already an event feed, seed 002's shape,
served by the real bridge (Hypercorn on loopback) from an aiohttp upstream on loopback."""

from __future__ import annotations

import json
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge.settings import ConfigError, load
from tests.feed_upstream import SEED_002, feed_upstream
from tests.support import running_bridge, serving_app, sse, wait_for

AUTH = {"Authorization": "Bearer alice"}


async def get_json(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers or {}) as r:
        return r.status, await r.json(content_type=None)


async def test_each_item_is_one_event_with_its_cursor_as_id() -> None:
    async with feed_upstream() as up:
        run = up.run("r1")
        run.add("PHASE_STARTED", phase="compose")
        run.add("ARTIFACT_CREATED", artifactType="proposals")
        async with (
            running_bridge(up.url, **SEED_002) as b,
            sse(f"{b.url}/v1/runs/r1/stream", AUTH) as s,
        ):
            first = await s.next_named("PHASE_STARTED")
            assert first.id == "1"
            assert s.data(first) == run.events[0]
            second = await s.next_named("ARTIFACT_CREATED")
            assert second.id == "2"
            # Live: a new item is one new event, nothing is repeated.
            run.add("PHASE_STARTED", phase="review")
            third = await s.next_named("PHASE_STARTED")
            assert (third.id, s.data(third)["payload"]) == ("3", {"phase": "review"})
            run.status = "completed"
            end = await s.next_named("complete")
            # The end event's data is the last page.
            assert s.data(end)["runStatus"] == "completed"
            assert await s.rest() == []
        # The feed was asked after the last cursor each time, never from the start again.
        sinces = [since for _, since, _ in up.feed_requests("r1")]
        assert sinces[0] == "0" and set(sinces) <= {"0", "2", "3"}


async def test_one_poller_per_run_and_credential_scope() -> None:
    async with feed_upstream() as up:
        up.run("r2").add("STARTED")
        async with running_bridge(up.url, **SEED_002, poll_interval=0.2) as b:
            async with (
                sse(f"{b.url}/v1/runs/r2/stream", AUTH) as one,
                sse(f"{b.url}/v1/runs/r2/stream", AUTH) as two,
                sse(f"{b.url}/v1/runs/r2/stream", {"Authorization": "Bearer bob"}) as three,
            ):
                for s in (one, two, three):
                    assert (await s.next_named("STARTED")).id == "1"
                assert b.bridge.pollers.active == 2
                # Each scope polls with its own credentials, never another's.
                seen = {auth for _, _, auth in up.feed_requests("r2")}
                assert seen == {"Bearer alice", "Bearer bob"}


async def test_a_viewer_from_beyond_the_history_is_caught_up_from_the_upstream() -> None:
    async with feed_upstream() as up:
        run = up.run("r3")
        for i in range(30):
            run.add("STEP", n=i + 1)
        up.page_size = 7
        settings = {**SEED_002, "history_size": 5}
        async with running_bridge(up.url, **settings) as b:
            # The bridge's poller reads the whole feed; its history keeps the last 5.
            async with sse(f"{b.url}/v1/runs/r3/stream", AUTH) as s:
                await wait_for(lambda: b.bridge.pollers.active == 1)
                got = []
                while len(got) < 30:
                    got.append((await s.next_named("STEP")).id)
                assert got == [str(i) for i in range(1, 31)]
            mark = len(up.requests)
            async with (
                aiohttp.ClientSession() as http,
                sse(
                    f"{b.url}/v1/runs/r3/stream",
                    {**AUTH, "Authorization": "Bearer carol", "Last-Event-ID": "4"},
                    session=http,
                ) as late,
            ):
                ids = []
                while len(ids) < 26:
                    ids.append((await late.next_named("STEP")).id)
                # Every item after the cursor, once, in order: from the upstream, then
                # from the history, then live.
                assert ids == [str(i) for i in range(5, 31)]
                run.add("STEP", n=31)
                assert (await late.next_named("STEP")).id == "31"
            # The catch-up went upstream with this viewer's own credentials.
            caught = [r for r in up.requests[mark:] if r[1] is not None and r[1] == "4"]
            assert caught and caught[0][2] == "Bearer carol"


async def test_a_stale_cursor_ends_the_catch_up_with_a_clear_error() -> None:
    async with feed_upstream() as up:
        run = up.run("r4")
        for i in range(10):
            run.add("STEP", n=i)
        run.kept_from = 5
        async with (
            running_bridge(up.url, **{**SEED_002, "history_size": 2, "feed_start": "6"}) as b,
            sse(f"{b.url}/v1/runs/r4/stream", {**AUTH, "Last-Event-ID": "2"}) as s,
        ):
            error = await s.next_named("error")
            body = s.data(error)
            assert body["status"] == "cursor_expired"
            assert "HTTP 410" in body["errorMessage"]
            assert await s.rest() == []


async def test_state_from_the_run_path_when_the_page_has_none() -> None:
    async with feed_upstream() as up:
        up.state_on_page = False
        run = up.run("r5")
        run.add("STARTED")
        settings = {**SEED_002, "state_expr": ".status // .runStatus"}
        async with (
            running_bridge(up.url, **settings) as b,
            sse(f"{b.url}/v1/runs/r5/stream", AUTH) as s,
        ):
            assert (await s.next_named("STARTED")).id == "1"
            run.add("FINISHING")
            run.status = "completed"
            assert (await s.next_named("FINISHING")).id == "2"
            end = await s.next_named("complete")
            assert end.id == "2"
            assert await s.rest() == []
        assert any(path == "/runs/r5" for path, _, _ in up.requests)


async def test_bad_items_are_logged_once_and_never_stop_the_feed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "bridge.polling.feed")
    async with feed_upstream() as up:
        run = up.run("r6")
        run.add("A")
        run.add("B")
        # Every page also carries an item without a cursor, and the first item again.
        up.junk = [{"eventType": "NO_CURSOR"}, dict(run.events[0])]
        async with (
            running_bridge(up.url, **SEED_002) as b,
            sse(f"{b.url}/v1/runs/r6/stream", AUTH) as s,
        ):
            assert [(await s.next_event()).id for _ in range(2)] == ["1", "2"]
            await wait_for(lambda: len(up.feed_requests("r6")) >= 4)
            run.add("C")
            assert (await s.next_named("C")).id == "3"
            run.status = "failed"
            assert (await s.next_named("error")).id == "3"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("no usable cursor" in m for m in messages) == 1
    assert sum("duplicates" in m for m in messages) == 1


async def test_json_catch_up_uses_the_cursors() -> None:
    async with feed_upstream() as up:
        run = up.run("r7")
        for i in range(3):
            run.add("STEP", n=i)
        async with running_bridge(up.url, **SEED_002) as b:
            status, body = await get_json(f"{b.url}/v1/runs/r7/events?since=1", AUTH)
            assert status == 200
            assert [(e["id"], e["event"]) for e in body["events"]] == [
                ("2", "STEP"),
                ("3", "STEP"),
            ]
            assert body["cursor"] == "3" and body["state"] == "running"
            status, page = await get_json(f"{b.url}/v1/runs/r7", AUTH)
            assert status == 200 and page["runStatus"] == "running"


async def test_more_pages_are_asked_at_once_up_to_the_bound() -> None:
    async with feed_upstream() as up:
        run = up.run("r8")
        for i in range(50):
            run.add("STEP", n=i)
        up.page_size = 5
        settings = {**SEED_002, "feed_max_pages": 4, "poll_interval": 30}
        async with (
            running_bridge(up.url, **settings) as b,
            sse(f"{b.url}/v1/runs/r8/stream", AUTH) as s,
        ):
            ids = [(await s.next_named("STEP")).id for _ in range(20)]
            assert ids == [str(i) for i in range(1, 21)]
            # One tick: four pages at once, then the next interval (30 s away).
            assert len(up.feed_requests("r8")) == 4


async def test_an_unknown_run_is_refused_with_the_upstream_status() -> None:
    async with feed_upstream() as up, running_bridge(up.url, **SEED_002) as b:
        status, body = await get_json(f"{b.url}/v1/runs/nope/stream", AUTH)
        assert status == 404 and body["error"] == "not_found"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("feed_path", "/v1/agent-runs/{run_id}/events"),
        ("feed_items", ".events[] |"),
        ("feed_cursor", "..sequence"),
        ("feed_more", "not valid ("),
        ("upstream_list_path", "runs"),
        ("list_id", ".id |"),
    ],
)
def test_bad_feed_or_list_settings_stop_the_start_naming_the_variable(
    variable: str, value: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(upstream_url="http://127.0.0.1:1", **{variable: value})
    message = str(caught.value)
    assert message.startswith(f"BRIDGE_{variable.upper()}:")
    assert "\n" not in message


def test_the_defaults_are_the_contracts() -> None:
    settings = load(upstream_url="http://127.0.0.1:1")
    assert (settings.feed_path, settings.feed_start, settings.feed_max_pages) == (None, "0", 10)
    assert settings.feed_items == ".events[]" and settings.feed_cursor == ".sequence"
    assert settings.feed_event == '.eventType // .type // "message"'
    assert (settings.feed_data, settings.feed_more) == (".", None)
    assert (settings.list_items, settings.list_id) == (".[]", ".id")
    assert (settings.list_max_pages, settings.list_max_runs) == (10, 10_000)
    assert json.dumps(settings.upstream_list_path) == "null"


async def test_opaque_cursors_are_told_apart_by_identity_not_order() -> None:
    """Event ids that do not sort (``evt_k``, ``evt_c``, ...): nothing is dropped, a
    repeat is, and a cursor the history no longer holds is asked of the upstream."""
    names = ["evt_k", "evt_c", "evt_x", "evt_a", "evt_m", "evt_b"]
    shown = 3
    seen_after: list[str | None] = []

    async def feed(request: web.Request) -> web.Response:
        after = request.query.get("after") or None
        seen_after.append(after)
        start = 0 if after is None or after == "start" else names.index(after) + 1
        # Each page repeats the item before it, as feeds with inclusive cursors do.
        items = [{"id": n, "type": "STEP"} for n in names[max(0, start - 1) : shown]]
        return web.json_response({"data": items, "status": "running"})

    app = web.Application()
    app.router.add_get("/runs/{run_id}/events", feed)
    settings = {
        "feed_path": "/runs/{run_id}/events?after={cursor}",
        "feed_start": "start",
        "feed_items": ".data[]",
        "feed_cursor": ".id",
        "state_expr": ".status",
        "history_size": 2,
    }
    async with serving_app(app) as url, running_bridge(url, **settings) as b:
        async with sse(f"{b.url}/v1/runs/o1/stream") as s:
            assert [(await s.next_named("STEP")).id for _ in range(3)] == names[:3]
            shown = 6
            assert [(await s.next_named("STEP")).id for _ in range(3)] == names[3:]
        # evt_c is no longer in the bridge's history (2 kept): the upstream has the rest.
        mark = len(seen_after)
        async with sse(f"{b.url}/v1/runs/o1/stream", {"Last-Event-ID": "evt_c"}) as s:
            assert [(await s.next_named("STEP")).id for _ in range(4)] == names[2:]
        assert "evt_c" in seen_after[mark:]


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"feed_path": "/r/{run_id}/e?c={cursor}", "upstream_list_path": "/runs"}, "FEED"),
    ],
)
def test_combinations_the_bridge_cannot_serve_yet_stop_the_start(
    overrides: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(upstream_url="http://127.0.0.1:1", **overrides)
    message = str(caught.value)
    assert (
        "\n" not in message
        and f"BRIDGE_{'FEED_PATH' if named == 'FEED' else 'UPSTREAM_LIST_PATH'}" in message
    )


async def test_json_catch_up_beyond_the_history_pages_from_the_upstream() -> None:
    async with feed_upstream() as up:
        run = up.run("r9")
        for i in range(12):
            run.add("STEP", n=i + 1)
        up.page_size = 4
        settings = {**SEED_002, "history_size": 3, "feed_max_pages": 2}
        async with running_bridge(up.url, **settings) as b:
            # The bridge's poller reads the whole feed; its history keeps the last 3.
            async with sse(f"{b.url}/v1/runs/r9/stream", AUTH) as s:
                while (await s.next_named("STEP")).id != "12":
                    pass
            # No since: the feed from its start, in steps of at most 2 pages of 4.
            status, body = await get_json(f"{b.url}/v1/runs/r9/events", AUTH)
            assert status == 200
            assert [e["id"] for e in body["events"]] == [str(i) for i in range(1, 9)]
            assert body["cursor"] == "8" and body["state"] == "running"
            status, body = await get_json(f"{b.url}/v1/runs/r9/events?since=8", AUTH)
            assert [e["id"] for e in body["events"]] == ["9", "10", "11", "12"]
            # A cursor the upstream no longer has: 410 with the bridge's own error.
            run.kept_from = 5
            status, body = await get_json(f"{b.url}/v1/runs/r9/events?since=2", AUTH)
            assert (status, body["error"]) == (410, "cursor_expired")


async def test_a_poke_polls_a_feed_at_once() -> None:
    async with feed_upstream() as up:
        run = up.run("r10")
        run.add("A")
        settings = {**SEED_002, "poll_interval": 30, "poke_token": "p" * 20}
        async with (
            running_bridge(up.url, **settings) as b,
            sse(f"{b.url}/v1/runs/r10/stream", AUTH) as s,
        ):
            assert (await s.next_named("A")).id == "1"
            run.add("B")
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"{b.url}/v1/runs/r10/poll", headers={"Authorization": "Bearer " + "p" * 20}
                ) as r,
            ):
                assert r.status == 202
            assert (await s.next_named("B")).id == "2"


async def test_an_unchanged_feed_page_is_asked_conditionally() -> None:
    async with feed_upstream() as up:
        up.etags = True
        run = up.run("r11")
        run.add("A")
        async with (
            running_bridge(up.url, **SEED_002) as b,
            sse(f"{b.url}/v1/runs/r11/stream", AUTH) as s,
        ):
            assert (await s.next_named("A")).id == "1"
            await wait_for(lambda: up.not_modified >= 2)
            run.add("B")
            assert (await s.next_named("B")).id == "2"


async def test_without_more_a_final_state_ends_only_after_an_empty_page() -> None:
    """No BRIDGE_FEED_MORE: a page of items at a final state may not be the last one."""
    async with feed_upstream() as up:
        run = up.run("r12")
        for i in range(5):
            run.add("STEP", n=i + 1)
        run.status = "completed"
        up.page_size = 2
        settings = {k: v for k, v in SEED_002.items() if k != "feed_more"}
        async with (
            running_bridge(up.url, **settings) as b,
            sse(f"{b.url}/v1/runs/r12/stream", AUTH) as s,
        ):
            got = await s.rest()
            assert [(e.event, e.id) for e in got] == [
                *(("STEP", str(i)) for i in range(1, 6)),
                ("complete", "5"),
            ]


async def test_a_run_path_that_does_not_fit_never_stops_the_items(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Pages without a state and a run path the upstream does not serve (404): the items
    stream all the same, the run counts as still going, and the path is asked once."""
    caplog.set_level(logging.WARNING, "bridge.polling.feed")
    async with feed_upstream() as up:
        up.state_on_page = False
        up.status_path = False
        run = up.run("r13")
        run.add("A")
        settings = {k: v for k, v in SEED_002.items() if k != "state_expr"}
        async with (
            running_bridge(up.url, **settings) as b,
            sse(f"{b.url}/v1/runs/r13/stream", AUTH) as s,
        ):
            assert (await s.next_named("A")).id == "1"
            await wait_for(lambda: len(up.feed_requests("r13")) >= 3)
            run.add("B")
            assert (await s.next_named("B")).id == "2"
        assert sum(1 for path, _, _ in up.requests if path == "/runs/r13") == 1
    assert (
        sum("BRIDGE_UPSTREAM_RUN_PATH answered not_found" in r.getMessage() for r in caplog.records)
        == 1
    )
